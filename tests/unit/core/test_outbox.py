"""The durable outbox, the enforcement log and the local spool (pure core, SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal

import pytest

from finops_provider.core.ledger import Ledger
from finops_provider.core.outbox import (
    DEAD,
    DONE,
    PENDING,
    LocalSpool,
    NotYet,
    Outbox,
    OutboxPolicy,
    events,
    flush_spool,
    last_pause_state,
    record_event,
)
from finops_provider.core.records import build_record

T0 = dt.datetime(2024, 9, 1, tzinfo=dt.UTC)


@pytest.fixture
def ledger(ledger_url: str) -> Ledger:
    with Ledger(ledger_url) as led:
        yield led


def test_enqueue_is_once_per_key(ledger: Ledger) -> None:
    ob = Outbox(ledger)
    assert ob.enqueue("slack", "b|slack", {"x": "1"}) is True
    assert ob.enqueue("slack", "b|slack", {"x": "2"}) is False
    (item,) = ob.items()
    assert item["payload"] == {"x": "1"} and item["status"] == PENDING


def test_concurrent_drainers_deliver_each_item_once(ledger: Ledger) -> None:
    ob = Outbox(ledger)
    for i in range(10):
        ob.enqueue("slack", f"k{i}", {"i": i})
    delivered: list[str] = []
    lock = threading.Lock()

    def deliver(item):  # type: ignore[no-untyped-def]
        with lock:
            delivered.append(item.dedupe_key)
        return "ok"

    threads = [threading.Thread(target=lambda: Outbox(ledger).drain(deliver)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(delivered) == sorted(f"k{i}" for i in range(10))
    assert {i["status"] for i in ob.items()} == {DONE}


def test_failure_backs_off_then_dies(ledger: Ledger) -> None:
    ob = Outbox(ledger, OutboxPolicy(backoff_base_s=0, max_attempts=3))
    ob.enqueue("jira", "k", {})

    def boom(item):  # type: ignore[no-untyped-def]
        raise RuntimeError("HTTP 503")

    assert ob.drain(boom).failed == ["k"]
    assert ob.items()[0]["last_error"] == "RuntimeError: HTTP 503"
    assert ob.drain(boom).failed == ["k"]
    assert ob.drain(boom).dead == ["k"]
    assert ob.items()[0]["status"] == DEAD and ob.items()[0]["attempts"] == 3
    assert ob.drain(boom).failed == []  # dead items are not retried


def test_backoff_delays_the_next_attempt(ledger: Ledger) -> None:
    ob = Outbox(ledger, OutboxPolicy(backoff_base_s=3600))
    ob.enqueue("slack", "k", {})
    ob.drain(lambda i: (_ for _ in ()).throw(RuntimeError("down")))
    assert ob.claim_due() == []
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    assert [i.dedupe_key for i in ob.claim_due(now=later)] == ["k"]


def test_not_yet_waits_without_counting_an_attempt(ledger: Ledger) -> None:
    ob = Outbox(ledger)
    ob.enqueue("pause_after_run", "k", {})

    def wait(item):  # type: ignore[no-untyped-def]
        raise NotYet("run still going", retry_in_s=0)

    assert ob.drain(wait).waiting == ["k"]
    assert ob.items()[0]["attempts"] == 0 and ob.items()[0]["status"] == PENDING
    assert ob.drain(lambda i: "paused").delivered == ["k"]
    assert ob.items()[0]["result"] == "paused"


def test_an_expired_lease_is_taken_over(ledger: Ledger) -> None:
    ob = Outbox(ledger, OutboxPolicy(lease_s=60))
    ob.enqueue("slack", "k", {})
    assert len(ob.claim_due()) == 1  # a drainer that then crashed
    assert ob.claim_due() == []
    assert len(ob.claim_due(now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))) == 1


def test_enforcement_events(ledger: Ledger) -> None:
    record_event(ledger, "pause", actor="finops:budget=b", dag_id="d", detail={"amount": Decimal("1.5")})
    record_event(ledger, "unpause", actor="alice", dag_id="d")
    record_event(ledger, "pause", actor="finops:budget=b", dag_id="other")
    assert [e["kind"] for e in events(ledger, dag_id="d")] == ["pause", "unpause"]
    assert events(ledger, dag_id="d")[0]["detail"] == {"amount": "1.5"}
    assert last_pause_state(ledger, "d")["actor"] == "alice"
    assert last_pause_state(ledger, "nope") is None


def test_spool_replays_into_the_ledger_once(ledger: Ledger, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spool = LocalSpool(tmp_path / "spool.db")
    rec = build_record(
        billed_cost=Decimal("0.1000000000000001"),
        billing_currency="EUR",
        charge_period_start=T0,
        charge_period_end=T0 + dt.timedelta(minutes=5),
        tags={"team": "a"},
        x_line_item_id="d/r/t/-1/1",
        x_cost_kind="estimate",
        x_source="airflow-estimate",
        x_dag_id="d",
    )
    spool.put_records([rec], source="airflow-estimate")
    spool.put_records([rec], source="airflow-estimate")  # the same try spooled twice
    assert len(spool) == 2
    written = flush_spool(ledger, spool)
    assert len(written) == 2 and len(spool) == 0
    assert ledger.count() == 1
    (back,) = list(ledger.records())
    assert back.billed_cost == Decimal("0.1000000000000001") and back.tags == {"team": "a"}
    assert back.billing_currency == "EUR" and back.charge_period_start == T0
