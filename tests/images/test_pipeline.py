"""Task bodies: idempotent by id, reconciler re-enqueues stalled images."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from services.images import pipeline
from services.images.ingest import ingest_file
from services.runtime import TASK_CLASSIFY, TASK_READ_SCALE, NullQueue, Runtime
from services.storage import writing
from services.tables import Image, ScaleReading, utcnow
from tests import imagegen


def _stored(rt: Runtime, data: bytes, name: str = "x.png") -> int:
    with writing(rt.store) as w:
        w.write(data)
        return ingest_file(rt, w, name).image_id


def test_bytes_and_row_committed_before_enqueue(settings):
    seen = []

    class CheckingQueue(NullQueue):
        def enqueue(self, task, *args):
            with rt.session() as s:
                img = s.get(Image, args[0])
                seen.append((task, img is not None and rt.store.exists(img.storage_key)))
            super().enqueue(task, *args)

    from services import migrate

    migrate.upgrade(settings.effective_database_url)
    rt = Runtime(settings, queue=CheckingQueue())
    _stored(rt, imagegen.png(seed=2))
    assert seen == [(TASK_READ_SCALE, True), (TASK_CLASSIFY, True)]


def test_running_a_step_twice_writes_once(settings):
    from services import migrate

    migrate.upgrade(settings.effective_database_url)
    rt = Runtime(settings, queue=NullQueue())
    image_id = _stored(rt, imagegen.png(seed=3))
    assert pipeline.read_scale(rt, image_id) == "none"
    assert pipeline.read_scale(rt, image_id) == "skipped"
    assert pipeline.classify(rt, image_id) == "no_model"
    assert pipeline.classify(rt, image_id) == "skipped"
    with rt.session() as s:
        assert s.scalar(select(func.count()).select_from(ScaleReading)) == 1
        assert s.get(Image, image_id).status == "done"


def test_reconciler_requeues_only_stalled_pending_steps(settings):
    from services import migrate

    migrate.upgrade(settings.effective_database_url)
    rt = Runtime(settings, queue=NullQueue())
    stalled = _stored(rt, imagegen.png(seed=4), "stalled.png")
    fresh = _stored(rt, imagegen.png(seed=5), "fresh.png")
    half = _stored(rt, imagegen.png(seed=6), "half.png")
    pipeline.read_scale(rt, half)
    with rt.session() as s:
        for image_id in (stalled, half):
            s.get(Image, image_id).updated_at = utcnow() - timedelta(hours=2)
    rt.queue.sent.clear()
    assert pipeline.reconcile(rt, older_than_s=600) == 2
    assert sorted(rt.queue.sent) == sorted([
        (TASK_READ_SCALE, (stalled,)), (TASK_CLASSIFY, (stalled,)), (TASK_CLASSIFY, (half,))])
    assert all(args != (fresh,) for _, args in rt.queue.sent)
    rt.queue.sent.clear()
    assert pipeline.reconcile(rt, older_than_s=600) == 0  # touched: not re-sent at once


def test_missing_image_id_is_harmless(sqlite_settings):
    from services import migrate

    migrate.upgrade(sqlite_settings.effective_database_url)
    rt = Runtime(sqlite_settings, queue=NullQueue())
    assert pipeline.read_scale(rt, 12345) == "skipped"
    assert pipeline.classify(rt, 12345) == "skipped"
