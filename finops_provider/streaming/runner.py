"""The stream processor: source -> decode -> engine -> one ledger transaction per micro-batch -> sinks -> commit.

Exactly-once, by construction
-----------------------------
Each micro-batch (up to ``max_batch`` messages, as soon as they are available) is decoded, the events the
ledger already holds are dropped (their id is recorded: a duplicate), and the rest are applied to the engine
and evaluated. Breaches are claimed (:meth:`Ledger.claim_breaches`, atomic, true once per breach) and the
sinks called for those claimed here at once, before the batch's ledger write, so an alert waits only for the
engine. Then **one ledger transaction** holds everything the batch changed:

1. dead letters (malformed, oversized, unpriceable, wrong-currency-code messages; unique per source position),
2. the events applied (``finops_stream_event``: id, ``seq``, time, payload, the cost line they fold into),
3. the cost lines of the event groups that are due to fold (:mod:`.fold`: one line per attribution, hour and
   fold, with the exact sums, :meth:`Ledger.ingest` inside this transaction) and the fold records
   (``finops_stream_fold``),
4. the feed rows of the breaches/anomalies it produced, and an incremental snapshot of the engine state: the
   states changed since they were last saved, those unsaved the longest first, so many per batch that each is
   saved about once per ``state_interval`` (running totals and detector state, each stamped with the ``seq``
   of the last event it holds), and the clock with ``replay_from`` (every event up to it is in saved states),
5. the source checkpoint (next position per partition).

Only after that commit are anomalies passed to the sinks and the source committed (Kafka offsets). A crash
anywhere before the commit rolls the batch back and its messages are read again: their breaches are derived
again and are already claimed, so they are not acted on twice; a crash after it replays messages whose ids
are recorded, which change nothing. A batch that fails without a crash leaves the engine holding events the
ledger does not: that processor refuses to go on and does not save its state (a new one resumes). On start
the engine state is loaded from the ledger, the events recorded after ``replay_from`` are applied again in
their original order with their original lateness, each only to the states saved before it (so the running
totals are exactly those of the events recorded), and it is re-evaluated: a breach whose claim was lost in a
crash is claimed then; one already claimed is not acted on again. So the ledger totals equal the sum of the
distinct events produced, to the last digit, and each breach is alerted once.

The engine's hot path never touches the database; the database is written once per batch. Every
statement written per event or per state is compiled once and handed pre-encoded to the driver.
"""

from __future__ import annotations

import copy
import datetime as dt
import gc
import itertools
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import sqlalchemy as sa

from finops_provider.core.anomaly import Anomaly
from finops_provider.core.budgets import Breach
from finops_provider.core.ledger import (
    Ledger,
    RawSQL,
    _sqlite_time,
    compile_raw,
    execute_raw,
    sqlite_time_text,
    untyped,
)
from finops_provider.core.records import CostRecord
from finops_provider.core.schema import breach as breach_table
from finops_provider.core.schema import (
    stream_checkpoint,
    stream_dead_letter,
    stream_event,
    stream_feed,
    stream_fold,
    stream_state,
)
from finops_provider.streaming.engine import StreamEngine
from finops_provider.streaming.events import DeadLetter, EventDecoder, StreamEvent
from finops_provider.streaming.fold import Folder, GroupKey
from finops_provider.streaming.sources import Message, Source

log = logging.getLogger(__name__)

_IN_CHUNK = 500
_ROWS_CHUNK = 256  # event rows per multi-row INSERT at most (SQLite: 11 columns, 32,766 parameters allowed)
_STATE_CHUNK = 1000  # changed states saved per micro-batch at most (or a tenth of them, when more)


_EVENT_W = untyped(stream_event)
_STATE_W = untyped(stream_state)
_FOLD_W = untyped(stream_fold)
_EVENT_COLS = tuple(c.name for c in _EVENT_W.columns)


class StreamSink(Protocol):
    """Where breaches (once claimed, before their batch is written) and anomalies (once durable) go.

    This is how the enforcement actions (notifiers, pause, tickets) plug in: a sink that enqueues into the
    enforcement outbox, or calls a notifier. A sink that raises is logged and skipped — the feed row stays,
    so the action can still be driven from the feed (the Airflow trigger) or retried by the outbox. After a
    crash between a claim and its batch's commit the breach is delivered again (see
    :meth:`StreamProcessor._act_breaches`): keep it once by ``dedupe_key`` (the outbox and the JSONL sink do).
    """

    def on_breach(self, breach: Breach) -> None: ...

    def on_anomaly(self, anomaly: Anomaly) -> None: ...


@dataclass
class CallbackSink:
    """A sink from two plain callables (either may be ``None``)."""

    breach: Callable[[Breach], None] | None = None
    anomaly: Callable[[Anomaly], None] | None = None

    def on_breach(self, breach: Breach) -> None:
        if self.breach is not None:
            self.breach(breach)

    def on_anomaly(self, anomaly: Anomaly) -> None:
        if self.anomaly is not None:
            self.anomaly(anomaly)


