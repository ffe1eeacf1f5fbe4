"""The stream processor over the embedded JSONL source: exactly-once ledger effects, restarts, shutdown."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from finops_provider.core.budgets import BudgetEngine
from finops_provider.core.ledger import Ledger
from finops_provider.core.money import MoneyBag
from finops_provider.core.schema import breach as breach_table
from finops_provider.core.schema import stream_event, stream_state
from finops_provider.streaming.engine import StreamEngine
from finops_provider.streaming.events import DeadLetter, EventDecoder
from finops_provider.streaming.feed import consumer_status, current_totals, dead_letters, read_feed, stream_events
from finops_provider.streaming.runner import CallbackSink, StreamProcessor
from finops_provider.streaming.service import JsonlSink
from finops_provider.streaming.sources import JsonlPublisher, JsonlSource, parse_source
from tests.unit.streaming.conftest import CONFIG, T0, write_events


class Recorder:
    def __init__(self) -> None:
        self.breaches: list[str] = []
        self.anomalies: list[str] = []

    def sink(self) -> CallbackSink:
        return CallbackSink(lambda b: self.breaches.append(b.dedupe_key), lambda a: self.anomalies.append(a.dedupe_key))


def _processor(ledger: Ledger, config: Any, path: Path, rec: Recorder, **kw: Any) -> StreamProcessor:
    return StreamProcessor(
        ledger,
        JsonlSource(path),
        StreamEngine.from_config(config, allowed_lateness=dt.timedelta(hours=1)),
        decoder=EventDecoder(config, clock=lambda: T0 + dt.timedelta(days=365)),
        consumer="test",
        sinks=[rec.sink(), *kw.pop("sinks", ())],
        max_batch=kw.pop("max_batch", 25),
        poll_timeout=0.01,
        **kw,
    )


def _drain(p: StreamProcessor) -> None:
    p.start()
    while p.run_once().messages:
        pass
    p.close()  # folds what is still pending into cost lines


def _publish_mixed(path: Path, make_event: Any) -> MoneyBag:
    """Valid events, duplicates, credits, another currency, a late event and poison messages; returns the truth."""
    pub = JsonlPublisher(path)
    truth = MoneyBag()
    for i in range(200):
        ev = make_event(f"{i % 7}.{i:03d}", minutes=3 * i)
        pub.publish(ev)
        truth.add_raw(Decimal(ev["cost"]["amount"]), "USD")
        if i % 50 == 0:
            pub.publish(ev)  # exact redelivery
            pub.publish({**ev, "cost": {"amount": "999", "currency": "USD"}})  # same id, other content: ignored
    credit = make_event("-12.5", minutes=601)
    eur = make_event("40.10", minutes=602, currency="EUR")
    late = make_event("8.25", minutes=300)  # 5 hours behind the clock: beyond the 1 hour allowed lateness
    for ev in (credit, eur, late):
        pub.publish(ev)
        truth.add_raw(Decimal(ev["cost"]["amount"]), ev["cost"]["currency"])
    pub.publish_raw(b'{"schema_version": 1, "event_id": "broken"')
    pub.publish({**make_event("1"), "cost": {"amount": "1", "currency": "ZZZ"}})
    pub.publish(make_event("1", tags={f"k{i}": "v" * 1000 for i in range(70)}))
    pub.close()
    return truth


def test_embedded_stream_is_exactly_once(ledger_url, config, make_event, tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    truth = _publish_mixed(path, make_event)
    rec = Recorder()
    with Ledger(ledger_url) as led:
        p = _processor(led, config, path, rec)
        _drain(p)
        # the ledger holds every distinct valid event once, to the last digit, in its own currency, folded into
        # one cost line per attribution and hour (credits and EUR on lines of their own)
        assert led.totals(scope="stream:test") == truth
        assert stream_events(led, "test") == {"events": 200 + 3, "unfolded": 0}
        lines = list(led.records(scope="stream:test"))
        assert len(lines) < 203 and sum(1 for r in lines if r.billed_cost < 0) == 1
        assert p.metrics.folded == 203
        m = p.metrics
        assert (m.duplicates, m.late, m.dead_letters) == (8, 1, 3)
        assert {d["field"] for d in dead_letters(led)} == {"payload", "cost.currency"}
        # the late event is in the ledger but not in the running total; the batch engine picks it up
        with led.engine.connect() as c:
            late_ids = list(c.execute(sa.select(stream_event.c.event_id).where(stream_event.c.late)).scalars())
        assert len(late_ids) == 1
        (day,) = [
            s
            for s in current_totals(led)
            if s["budget"] == "ingest-orders-day" and s["period_start"][:10] == "2026-10-10"
        ]
        batch = {s.budget.name: s for s in BudgetEngine(config, led).evaluate_all(T0 + dt.timedelta(hours=10))}
        assert Decimal(day["total"]) + Decimal("8.25") == batch["ingest-orders-day"].actual.amount
        assert day["others"] == {"EUR": "40.10"}
        # each breach was claimed once and alerted once; the feed has them
        with led.engine.connect() as c:
            claimed = set(c.execute(sa.select(breach_table.c.dedupe_key)).scalars())
        assert rec.breaches and sorted(rec.breaches) == sorted(claimed)
        assert {f["dedupe_key"] for f in read_feed(led, kinds=["breach"])} == claimed
        assert consumer_status(led)[0]["position"] == path.stat().st_size


def test_restart_resumes_from_the_ledger_checkpoint(sqlite_url, config, make_event, tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    truth = _publish_mixed(path, make_event)
    rec = Recorder()
    with Ledger(sqlite_url) as led:
        for _ in range(4):  # a few batches, then the process "dies" (no close, no further commit)
            p = _processor(led, config, path, rec, max_batch=7)
            p.start()
            for _ in range(5):
                p.run_once()
        _drain(_processor(led, config, path, rec))
        assert led.totals(scope="stream:test") == truth
        assert len(rec.breaches) == len(set(rec.breaches)) > 0
        # the persisted running total equals the ledger's stream rows of that period (minus the late one)
        (day,) = [
            s
            for s in current_totals(led)
            if s["budget"] == "ingest-orders-day" and s["period_start"][:10] == "2026-10-10"
        ]
        rows = led.totals(scope="stream:test", dag_id="ingest_orders", start=T0, end=T0 + dt.timedelta(days=1))
        assert Decimal(day["total"]) == rows.get("USD").amount - Decimal("8.25")


class Crash(BaseException):
    pass


def _saved_states(led: Ledger) -> list[str]:
    with led.engine.connect() as conn:
        return list(conn.execute(sa.select(stream_state.c.payload).where(stream_state.c.kind != "clock")).scalars())


def _running(p: StreamProcessor) -> dict[tuple[str, Any], Any]:
    budgets = {(s.b.cfg.name, s.run_id or s.period_start): s.total for s in p.engine.budget_states()}
    detectors = {
        (a.dim, a.value, a.currency): (a.bucket, a.cur, a.mean, a.n, a.children, a.child_means)
        for a in p.engine.anomaly_states()
    }
    return {**budgets, **detectors}


@pytest.mark.parametrize("later_interval", [0.0, 3600.0], ids=["every-state-every-batch", "one-state-per-batch-since"])
def test_snapshot_plus_replay_restores_the_running_totals(sqlite_url, config, make_event, tmp_path, later_interval):
    """After a crash the engine equals the one that died: its saved states plus the events recorded after each.

    With a long interval each batch saves only about one changed state (incremental snapshots), so at the crash
    the saved states are as of different events; the replay applies each event only to the states saved before it.
    """
    path = tmp_path / "events.jsonl"
    truth = _publish_mixed(path, make_event)
    with Ledger(sqlite_url) as led:
        p = _processor(led, config, path, Recorder(), max_batch=7, state_interval=0.0)
        p.start()
        for _ in range(12):
            p.run_once()
        p.state_interval = later_interval
        p.state_min_gap = 0.0  # a share with every batch, however fast they come
        for _ in range(12):
            p.run_once()
        live = _running(p)
        assert live and stream_events(led, "test")["events"] > 100
        asofs = {json.loads(r)["asof"] for r in _saved_states(led)}
        if later_interval:
            assert len(asofs) > 3 and p.engine.dirty_count() > 0  # saved as of different events, some unsaved
        # the process dies here: no close, no final fold or snapshot
        again = _processor(led, config, path, Recorder(), max_batch=7)
        again.start()
        assert _running(again) == live
        _drain(again)
        assert led.totals(scope="stream:test") == truth


def test_two_processors_under_one_consumer_name_never_fold_twice(sqlite_url, config, make_event, tmp_path) -> None:
    path = write_events(tmp_path / "events.jsonl", (make_event("1", minutes=i) for i in range(20)))
    with Ledger(sqlite_url) as led:
        a = _processor(led, config, path, Recorder(), max_batch=10, fold_interval=3600.0)
        a.start()
        a.run_once()
        b = _processor(led, config, path, Recorder(), max_batch=10)
        b.start()  # folds a's pending events: they were recorded and are not in memory here
        a.fold_interval = 0.0  # a still holds those events in memory and would fold them again
        with pytest.raises(RuntimeError, match="one processor per consumer name"):
            a.run_once()
        assert a.metrics.folded == 0  # its fold was refused and rolled back
        _drain(b)
        assert led.totals(scope="stream:test").get("USD").amount == 20


def _twelve_tens(tmp_path: Path, make_event: Any) -> Path:
    path = write_events(tmp_path / "events.jsonl", (make_event("10", minutes=i) for i in range(12)))
    return path


def test_a_crash_in_the_claim_loses_no_breach_and_writes_nothing(sqlite_url, config, make_event, tmp_path):
    """Breaches are claimed before the batch's ledger write: a crash there leaves no trace; the restart reads
    the batch again and claims them then, once."""
    path = _twelve_tens(tmp_path, make_event)  # 120 USD: crosses ingest-orders-day (100 a day)
    rec = Recorder()
    with Ledger(sqlite_url) as led:
        p = _processor(led, config, path, rec, max_batch=100)
        p.start()

        def crash(_bs: Any, **_kw: Any) -> set[str]:
            raise Crash("killed in the claim")

        p.ledger = Ledger(sqlite_url, migrate=False)
        p.ledger.claim_breaches = crash  # type: ignore[method-assign]
        with pytest.raises(Crash):
            p.run_once()
        assert stream_events(led, "test")["events"] == 0 and rec.breaches == []
        again = _processor(led, config, path, rec)
        assert again.start().breaches == []  # nothing was recorded: nothing to re-derive
        _drain(again)
        assert "ingest-orders-day|day:2026-10-10T00:00:00Z|actual|100" in rec.breaches
        assert len(rec.breaches) == len(set(rec.breaches))
        assert led.totals(scope="stream:test").get("USD").amount == Decimal("120")


def _jsonl_keys(path: Path) -> list[str]:
    return [json.loads(line)["dedupe_key"] for line in path.read_text().splitlines()] if path.exists() else []


def test_a_crash_between_the_claim_and_the_sinks_still_alerts_once(sqlite_url, config, make_event, tmp_path):
    """Killed right after the claim commits, before any sink ran: the restart reads the batch again, finds its own
    claim without a feed row and delivers it then (it is not lost), once."""
    path = _twelve_tens(tmp_path, make_event)
    rec, alerts = Recorder(), tmp_path / "alerts.jsonl"
    key = "ingest-orders-day|day:2026-10-10T00:00:00Z|actual|100"
    with Ledger(sqlite_url) as led:
        p = _processor(led, config, path, rec, max_batch=100, sinks=[JsonlSink(alerts)])
        p.start()
        real = p.ledger.claim_breaches

        def claim_then_die(bs: Any, **kw: Any) -> set[str]:
            real(bs, **kw)
            raise Crash("killed after the claim committed")

        p.ledger = Ledger(sqlite_url, migrate=False)
        p.ledger.claim_breaches = claim_then_die  # type: ignore[method-assign]
        with pytest.raises(Crash):
            p.run_once()
        assert rec.breaches == [] and _jsonl_keys(alerts) == []
        with led.engine.connect() as conn:
            assert key in set(conn.execute(sa.select(breach_table.c.dedupe_key)).scalars())
        again = _processor(led, config, path, rec, sinks=[JsonlSink(alerts)])
        _drain(again)
        assert rec.breaches.count(key) == 1 and _jsonl_keys(alerts).count(key) == 1
        third = _processor(led, config, path, rec, sinks=[JsonlSink(alerts)])
        _drain(third)  # nothing new: a breach with its feed row is not delivered again
        assert rec.breaches.count(key) == 1


def test_a_failed_batch_write_after_the_alert_alerts_once_and_counts_once(sqlite_url, config, make_event, tmp_path):
    """The ledger write fails after the breach was claimed and alerted: the processor refuses to go on and
    saves no state holding the unrecorded events; the next one reads the batch again and delivers its claim
    again (it cannot know the sinks ran): the JSONL sink keeps it once. Totals (ledger and engine) are exact."""
    path = _twelve_tens(tmp_path, make_event)
    rec, alerts = Recorder(), tmp_path / "alerts.jsonl"
    key = "ingest-orders-day|day:2026-10-10T00:00:00Z|actual|100"
    with Ledger(sqlite_url) as led:
        p = _processor(led, config, path, rec, max_batch=100, state_interval=0.0, sinks=[JsonlSink(alerts)])
        p.start()

        def broken(_conn: Any, _rows: Any) -> None:
            raise Crash("disk full")

        p._insert_events = broken  # type: ignore[method-assign]
        with pytest.raises(Crash):
            p.run_once()
        assert key in rec.breaches and key in _jsonl_keys(alerts)  # claimed and alerted at once
        with pytest.raises(RuntimeError, match="cannot go on"):
            p.run_once()
        p.close()  # must not save the engine state holding the 120 the ledger does not have
        assert _saved_states(led) == [] and stream_events(led, "test")["events"] == 0
        again = _processor(led, config, path, rec, state_interval=0.0, sinks=[JsonlSink(alerts)])
        _drain(again)
        assert rec.breaches.count(key) == 2  # at least once: delivered again, as it had no feed row
        assert sorted(_jsonl_keys(alerts)) == sorted(set(_jsonl_keys(alerts)))  # ... and kept once
        assert led.totals(scope="stream:test").get("USD").amount == Decimal("120")
        third = _processor(led, config, path, rec)
        third.start()
        assert third.engine.total("ingest-orders-day", T0).amount == Decimal("120")  # not 240
        third.close()

def test_feed_reads_incrementally_and_filters(sqlite_url, config, make_event, tmp_path) -> None:
    path = write_events(tmp_path / "events.jsonl", (make_event("10", minutes=i) for i in range(11)))
    with Ledger(sqlite_url) as led:
        _drain(_processor(led, config, path, Recorder()))
        items = read_feed(led)
        assert [i["kind"] for i in items] == ["breach", "breach"]
        assert read_feed(led, after_id=items[0]["id"]) == items[1:]
        assert read_feed(led, budgets=["nope"]) == []
        assert items[0]["payload"]["actual"]["currency"] == "USD"


@pytest.mark.parametrize(
    ("url", "kind", "target", "topic", "group"),
    [
        pytest.param("kafka://h1:9092,h2:9092/costs?group=g1", "kafka", "h1:9092,h2:9092", "costs", "g1", id="kafka"),
        pytest.param("kafka://localhost:9092/costs", "kafka", "localhost:9092", "costs", None, id="kafka-no-group"),
        pytest.param("file:///var/x.jsonl", "file", "/var/x.jsonl", None, None, id="file"),
        pytest.param("/tmp/y.jsonl", "file", "/tmp/y.jsonl", None, None, id="path"),
    ],
)
def test_parse_source(url, kind, target, topic, group) -> None:
    s = parse_source(url)
    assert (s.kind, s.target, s.topic, s.group) == (kind, target, topic, group)


@pytest.mark.parametrize("url", [pytest.param("kafka://h:1/", id="no-topic"), pytest.param("http://x/y", id="scheme")])
def test_parse_source_rejects_bad_urls(url) -> None:
    with pytest.raises(ValueError, match=r"kafka://HOST:PORT/TOPIC|unknown source"):
        parse_source(url)


def _cli(*args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "finops_provider.cli", "stream", "--no-live", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
        **kw,
    )


def _wait_for(pred: Any, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_finops_stream_stops_cleanly_on_sigterm(tmp_path, make_event) -> None:
    path = tmp_path / "events.jsonl"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(json.loads(json.dumps(CONFIG))), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    pub = JsonlPublisher(path)
    for i in range(50):
        pub.publish(make_event("1", minutes=i))
    proc = _cli("--source", f"file://{path}", "--ledger", url, "--config", str(cfg), "--consumer", "svc")
    try:
        with Ledger(url) as led:
            _wait_for(lambda: stream_events(led)["events"] == 50)
            pub.publish(make_event("1", minutes=60))  # arrives while running
            _wait_for(lambda: stream_events(led)["events"] == 51)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.close()
    assert proc.returncode == 0, out
    assert "stopped:" in out and '"applied": 51' in out
    with Ledger(url) as led:
        assert consumer_status(led) == [{**consumer_status(led)[0], "consumer": "svc", "position": path.stat().st_size}]
        assert stream_events(led) == {"events": 51, "unfolded": 0}  # SIGTERM folded everything
        assert led.totals(scope="stream:svc").get("USD").amount == 51


def test_finops_stream_survives_kill_9_mid_batch(tmp_path, make_event) -> None:
    """Hard kills of the service at arbitrary moments: totals exact, each breach alerted once."""
    path = tmp_path / "events.jsonl"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(json.loads(json.dumps(CONFIG))), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    alerts = tmp_path / "alerts.jsonl"
    pub = JsonlPublisher(path)
    truth = Decimal(0)
    n = 12000  # enough that the last kill (past 4,000 rows) always lands before the stream is through
    for i in range(n):  # 4 days of events: several day and month thresholds are crossed on the way
        ev = make_event(f"0.{i % 97:02d}1", minutes=i / 2, dag_id="ingest_orders" if i % 3 else "ingest_crm")
        pub.publish(ev)
        truth += Decimal(ev["cost"]["amount"])
    pub.close()
    args = ("--source", f"file://{path}", "--ledger", url, "--config", str(cfg), "--sink-jsonl", str(alerts))
    with Ledger(url) as led:
        for target in (1000, 2500, 4000):  # kill as soon as the stream is past these row counts
            proc = _cli(*args, "--max-batch", "50")
            _wait_for(lambda t=target: stream_events(led)["events"] > t, timeout=60)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            assert proc.returncode == -signal.SIGKILL
        assert stream_events(led)["events"] < n, "the kills came too late to interrupt the stream"
        proc = _cli(*args, "--idle-exit", "1")
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert stream_events(led) == {"events": n, "unfolded": 0}
        assert led.totals(scope="stream:finops-stream").get("USD").amount == truth
        with led.engine.connect() as c:
            claimed = sorted(c.execute(sa.select(breach_table.c.dedupe_key)).scalars())
    alerted = sorted(json.loads(line)["dedupe_key"] for line in alerts.read_text().splitlines())
    alerted_breaches = [k for k in alerted if not k.startswith("anomaly|")]
    assert len(claimed) >= 4
    assert alerted_breaches == claimed  # every breach alerted, none twice


def test_due_groups_are_folded_at_their_rate_over_several_batches(sqlite_url, config, make_event, tmp_path) -> None:
    """A backlog of due groups is spread over the micro-batches (pending groups x elapsed / fold_interval lines per
    batch, at most fold_chunk), not written in one stall; the lines add up exactly once everything is folded."""
    events = (make_event("1.25", minutes=i, task_id=f"t{i}") for i in range(40))  # 40 tasks: 40 groups (40 lines)
    path = write_events(tmp_path / "events.jsonl", events)
    with Ledger(sqlite_url) as led:
        p = _processor(led, config, path, Recorder(), max_batch=40, fold_interval=3600.0, fold_chunk=15)
        p.start()
        assert p.run_once().messages == 40 and len(p._folder) == 40
        assert stream_events(led, "test") == {"events": 40, "unfolded": 40}
        p.fold_interval = 0.0  # every group is due now: at most fold_chunk lines per batch
        pending = []
        for _ in range(3):
            p.run_once()  # no new messages: only the fold share runs
            pending.append(stream_events(led, "test")["unfolded"])
        assert pending == [25, 10, 0]  # folded while the stream is quiet, 15 lines per batch
        assert led.totals(scope="stream:test").get("USD").amount == Decimal("50.00")
        p.fold_interval = 10.0  # otherwise a share of the pending groups per elapsed time, at least one line
        assert p._fold_share(p._last_fold + 1.0) == 0  # nothing pending: nothing to fold
        for i in range(30):
            p._folder.add(_record(config, make_event("1", task_id=f"u{i}")), 1000 + i)
        assert p._fold_share(p._last_fold + 1.0) == 3  # 30 groups x 1 s / 10 s
        assert p._fold_share(p._last_fold + 0.01) == 1  # at least one line
        p._folder.clear()
        p.close()
        assert led.totals(scope="stream:test").get("USD").amount == Decimal("50.00")


def _record(config: Any, event: dict[str, Any]) -> Any:
    decoded = EventDecoder(config, max_future=None).decode(json.dumps(event).encode())
    assert not isinstance(decoded, DeadLetter)
    return decoded.record


def test_a_lost_ledger_connection_between_batches_is_reconnected(postgres_url, config, make_event, tmp_path) -> None:
    """The processor keeps one connection; PostgreSQL dropping it between batches (a restart, an idle timeout)
    costs a reconnect, not the stream."""
    path = write_events(tmp_path / "events.jsonl", (make_event("1.25", minutes=i) for i in range(20)))
    rec = Recorder()
    with Ledger(postgres_url) as led:
        p = _processor(led, config, path, rec, max_batch=10)
        p.start()
        assert p.run_once().messages == 10
        pid = p._connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()
        p._connection().rollback()
        with led.engine.connect() as admin:  # another session of the same server ends the processor's session
            assert admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar() is True
        assert p.run_once().messages == 10
        assert p._connection().exec_driver_sql("SELECT pg_backend_pid()").scalar() != pid
        p._connection().rollback()
        p.close()
        assert led.totals(scope="stream:test").get("USD").amount == Decimal("25.00")
        assert stream_events(led, "test") == {"events": 20, "unfolded": 0}


def test_state_saves_are_at_least_state_min_gap_apart(sqlite_url, config, make_event, tmp_path) -> None:
    events = (make_event("1", minutes=i, dag_id=f"ingest_d{i}") for i in range(30))
    path = write_events(tmp_path / "events.jsonl", events)
    with Ledger(sqlite_url) as led:
        p = _processor(led, config, path, Recorder(), max_batch=30, state_interval=15.0, state_min_gap=0.5)
        p.start()
        p.run_once()
        assert p.engine.dirty_count() > 0
        assert p._state_share(p._last_state + 0.1) == 0  # saved a moment ago: wait for the gap
        assert p._state_share(p._last_state + 0.6) >= 1  # then the share of the whole time since
        p.state_min_gap = 0.0
        assert p._state_share(p._last_state + 0.1) >= 1
        p.close()
