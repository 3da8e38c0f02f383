"""bench/gpu.py's CPU fallback runs in CI (issue 15): the same code path that measures a GPU, on this
machine's CPU, with tiny sizes. Its figures are not targets; the test checks the bench measures and
reports what it says."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_bench_cpu_fallback_measures_every_row(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--cpu", "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["machine"]["cuda"] is False
    assert [e["name"] for e in res["engines"]] == ["CPU FP32", "CPU INT8 (QDQ)"]
    for e in res["engines"]:
        assert set(e["raw"]) == {"1", "4"} and all(v > 0 for v in e["raw"].values())
        # the denominator is the best raw figure over the batch sizes, and the ratio is against it
        assert e["best_raw"] == max(e["raw"].values())
        assert e["pipeline"] > 0 and abs(e["ratio"] - e["pipeline"] / e["best_raw"]) < 1e-9
    assert res["decode"]["per_core"] > 0
    assert res["decode"]["bound"] == res["decode"]["per_core"] * res["machine"]["cores"]
    assert set(res["training"]) == {"FP32", "mixed FP16 + XLA"}
    assert all(v["images_per_s"] > 0 for v in res["training"].values()), res["training"]
    assert "| CPU INT8 (QDQ) |" in r.stdout and "CPU fallback" in r.stdout
