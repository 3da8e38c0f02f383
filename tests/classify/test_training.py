"""Architectures, training modes, export with parity, INT8, the registry and the training job."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from semtag.cli import main
from services.data.synth import write_dataset
from services.errors import BadInput

keras = pytest.importorskip("keras")  # part of the install; a clear skip only if someone trimmed it

from models.architectures import backbone_of, build  # noqa: E402
from models.training import TrainConfig, train  # noqa: E402
from services.classify import registry  # noqa: E402


@pytest.fixture
def scratch_run(alexnet_run: Path, tmp_path: Path) -> Path:
    """A private copy of the shared AlexNet run (tests here export into it and change it)."""
    import shutil

    return Path(shutil.copytree(alexnet_run, tmp_path / "alex-scratch"))


def _weights(layer) -> list[np.ndarray]:
    return [w.copy() for w in layer.get_weights()]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_architectures_build_with_configurable_size_and_classes() -> None:
    for arch, feats in (("alexnet", 4096), ("inception_v3", 2048), ("inception_v4", 1536),
                        ("inception_resnet_v2", 1536)):
        m = build(arch, 75, classes=7)
        assert m.output_shape == (None, 7)
        assert backbone_of(m).output_shape == (None, feats)
        assert m.get_layer("logits").activation.__name__ == "linear"
    with pytest.raises(ValueError, match="at least 75"):
        build("inception_v4", 64)
    with pytest.raises(ValueError, match="unknown architecture"):
        build("resnet50", 224)


def test_inception_v4_matches_the_papers_size() -> None:
    # Szegedy et al. 2017 / TF-slim: about 42.7 M parameters with the 1001-way ImageNet classifier.
    from models.architectures.inception_v4 import InceptionV4Backbone

    b = InceptionV4Backbone((299, 299, 3))
    assert b.output_shape == (None, 1536)
    total = b.count_params() + 1536 * 1001 + 1001
    assert 42.5e6 < total < 42.9e6
    names = {layer.name for layer in b.layers}
    assert {"stem_6", "inception_a4", "reduction_a", "inception_b7", "reduction_b", "inception_c3"} <= names


def test_scratch_run_writes_metrics_report_and_model(scratch_run: Path) -> None:
    rows = [json.loads(x) for x in (scratch_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert {"loss", "accuracy", "val_accuracy", "test_accuracy", "val_loss", "test_loss", "seconds"} <= set(r)
    report = json.loads((scratch_run / "report.json").read_text())
    assert len(report["test"]["confusion_matrix"]) == 10
    assert set(report["test"]["per_class"]["tips"]) == {"precision", "recall", "f1", "support"}
    assert "macro_f1" in report["test"] and report["temperature"] > 0
    assert {"ece_before", "ece_after"} <= set(report["calibration"])
    assert (scratch_run / "model.keras").is_file() and list((scratch_run / "tb").rglob("events.out.tfevents*"))
    config = json.loads((scratch_run / "config.json").read_text())
    assert config["manifest_sha256"] == json.loads((scratch_run / "manifest.json").read_text())["sha256"]


def test_feature_extraction_trains_only_the_last_layer(scratch_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    old = keras.models.load_model(scratch_run / "model.keras", compile=False)
    out = tmp_path / "fe"
    train(TrainConfig(data=str(tiny_data), arch="alexnet", mode="feature-extraction", init=str(scratch_run),
                      out=str(out), epochs=1, batch_size=16, image_size=64, verbose=0))
    new = keras.models.load_model(out / "model.keras", compile=False)
    assert _same(_weights(backbone_of(old)), _weights(backbone_of(new)))  # frozen: batch-norm statistics too
    assert not _same(_weights(old.get_layer("logits")), _weights(new.get_layer("logits")))


def test_fine_tuning_trains_all_layers_and_fe_ft_runs_both_stages(scratch_run: Path, tiny_data: Path,
                                                                   tmp_path: Path) -> None:
    old = keras.models.load_model(scratch_run / "model.keras", compile=False)
    out = tmp_path / "ft"
    train(TrainConfig(data=str(tiny_data), arch="alexnet", mode="fine-tuning", init=str(scratch_run / "model.keras"),
                      out=str(out), epochs=1, batch_size=16, image_size=64, verbose=0))
    new = keras.models.load_model(out / "model.keras", compile=False)
    changed = [not np.array_equal(a, b) for a, b in zip(_weights(backbone_of(old)), _weights(backbone_of(new)))]
    assert all(changed[:2]) and sum(changed) > len(changed) // 2  # first conv and most others moved
    out2 = tmp_path / "feft"
    train(TrainConfig(data=str(tiny_data), arch="alexnet", mode="fe+ft", init=str(scratch_run), out=str(out2),
                      epochs=2, fe_epochs=1, batch_size=16, image_size=64, verbose=0))
    stages = [json.loads(x)["stage"] for x in (out2 / "metrics.jsonl").read_text().splitlines()]
    assert stages == ["feature-extraction", "fine-tuning"]


def test_weights_file_checkpoint_and_missing_checkpoint(scratch_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    old = keras.models.load_model(scratch_run / "model.keras", compile=False)
    wfile = tmp_path / "alexnet_backbone.weights.h5"
    backbone_of(old).save_weights(wfile)  # stands in for an ImageNet weights file given by path
    from models.training import load_init

    fresh = build("alexnet", 64)
    info = load_init(fresh, "alexnet", str(wfile))
    assert info["kind"] == "weights" and _same(_weights(backbone_of(fresh)), _weights(backbone_of(old)))
    with pytest.raises(BadInput, match="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        train(TrainConfig(data=str(tiny_data), arch="inception_v3", mode="fine-tuning", init=str(tmp_path / "nope.h5"),
                          out=str(tmp_path / "x"), epochs=1))
    with pytest.raises(BadInput, match="--init"):
        train(TrainConfig(data=str(tiny_data), arch="alexnet", mode="feature-extraction", out=str(tmp_path / "y")))
    with pytest.raises(BadInput, match="inception_v3 run|not alexnet|is a alexnet"):
        load_init(build("inception_v3", 75), "inception_v3", str(scratch_run))
    with pytest.raises(BadInput, match="already holds"):
        train(TrainConfig(data=str(tiny_data), arch="alexnet", out=str(scratch_run), epochs=1))


def test_plot_training(scratch_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "fig.png"
    assert main(["plot-training", str(scratch_run), str(scratch_run), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot-training", str(tmp_path), "--out", str(out)]) == 2


def _fake_run(folder: Path, epochs: int, data: Path | None = None) -> Path:
    """A run folder as semtag train leaves it, as far as plot-training reads it (no TensorFlow)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"arch": "alexnet", "mode": "scratch", "data": str(data or folder)}))
    if data is not None:
        (folder / "manifest.json").write_text(json.dumps({"version": 1, "root": str(data.resolve()), "items": []}))
    rows = [{"epoch": e, "stage": "scratch", "loss": 2.0 / e, "accuracy": 1 - 0.5 / e, "val_loss": 2.2 / e,
             "val_accuracy": 0.98 - 0.5 / e, "test_loss": 2.3 / e, "test_accuracy": 0.97 - 0.5 / e, "seconds": 1.0}
            for e in range(1, epochs + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_plot_training_draws_accuracy_and_loss_of_every_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from matplotlib.figure import Figure

    from models.training import draw_training, is_synthetic_run

    synth = tmp_path / "synth"
    write_dataset(synth, per_class=1, width=64, height=64, seed=0)
    a = _fake_run(tmp_path / "a", 5, data=synth)
    b = _fake_run(tmp_path / "b", 3)
    assert is_synthetic_run(a) and not is_synthetic_run(b)

    fig = Figure()
    axes = fig.subplots(1, 2)
    draw_training(axes, [str(a), str(b)])
    acc, loss = axes
    for ax in axes:
        assert len(ax.get_lines()) == 6  # train, validation, test for each of the two runs
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert acc.get_ylim() == (0, 1) and loss.get_ylim()[0] == 0 and loss.get_ylim()[1] >= 2.3
    labels = [line.get_label() for line in loss.get_lines()]
    run = "a (alexnet, scratch)"
    assert {f"{run}, train", f"{run}, validation", f"{run}, test"} <= set(labels)
    assert list(acc.get_lines()[2].get_ydata()) == [0.97 - 0.5 / e for e in range(1, 6)]  # test accuracy of a
    title = fig._suptitle.get_text()
    assert "a (alexnet, scratch)" in title and "synthetic data" in title

    fig = Figure()
    draw_training(fig.subplots(1, 2), [str(b)], title="my runs")
    assert fig._suptitle.get_text() == "my runs"  # real data: no synthetic note

    out = tmp_path / "fig.png"
    assert main(["plot-training", str(a), str(b), "--out", str(out), "--title", "t"]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"



def test_export_parity_int8_and_registry(scratch_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture, cli_env: Path) -> None:
    import onnxruntime as ort

    from models import export

    assert main(["export", str(scratch_run), "--int8"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["parity"]["max_abs_logit_delta"] < 1e-4 and result["parity"]["images"] > 0
    q = result["quantization"]
    assert {"accuracy_fp32", "accuracy_int8", "accuracy_change_points"} <= set(q)
    meta = registry.read_meta(result["fp32"])
    assert meta["classes"][0] == "porous_sponges" and meta["preprocessing"]["input_size"] == 64
    assert meta["temperature"] > 0 and meta["outputs"]["features"] == "features"
    sess = ort.InferenceSession(result["fp32"], providers=["CPUExecutionProvider"])
    x = np.zeros((3, 64, 64, 3), np.float32)  # dynamic batch axis
    logits, feats, probs = sess.run(["logits", "features", "probabilities"], {"input": x})
    assert logits.shape == (3, 10) and feats.shape == (3, 4096) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert registry.read_meta(result["int8"])["quantization"] == q

    # registry: both versions listed, one active at a time, import is idempotent
    assert main(["models", "list", "--json"]) == 0
    listed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {m["version"] for m in listed} == {result["fp32_version"], result["int8_version"]}
    assert main(["models", "activate", result["fp32_version"]]) == 0
    assert main(["models", "activate", result["int8_version"]]) == 0
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    active = [m["version"] for m in map(json.loads, capsys.readouterr().out.splitlines()) if m["active"]]
    assert active == [result["int8_version"]]
    assert main(["models", "import", result["fp32"]]) == 0
    assert main(["models", "activate", "no-such-version"]) == 2

    # a model without semtag metadata is refused with a reason
    import onnx

    bare = onnx.load(result["fp32"])
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    assert main(["models", "import", str(tmp_path / "bare.onnx")]) == 2
    assert "metadata" in capsys.readouterr().err

    # parity is enforced: with an impossible tolerance the export fails and writes nothing
    (scratch_run / "model.onnx").unlink()
    monkeypatch.setattr(export, "PARITY_TOLERANCE", 0.0)
    with pytest.raises(export.ParityError):
        export.export_run(scratch_run)
    assert not (scratch_run / "model.onnx").exists()


def test_one_active_model_is_enforced_by_the_database(sqlite_settings) -> None:
    from sqlalchemy.exc import IntegrityError

    from services import migrate
    from services.db import session_scope
    from services.tables import ModelVersion

    url = sqlite_settings.effective_database_url
    migrate.upgrade(url)
    with pytest.raises(IntegrityError):
        with session_scope(url) as s:
            for v in ("a", "b"):
                s.add(ModelVersion(version=v, architecture="alexnet", file_path="/x", file_sha256=v * 64,
                                   active=True))


def test_training_job_params_are_validated(sqlite_client, tmp_path: Path) -> None:
    c = sqlite_client
    post = lambda params: c.http.post("/v1/admin/jobs", json={"kind": "training", "params": params},  # noqa: E731
                                      headers=c.auth("admin"))
    r = post({})
    assert r.status_code == 422 and "data" in r.json()["error"]["message"]
    r = post({"data": str(tmp_path / "missing")})
    assert r.status_code == 422 and "does not exist" in r.json()["error"]["message"]
    r = post({"data": str(tmp_path), "arch": "vgg"})
    assert r.status_code == 422 and "inception_v4" in r.json()["error"]["message"]
    r = post({"data": str(tmp_path), "mode": "fine-tuning", "init": str(tmp_path / "imagenet.h5")})
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_checkpoint"
    r = post({"data": str(tmp_path), "epochs": 0})
    assert r.status_code == 422


@pytest.mark.slow
def test_training_job_end_to_end(sqlite_client, tiny_data: Path) -> None:
    c = sqlite_client
    r = c.http.post("/v1/admin/jobs", json={"kind": "training", "params": {
        "data": str(tiny_data), "arch": "alexnet", "epochs": 2, "batch_size": 16, "image_size": 64, "name": "t"}},
        headers=c.auth("admin"))
    assert r.status_code == 202, r.text
    c.wait()
    job = c.http.get(f"/v1/admin/jobs/{r.json()['id']}", headers=c.auth("admin")).json()
    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0 and job["result"]["parity"]["max_abs_logit_delta"] < 1e-4
    version = job["result"]["versions"]["fp32"]
    models = c.http.get("/v1/admin/models", headers=c.auth("admin")).json()["models"]
    assert [m["version"] for m in models] == [version] and not models[0]["active"]  # activation is explicit
    assert c.http.get("/v1/admin/models", headers=c.auth("read")).status_code == 403


@pytest.mark.skipif(os.environ.get("SEMTAG_SKIP_LONG") == "1", reason="SEMTAG_SKIP_LONG=1 set by the developer")
def test_scratch_inception_v3_learns_the_synthetic_set(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_dataset(data, per_class=60, width=128, height=128, seed=5)
    report = train(TrainConfig(data=str(data), arch="inception_v3", mode="scratch", out=str(tmp_path / "run"),
                               epochs=12, batch_size=16, image_size=75, augment=False, verbose=0))
    assert report["test"]["accuracy"] >= 0.9, report["test"]["confusion_matrix"]


def test_train_cli_and_its_errors(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli-run"
    assert main(["train", "--data", str(tiny_data), "--arch", "alexnet", "--mode", "scratch", "--epochs", "1",
                 "--batch-size", "16", "--image-size", "48", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["run"] == str(out) and 0 <= summary["test_accuracy"] <= 1 and "ece_after" in summary
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--arch", "alexnet", "--out", str(tmp_path / "z")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--data", str(tiny_data), "--arch", "inception_v3", "--mode", "feature-extraction",
                 "--init", str(tmp_path / "imagenet_notop.h5"), "--out", str(tmp_path / "w")]) == 2
    assert "Nothing is downloaded" in capsys.readouterr().err


def test_tensorrt_calibration_table_from_semtags_calibrator(alexnet_onnx: Path, tmp_path: Path) -> None:
    """The INT8 table TensorRT reads (bench/gpu.py) is written from the same calibrator as the QDQ model: one
    range per tensor, the flatbuffers file beside its JSON form."""
    import onnx

    from models.export import tensorrt_calibration_table

    x = np.random.default_rng(0).uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32)
    table = tensorrt_calibration_table(alexnet_onnx, x, tmp_path / "trt")
    assert table.name == "calibration.flatbuffers" and table.stat().st_size > 0
    ranges = json.loads((tmp_path / "trt" / "calibration.json").read_text())
    graph = onnx.load(str(alexnet_onnx)).graph
    assert graph.output[0].name in ranges and len(ranges) >= len(graph.node) // 2
    first = ranges[graph.input[0].name]
    assert first["lowest"]["data"][0] == pytest.approx(x.min(), abs=1e-6)
    assert first["highest"]["data"][0] == pytest.approx(x.max(), abs=1e-6)
