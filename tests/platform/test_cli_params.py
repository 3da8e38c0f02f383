"""The CLI and the jobs share one parameter contract: the same defaults, the same checks, the same messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semtag.cli import _hide_password, build_parser, main
from services.classify.schemas import TrainingParams
from services.clustering.schemas import ClusteringParams
from services.errors import BadParams, parse_params


def test_cli_defaults_are_the_parameter_models_defaults() -> None:
    cluster = build_parser().parse_args(["cluster"])
    c = ClusteringParams()
    assert (cluster.scale_min_nm, cluster.scale_max_nm, cluster.k, cluster.method, cluster.code_dim, cluster.dp_k,
            cluster.output, cluster.within) == (c.scale_min_nm, c.scale_max_nm, c.k, c.method, c.code_dim, c.dp_k,
                                                c.output, c.within)
    train = build_parser().parse_args(["train", "--data", "d", "--arch", "alexnet", "--out", "o"])
    fields = TrainingParams.model_fields
    assert (train.mode, train.epochs, train.batch_size, train.seed) == tuple(
        fields[n].default for n in ("mode", "epochs", "batch_size", "seed"))


def test_train_checks_its_parameters_before_loading_anything(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--data", str(tmp_path), "--arch", "inception_v3", "--image-size", "40",
                 "--out", str(tmp_path / "r")]) == 2
    assert "inception_v3 needs an image size of at least 75" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--arch", "alexnet", "--epochs", "0", "--out", str(tmp_path)]) == 2
    assert "param 'epochs'" in capsys.readouterr().err


def test_cluster_analysis_checks_its_parameters(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    np.save(tmp_path / "X.npy", np.random.default_rng(0).normal(size=(50, 4)))
    assert main(["cluster", "--features", str(tmp_path / "X.npy"), "--dp-k", "1", "--out", str(tmp_path / "r")]) == 2
    assert "param 'dp_k'" in capsys.readouterr().err


def test_messages_explain_missing_fields_and_keep_codes(tmp_path: Path) -> None:
    with pytest.raises(BadParams) as e:
        parse_params(TrainingParams, {}, "training")
    assert "param 'data' is required: a dataset folder" in e.value.message and e.value.code == "bad_params"
    with pytest.raises(BadParams) as e:
        parse_params(TrainingParams, {"data": str(tmp_path), "arch": "inception_v3", "mode": "fine-tuning",
                                      "init": str(tmp_path / "none.h5")}, "training")
    assert e.value.code == "missing_checkpoint"
    assert "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5" in e.value.message
    with pytest.raises(BadParams) as e:
        parse_params(TrainingParams, {"data": str(tmp_path), "init": str(tmp_path)}, "training")
    assert "Value error" not in e.value.message and "mode scratch starts from random weights" in e.value.message


def test_printed_urls_hide_passwords() -> None:
    assert _hide_password("postgresql+psycopg://semtag:s3cret@db:5432/semtag") == \
        "postgresql+psycopg://semtag:***@db:5432/semtag"
    assert _hide_password("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_activate_in_embedded_mode_says_who_classifies(cli_env: Path, alexnet_onnx: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "import", str(alexnet_onnx)]) == 0
    version = capsys.readouterr().out.split("registered ", 1)[1].split(" ", 1)[0]
    assert main(["models", "activate", version]) == 0
    out = capsys.readouterr().out
    assert f"active model: {version}" in out and "Embedded mode" in out and "queued for classification" not in out



@pytest.mark.parametrize(("argv", "pool", "concurrency"), [
    (["--queues", "inference"], "threads", 2),  # the inference queue alone: one process, two threads
    (["--queues", "inference", "--pool", "solo", "--concurrency", "1"], "solo", 1),
    (["--queues", "inference", "--pool", "solo"], "solo", 1),  # solo runs one task, whatever the CPUs
    (["--queues", "ocr", "--concurrency", "3"], "prefork", 3),
    (["--queues", "inference,ocr"], "prefork", None),  # mixed queues: a process per CPU, as before
])
def test_the_worker_chooses_its_pool_for_the_inference_queue(monkeypatch, argv, pool, concurrency) -> None:
    import os

    from semtag.settings import get_settings
    from workers.app import app

    monkeypatch.setenv("SEMTAG_BROKER_URL", "redis://127.0.0.1:6379/15")
    monkeypatch.delenv("SEMTAG_INFERENCE_BATCH_SIZE", raising=False)  # 8
    monkeypatch.delenv("SEMTAG_INFERENCE_BATCHES_PER_TASK", raising=False)  # 2
    get_settings.cache_clear()
    seen: list[list[str]] = []
    monkeypatch.setattr(app, "worker_main", seen.append)
    before = (app.conf.worker_prefetch_multiplier, app.conf.get("semtag_warm_inference"),
              app.conf.get("semtag_inference_worker"))
    try:
        assert main(["worker", *argv]) == 0
        (celery_argv,) = seen
        n = concurrency or (os.cpu_count() or 1)
        assert celery_argv[celery_argv.index("--pool") + 1] == pool
        assert celery_argv[celery_argv.index("-c") + 1] == str(n)
        if "inference" in argv[1]:
            # celery-batches holds at most prefetch × concurrency messages: a task's worth (8 × 2) more than the
            # tasks running, so the next one is gathered while they run (workers/batching.py)
            held = app.conf.worker_prefetch_multiplier * n
            assert (n + 1) * 16 <= held < (n + 1) * 16 + n
            # its threads around the model yield to the model threads; not a prefork pool's, whose children are
            # forked from the main thread
            assert app.conf.semtag_inference_worker == (pool in ("threads", "solo"))
    finally:
        get_settings.cache_clear()
        (app.conf.worker_prefetch_multiplier, app.conf.semtag_warm_inference,
         app.conf.semtag_inference_worker) = before
