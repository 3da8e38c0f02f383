"""The inference queue's batching rule (workers/batching.py): a full batch goes to the pool at once; a partial one
waits while another batch is in flight, and goes once none is."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from types import SimpleNamespace

import numpy as np
import pytest
from celery import Celery

from workers.batching import GatheringBatches


class Pool:
    """A pool that records what it was handed and lets the test finish each batch."""

    def __init__(self) -> None:
        self.batches: list[dict] = []

    def apply_async(self, target, args, accept_callback=None, callback=None, error_callback=None):
        task, (requests,), *_ = args
        b = {"ids": [r.id for r in requests], "callback": callback, "error_callback": error_callback,
             "future": Future()}
        self.batches.append(b)
        return SimpleNamespace(f=b["future"])


def _request(n: int, acked: list) -> SimpleNamespace:
    return SimpleNamespace(id=f"r{n}", name="classify", _payload=((n,), {}, {}), delivery_info={}, hostname="h",
                           ignore_result=True, reply_to=None, correlation_id=f"r{n}", request_dict={}, eta=None,
                           task=SimpleNamespace(acks_late=True), acknowledge=lambda n=n: acked.append(n))


@pytest.fixture
def task():
    app = Celery("test-batching", set_as_current=False)

    @app.task(base=GatheringBatches, flush_every=4, flush_interval=0.05, shared=False)
    def classify(requests: list) -> None:
        return None

    classify._pool = Pool()
    return classify


def _put(task, acked: list, ids) -> None:
    for n in ids:
        task._buffer.put(_request(n, acked))


def test_a_partial_batch_waits_while_one_is_in_flight_and_goes_once_none_is(task):
    acked: list[int] = []
    pool = task._pool
    _put(task, acked, range(4))
    task._do_flush()  # the model is idle: whatever waits goes
    assert [b["ids"] for b in pool.batches] == [["r0", "r1", "r2", "r3"]] and task.in_flight == 1
    _put(task, acked, range(4, 6))
    task._do_flush()  # the timer, while the first batch runs: two messages are held back for company
    assert len(pool.batches) == 1 and task._buffer.qsize() == 2
    _put(task, acked, range(6, 8))
    task._do_flush()  # a full batch goes whatever is in flight
    assert pool.batches[1]["ids"] == ["r4", "r5", "r6", "r7"] and task.in_flight == 2
    assert acked == []  # acks_late: nothing is acknowledged before its batch returns
    pool.batches[0]["callback"]({})
    assert acked == [0, 1, 2, 3] and task.in_flight == 1
    _put(task, acked, [8])
    task._do_flush()
    assert len(pool.batches) == 2  # the second batch still runs
    pool.batches[1]["callback"]({})
    task._do_flush()  # none in flight: the lone message goes at the next tick
    assert pool.batches[2]["ids"] == ["r8"] and task.in_flight == 1


def test_a_batch_that_raises_past_its_callback_is_no_longer_counted(task):
    """The threads pool calls no callback when the batch's call itself raises: the future's end still counts,
    once, so partial batches are not held back for ever."""
    acked: list[int] = []
    _put(task, acked, range(4))
    task._do_flush()
    batch = task._pool.batches[0]
    batch["future"].set_exception(RuntimeError("the batch's trace failed"))
    assert task.in_flight == 0 and acked == []  # not acknowledged: Redis delivers it again
    batch["callback"]({})  # a late callback does not count it twice
    assert task.in_flight == 0
    _put(task, acked, [4])
    task._do_flush()
    assert task._pool.batches[1]["ids"] == ["r4"]


def test_the_engine_runs_one_batch_at_a_time_whoever_calls(alexnet_onnx):
    """Two of the worker's threads call the engine at once: the second run waits for the first, so one batch has
    all the cores while the other reads its inputs or stores its predictions."""
    from services.classify.inference import Engine

    eng = Engine(alexnet_onnx)
    real = eng.session.run
    active, most = [0], [0]
    lock = threading.Lock()

    def run(*a, **kw):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(0.05)
            return real(*a, **kw)
        finally:
            with lock:
                active[0] -= 1

    eng.session = SimpleNamespace(run=run)
    x = np.zeros((1, eng.pp.input_size, eng.pp.input_size, eng.pp.channels), np.float32)
    threads = [threading.Thread(target=eng.run, args=(x,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1
