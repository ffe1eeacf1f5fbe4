"""Durable outbox and enforcement log in the ledger database, plus a local spool for when it is unreachable.

Every enforcement action (Slack alert, Jira ticket, ServiceNow incident, DAG pause) becomes one outbox row,
enqueued with a unique ``dedupe_key`` (INSERT .. ON CONFLICT DO NOTHING), then delivered by whoever drains the
outbox: a row is leased atomically before delivery, so two concurrent drainers never send it twice; a failed
delivery is retried later with exponential backoff; a delivery that crashed mid-way is retried when its lease
expires (the one case of at-least-once: the target may see it twice).

When the ledger cannot be reached at all (network, PostgreSQL down), callers write what they have to the
:class:`LocalSpool` — a SQLite file under ``$FINOPS_HOME`` — and :func:`flush_spool` replays it later through
the one ledger write path.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from finops_provider.core.ledger import Ledger, finops_home
from finops_provider.core.records import COLUMNS, CostRecord, record_from_mapping
from finops_provider.core.schema import enforcement_event, outbox

log = logging.getLogger(__name__)

PENDING, SENDING, DONE, DEAD = "pending", "sending", "done", "dead"


class NotYet(Exception):
    """Raised by a deliverer when the action must wait (e.g. pause_after_run while the run still has tasks).

    The item goes back to pending, due again after ``retry_in_s``; it does not count as a failed attempt.
    """

    def __init__(self, reason: str, retry_in_s: float = 2.0) -> None:
        super().__init__(reason)
        self.retry_in_s = retry_in_s


@dataclass(frozen=True)
class OutboxPolicy:
    """Backoff of failed deliveries: attempt n waits ``min(cap, base * 2**(n-1))`` s (+ up to 10 % jitter)."""

    backoff_base_s: float = 30.0
    backoff_cap_s: float = 3600.0
    max_attempts: int = 25
    lease_s: float = 120.0

    def delay(self, attempts: int) -> float:
        d = min(self.backoff_cap_s, self.backoff_base_s * (2 ** max(0, attempts - 1)))
        return d + random.uniform(0, d / 10)


@dataclass
class OutboxItem:
    id: int
    dedupe_key: str
    kind: str
    payload: dict[str, Any]
    attempts: int


@dataclass
class DrainResult:
    """What one :meth:`Outbox.drain` did (dedupe keys)."""

    delivered: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Outbox:
    """The durable outbox of one ledger.

    :param ledger: the ledger whose database holds ``finops_outbox``.
    :param policy: backoff, attempts and lease length.
    """

    def __init__(self, ledger: Ledger, policy: OutboxPolicy | None = None) -> None:
        self.ledger = ledger
        self.policy = policy or OutboxPolicy()

    def enqueue(
        self, kind: str, dedupe_key: str, payload: dict[str, Any], *, not_before: dt.datetime | None = None
    ) -> bool:
        """Add an action once; True when this call added it (False: the key was already there)."""
        now = _now()
        stmt = (
            self.ledger._insert()(outbox)
            .values(
                dedupe_key=dedupe_key,
                kind=kind,
                payload=json.dumps(payload, sort_keys=True, default=str),
                status=PENDING,
                attempts=0,
                next_attempt_at=not_before or now,
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(outbox.c.id)
        )
        with self.ledger.engine.begin() as conn:
            return conn.execute(stmt).first() is not None

    def claim_due(
        self,
        *,
        limit: int = 20,
        kinds: Iterable[str] | None = None,
        keys: Iterable[str] | None = None,
        now: dt.datetime | None = None,
    ) -> list[OutboxItem]:
        """Lease up to ``limit`` due items (pending and due, or leased by a drainer whose lease expired)."""
        now = now or _now()
        due = sa.or_(
            sa.and_(outbox.c.status == PENDING, outbox.c.next_attempt_at <= now),
            sa.and_(outbox.c.status == SENDING, outbox.c.lease_until < now),
        )
        q = sa.select(outbox.c.id).where(due).order_by(outbox.c.id).limit(limit)
        if kinds is not None:
            q = q.where(outbox.c.kind.in_(list(kinds)))
        if keys is not None:
            q = q.where(outbox.c.dedupe_key.in_(list(keys)))
        out: list[OutboxItem] = []
        lease = now + dt.timedelta(seconds=self.policy.lease_s)
        with self.ledger.engine.begin() as conn:
            ids = [r.id for r in conn.execute(q)]
        for i in ids:
            with self.ledger.engine.begin() as conn:
                row = conn.execute(
                    outbox.update()
                    .where(outbox.c.id == i, due)
                    .values(status=SENDING, lease_until=lease, attempts=outbox.c.attempts + 1)
                    .returning(outbox.c.id, outbox.c.dedupe_key, outbox.c.kind, outbox.c.payload, outbox.c.attempts)
                ).first()
            if row is not None:
                out.append(OutboxItem(row.id, row.dedupe_key, row.kind, json.loads(row.payload), row.attempts))
        return out

    def complete(self, item: OutboxItem, result: str | None = None) -> None:
        with self.ledger.engine.begin() as conn:
            conn.execute(
                outbox.update()
                .where(outbox.c.id == item.id)
                .values(status=DONE, delivered_at=_now(), lease_until=None, result=result, last_error=None)
            )

    def fail(self, item: OutboxItem, error: str) -> bool:
        """Schedule a retry with backoff; returns False when the item is now dead (attempts exhausted)."""
        dead = item.attempts >= self.policy.max_attempts
        nxt = _now() + dt.timedelta(seconds=self.policy.delay(item.attempts))
        with self.ledger.engine.begin() as conn:
            conn.execute(
                outbox.update()
                .where(outbox.c.id == item.id)
                .values(
                    status=DEAD if dead else PENDING,
                    next_attempt_at=nxt,
                    lease_until=None,
                    last_error=error[:2000],
                )
            )
        return not dead

    def drain(
        self,
        deliver: Callable[[OutboxItem], str | None],
        *,
        limit: int = 20,
        time_budget_s: float = 15.0,
        kinds: Iterable[str] | None = None,
        keys: Iterable[str] | None = None,
    ) -> DrainResult:
        """Deliver due items with ``deliver`` (returns a result such as a ticket key, raises on failure)."""
        res = DrainResult()
        t0 = time.monotonic()
        for item in self.claim_due(limit=limit, kinds=kinds, keys=keys):
            if time.monotonic() - t0 > time_budget_s:  # give the lease back for the next drainer
                self.release(item)
                continue
            try:
                result = deliver(item)
            except NotYet as w:
                self.release(item, delay_s=w.retry_in_s)
                res.waiting.append(item.dedupe_key)
                log.info("outbox %s %s waits: %s", item.kind, item.dedupe_key, w)
                continue
            except Exception as e:
                alive = self.fail(item, f"{type(e).__name__}: {e}")
                (res.failed if alive else res.dead).append(item.dedupe_key)
                log.warning(
                    "outbox %s %s: attempt %d failed (%s)%s",
                    item.kind,
                    item.dedupe_key,
                    item.attempts,
                    type(e).__name__,
                    "" if alive else "; giving up",
                )
                continue
            self.complete(item, result)
            res.delivered.append(item.dedupe_key)
        return res

    def release(self, item: OutboxItem, delay_s: float = 0.0) -> None:
        """Give a leased item back without counting the attempt (due again after ``delay_s``)."""
        with self.ledger.engine.begin() as conn:
            conn.execute(
                outbox.update()
                .where(outbox.c.id == item.id)
                .values(
                    status=PENDING,
                    lease_until=None,
                    attempts=outbox.c.attempts - 1,
                    next_attempt_at=_now() + dt.timedelta(seconds=delay_s),
                )
            )

    def status(self, dedupe_key: str) -> tuple[str, str | None] | None:
        """(status, last error) of the item with ``dedupe_key``, or ``None`` when there is none."""
        q = sa.select(outbox.c.status, outbox.c.last_error).where(outbox.c.dedupe_key == dedupe_key)
        with self.ledger.engine.connect() as conn:
            row = conn.execute(q).first()
        return (row[0], row[1]) if row is not None else None

    def items(self, *, status: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(outbox).order_by(outbox.c.id)
        if status:
            q = q.where(outbox.c.status == status)
        if kind:
            q = q.where(outbox.c.kind == kind)
        with self.ledger.engine.connect() as conn:
            rows = [dict(m) for m in conn.execute(q).mappings()]
        for r in rows:
            r["payload"] = json.loads(r["payload"])
        return rows


# --------------------------------------------------------------------------- enforcement log
def record_event(
    ledger: Ledger,
    kind: str,
    *,
    actor: str,
    dag_id: str | None = None,
    run_id: str | None = None,
    task_id: str | None = None,
    reason: str | None = None,
    dedupe_key: str | None = None,
    detail: dict[str, Any] | None = None,
    at: dt.datetime | None = None,
) -> None:
    """Append one enforcement event (pause, unpause, approval, gate decision, recovery)."""
    with ledger.engine.begin() as conn:
        conn.execute(
            enforcement_event.insert().values(
                at=at or _now(),
                kind=kind,
                dag_id=dag_id,
                run_id=run_id,
                task_id=task_id,
                actor=actor[:250],
                reason=reason,
                dedupe_key=dedupe_key,
                detail=json.dumps(detail, sort_keys=True, default=str) if detail is not None else None,
            )
        )


def events(ledger: Ledger, *, dag_id: str | None = None, kinds: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Enforcement events, oldest first (``detail`` decoded)."""
    q = sa.select(enforcement_event).order_by(enforcement_event.c.id)
    if dag_id is not None:
        q = q.where(enforcement_event.c.dag_id == dag_id)
    if kinds:
        q = q.where(enforcement_event.c.kind.in_(list(kinds)))
    with ledger.engine.connect() as conn:
        rows = [dict(m) for m in conn.execute(q).mappings()]
    for r in rows:
        r["detail"] = json.loads(r["detail"]) if r["detail"] else None
    return rows


