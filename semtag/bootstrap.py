"""Start-up wiring, used by every entry point (the API, the workers, the CLI).

``build_runtime(settings)`` is the one place a :class:`~services.runtime.Runtime` is made: the
settings, the blob store, the task queue (Celery when a broker is configured, in-process
otherwise), and the job kinds this installation runs. The core registers no job kind of its
own accord beyond ``selftest``; the kinds that live in other packages (``clustering`` in the core,
``training`` in ``models/``) are registered here, and importing them does not import TensorFlow.
"""

from __future__ import annotations

from semtag.settings import Settings
from services.runtime import NullQueue, Runtime, TaskQueue


def register_job_kinds() -> None:
    """Register the ``clustering`` and ``training`` job kinds (idempotent)."""
    from models.training_job import run_training
    from services.classify.schemas import TrainingParams
    from services.clustering.schemas import ClusteringParams
    from services.clustering.subcategories import clustering_job
    from services.jobs.service import register_job_kind

    register_job_kind("training", run_training, TrainingParams,
                      "trains a classifier (params: data, arch, mode, init, epochs, batch_size, image_size, int8), "
                      "exports it to ONNX with a parity check and registers it (activation is separate)")
    register_job_kind("clustering", clustering_job, ClusteringParams,
                      "discovers subcategories: features of the active model for images in a scale range (default "
                      "1–2 µm), 2-NN ID, autoencoder, five hierarchical clusterings scored by NMI, a category → "
                      "subcategory tree written to the database, and an HTML report")


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
