"""The live feed, read back from the ledger: breaches and anomalies, running totals, lag, dead letters.

The stream processor writes the feed (``finops_stream_feed``) in the same transaction as the state that
produced it, so a reader never sees a breach whose cost is not in the ledger. Readers poll by id
(``after_id``): the dashboard, :class:`finops_provider.triggers.stream.StreamFeedTrigger`, or anything
that can read the ledger database. Money is exact strings with currencies, as everywhere.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from finops_provider.core.ledger import Ledger
from finops_provider.core.schema import (
    stream_checkpoint,
    stream_dead_letter,
    stream_event,
    stream_feed,
    stream_fold,
    stream_state,
)


def read_feed(
    ledger: Ledger,
    *,
    after_id: int = 0,
    kinds: Iterable[str] | None = None,
    budgets: Iterable[str] | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Feed items with id > ``after_id`` in id order: ``{"id", "kind", "dedupe_key", "at", "payload"}``.

    :param kinds: ``breach`` and/or ``anomaly`` (default both).
    :param budgets: only breaches of these budgets (anomalies are kept only when ``kinds`` asks for them).
    """
    q = sa.select(stream_feed).where(stream_feed.c.id > after_id).order_by(stream_feed.c.id).limit(limit)
    if kinds is not None:
        q = q.where(stream_feed.c.kind.in_(list(kinds)))
    wanted = set(budgets) if budgets is not None else None
    out = []
    with ledger.engine.connect() as conn:
        for m in conn.execute(q).mappings():
            payload = json.loads(m["payload"])
            if wanted is not None and m["kind"] == "breach" and payload.get("budget") not in wanted:
                continue
            out.append(
                {
                    "id": int(m["id"]),
                    "kind": m["kind"],
                    "dedupe_key": m["dedupe_key"],
                    "consumer": m["consumer"],
                    "at": m["at"].isoformat(),
                    "event_time": m["event_time"].isoformat() if m["event_time"] else None,
                    "payload": payload,
                }
            )
    return out


def current_totals(
    ledger: Ledger, *, consumer: str | None = None, at: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """Running budget totals of the periods still open at ``at`` (default: the latest stream clock)."""
    with ledger.engine.connect() as conn:
        q = sa.select(stream_state.c.consumer, stream_state.c.kind, stream_state.c.period_end, stream_state.c.payload)
        if consumer is not None:
            q = q.where(stream_state.c.consumer == consumer)
        rows = list(conn.execute(q))
    clocks = [dt.datetime.fromisoformat(json.loads(p)["clock"]) for _c, k, _e, p in rows if k == "clock"]
    at = at or (max(clocks) if clocks else dt.datetime.now(dt.UTC))
    out = []
    for c, kind, end, payload in rows:
        if kind != "budget" or (end is not None and end <= at):
            continue
        p = json.loads(payload)
        p["consumer"] = c
        out.append(p)
    out.sort(key=lambda p: (p["budget"], p["period_start"]))
    return out


def consumer_status(ledger: Ledger) -> list[dict[str, Any]]:
    """Checkpoint and lag per consumer and partition (lag: messages for Kafka, bytes for the JSONL source)."""
    with ledger.engine.connect() as conn:
        return [
            {
                "consumer": m["consumer"],
                "partition": m["partition"],
                "position": int(m["position"]),
                "lag": None if m["lag"] is None else int(m["lag"]),
                "updated_at": m["updated_at"].isoformat(),
            }
            for m in conn.execute(sa.select(stream_checkpoint).order_by(stream_checkpoint.c.consumer)).mappings()
        ]


def stream_events(ledger: Ledger, consumer: str | None = None) -> dict[str, int]:
    """Events the stream recorded (each once) and how many still wait to be folded into cost lines (above
    their consumer's low watermark and their line key's last fold: ``finops_stream_fold``)."""
    e, f = stream_event, stream_fold
    low = sa.select(f.c.upto_seq).where(f.c.consumer == e.c.consumer, f.c.line_key == "").scalar_subquery()
    upto = sa.select(f.c.upto_seq).where(f.c.consumer == e.c.consumer, f.c.line_key == e.c.line_key).scalar_subquery()
    pending = sa.and_(
        e.c.folded.is_(None),
        e.c.seq > sa.func.coalesce(low, 0),
        e.c.seq > sa.func.coalesce(upto, 0),
    )
    q = sa.select(sa.func.count(), sa.func.count(sa.case((pending, 1)))).select_from(e)
    if consumer is not None:
        q = q.where(e.c.consumer == consumer)
    with ledger.engine.connect() as conn:
        total, unfolded = conn.execute(q).one()
    return {"events": int(total), "unfolded": int(unfolded)}


def dead_letters(ledger: Ledger, *, limit: int = 100) -> list[dict[str, Any]]:
    """The newest dead letters: position, field, reason, size (the raw head is kept in the table)."""
    q = sa.select(stream_dead_letter).order_by(stream_dead_letter.c.id.desc()).limit(limit)
    with ledger.engine.connect() as conn:
        return [
            {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in m.items() if k != "raw"}
            for m in conn.execute(q).mappings()
        ]
