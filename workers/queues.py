"""Task queues: Celery on Redis, or in-process execution of the very same Celery tasks.

Both take the Celery app (``workers.app``, which registers ``workers.tasks``) when they are
made, so nothing here imports the tasks at run time.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from semtag.settings import Settings
from services.errors import QueueUnavailable
from services.runtime import TASK_QUEUES

log = logging.getLogger(__name__)


class CeleryQueue:
    """Sends tasks to Redis through a pool of connections with short socket timeouts, so that a broker
    that is down or frozen costs a publisher seconds, not minutes: the caller gets
    :class:`QueueUnavailable` and decides (an image stays pending for the reconciler; a job fails).

    A publish may take several socket operations (a new connection's handshake, the queue's declaration,
    the push), each bounded by ``timeout_s``; the caller waits for it at most ``deadline_s`` in all
    (bench/faults.py, redis-freeze). A publish still hanging then finishes or fails on its own thread; if the
    broker comes back in time it is delivered all the same, which every task tolerates (images are
    idempotent, a job already failed is not run). A publish that failed fast (a pooled connection a Redis
    restart broke) is tried once more at once.
    """

    FAST_FAILURE_S = 0.5

    def __init__(self, broker_url: str | None = None, timeout_s: float = 1.5, deadline_s: float = 3.0) -> None:
        from kombu import Connection

        from workers.app import app

        if broker_url and app.conf.broker_url != broker_url:
            app.conf.broker_url = broker_url
        self.app = app
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        options = {**app.conf.broker_transport_options, "socket_timeout": timeout_s,
                   "socket_connect_timeout": timeout_s}
        self._connection = Connection(app.conf.broker_url, transport_options=options, connect_timeout=timeout_s)
        self._publishers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="semtag-publish")

    def _publish(self, task: str, args: tuple[int, ...]) -> None:
        from kombu.exceptions import KombuError, OperationalError
        from kombu.pools import connections
        from redis.exceptions import RedisError

        for attempt in (1, 2):
            started = time.monotonic()
            try:
                with connections[self._connection].acquire(block=True, timeout=self.timeout_s) as conn:
                    self.app.send_task(task, args=list(args), queue=TASK_QUEUES[task], connection=conn, retry=False)
                return
            except (OperationalError, KombuError, RedisError, OSError):
                if attempt == 2 or time.monotonic() - started >= self.FAST_FAILURE_S:
                    raise

    def enqueue(self, task: str, *args: int) -> None:
        from concurrent.futures import TimeoutError as FutureTimeout

        from kombu.exceptions import KombuError, OperationalError
        from redis.exceptions import RedisError

        future = self._publishers.submit(self._publish, task, args)
        try:
            future.result(timeout=self.deadline_s)
        except FutureTimeout as exc:
            log.warning("could not queue %s%s within %.1f s: the broker does not answer", task, args, self.deadline_s)
            raise QueueUnavailable("the task queue (Redis) does not answer", headers={"Retry-After": "30"}) from exc
        except (OperationalError, KombuError, RedisError, OSError) as exc:
            log.warning("could not queue %s%s: %s: %s", task, args, type(exc).__name__, exc)
            raise QueueUnavailable("the task queue (Redis) is unavailable", headers={"Retry-After": "30"}) from exc

    def depth(self) -> dict[str, int]:
        """Messages waiting per queue (Redis list lengths)."""
        import redis

        from workers.app import QUEUES

        client = redis.Redis.from_url(self.app.conf.broker_url, socket_timeout=2)
        try:
            return {q: int(client.llen(q)) for q in QUEUES}
        finally:
            client.close()


class InlineQueue:
    """Runs the registered Celery tasks in a background thread of this process (embedded mode).

    ``Task.apply`` executes the task body locally, with Celery's signals, so the code path is
    the one a worker runs.
    """

    def __init__(self, threads: int = 1) -> None:
        from workers.app import app

        self.app = app
        self.threads = threads
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="semtag-task")

    def _live_pool(self) -> ThreadPoolExecutor:
        """The pool, made anew after a shutdown (an app whose lifespan restarts: reloads, test clients)."""
        with self._lock:
            if self._pool._shutdown:
                self._pool = self._new_pool()
            return self._pool

    def enqueue(self, task: str, *args: int) -> None:
        self._live_pool().submit(self._run, task, args)

    def _run(self, task: str, args: tuple[int, ...]) -> None:
        try:
            self.app.tasks[task].apply(args=list(args), throw=False)
        except Exception:  # keep the pool alive; the task recorded its own failure
            log.exception("in-process task %s%s crashed", task, args)

    def depth(self) -> int:
        return self._pool._work_queue.qsize()

    def join(self, timeout: float | None = None) -> None:
        """Wait for everything queued so far (tests, shutdown)."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        done = self._live_pool().submit(lambda: None)
        done.result(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)


def queue_for(settings: Settings) -> CeleryQueue | InlineQueue:
    return InlineQueue() if settings.embedded_tasks else CeleryQueue(settings.broker_url)