@dataclass
class StreamMetrics:
    """Counters since start (the live view and ``/metrics``-style exports read these)."""

    messages: int = 0
    applied: int = 0
    duplicates: int = 0
    late: int = 0
    dead_letters: int = 0
    breaches: int = 0
    anomalies: int = 0
    batches: int = 0
    folded: int = 0
    last_batch_ms: float = 0.0
    lag: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    recent_breaches: list[dict[str, Any]] = field(default_factory=list)
    recent_anomalies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_lag(self) -> int:
        return sum(self.lag.values())

    def rate(self) -> float:
        el = time.monotonic() - self.started
        return self.messages / el if el > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "applied": self.applied,
            "duplicates": self.duplicates,
            "late": self.late,
            "dead_letters": self.dead_letters,
            "breaches": self.breaches,
            "anomalies": self.anomalies,
            "batches": self.batches,
            "folded": self.folded,
            "last_batch_ms": round(self.last_batch_ms, 3),
            "lag": dict(self.lag),
        }


@dataclass
class BatchResult:
    messages: int = 0
    applied: int = 0
    duplicates: int = 0
    late: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    breaches: list[Breach] = field(default_factory=list)  # claimed for the first time by this batch
    anomalies: list[Anomaly] = field(default_factory=list)  # new in the feed


