"""bench/capacity.py's queueing model: its answers follow from its inputs (docs/capacity.md quotes it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("capacity", ROOT / "bench" / "capacity.py")
capacity = importlib.util.module_from_spec(spec)
sys.modules["capacity"] = capacity  # dataclasses look their module up while the file runs
spec.loader.exec_module(capacity)


@pytest.fixture(scope="module")
def costs():
    return capacity.Costs.load()


def test_a_slow_database_sets_the_pace(costs):
    sc = capacity.Scenario("pg-bound", 20_000, "burst", 0, 64, pg_scale=0.05)
    out = capacity.simulate(sc, costs)
    pg_images_per_s = costs.pg_commit_rate * 0.05 / costs.pg_commits
    assert out.seconds == pytest.approx(20_000 / pg_images_per_s, rel=0.1)
    assert next(iter(out.limited_by)) == "postgresql"
    assert out.peak_pg_commits_per_s <= costs.pg_commit_rate * 0.05 * 1.0001


def test_with_a_fast_database_the_ocr_pods_set_the_pace_and_redis_holds_the_backlog(costs):
    sc = capacity.Scenario("ocr-bound", 20_000, "burst", 0, 64, max_pods={"ocr": 2}, pg_scale=100)
    out = capacity.simulate(sc, costs)
    pools = capacity.pools(costs, int8=True, gpu=False)
    ocr_rate = 2 * pools["ocr"].rate
    assert out.seconds == pytest.approx(20_000 / ocr_rate, rel=0.15)   # pods arrive after their start time
    assert next(iter(out.limited_by)) == "ocr"
    assert out.peak_pods["ocr"] == 2
    # the uploads went faster than OCR: most of the images waited in the ocr list, 1.5 kB each
    assert out.peak_queue["ocr"] > 10_000
    assert out.peak_redis_bytes == pytest.approx(
        max(out.peak_queue["ocr"], 1) * costs.redis_bytes / 2, rel=0.5)


def test_pod_sizes_come_from_the_manifests(costs):
    pools = capacity.pools(costs, int8=False, gpu=False)
    assert pools["ocr"].cores == 2 and pools["ocr"].max_pods == 20 and pools["ocr"].target == 60
    assert pools["inference"].rate == pytest.approx(4 / costs.inference_fp32_s)
    gpu = capacity.pools(costs, int8=False, gpu=True)["inference"]
    assert gpu.rate == pytest.approx(min(capacity.GPU_TARGET_IMAGES_PER_S, 8 / costs.decode_s))
