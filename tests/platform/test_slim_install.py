"""The serving install has no TensorFlow: the API, the inference/OCR workers, scale and classify run
without it, and the training commands say what to install.

The subprocesses below hide TensorFlow, Keras, tf2onnx and TensorBoard behind an import hook that
raises ModuleNotFoundError, as a venv without them would (a real slim venv is measured in the README).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import pytest

from services.data.synth import make_image

ROOT = Path(__file__).resolve().parents[2]
BLOCK = textwrap.dedent("""
    import importlib.abc, sys
    HIDDEN = {"tensorflow", "keras", "tf2onnx", "tensorboard"}
    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, Hide())
""")


def _run(code: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEMTAG_DATA_DIR": str(tmp_path / "var")}
    env.pop("SEMTAG_DATABASE_URL", None)
    env.pop("SEMTAG_BROKER_URL", None)
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    img, _ = make_image(6, 256, 192, seed=3)
    path = tmp_path / "wires.png"
    cv2.imwrite(str(path), img)
    return path


def test_serve_and_workers_import_without_tensorflow(tmp_path: Path, image: Path, alexnet_onnx: Path) -> None:
    out = _run("""
        import sys
        from fastapi.testclient import TestClient
        from api.main import create_app
        from semtag.cli import build_parser, main
        import workers.app, workers.tasks                      # what `semtag worker --queues inference,ocr` loads
        from services.classify import registry
        from services.access import auth
        app = create_app()
        with TestClient(app) as http:
            with app.state.runtime.session() as s:
                _, key = auth.create_key(s, "admin")
                row = registry.register(s, sys.argv[2], app.state.runtime.settings.data_dir / "models")
                registry.activate(s, row.version)
            h = {"Authorization": f"Bearer {key}"}
            r = http.post("/v1/images", files={"file": ("wires.png", open(sys.argv[1], "rb"))}, headers=h)
            assert r.status_code == 202, r.text
            app.state.runtime.queue.join(120)
            img = http.get(f"/v1/images/{r.json()['items'][0]['id']}", headers=h).json()
            assert img["status"] == "done", img
            assert img["classification"]["model_version"] == row.version
            assert http.get("/docs").status_code == 200
            job = http.post("/v1/admin/jobs", json={"kind": "selftest", "params": {"steps": 1}}, headers=h)
            assert job.status_code == 202
        build_parser().parse_args(["worker", "--queues", "inference,ocr"])
        hidden = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx")]
        assert not hidden, hidden
        print("ok")
    """, tmp_path, str(image), str(alexnet_onnx))
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_scale_and_classify_run_and_training_says_what_to_install(tmp_path: Path, image: Path,
                                                                   alexnet_onnx: Path) -> None:
    out = _run("""
        import sys
        from semtag.cli import main
        assert main(["scale", sys.argv[1], "--json"]) == 0
        assert main(["classify", sys.argv[1], "--model", sys.argv[2], "--json"]) == 0
        rc = main(["train", "--data", sys.argv[3], "--arch", "alexnet", "--out", sys.argv[3] + "/run"])
        print("train rc", rc)
    """, tmp_path, str(image), str(alexnet_onnx), str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    scale, classified = json.loads(lines[0]), json.loads(lines[1])
    assert scale["file"].endswith("wires.png") and "source" in scale
    assert classified["category"] in classified["probabilities"]
    assert lines[-1] == "train rc 2"
    assert "install semtag[train]" in out.stderr and "Traceback" not in out.stderr