def last_pause_state(ledger: Ledger, dag_id: str) -> dict[str, Any] | None:
    """The latest pause / unpause event of ``dag_id`` (None if FinOps never paused it)."""
    rows = events(ledger, dag_id=dag_id, kinds=("pause", "unpause"))
    return rows[-1] if rows else None


# --------------------------------------------------------------------------- local spool
_TEXT_KINDS = {c.attr: c.kind for c in COLUMNS}


def record_to_json(r: CostRecord) -> dict[str, Any]:
    """A record as JSON-safe attribute -> value (Decimals as exact strings, times ISO 8601)."""
    out: dict[str, Any] = {}
    for c in COLUMNS:
        v = getattr(r, c.attr)
        if v is None:
            continue
        if isinstance(v, Decimal):
            out[c.attr] = format(v, "f")
        elif isinstance(v, dt.datetime):
            out[c.attr] = v.isoformat()
        else:
            out[c.attr] = v
    return out


def record_from_json(d: dict[str, Any]) -> CostRecord:
    row = dict(d)
    if isinstance(row.get("tags"), dict):
        row["tags"] = json.dumps(row["tags"])
    return record_from_mapping(row)


class LocalSpool:
    """An append-only SQLite file (default ``$FINOPS_HOME/spool.db``) for records the ledger could not take.

    Uses the standard-library ``sqlite3`` only, so it works when SQLAlchemy cannot reach the ledger.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else finops_home() / "spool.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._conn() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
                "source TEXT NOT NULL, scope TEXT, payload TEXT NOT NULL, created_at TEXT NOT NULL)"
            )

    def _conn(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        return c

    def put_records(self, records: Sequence[CostRecord], *, source: str, scope: str | None = None) -> None:
        payload = json.dumps([record_to_json(r) for r in records])
        with self._conn() as c:
            c.execute(
                "INSERT INTO spool (kind, source, scope, payload, created_at) VALUES (?, ?, ?, ?, ?)",
                ("records", source, scope, payload, _now().isoformat()),
            )

    def pending(self) -> list[tuple[int, str, str, str | None, str]]:
        with self._conn() as c:
            return list(c.execute("SELECT id, kind, source, scope, payload FROM spool ORDER BY id"))

    def delete(self, spool_id: int) -> None:
        with self._conn() as c:
            c.execute("DELETE FROM spool WHERE id = ?", (spool_id,))

    def __len__(self) -> int:
        with self._conn() as c:
            return int(c.execute("SELECT count(*) FROM spool").fetchone()[0])


def flush_spool(ledger: Ledger, spool: LocalSpool) -> list[CostRecord]:
    """Replay spooled records into the ledger (idempotent: same natural keys); returns the records written."""
    written: list[CostRecord] = []
    for sid, kind, source, scope, payload in spool.pending():
        if kind != "records":
            spool.delete(sid)
            continue
        records = [record_from_json(d) for d in json.loads(payload)]
        ledger.ingest(records, source=source, scope=scope)
        spool.delete(sid)
        written.extend(records)
    if written:
        log.info("flushed %d spooled records into %r", len(written), ledger)
    return written
