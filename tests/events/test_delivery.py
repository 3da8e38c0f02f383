"""The dispatcher against real receivers: failing, down, slow. Retries are driven with the dispatcher's
clock (``now``), never by waiting; the receivers verify every signature with the standardwebhooks package."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from services.events import outbox, service
from services.events.schemas import EventType
from services.records.service import DeletionPlan, apply_deletion
from services.tables import EventDelivery, EventOutbox, utcnow
from tests import imagegen
from tests.events.conftest import Receiver, subscribe


def _emit(rt, n: int, start: int = 0) -> dict[str, int]:
    """``n`` events, one transaction each; event id → the number it carries."""
    ids = {}
    for k in range(start, start + n):
        with rt.session() as s:
            ids[outbox.emit(s, EventType.model_activated, f"model/m{k}", {"n": k}).event_id] = k
    return ids


def _statuses(rt) -> dict[str, int]:
    with rt.session() as s:
        return dict(s.execute(select(EventDelivery.status, func.count()).group_by(EventDelivery.status)).all())


def test_failing_down_and_slow_receivers_lose_nothing(ev_rt, receivers):
    """Four receivers: healthy, failing its first 3 requests, down for two hours, and one that holds its first
    two requests past the delivery timeout. Every event reaches every receiver, each under its own id with its
    own payload; the slow receiver's late answers only cause a redelivery under the same id."""
    ev_rt.settings.events_delivery_timeout_s = 2.0  # the held requests outlast it, whatever the load
    ok, flaky, down, slow = Receiver(), Receiver(fail_first=3), Receiver(), Receiver(hang_first=2)
    receivers += [ok, flaky, down, slow]
    sub = {r: subscribe(ev_rt, r, [EventType.model_activated]) for r in receivers}
    down.down()
    sent = _emit(ev_rt, 12)
    t0 = utcnow()
    t, rng = t0, random.Random(7)
    for _ in range(100):
        if t >= t0 + timedelta(hours=2) and down._srv is None:
            down.up()
        service.dispatch(ev_rt, now=t, rng=rng)
        if _statuses(ev_rt) == {"delivered": 4 * len(sent)}:
            break
        t += timedelta(minutes=5)
    assert _statuses(ev_rt) == {"delivered": 4 * len(sent)}
    for r in receivers:
        assert not r.rejected, r.rejected                      # every request verified
        assert r.ids() == set(sent)                            # 0 lost
        for event_id, payloads in r.by_id().items():           # none under a wrong id
            assert all(p["id"] == event_id and p["data"] == {"n": sent[event_id]} for p in payloads)
            assert all(p == payloads[0] for p in payloads)     # a retry carries the same body
    # the two held ones were sent again under their ids (on a loaded machine others may be too: never under
    # another id, which is what the loop above checks)
    assert len(slow.held) == 2 and all(len(slow.by_id()[i]) >= 2 for i in slow.held)
    assert flaky.requests >= len(sent) + 3
    with ev_rt.session() as s:
        attempts = dict(s.execute(select(EventDelivery.subscription_id, func.max(EventDelivery.attempts))
                                  .group_by(EventDelivery.subscription_id)).all())
    assert all(attempts[sub[r]] >= 2 for r in (flaky, down, slow))  # retried until they got through


def test_backoff_grows_with_jitter_over_24_hours_then_dead_letters(ev_rt, receivers):
    rec = Receiver(status=503)
    receivers.append(rec)
    subscribe(ev_rt, rec, [EventType.model_activated])
    (event_id,) = _emit(ev_rt, 1)
    t0 = utcnow()
    service.dispatch(ev_rt, now=t0, rng=random.Random(1))
    times = [t0]
    while True:
        with ev_rt.session() as s:
            d = s.scalars(select(EventDelivery)).one()
        if d.status != "pending":
            break
        t = d.next_attempt_at if d.next_attempt_at.tzinfo else d.next_attempt_at.replace(tzinfo=t0.tzinfo)
        assert t > times[-1]
        service.dispatch(ev_rt, now=t, rng=random.Random(len(times)))
        times.append(t)
        assert len(times) < 100
    assert d.status == "dead" and d.attempts == len(times) == rec.requests and d.last_status_code == 503
    assert times[-1] - t0 >= timedelta(hours=24)                # tried over the whole window …
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
    base, cap = ev_rt.settings.events_retry_base_s, ev_rt.settings.events_retry_max_delay_s
    for n, gap in enumerate(gaps[:-1], start=1):                # … with exponential, jittered delays
        full = min(cap, base * 2 ** (n - 1))
        assert full / 2 <= gap <= full + 1e-6, (n, gap, full)
    assert len(set(round(g) for g in gaps[:8])) == 8             # jitter: no two alike, doubling
    assert rec.ids() == {event_id}                               # every attempt under the same id
    # dead-lettered: nothing more is sent, however late
    service.dispatch(ev_rt, now=times[-1] + timedelta(days=3))
    assert rec.requests == len(times)
    # redelivered once the receiver is fixed: the same id, a fresh window
    rec.status = 200
    assert service.redeliver_dead(ev_rt, now=times[-1] + timedelta(days=3)) == 1
    service.dispatch(ev_rt, now=times[-1] + timedelta(days=3))
    assert _statuses(ev_rt) == {"delivered": 1} and rec.ids() == {event_id}


