"""The Celery application: Redis broker, queues ``inference``, ``ocr``, ``batch``.

Tasks are acknowledged late and rejected when their worker dies, so Redis delivers them
again (after ``SEMTAG_BROKER_VISIBILITY_TIMEOUT_S``); every task is idempotent.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from semtag.settings import get_settings
from services.runtime import TASK_DISPATCH_EVENTS, TASK_QUEUES, TASK_RECONCILE

QUEUES = ("inference", "ocr", "batch", "maintenance")


def make_app() -> Celery:
    settings = get_settings()
    app = Celery("semtag", include=["workers.tasks"])
    app.conf.update(
        broker_url=settings.broker_url or "memory://",
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout_s,
            # sweep for tasks of dead workers at least twice per visibility timeout
            "unacked_restore_interval": max(1, min(10, settings.broker_visibility_timeout_s // 2)),
            # a worker killed during a sweep leaves its mutex behind: kombu's default of 300 s would stop every
            # other worker from restoring the dead one's tasks for five minutes
            "unacked_mutex_expire": max(5, min(60, settings.broker_visibility_timeout_s)),
        },
        task_queues=[Queue(q) for q in QUEUES],
        task_default_queue="batch",
        task_routes={name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        beat_schedule={
            "reconcile": {"task": TASK_RECONCILE, "schedule": float(settings.reconcile_every_s)},
            # outbound events: retries fall due and nudges may be lost; the outbox is the source of truth
            "dispatch-events": {"task": TASK_DISPATCH_EVENTS, "schedule": float(settings.events_dispatch_every_s),
                                "options": {"expires": float(settings.events_dispatch_every_s)}},
        },
    )
    return app


app = make_app()

import workers.tasks  # noqa: E402,F401  (registers the tasks on the app, for workers and the in-process queue)
