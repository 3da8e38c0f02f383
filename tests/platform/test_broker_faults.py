"""Publishing to a Redis of our own that restarts or freezes (issue 12, point 5): a restart costs nothing
(the broken pooled connection is replaced at once), a frozen broker costs a bounded few seconds and then
QueueUnavailable, so an upload answers long before a client would give up. The shared Redis is not touched."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

from services.errors import QueueUnavailable
from services.runtime import TASK_READ_SCALE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnRedis:
    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                redis.Redis.from_url(self.url, socket_timeout=1).ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait()

    def depth(self, queue: str) -> int:
        return int(redis.Redis.from_url(self.url, socket_timeout=1).llen(queue))


@pytest.fixture
def broker() -> Iterator[tuple[OwnRedis, object]]:
    from workers.app import app
    from workers.queues import CeleryQueue

    before = app.conf.broker_url
    own = OwnRedis()
    try:
        yield own, CeleryQueue(own.url, timeout_s=1.0, deadline_s=1.5)
    finally:
        own.stop()
        app.conf.broker_url = before


def test_a_restarted_broker_costs_no_failed_publish(broker) -> None:
    """Nothing is lost across a restart. Speed is not the point here, so the publish gets a generous
    deadline: on a loaded machine the failed send, the reconnect, the declaration and the push can take
    longer than the 1.5 s the frozen-broker tests bound."""
    from workers.queues import CeleryQueue

    own, _ = broker
    queue = CeleryQueue(own.url, timeout_s=5.0, deadline_s=20.0)
    queue.enqueue(TASK_READ_SCALE, 1)
    assert own.depth("ocr") == 1
    own.stop()  # the pooled connection is now broken
    own.start()
    queue.enqueue(TASK_READ_SCALE, 2)  # failed fast on the old connection, sent on a new one
    assert own.depth("ocr") == 1


@pytest.mark.parametrize("warm", [True, False], ids=["connected", "first-publish"])
def test_a_frozen_broker_costs_a_bounded_wait_then_queue_unavailable(broker, warm: bool) -> None:
    """Whether the queue has a connection already or must make one (handshake, declaration, push: each a
    socket operation that times out on its own), the caller waits ``deadline_s`` at most."""
    own, queue = broker
    if warm:
        queue.enqueue(TASK_READ_SCALE, 1)
    own.proc.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(QueueUnavailable) as exc:
            queue.enqueue(TASK_READ_SCALE, 2)
        waited = time.monotonic() - t0
        assert exc.value.headers == {"Retry-After": "30"}
        # one timed-out attempt (a socket operation or two of 1 s), never a retry after it
        assert waited < 2.8, waited
    finally:
        own.proc.send_signal(signal.SIGCONT)
    queue.enqueue(TASK_READ_SCALE, 3)
    assert own.depth("ocr") >= (2 if warm else 1)
