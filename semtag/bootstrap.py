"""Start-up wiring, used by every entry point (the API, the workers, the CLI).

``build_runtime(settings)`` is the one place a :class:`~services.runtime.Runtime` is made: the
settings, the blob store, the task queue (Celery when a broker is configured, in-process
otherwise), and the job kinds this installation runs. The core registers no job kind of its
own accord beyond ``selftest``; the kinds that live in other packages (``clustering`` in the core,
``training`` in ``models/``) are registered here, and importing them does not import TensorFlow.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from semtag.settings import Settings
from services.runtime import NullQueue, Runtime, TaskQueue


def _imported_when_run(target: str) -> Callable[[Any], dict[str, Any]]:
    """A job handler ``module:function`` imported at its first run, not at registration: the clustering
    code brings scikit-learn and SciPy (about 110 MB and 1.6 s per process), which only a batch worker
    running a clustering job needs — not the API, the OCR or the inference workers."""
    module, name = target.split(":")

    def run(ctx: Any) -> dict[str, Any]:
        result: dict[str, Any] = getattr(importlib.import_module(module), name)(ctx)
        return result

    run.__name__ = name
    run.__qualname__ = name
    return run


def register_job_kinds() -> None:
    """Register the ``clustering``, ``training`` and ``reprocess`` job kinds (idempotent)."""
    from services.classify.schemas import TrainingParams
    from services.clustering.schemas import ClusteringParams
    from services.images.schemas import ReprocessParams
    from services.jobs.service import register_job_kind

    run_training = _imported_when_run("models.training_job:run_training")
    clustering_job = _imported_when_run("services.clustering.subcategories:clustering_job")
    reprocess_job = _imported_when_run("services.images.reprocess:reprocess_job")

    register_job_kind("training", run_training, TrainingParams,
                      "trains a classifier (params: data, arch, mode, init, epochs, batch_size, image_size, int8), "
                      "exports it to ONNX with a parity check and registers it (activation is separate)")
    register_job_kind("clustering", clustering_job, ClusteringParams,
                      "discovers subcategories: features of the active model for images in a scale range (default "
                      "1–2 µm), 2-NN ID, autoencoder, five hierarchical clusterings scored by NMI, a category → "
                      "subcategory tree written to the database, and an HTML report")
    register_job_kind("reprocess", reprocess_job, ReprocessParams,
                      "reads scales again and/or classifies again with the active model the images selected by "
                      "record, upload dates, status, scale source or model version (params: steps, record_id, "
                      "record_version, uploaded_from, uploaded_before, status, scale_source, model_version, dry_run); "
                      "human labels and curators' scale readings stay")


def build_runtime(settings: Settings, queue: TaskQueue | None = None, *, run_tasks: bool = True) -> Runtime:
    """The runtime for ``settings``. ``queue`` overrides the choice; with ``run_tasks=False`` an
    embedded (broker-less) process queues nothing and leaves the work to the service's reconciler."""
    register_job_kinds()
    if queue is None:
        if settings.embedded_tasks and not run_tasks:
            queue = NullQueue()
        else:
            from workers.queues import queue_for

            queue = queue_for(settings)
    return Runtime(settings, queue=queue)
