"""Folds are recorded per cost line (``finops_stream_fold``), and the 0007 migration carries a 0006 ledger over."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

import finops_provider.core.ledger as ledger_mod
from finops_provider.core.ledger import Ledger
from finops_provider.core.schema import stream_event, stream_fold
from finops_provider.streaming.engine import StreamEngine
from finops_provider.streaming.events import EventDecoder, encode
from finops_provider.streaming.feed import stream_events
from finops_provider.streaming.runner import StreamProcessor
from finops_provider.streaming.sources import JsonlSource
from tests.unit.streaming.conftest import T0, write_events

_MIGRATIONS = Path(ledger_mod.__file__).parent / "migrations"


def _alembic(url: str, fn: Any, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            fn(cfg, revision)
    finally:
        engine.dispose()


def _processor(led: Ledger, config: Any, path: Path, **kw: Any) -> StreamProcessor:
    return StreamProcessor(
        led,
        JsonlSource(path),
        StreamEngine.from_config(config),
        decoder=EventDecoder(config, clock=lambda: T0 + dt.timedelta(days=365)),
        consumer="test",
        poll_timeout=0.01,
        **kw,
    )


def _marks(led: Ledger) -> dict[str, int]:
    with led.engine.connect() as conn:
        return {
            k: int(v)
            for k, v in conn.execute(
                sa.select(stream_fold.c.line_key, stream_fold.c.upto_seq).where(stream_fold.c.consumer == "test")
            )
        }


def test_a_fold_is_one_row_per_line_and_events_are_never_updated(ledger_url, config, make_event, tmp_path) -> None:
    path = write_events(
        tmp_path / "events.jsonl", (make_event("1.10", minutes=i % 50, task_id=f"t{i % 3}") for i in range(30))
    )  # three lines: three tasks in one hour
    with Ledger(ledger_url) as led:
        p = _processor(led, config, path, max_batch=10, fold_interval=3600.0, fold_chunk=2)
        p.start()
        for _ in range(3):
            p.run_once()
        assert stream_events(led, "test") == {"events": 30, "unfolded": 30}
        assert _marks(led) == {}
        p.fold_interval = 0.0
        p._fold_when_idle()  # the two oldest groups (fold_chunk): tasks t0 (seq 1, 4, .. 28) and t1 (2, .. 29)
        assert stream_events(led, "test") == {"events": 30, "unfolded": 10}
        marks = _marks(led)
        assert marks.pop("") == 2  # every event before the first pending one (t2's, seq 3)
        assert sorted(marks.values()) == [28, 29]  # each line key: the seq of its last event folded
        p._fold_when_idle()
        assert stream_events(led, "test") == {"events": 30, "unfolded": 0}
        assert _marks(led) == {"": 30}  # nothing pending; line records under the watermark are pruned
        with led.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).where(stream_event.c.folded.is_not(None))).scalar() == 0
        p.close()
        assert led.totals(scope="stream:test").get("USD").amount == Decimal("33.00")
        assert led.count() == 3


def test_crash_with_some_lines_folded_refolds_only_the_rest(ledger_url, config, make_event, tmp_path) -> None:
    path = write_events(
        tmp_path / "events.jsonl", (make_event("0.25", minutes=i, task_id=f"t{i % 4}") for i in range(40))
    )
    with Ledger(ledger_url) as led:
        p = _processor(led, config, path, max_batch=40, fold_interval=3600.0, fold_chunk=2)
        p.start()
        p.run_once()
        p.fold_interval = 0.0
        p._fold_when_idle()  # two of the four lines (fold_chunk); the process dies with two pending
        assert stream_events(led, "test") == {"events": 40, "unfolded": 20}
        assert led.totals(scope="stream:test").get("USD").amount == Decimal("5.00")
        again = _processor(led, config, path)
        again.start()  # folds the two pending lines; the two folded are not read again
        assert stream_events(led, "test") == {"events": 40, "unfolded": 0}
        assert _marks(led) == {"": 40}  # line records below the watermark are pruned
        assert led.totals(scope="stream:test").get("USD").amount == Decimal("10.00")
        assert led.count() == 4
        again.close()


def test_migration_0007_carries_folded_and_unfolded_events_over(ledger_url, config, make_event, tmp_path) -> None:
    _alembic(ledger_url, command.upgrade, "0006")
    engine = sa.create_engine(ledger_url)
    evs = [make_event("2.50", minutes=i) for i in range(6)]
    t = T0.replace(tzinfo=None) if ledger_url.startswith("sqlite") else T0
    old = sa.table(
        "finops_stream_event",
        *(sa.column(c) for c in ("event_id", "consumer", "producer", "position", "event_time", "late")),
        *(sa.column(c) for c in ("received_at", "seq", "payload", "line_key", "folded")),
    )
    with engine.begin() as conn:  # as the 0006 code left them: seq 1-3 folded, 4-6 not yet (it crashed)
        conn.execute(
            old.insert(),
            [
                {
                    "event_id": ev["event_id"],
                    "consumer": "test",
                    "producer": "p",
                    "position": f"f:{seq}",
                    "event_time": t,
                    "late": False,
                    "received_at": t,
                    "seq": seq,
                    "payload": encode(ev).decode(),
                    "line_key": "k",
                    "folded": "old-fold" if seq <= 3 else None,
                }
                for seq, ev in enumerate(evs, 1)
            ]
            + [  # and, before 0006, an event with no seq at all
                {
                    "event_id": "pre",
                    "consumer": "test",
                    "producer": None,
                    "position": None,
                    "event_time": t,
                    "late": False,
                    "received_at": t,
                    "seq": None,
                    "payload": None,
                    "line_key": None,
                    "folded": "pre-0006",
                }
            ],
        )
    engine.dispose()
    with Ledger(ledger_url) as led:  # migrates to head
        assert _marks(led) == {"": 3}  # just before the first unfolded event
        assert stream_events(led, "test") == {"events": 7, "unfolded": 3}
        path = tmp_path / "none.jsonl"
        path.write_text("")
        p = _processor(led, config, path)
        p.start()  # folds seq 4-6 only: 3 x 2.50
        assert led.totals(scope="stream:test").get("USD").amount == Decimal("7.50")
        assert stream_events(led, "test") == {"events": 7, "unfolded": 0} and _marks(led) == {"": 6}
        p.close()
    ledger_mod.dispose_engines()
    _alembic(ledger_url, command.downgrade, "0006")  # the fold records go back onto the events
    engine = sa.create_engine(ledger_url)
    with engine.connect() as conn:
        folded = dict(conn.execute(sa.text("SELECT seq, folded FROM finops_stream_event WHERE seq IS NOT NULL")).all())
        assert folded == {1: "old-fold", 2: "old-fold", 3: "old-fold", 4: "post-0007", 5: "post-0007", 6: "post-0007"}
        assert "finops_stream_fold" not in sa.inspect(conn).get_table_names()
    engine.dispose()
