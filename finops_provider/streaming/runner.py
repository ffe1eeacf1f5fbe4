"""The stream processor: source -> decode -> engine -> one ledger transaction per micro-batch -> sinks -> commit.

Exactly-once, by construction
-----------------------------
Each micro-batch (up to ``max_batch`` messages, as soon as they are available) is applied in **one ledger
transaction** that holds everything the batch changed:

1. dead letters (malformed, oversized, unpriceable, wrong-currency-code messages; unique per source position),
2. the ids of the events applied (``finops_stream_event``; an id already there is a duplicate and skipped),
3. the cost lines (:meth:`Ledger.ingest` with ``x_line_item_id = event_id``, inside this transaction),
4. the engine state the batch changed (running totals, detector state, clock) and the feed rows of the
   breaches/anomalies it produced,
5. the source checkpoint (next position per partition).

Only after that commit are breaches claimed (:meth:`Ledger.claim_breach`, atomic, true once), sinks called
and the source committed (Kafka offsets). A crash anywhere before the commit rolls everything back and the
messages are read again; a crash after it replays messages whose ids are recorded, which change nothing.
On start the engine state is loaded from the ledger and re-evaluated: a breach whose claim was lost in a
crash is claimed then; one already claimed is not acted on again. So the ledger totals equal the sum of
the distinct events produced, to the last digit, and each breach is alerted once.

The engine's hot path never touches the database; the database is written once per batch.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa

from finops_provider.core.anomaly import Anomaly
from finops_provider.core.budgets import Breach
from finops_provider.core.ledger import Ledger
from finops_provider.core.schema import stream_checkpoint, stream_dead_letter, stream_event, stream_feed, stream_state
from finops_provider.streaming.engine import StreamEngine
from finops_provider.streaming.events import DeadLetter, EventDecoder, StreamEvent
from finops_provider.streaming.sources import Message, Source

log = logging.getLogger(__name__)

_IN_CHUNK = 500


class StreamSink(Protocol):
    """Where breaches and anomalies go after they are durable (and, for breaches, claimed once).

    This is how the enforcement actions (notifiers, pause, tickets) plug in: a sink that enqueues into the
    enforcement outbox, or calls a notifier. A sink that raises is logged and skipped — the feed row stays,
    so the action can still be driven from the feed (the Airflow trigger) or retried by the outbox.
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
    ) -> None:
        self.ledger = ledger
        self.source = source
        self.engine = engine
        self.decoder = decoder or EventDecoder()
        self.consumer = consumer
        self.sinks = list(sinks)
        self.max_batch = max_batch
        self.poll_timeout = poll_timeout
        self.partition_idle_s = partition_idle_s
        self.metrics = StreamMetrics()
        self._seen: dict[str, float] = {}  # partition -> wall clock of its last message
        self._started = False
        self._insert = ledger._insert()

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
            if clock is not None:
                t = dt.datetime.fromisoformat(json.loads(clock)["clock"])
                rows.append(("clock", {"clock": t.isoformat()}))
                wm = t - self.engine.settings.allowed_lateness
                q = q.where(sa.or_(stream_state.c.period_end.is_(None), stream_state.c.period_end > wm))
            rows.extend((k, json.loads(p)) for k, p in conn.execute(q))
        self.engine.load(rows)
        self.source.start(checkpoints)
        self._started = True
        log.info(
            "stream %s: resumed %d state(s) and %d checkpoint(s) from %r",
            self.consumer,
            len(rows),
            len(checkpoints),
            self.ledger,
        )
        res = BatchResult()
        breaches, anomalies = self.engine.evaluate()
        if breaches or anomalies:
            with self.ledger.engine.begin() as conn:
                new_anomalies = self._write_feed(conn, breaches, anomalies)
            self._act(res, breaches, new_anomalies)
        return res

    # ---------------------------------------------------------------- batch
    def run_once(self) -> BatchResult:
        """Poll one micro-batch and process it (an empty result when nothing arrived in ``poll_timeout``)."""
        if not self._started:
            self.start()
        msgs = self.source.poll(self.max_batch, self.poll_timeout)
        if not msgs:
            self.metrics.lag = self.source.lag()
            return BatchResult()
        return self.process(msgs)

    def process(self, msgs: Sequence[Message]) -> BatchResult:
        """Apply one micro-batch exactly once (see the module docstring for the order of effects)."""
        t0 = time.perf_counter()
        res = BatchResult(messages=len(msgs))
        now = dt.datetime.now(dt.UTC)
        events: list[StreamEvent] = []
        positions: dict[str, int] = {}
        partition_of: dict[str, str] = {}
        wall = time.monotonic()
        for m in msgs:
            positions[m.partition] = max(positions.get(m.partition, 0), m.next_position)
            d = self.decoder.decode(m.value, m.position_key)
            if isinstance(d, DeadLetter):
                res.dead_letters.append(d)
            else:
                events.append(d)
                partition_of.setdefault(d.event_id, m.partition)
        for part in positions:
            self._seen[part] = wall
        for part in self.source.partitions():  # assigned but silent so far: holds the watermark until idle
            self._seen.setdefault(part, wall)
        seen: set[str] = set()
        unique: list[StreamEvent] = []
        for e in events:
            if e.event_id in seen:
                res.duplicates += 1
            else:
                seen.add(e.event_id)
                unique.append(e)
        lag = self.source.lag()
        with self.ledger.engine.begin() as conn:
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
            fresh = self._fresh(conn, unique)
            res.duplicates += len(unique) - len(fresh)
            breaches: list[Breach] = []
            anomalies: list[Anomaly] = []
            if fresh:
                self.engine.set_active_partitions(p for p, t in self._seen.items() if wall - t <= self.partition_idle_s)
                by_partition: dict[str, list[StreamEvent]] = {}
                for e in fresh:
                    by_partition.setdefault(partition_of[e.event_id], []).append(e)
                late_of: dict[str, bool] = {}
                for part, evs in by_partition.items():
                    for e, flag in zip(evs, self.engine.apply([e.record for e in evs], part), strict=True):
                        late_of[e.event_id] = flag
                late = [late_of[e.event_id] for e in fresh]
                res.late = sum(late)
                res.applied = len(fresh) - res.late
                conn.execute(
                    stream_event.insert(),
                    [
                        {
                            "event_id": e.event_id,
                            "consumer": self.consumer,
                            "producer": e.producer[:200],
                            "position": e.position[:300],
                            "event_time": e.record.charge_period_start,
                            "late": is_late,
                            "received_at": now,
                        }
                        for e, is_late in zip(fresh, late, strict=True)
                    ],
                )
                self.ledger.ingest(
                    [e.record for e in fresh],
                    source="stream",
                    scope=f"stream:{self.consumer}",
                    batch_id=f"stream-{uuid.uuid4().hex}",
                    connection=conn,
                )
                breaches, anomalies = self.engine.evaluate()
            new_anomalies = self._write_feed(conn, breaches, anomalies)
            self._write_state(conn, now)
            self._write_checkpoints(conn, positions, lag, now)
        self._act(res, breaches, new_anomalies)
        self.source.commit(positions)
        self._account(res, lag, t0)
        return res

    def _fresh(self, conn: sa.Connection, unique: list[StreamEvent]) -> list[StreamEvent]:
        if not unique:
            return []
        ids = [e.event_id for e in unique]
        known: set[str] = set()
        for i in range(0, len(ids), _IN_CHUNK):
            part = ids[i : i + _IN_CHUNK]
            known.update(
                conn.execute(sa.select(stream_event.c.event_id).where(stream_event.c.event_id.in_(part))).scalars()
            )
        return [e for e in unique if e.event_id not in known]

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

    def _write_state(self, conn: sa.Connection, now: dt.datetime) -> None:
        rows = [
            {
                "consumer": self.consumer,
                "state_key": key[:600],
                "kind": kind,
                "period_end": end,
                "payload": json.dumps(payload),
                "updated_at": now,
            }
            for key, kind, end, payload in self.engine.dirty_state()
        ]
        if not rows:
            return
        stmt = self._insert(stream_state)
        stmt = stmt.on_conflict_do_update(
            index_elements=["consumer", "state_key"],
            set_={
                "kind": stmt.excluded.kind,
                "period_end": stmt.excluded.period_end,
                "payload": stmt.excluded.payload,
                "updated_at": stmt.excluded.updated_at,
            },
        )
        conn.execute(stmt, rows)

    def _write_checkpoints(
        self, conn: sa.Connection, positions: Mapping[str, int], lag: Mapping[str, int], now: dt.datetime
    ) -> None:
        if not positions:
            return
        stmt = self._insert(stream_checkpoint)
        stmt = stmt.on_conflict_do_update(
            index_elements=["consumer", "partition"],
            set_={"position": stmt.excluded.position, "lag": stmt.excluded.lag, "updated_at": stmt.excluded.updated_at},
        )
        conn.execute(
            stmt,
            [
                {"consumer": self.consumer, "partition": p, "position": pos, "lag": lag.get(p), "updated_at": now}
                for p, pos in positions.items()
            ],
        )

    def _act(self, res: BatchResult, breaches: Iterable[Breach], anomalies: Iterable[Anomaly]) -> None:
        for b in breaches:
            if not self.ledger.claim_breach(b):
                continue
            res.breaches.append(b)
            for s in self.sinks:
                try:
                    s.on_breach(b)
                except Exception:
                    log.exception("stream sink %r failed on breach %s (the feed row stays)", s, b.dedupe_key)
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
        self.source.close()
        self._started = False


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
    )