def test_an_event_written_in_a_transaction_that_rolls_back_is_never_sent(ev_rt, receivers, monkeypatch):
    rec = Receiver()
    receivers.append(rec)
    subscribe(ev_rt, rec)
    with pytest.raises(RuntimeError), ev_rt.session() as s:
        outbox.emit(s, EventType.model_activated, "model/x", {"n": 1})
        raise RuntimeError("the change fails after the event was written")
    # a real change: a takedown whose blob store fails rolls back, its record.deleted event with it
    from services.images.ingest import ingest_file

    w = ev_rt.store.new_writer(10**7)
    w.write(imagegen.png(seed=3))
    image_id = ingest_file(ev_rt, w, "a.png", "rec-1").image_id

    def broken(key: str) -> None:
        raise OSError("the blob store is down")

    monkeypatch.setattr(ev_rt.store, "delete", broken)
    with pytest.raises(OSError):
        apply_deletion(ev_rt, DeletionPlan("image", str(image_id), "test", image_ids=[image_id], force=True))
    report = service.dispatch(ev_rt)
    with ev_rt.session() as s:
        assert s.scalar(select(func.count()).select_from(EventOutbox)) == 0
    assert report.sent == 0 and rec.requests == 0


def test_a_crash_between_commit_and_dispatch_loses_nothing(ev_rt, receivers):
    """The process that wrote the events dies before anything is sent (its nudge is lost with it): the outbox
    rows wait, and whichever dispatcher runs next sends them."""
    rec = Receiver()
    receivers.append(rec)
    subscribe(ev_rt, rec)
    before = len(ev_rt.queue.sent)
    sent = _emit(ev_rt, 3)
    assert ("semtag.dispatch_events", ()) in ev_rt.queue.sent[before:]  # the commit did nudge
    with ev_rt.session() as s:
        assert s.scalar(select(func.count()).select_from(EventOutbox).where(EventOutbox.dispatched_at.is_(None))) == 3
    from semtag.bootstrap import build_runtime
    from services.runtime import NullQueue

    later = build_runtime(ev_rt.settings, queue=NullQueue())  # "after the restart"
    service.dispatch(later)
    assert rec.ids() == set(sent) and len(rec.received) == 3


def test_a_dispatcher_that_dies_while_sending_is_taken_over_under_the_same_id(ev_rt, receivers):
    rec = Receiver()
    receivers.append(rec)
    subscribe(ev_rt, rec)
    (event_id,) = _emit(ev_rt, 1)
    t0 = utcnow()
    service.fan_out(ev_rt, t0)
    claimed = service.claim(ev_rt, t0, 10)
    from services.events.delivery import send_all

    outcomes = send_all(claimed, ev_rt.settings.events_url_allowlist, 60.0, 1)  # sent …
    assert [o.ok for o in outcomes] == [True]                                  # … and then the process died
    assert service.claim(ev_rt, t0 + timedelta(seconds=30), 10) == []          # its lease still holds
    service.dispatch(ev_rt, now=t0 + timedelta(seconds=ev_rt.settings.events_delivery_timeout_s + 61))
    assert [i for i, _ in rec.received] == [event_id, event_id]                 # again, under the same id
    # the dead dispatcher's late record of attempt 1 cannot overwrite attempt 2's
    assert service.record(ev_rt, outcomes[0], t0, random.Random()) is None
    with ev_rt.session() as s:
        d = s.scalars(select(EventDelivery)).one()
        assert (d.status, d.attempts) == ("delivered", 2)