class StreamProcessor:
    """Runs a :class:`StreamEngine` over a :class:`Source` with exactly-once ledger effects (module docstring).

    :param ledger: the ledger (rows, event ids, state, checkpoints, feed, breach claims).
    :param source: where messages come from (:mod:`.sources`, :mod:`.kafka`).
    :param engine: the engine (its budgets and settings).
    :param decoder: bytes -> events / dead letters (default: attribution from ``engine``-less defaults).
    :param consumer: this engine's name: its state and checkpoints are kept under it.
    :param sinks: called with breaches (claimed once) and anomalies (new in the feed) after each commit.
    :param max_batch: messages per micro-batch at most.
    :param poll_timeout: seconds to wait for the first message of a batch.
    :param partition_idle_s: a partition without messages for this long (wall clock) stops holding the
        event-time watermark back.
    :param fold_interval: seconds a group of events waits before it is folded into one ledger cost line (the
        longer, the more events per line; pending events are durable either way). Groups are folded at the
        rate they become due, spread over the micro-batches, so a batch never stalls on a backlog of lines.
    :param fold_chunk: cost lines folded per micro-batch at most (everything is folded on :meth:`close`).
    :param state_interval: seconds within which a changed engine state is saved (a share of the changed states
        is saved with every batch; each batch's events are durable anyway, and after a crash the events not yet
        in saved states are replayed from the ledger).
    :param state_min_gap: seconds at least between two such saves (small batches at a high rate then save
        their states together, in fewer statements); 0: every batch.
    """

    def __init__(
        self,
        ledger: Ledger,
        source: Source,
        engine: StreamEngine,
        *,
        decoder: EventDecoder | None = None,
        consumer: str = "finops-stream",
        sinks: Sequence[StreamSink] = (),
        max_batch: int = 2000,
        poll_timeout: float = 0.2,
        partition_idle_s: float = 30.0,
        fold_interval: float = 30.0,
        fold_chunk: int = 500,
        state_interval: float = 15.0,
        state_min_gap: float = 0.05,
    ) -> None:
        self.ledger = ledger
        self.source = source
        self.engine = engine
        self.decoder = decoder or EventDecoder()
        self._replay_decoder = copy.copy(self.decoder)  # events already accepted: no future-time check again
        self._replay_decoder.max_future = None
        self.consumer = consumer
        self.sinks = list(sinks)
        self.max_batch = max_batch
        self.poll_timeout = poll_timeout
        self.partition_idle_s = partition_idle_s
        self.fold_interval = fold_interval
        self.fold_chunk = fold_chunk
        self._last_fold = time.monotonic()
        self.state_interval = state_interval
        self.state_min_gap = state_min_gap
        self.metrics = StreamMetrics()
        self._seq = 0  # the last event seq recorded for this consumer
        self._last_state = time.monotonic()
        self._seen: dict[str, float] = {}  # partition -> wall clock of its last message
        self._started = False
        self._failed = False  # a micro-batch failed after the engine applied it (see process)
        self._conn: sa.Connection | None = None
        self._claimer = f"stream:{consumer}"[:200]
        self._insert = ledger._insert()
        self._sqlite = ledger.dialect == "sqlite"
        self._folder = Folder()
        self._refold = True  # the folder must be rebuilt from the ledger's unfolded events first
        dialect = ledger.engine.dialect
        self._event_sql = compile_raw(self._insert(_EVENT_W), dialect)
        self._event_multi: dict[int, str] = {}  # SQLite: the event insert for 2^k rows
        st = self._insert(_STATE_W)
        fo = self._insert(_FOLD_W)
        self._fold_sql = compile_raw(
            fo.on_conflict_do_update(
                index_elements=["consumer", "line_key"],
                set_={k: fo.excluded[k] for k in ("upto_seq", "fold_id", "folded_at")},
            ),
            dialect,
        )
        self._last_prune = time.monotonic()
        self._known_sql: dict[int, RawSQL] = {}  # the id lookup for n ids, compiled once per n
        ck = self._insert(untyped(stream_checkpoint))
        self._checkpoint_sql = compile_raw(
            ck.on_conflict_do_update(
                index_elements=["consumer", "partition"],
                set_={k: ck.excluded[k] for k in ("position", "lag", "updated_at")},
            ),
            dialect,
        )
        self._state_sql = compile_raw(
            st.on_conflict_do_update(
                index_elements=["consumer", "state_key"],
                set_={k: st.excluded[k] for k in ("kind", "period_end", "payload", "updated_at")},
            ),
            dialect,
        )

    def _insert_events(self, conn: sa.Connection, rows: list[tuple[Any, ...]]) -> None:
        """Rows in ``finops_stream_event`` column order, pre-encoded."""
        text, order = self._event_sql
        if self._sqlite and order == _EVENT_COLS:
            # multi-row INSERTs: sqlite3's executemany costs ~2.5 us a row more (it resets the statement per row).
            # Chunks of 2^k rows, so a few statements are prepared once each whatever the batch sizes.
            i, n = 0, len(rows)
            while i < n:
                k = min(_ROWS_CHUNK, 1 << ((n - i).bit_length() - 1))
                sql = self._event_multi.get(k)
                if sql is None:
                    head, _, values = text.rpartition(" VALUES ")
                    sql = self._event_multi[k] = f"{head} VALUES {', '.join([values] * k)}"
                conn.exec_driver_sql(sql, tuple(itertools.chain.from_iterable(rows[i : i + k])))
                i += k
            return
        if order is None:
            conn.exec_driver_sql(text, [dict(zip(_EVENT_COLS, r, strict=True)) for r in rows])  # type: ignore[arg-type]
        elif order == _EVENT_COLS:
            conn.exec_driver_sql(text, rows)  # type: ignore[arg-type]
        else:
            idx = [_EVENT_COLS.index(k) for k in order]
            conn.exec_driver_sql(text, [tuple(r[i] for i in idx) for r in rows])

    def _t(self, v: dt.datetime | None) -> Any:
        return _sqlite_time(v) if self._sqlite and v is not None else v

    # --------------------------------------------------------------- start
    def start(self) -> BatchResult:
        """Load state and checkpoints from the ledger, start the source, re-derive breaches after a crash."""
        checkpoints: dict[str, int] = {}
        rows: list[tuple[str, dict[str, Any]]] = []
        with self.ledger.engine.connect() as conn:
            for part, pos in conn.execute(
                sa.select(stream_checkpoint.c.partition, stream_checkpoint.c.position).where(
                    stream_checkpoint.c.consumer == self.consumer
                )
            ):
                checkpoints[part] = int(pos)
            clock = conn.execute(
                sa.select(stream_state.c.payload).where(
                    stream_state.c.consumer == self.consumer, stream_state.c.state_key == "clock"
                )
            ).scalar()
            q = sa.select(stream_state.c.kind, stream_state.c.payload).where(
                stream_state.c.consumer == self.consumer, stream_state.c.kind != "clock"
            )
            self._seq = int(
                conn.execute(
                    sa.select(sa.func.max(stream_event.c.seq)).where(stream_event.c.consumer == self.consumer)
                ).scalar()
                or 0
            )
            replay_from = 0
            if clock is not None:
                saved = json.loads(clock)
                t = dt.datetime.fromisoformat(saved["clock"])
                snapshot_seq = int(saved.get("seq", self._seq))  # no seq: written per batch (before 0006)
                rows.append(("clock", {"clock": t.isoformat(), "seq": snapshot_seq}))
                wm = t - self.engine.settings.allowed_lateness
                q = q.where(sa.or_(stream_state.c.period_end.is_(None), stream_state.c.period_end > wm))
                replay_from = int(saved.get("replay_from", snapshot_seq))  # none: a full snapshot
            rows.extend((k, json.loads(p)) for k, p in conn.execute(q))
        self.engine.load(rows)
        replayed = self._replay(replay_from)
        self._recover_unfolded()
        self._last_state = time.monotonic()
        self.source.start(checkpoints)
        self._started = True
        log.info(
            "stream %s: resumed %d state(s), replayed %d event(s) after the snapshot and %d checkpoint(s) from %r",
            self.consumer,
            len(rows),
            replayed,
            len(checkpoints),
            self.ledger,
        )
        res = BatchResult()
        breaches, anomalies = self.engine.evaluate()
        if breaches or anomalies:
            self._act_breaches(res, breaches)  # before their feed rows: a feed row says "delivered" (see below)
            with self.ledger.engine.begin() as conn:
                new_anomalies = self._write_feed(conn, breaches, anomalies)
            self._act_anomalies(res, new_anomalies)
        return res

    # ---------------------------------------------------------------- batch
    def run_once(self) -> BatchResult:
        """Poll one micro-batch and process it (an empty result when nothing arrived in ``poll_timeout``)."""
        if self._failed:
            raise RuntimeError(
                f"stream {self.consumer}: a micro-batch failed and was rolled back; this processor's engine state "
                "holds its events, so it cannot go on. Start a new processor: it resumes from the ledger and reads "
                "the batch again"
            )
        if not self._started:
            self.start()
        msgs = self.source.poll(self.max_batch, self.poll_timeout)
        if not msgs:
            self.metrics.lag = self.source.lag()
            self._fold_when_idle()
            return BatchResult()
        return self.process(msgs)

    def _fold_when_idle(self) -> None:
        """A quiet stream still folds its due groups (the ledger's cost lines must not wait for the next event)."""
        if self._refold or not len(self._folder):
            return
        wall = time.monotonic()
        due = self._folder.due(wall - self.fold_interval, self._fold_share(wall))
        if not due:
            return
        try:
            with self.ledger.engine.begin() as conn:
                self._fold(conn, due, self._seq)
        except BaseException:
            self._forget_pending()
            raise

    def _forget_pending(self) -> None:
        """A transaction with folds rolled back: the pending groups are rebuilt from the ledger before the next
        batch (:meth:`_recover_unfolded`)."""
        self._folder.clear()
        self._refold = True

    def process(self, msgs: Sequence[Message]) -> BatchResult:
        """Apply one micro-batch exactly once (see the module docstring for the order of effects)."""
        t0 = time.perf_counter()
        res = BatchResult(messages=len(msgs))
        now = dt.datetime.now(dt.UTC)
        if self._refold:
            self._recover_unfolded()
        positions: dict[str, int] = {}
        unique: list[StreamEvent] = []  # the first of each event id in the batch
        parts: list[str] = []  # the partition of each
        seen: set[str] = set()
        decode = self.decoder.decode
        wall = time.monotonic()
        for m in msgs:
            part = m.partition
            if m.next_position > positions.get(part, 0):
                positions[part] = m.next_position
            d = decode(m.value, m.position_key)
            if type(d) is DeadLetter:
                res.dead_letters.append(d)
                continue
            eid = d.event_id  # type: ignore[union-attr]
            if eid in seen:
                res.duplicates += 1
                continue
            seen.add(eid)
            unique.append(d)  # type: ignore[arg-type]
            parts.append(part)
        for part in positions:
            self._seen[part] = wall
        for part in self.source.partitions():  # assigned but silent so far: holds the watermark until idle
            self._seen.setdefault(part, wall)
        lag = self.source.lag()
        try:
            fresh, late, breaches, anomalies = self._apply(res, unique, parts, wall)
            self._act_breaches(res, breaches)  # as soon as the engine sees them: before the batch's ledger write
            new_anomalies = self._commit_batch(res, fresh, late, positions, lag, now, wall, breaches, anomalies)
        except BaseException:
            # the engine holds this batch's events but the ledger does not: this processor must not go on (its
            # source would skip the batch) nor save that state; a new one resumes from the ledger and re-reads them
            self._failed = True
            self._forget_pending()
            raise
        self._act_anomalies(res, new_anomalies)
        self.source.commit(positions)
        self._account(res, lag, t0)
        return res

    def _apply(
        self, res: BatchResult, unique: list[StreamEvent], parts: list[str], wall: float
    ) -> tuple[list[StreamEvent], list[bool], list[Breach], list[Anomaly]]:
        """Drop events the ledger has already, apply the rest to the engine and evaluate it."""
        try:
            known = self._known(self._connection(), unique)
        except sa.exc.DBAPIError as err:  # the kept connection died between batches (a database restart, an idle
            if not err.connection_invalidated:  # timeout): nothing is applied yet, so reconnect once and read again
                raise
            log.warning("stream %s: the ledger connection was lost between batches; reconnecting", self.consumer)
            self._conn = None
            known = self._known(self._connection(), unique)
        fresh = unique
        if known:
            keep = [i for i, e in enumerate(unique) if e.event_id not in known]
            fresh, parts = [unique[i] for i in keep], [parts[i] for i in keep]
        res.duplicates += len(unique) - len(fresh)
        if not fresh:
            return fresh, [], [], []
        self.engine.batch_seq = self._seq
        self.engine.set_active_partitions(p for p, t in self._seen.items() if wall - t <= self.partition_idle_s)
        first = parts[0]
        if parts.count(first) == len(parts):  # one partition (the usual micro-batch): one call, in order
            late = self.engine.apply([e.record for e in fresh], first)
        else:
            by_partition: dict[str, list[int]] = {}
            for i, p in enumerate(parts):
                by_partition.setdefault(p, []).append(i)
            late = [False] * len(fresh)
            for part, idx in by_partition.items():
                for i, flag in zip(idx, self.engine.apply([fresh[i].record for i in idx], part), strict=True):
                    late[i] = flag
        res.late = sum(late)
        res.applied = len(fresh) - res.late
        breaches, anomalies = self.engine.evaluate()
        return fresh, late, breaches, anomalies

    def _commit_batch(
        self,
        res: BatchResult,
        fresh: list[StreamEvent],
        late: list[bool],
        positions: dict[str, int],
        lag: dict[str, int],
        now: dt.datetime,
        wall: float,
        breaches: list[Breach],
        anomalies: list[Anomaly],
    ) -> list[Anomaly]:
        """The batch's one ledger transaction (module docstring); returns the anomalies new in the feed."""
        seq = self._seq
        conn = self._connection()
        with conn.begin():
            if res.dead_letters:
                stmt = self._insert(stream_dead_letter).on_conflict_do_nothing(index_elements=["position_key"])
                conn.execute(
                    stmt,
                    [
                        {
                            "position_key": d.position[:400],
                            "consumer": self.consumer,
                            "field": d.field[:100],
                            "reason": d.reason,
                            "size": d.size,
                            "raw": d.raw,
                            "at": now,
                        }
                        for d in res.dead_letters
                    ],
                )
            if fresh:
                received = self._t(now)
                consumer = self.consumer
                t = self._t
                sqlite = self._sqlite
                records = [e.record for e in fresh]
                line_keys = self._folder.add_many(
                    records, range(seq + 1, seq + 1 + len(fresh)), wall, [e.group for e in fresh]
                )
                rows = []
                for e, is_late, line in zip(fresh, late, line_keys, strict=True):
                    seq += 1
                    rec = e.record
                    raw = e.raw
                    rows.append(  # finops_stream_event column order
                        (
                            e.event_id,
                            consumer,
                            e.producer[:200],
                            e.position[:300],
                            sqlite_time_text(e.time_text) if sqlite and e.time_text else t(rec.charge_period_start),
                            is_late,
                            received,
                            seq,
                            raw if isinstance(raw, str) else raw.decode("utf-8"),
                            line,
                            None,
                        )
                    )
                self._insert_events(conn, rows)
            self._fold(conn, self._folder.due(wall - self.fold_interval, self._fold_share(wall)), seq)
            new_anomalies = self._write_feed(conn, breaches, anomalies)
            share = self._state_share(wall)
            if share:
                self._write_state(conn, now, seq, share)
            self._write_checkpoints(conn, positions, lag, now)
        self._seq = seq
        if share:
            self._last_state = wall
        return new_anomalies

    def _fold_share(self, wall: float) -> int:
        """Lines this batch may fold: the pending groups' share of the time since the last batch."""
        elapsed, self._last_fold = wall - self._last_fold, wall
        return rate_share(len(self._folder), elapsed, self.fold_interval, self.fold_chunk)

    def _state_share(self, wall: float) -> int:
        """Changed states this batch saves: so many that each is saved about once per interval (after a long
        pause at most a tenth of them, or _STATE_CHUNK, so no batch stalls saving all at once)."""
        elapsed = wall - self._last_state
        if 0 < elapsed < self.state_min_gap and self.state_interval > 0:
            return 0  # saved a moment ago: the next batch saves the share of both (fewer, larger statements)
        dirty = self.engine.dirty_count()
        cap = dirty if self.state_interval <= 0 else max(_STATE_CHUNK, dirty // 10)
        return rate_share(dirty, elapsed, self.state_interval, cap)

    # ------------------------------------------------------------------ fold
    def _fold(self, conn: sa.Connection, groups: list[GroupKey], last_seq: int) -> int:
        """Write the cost lines of ``groups`` and record the fold (:mod:`.fold`), in ``conn``'s transaction.
        ``last_seq``: the last event recorded (the low watermark when nothing else is pending)."""
        if not groups:
            return 0
        fold_id = uuid.uuid4().hex
        lines, marks, n = self._folder.take(groups, fold_id)
        keys = [m.line_key for m in marks]
        done: dict[str, int] = {}
        for i in range(0, len(keys), _IN_CHUNK):
            done.update(
                (k, int(v))
                for k, v in conn.execute(
                    sa.select(stream_fold.c.line_key, stream_fold.c.upto_seq).where(
                        stream_fold.c.consumer == self.consumer,
                        stream_fold.c.line_key.in_(["", *keys[i : i + _IN_CHUNK]]),
                    )
                )
            )
        low = done.get("", 0)
        for m in marks:  # another writer under this consumer name folded these events, or a bug: never fold twice
            if m.first_seq <= max(low, done.get(m.line_key, 0)):
                raise RuntimeError(
                    f"stream {self.consumer}: fold {fold_id} holds events from seq {m.first_seq} of line "
                    f"{m.line_key}, but the ledger has them folded already; run one processor per consumer name"
                )
        self._write_lines(conn, lines, fold_id)
        at = self._t(dt.datetime.now(dt.UTC))
        rows = [self._mark(m.line_key, m.last_seq, fold_id, at) for m in marks]
        oldest = self._folder.oldest_seq()
        new_low = last_seq if oldest is None else oldest - 1
        if new_low > low:
            rows.append(self._mark("", new_low, fold_id, at))
        execute_raw(conn, self._fold_sql, rows)
        if new_low > low and time.monotonic() - self._last_prune >= self.fold_interval:
            self._prune_folds(conn, new_low)
        self.metrics.folded += n
        return n

    def _mark(self, line_key: str, upto: int, fold_id: str, at: Any) -> dict[str, Any]:
        return {"consumer": self.consumer, "line_key": line_key, "upto_seq": upto, "fold_id": fold_id, "folded_at": at}

    def _prune_folds(self, conn: sa.Connection, low: int) -> None:
        """Forget line keys' fold records below the low watermark (it covers their events)."""
        conn.execute(
            stream_fold.delete().where(
                stream_fold.c.consumer == self.consumer, stream_fold.c.line_key != "", stream_fold.c.upto_seq <= low
            )
        )
        self._last_prune = time.monotonic()

    def _write_lines(self, conn: sa.Connection, lines: list[CostRecord], fold_id: str) -> None:
        """The folded cost lines, through the one ledger write path, in ``conn``'s transaction."""
        scope = f"stream:{self.consumer}"
        self.ledger.ingest(lines, source="stream", scope=scope, batch_id=f"stream-{fold_id}", connection=conn)

    def _replay(self, after_seq: int) -> int:
        """Apply the events recorded after ``after_seq`` again, as first applied, to the states saved before each."""
        n = 0
        self.engine.batch_seq = after_seq
        with self.ledger.engine.connect() as conn:
            result = conn.execution_options(yield_per=5000).execute(
                sa.select(stream_event.c.payload, stream_event.c.late, stream_event.c.position, stream_event.c.seq)
                .where(
                    stream_event.c.consumer == self.consumer,
                    stream_event.c.seq > after_seq,
                    stream_event.c.payload.is_not(None),
                )
                .order_by(stream_event.c.seq)
            )
            part: str | None = None
            recs: list[Any] = []
            flags: list[bool] = []
            seqs: list[int] = []
            for payload, is_late, position, seq in result:
                p = (position or "").rsplit(":", 1)[0]
                if p != part and recs:
                    self.engine.apply(recs, part or "", late=flags, seqs=seqs)
                    recs, flags, seqs = [], [], []
                part = p
                d = self._replay_decoder.decode(payload, position or "")
                if isinstance(d, DeadLetter):
                    log.error(
                        "stream %s: recorded event at %s cannot be replayed (%s)", self.consumer, position, d.reason
                    )
                    continue
                recs.append(d.record)
                flags.append(bool(is_late))
                seqs.append(int(seq))
                n += 1
            if recs:
                self.engine.apply(recs, part or "", late=flags, seqs=seqs)
        return n

    def _recover_unfolded(self) -> None:
        """Fold the events a previous run recorded but did not fold (it crashed), decoding their payloads."""
        self._folder.clear()
        self._refold = False
        with self.ledger.engine.begin() as conn:
            f = stream_fold.c
            marks = dict(
                conn.execute(sa.select(f.line_key, f.upto_seq).where(f.consumer == self.consumer)).tuples().all()
            )
            low = marks.pop("", 0)
            e = stream_event.c
            rows = [
                r
                for r in conn.execute(
                    sa.select(e.event_id, e.payload, e.seq, e.line_key)
                    .where(e.consumer == self.consumer, e.seq > low, e.folded.is_(None))
                    .order_by(e.seq)
                ).tuples()
                if r[2] > marks.get(r[3], 0)
            ]
            last = max(self._seq, low)
            if not rows:
                if last > low:  # nothing pending: everything recorded so far is folded
                    execute_raw(
                        conn, self._fold_sql, [self._mark("", last, "recovered", self._t(dt.datetime.now(dt.UTC)))]
                    )
                return
            folder, unreadable = Folder(), []
            for event_id, payload, seq, _ in rows:
                d = self._replay_decoder.decode(payload or b"", f"refold:{event_id}")
                if isinstance(d, DeadLetter):
                    unreadable.append((event_id, f"{d.field}: {d.reason}"))
                    continue
                folder.add(d.record, int(seq))
            fold_id = uuid.uuid4().hex
            lines, _, _ = folder.take(folder.due(None), fold_id)
            self._write_lines(conn, lines, fold_id)
            for event_id, why in unreadable:  # kept in finops_stream_event with its payload; never folded twice
                log.error(
                    "stream %s: recorded event %s no longer decodes (%s; did the config or rate card change?); it "
                    "is kept in finops_stream_event with folded = 'unreadable' and is not in any cost line",
                    self.consumer,
                    event_id,
                    why,
                )
                conn.execute(
                    stream_event.update().where(stream_event.c.event_id == event_id).values(folded="unreadable")
                )
            # every event recorded is folded now (or unreadable): the low watermark covers them all
            execute_raw(conn, self._fold_sql, [self._mark("", last, fold_id, self._t(dt.datetime.now(dt.UTC)))])
            self._prune_folds(conn, last)
        log.info("stream %s: folded %d event(s) left unfolded by a previous run", self.consumer, len(rows))

    def _known(self, conn: sa.Connection, unique: list[StreamEvent]) -> set[str]:
        """The ids of ``unique`` that the ledger has recorded (one primary-key lookup each)."""
        if not unique:
            return set()
        ids = [e.event_id for e in unique]
        known: set[str] = set()
        for i in range(0, len(ids), _IN_CHUNK):
            part = ids[i : i + _IN_CHUNK]
            # padded (with its first id again) to a power of two: a few statements, prepared once each, rather
            # than one per batch size (the driver's statement cache keeps ~100; parsing one costs more than the
            # lookups it runs)
            part += part[:1] * ((1 << (len(part) - 1).bit_length()) - len(part))
            sql = self._known_sql.get(len(part))
            if sql is None:
                sql = self._known_sql[len(part)] = compile_raw(
                    sa.select(stream_event.c.event_id).where(
                        stream_event.c.event_id.in_([sa.bindparam(f"id{j}") for j in range(len(part))])
                    ),
                    self.ledger.engine.dialect,
                )
            text, order = sql
            params: Any = tuple(part) if order is not None else {f"id{j}": v for j, v in enumerate(part)}
            known.update(r[0] for r in conn.exec_driver_sql(text, params))
        conn.rollback()  # ends the read: no snapshot held while the breaches are claimed
        return known

    def _connection(self) -> sa.Connection:
        """The connection this processor's micro-batches use, kept open (no pool round trip, nor PostgreSQL's
        pre-ping, per batch); closed by :meth:`close`."""
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self.ledger.engine.connect()
        return self._conn

    def _not_planned(self, anomalies: list[Anomaly]) -> list[Anomaly]:
        """Drop anomalies of a scope a user labelled ``planned`` for that time (the batch detectors do the same)."""
        if not anomalies:
            return anomalies
        from finops_provider.core.anomaly import planned_windows, scope_text

        windows = planned_windows(self.ledger)
        if not windows:
            return anomalies
        kept = []
        for a in anomalies:
            spans = windows.get(scope_text(a.scope), [])
            if any(lo <= a.window_start < hi for lo, hi in spans):
                log.info("stream %s: anomaly %s suppressed (planned activity)", self.consumer, a.dedupe_key)
                continue
            kept.append(a)
        return kept

    def _write_feed(self, conn: sa.Connection, breaches: list[Breach], anomalies: list[Anomaly]) -> list[Anomaly]:
        """Feed rows for breaches and anomalies; returns the anomalies that are new in the feed."""
        anomalies = self._not_planned(anomalies)
        at = dt.datetime.now(dt.UTC)
        clock = self.engine.clock
        rows = [
            {
                "kind": "breach",
                "dedupe_key": b.dedupe_key[:400],
                "consumer": self.consumer,
                "at": at,
                "event_time": clock,
                "payload": json.dumps(b.to_json(), default=str),
            }
            for b in breaches
        ]
        if rows:
            conn.execute(self._insert(stream_feed).on_conflict_do_nothing(index_elements=["dedupe_key"]), rows)
        new: list[Anomaly] = []
        for a in anomalies:
            stmt = (
                self._insert(stream_feed)
                .values(
                    kind="anomaly",
                    dedupe_key=a.dedupe_key[:400],
                    consumer=self.consumer,
                    at=at,
                    event_time=clock,
                    payload=json.dumps(a.to_json(), default=str),
                )
                .on_conflict_do_nothing(index_elements=["dedupe_key"])
                .returning(stream_feed.c.id)
            )
            if conn.execute(stmt).first() is not None:
                new.append(a)
        return new

    def _write_state(self, conn: sa.Connection, now: dt.datetime, seq: int, limit: int | None = None) -> None:
        """Save up to ``limit`` changed states (all with ``None``) as of ``seq``, and the clock."""
        at = self._t(now)
        encode = msgspec.json.encode  # 7x json.dumps for these flat payloads; same JSON text
        t = self._t
        rows = [
            {
                "consumer": self.consumer,
                "state_key": key[:600],
                "kind": kind,
                "period_end": t(end),
                "payload": encode(payload).decode(),
                "updated_at": at,
            }
            for key, kind, end, payload in self.engine.dirty_state(limit, asof=seq)
        ]
        if rows:
            execute_raw(conn, self._state_sql, rows)

    def _write_checkpoints(
        self, conn: sa.Connection, positions: Mapping[str, int], lag: Mapping[str, int], now: dt.datetime
    ) -> None:
        if not positions:
            return
        at = self._t(now)
        rows = [
            {"consumer": self.consumer, "partition": p, "position": pos, "lag": lag.get(p), "updated_at": at}
            for p, pos in positions.items()
        ]
        execute_raw(conn, self._checkpoint_sql, rows)

    def _act_breaches(self, res: BatchResult, breaches: Sequence[Breach]) -> None:
        """Claim ``breaches`` and call the sinks with those claimed here, and with this consumer's own earlier
        claims that have no feed row yet.

        A breach's feed row commits with the batch, after the sinks were called: a claim of ours without one
        means the process died between the claim and that commit, maybe before the sinks ran, so they are
        called again (the batch was read again and derived it again). Sinks therefore see a breach at least
        once and, but for such a crash, exactly once; they make it exactly once by ignoring a ``dedupe_key``
        they have seen (the JSONL sink does; the outbox enqueues once per key).
        """
        if not breaches:
            return
        claimed = self.ledger.claim_breaches(breaches, by=self._claimer, connection=self._connection())
        again = self._undelivered([b.dedupe_key for b in breaches if b.dedupe_key not in claimed])
        for b in breaches:
            if b.dedupe_key not in claimed and b.dedupe_key not in again:
                continue
            if b.dedupe_key in again:
                log.warning("stream %s: breach %s claimed before a crash: delivered again", self.consumer, b.dedupe_key)
            res.breaches.append(b)
            for s in self.sinks:
                try:
                    s.on_breach(b)
                except Exception:
                    log.exception("stream sink %r failed on breach %s (the feed row stays)", s, b.dedupe_key)

    def _undelivered(self, keys: list[str]) -> set[str]:
        """Of ``keys`` (claimed already), those this consumer claimed whose feed row was never written."""
        if not keys:
            return set()
        conn = self._connection()
        with conn.begin():  # a read; ends before the batch's transaction
            ours = set(
                conn.execute(
                    sa.select(breach_table.c.dedupe_key).where(
                        breach_table.c.dedupe_key.in_(keys), breach_table.c.claimed_by == self._claimer
                    )
                ).scalars()
            )
            if not ours:
                return ours
            fed = set(
                conn.execute(
                    sa.select(stream_feed.c.dedupe_key).where(stream_feed.c.dedupe_key.in_([k[:400] for k in ours]))
                ).scalars()
            )
        return {k for k in ours if k[:400] not in fed}

    def _act_anomalies(self, res: BatchResult, anomalies: Iterable[Anomaly]) -> None:
        for a in anomalies:
            res.anomalies.append(a)
            for s in self.sinks:
                try:
                    s.on_anomaly(a)
                except Exception:
                    log.exception("stream sink %r failed on anomaly %s (the feed row stays)", s, a.dedupe_key)

    def _account(self, res: BatchResult, lag: dict[str, int], t0: float) -> None:
        m = self.metrics
        m.messages += res.messages
        m.applied += res.applied
        m.duplicates += res.duplicates
        m.late += res.late
        m.dead_letters += len(res.dead_letters)
        m.breaches += len(res.breaches)
        m.anomalies += len(res.anomalies)
        m.batches += 1
        m.last_batch_ms = (time.perf_counter() - t0) * 1000
        m.lag = lag
        m.recent_breaches = ([b.to_json() for b in res.breaches] + m.recent_breaches)[:10]
        m.recent_anomalies = ([a.to_json() for a in res.anomalies] + m.recent_anomalies)[:10]
        for d in res.dead_letters:
            log.warning("dead letter at %s: %s: %s", d.position, d.field, d.reason)

    # ------------------------------------------------------------------ loop
    def run(
        self,
        stop: threading.Event | None = None,
        *,
        idle_exit: float | None = None,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> StreamMetrics:
        """Process batches until ``stop`` is set (the current batch always completes), or after ``idle_exit``
        seconds without a message; then close the source."""
        stop = stop or threading.Event()
        if not self._started:
            res = self.start()
            if on_batch is not None:
                on_batch(res)
        idle_since = time.monotonic()
        ready: Callable[[], bool] = getattr(self.source, "ready", lambda: True)
        try:
            while not stop.is_set():
                res = self.run_once()
                if res.messages or not ready():  # a consumer still joining its group is not idle
                    idle_since = time.monotonic()
                elif idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
                    break
                if on_batch is not None:
                    on_batch(res)
        finally:
            self.close()
        return self.metrics

    def close(self) -> None:
        """Fold every pending event into the ledger and close the source."""
        try:
            if self._started and not self._failed:  # a failed processor's state must not be saved
                with self.ledger.engine.begin() as conn:
                    self._fold(conn, self._folder.due(None), self._seq)
                    self._write_state(conn, dt.datetime.now(dt.UTC), self._seq)
        except Exception:
            log.exception("stream %s: final fold failed; the next start folds these events", self.consumer)
            self._forget_pending()
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self.source.close()
            self._started = False


def rate_share(pending: int, elapsed: float, interval: float, cap: int) -> int:
    """Work items to do now so that each of ``pending`` is done about once per ``interval`` seconds, spread over
    calls ``elapsed`` seconds apart: at least one when any are pending, at most ``cap`` (all, up to ``cap``, when
    ``interval`` is 0)."""
    if not pending:
        return 0
    if interval <= 0:
        return min(pending, cap)
    return min(pending, cap, max(1, math.ceil(pending * elapsed / interval)))


def tune_gc() -> None:
    """Garbage-collector settings for a long-running stream service (``run()`` calls this after ``start()``).

    The config, the compiled budgets and the engine state live as long as the service. Left to the cyclic
    collector, every full collection walks them all: a 0.5-0.7 s pause with 10,000 budgets, every few seconds at
    10,000 events/s. They are frozen (still freed by reference counting, never scanned again) and the young
    generation is collected every 10,000 allocations instead of 700: events are freed by reference counting
    anyway, so the collector's passes found nothing and cost latency.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


def build_processor(
    ledger: Ledger,
    config: Any,
    source: str | None = None,
    *,
    consumer: str = "finops-stream",
    sinks: Sequence[StreamSink] = (),
    max_batch: int = 2000,
    poll_timeout: float = 0.2,
    max_future: dt.timedelta | None = dt.timedelta(hours=1),
    fold_interval: float = 30.0,
    fold_chunk: int = 500,
    state_interval: float = 15.0,
    **settings: Any,
) -> StreamProcessor:
    """A processor for a ``--source`` URL (:func:`~finops_provider.streaming.sources.parse_source`) and a config.

    :param settings: :class:`~finops_provider.streaming.engine.StreamSettings` overrides.
    """
    from finops_provider.streaming.sources import open_source, parse_source

    src = open_source(parse_source(source), consumer=consumer)
    return StreamProcessor(
        ledger,
        src,
        StreamEngine.from_config(config, **settings),
        decoder=EventDecoder(config, max_future=max_future),
        consumer=consumer,
        sinks=sinks,
        max_batch=max_batch,
        poll_timeout=poll_timeout,
        fold_interval=fold_interval,
        fold_chunk=fold_chunk,
        state_interval=state_interval,
    )
