"""Dynamic batching for the inference queue: celery-batches' ``Batches``, with a batch gathered while the previous
one runs.

celery-batches flushes its buffer into the pool when ``flush_every`` messages have arrived, or on a timer every
``flush_interval`` seconds whatever the buffer holds. Under the solo pool the consumer stops while a batch runs,
so the next batch's messages are only fetched (one broker round trip and one Celery request each) after the
model has finished: the model waits for them. Under the threads pool with one thread the consumer goes on
fetching while the model runs; but then the timer would flush the few messages that arrived since the last
flush and queue a batch of two or three behind the running one. Here the timer flushes a partial buffer only
when no batch is in flight, which is the usual dynamic-batching rule: a request waits at most
``flush_interval`` for company while the model is idle, and while it is busy the next batch fills up.
"""

from __future__ import annotations

import threading
from typing import Any

from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task


class GatheringBatches(Batches):
    """``Batches`` that holds a partial batch back while another is in flight (see the module's text)."""

    abstract = True

    def __init__(self) -> None:
        super().__init__()
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        """Batches handed to the pool and not yet returned."""
        with self._in_flight_lock:
            return self._in_flight

    def _do_flush(self) -> None:
        if self.in_flight and self._buffer.qsize() < self.flush_every:
            return  # the model is busy: let the next batch fill up (the timer comes back)
        super()._do_flush()

    def flush(self, requests: Any) -> Any:
        # Batches.flush, counting the batch in flight until its result (or failure) comes back
        acks_late = [r for r in requests if r.task.acks_late]
        acks_early = [r for r in requests if not r.task.acks_late]
        serializable = ([SimpleRequest.from_request(r) for r in requests],)

        def on_accepted(pid: int, time_accepted: float) -> None:
            for req in acks_early:
                req.acknowledge()

        finished = threading.Event()

        def done(*_a: Any, **_kw: Any) -> None:  # once per batch, from whichever signal comes first
            with self._in_flight_lock:
                if not finished.is_set():
                    finished.set()
                    self._in_flight -= 1

        def on_return(result: Any) -> None:
            done()
            for req in acks_late:
                req.acknowledge()

        with self._in_flight_lock:
            self._in_flight += 1
        res = self._pool.apply_async(
            apply_batches_task,
            (self, serializable, 0, None),
            accept_callback=on_accepted,
            callback=on_return,
            error_callback=done,
        )
        future = getattr(res, "f", None)  # the threads pool's: done even where the batch raised past its callback
        if future is not None:
            future.add_done_callback(done)
        return res