def test_who_gets_what(ev_rt, receivers):
    """By type; only events after the subscription; nothing while paused; no rows without subscribers."""
    from services.events.schemas import SubscriptionUpdate

    with ev_rt.session() as s:  # nobody listens: the helpers write nothing
        assert outbox.subscribed(s, EventType.model_activated) is False
    early = _emit(ev_rt, 1)
    a, b = Receiver(), Receiver()
    receivers += [a, b]
    sub_a = subscribe(ev_rt, a, [EventType.model_activated])
    subscribe(ev_rt, b, [EventType.record_deleted])
    later = _emit(ev_rt, 2, start=10)
    service.dispatch(ev_rt)
    assert a.ids() == set(later) and not set(early) & a.ids() and b.requests == 0
    a.status = 503  # a failed delivery is pending when the subscription is paused …
    _emit(ev_rt, 1, start=20)
    service.dispatch(ev_rt)
    service.update_subscription(ev_rt, sub_a, SubscriptionUpdate(active=False))
    a.status = 200
    paused = _emit(ev_rt, 1, start=30)  # … and an event while it is paused is not for it
    service.dispatch(ev_rt, now=utcnow() + timedelta(hours=1))
    assert len(a.received) == 3 and _statuses(ev_rt) == {"delivered": 2, "pending": 1}  # the pending one waits
    service.update_subscription(ev_rt, sub_a, SubscriptionUpdate(active=True))
    service.dispatch(ev_rt, now=utcnow() + timedelta(hours=1))
    assert _statuses(ev_rt) == {"delivered": 3} and not set(paused) & a.ids()


def test_the_outbound_url_is_checked_when_subscribing_and_when_sending(ev_rt, receivers):
    from services.errors import BadInput
    from services.events.schemas import SubscriptionCreate

    rec = Receiver()
    receivers.append(rec)
    rt = ev_rt
    for url, code in [(f"http://localhost:{rec.port}/", "url_not_allowed"),   # not on the list
                      ("http://10.0.0.1/", "url_not_allowed"), ("ftp://127.0.0.1/", "bad_url")]:
        with pytest.raises(BadInput) as err:
            service.create_subscription(rt, SubscriptionCreate(url=url, event_types=["record.deleted"]), "t")
        assert err.value.code == code, url
    rt.settings.events_url_allowlist = ["localhost:*"]  # a name that resolves to a loopback address
    with pytest.raises(BadInput) as err:
        service.create_subscription(rt, SubscriptionCreate(url=f"http://localhost:{rec.port}/",
                                                           event_types=["record.deleted"]), "t")
    assert err.value.code == "url_not_allowed" and "internal address" in err.value.message
    rt.settings.events_url_allowlist = ["127.0.0.1:*"]
    subscribe(rt, rec)
    _emit(rt, 1)
    rt.settings.events_url_allowlist = []  # the allow-list shrank after the subscription was made
    service.dispatch(rt)
    with rt.session() as s:
        d = s.scalars(select(EventDelivery)).one()
    assert rec.requests == 0 and d.status == "pending" and d.last_error.startswith("url_not_allowed")


def test_the_scale_correction_helper_reports_the_image_as_it_now_stands(ev_rt, receivers):
    """``outbox.scale_corrected`` is what the curators' PUT/DELETE /v1/images/{id}/scale call in their
    transaction: the event carries the reading and the image's new pixel size."""
    from services.images.ingest import ingest_file
    from services.tables import Image

    rec = Receiver()
    receivers.append(rec)
    subscribe(ev_rt, rec, [EventType.image_scale_corrected])
    w = ev_rt.store.new_writer(10**7)
    w.write(imagegen.png(seed=5))
    image_id = ingest_file(ev_rt, w, "a.png", "rec-9", record_version="v2").image_id
    with ev_rt.session() as s:
        img = s.get(Image, image_id)
        img.pixel_size_nm, img.scale_nm = 4.0, 2000.0
        outbox.scale_corrected(s, img, "corrected", "curator-1", scale_value=2.0, scale_unit="µm", bar_px=500.0)
    service.dispatch(ev_rt)
    ((event_id, body),) = rec.received
    assert body["type"] == "image.scale_corrected" and body["id"] == event_id
    assert body["data"] | {"sha256": None} == {
        "image_id": image_id, "sha256": None, "action": "corrected", "scale_value": 2.0, "scale_unit": "µm",
        "bar_px": 500.0, "pixel_size_nm": 4.0, "scale_nm": 2000.0, "corrected_by": "curator-1",
        "records": [{"record_id": "rec-9", "record_version": "v2", "linked_at": None}]}
