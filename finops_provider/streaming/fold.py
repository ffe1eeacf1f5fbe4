"""Folding stream events into ledger cost lines: one line per attribution, hour and fold, not one per event.

A stream at 10,000 events/s cannot afford a full FOCUS cost line (two content hashes, ~45 columns, four
indexes) per event inside each micro-batch. So a micro-batch durably records each event once, narrowly
(``finops_stream_event``: id, ``seq``, time, the payload, the ``line_key`` of the line it belongs to), and keeps
its amounts in a :class:`Folder` in memory. Groups of events that share every attribution column, the
currency, the charge category and the hour of their event time are *folded*: written to
``finops_cost_line`` as one line whose costs and quantities are the exact Decimal sums of the events,
in the same transaction that records the fold in ``finops_stream_fold``. A group is folded once it has waited
``interval`` seconds (a bounded number of groups per micro-batch, so no batch stalls), and everything is
folded when the processor closes.

A fold is recorded per line, never per event: ``finops_stream_fold`` keeps, per consumer and line key, the
``seq`` of the last event folded (a group holds its key's pending events, and seqs only grow, so every
event of that key up to it is folded), plus a low watermark (line key ``''``): every event up to it is folded.
So an event insert touches only the id and ``seq`` indexes and no event row is updated again: an index on
``line_key`` (one insertion point per line, all over the index) took two thirds of a micro-batch's database
time.

Exactly once: an event's cost is in the ledger either as an unfolded ``finops_stream_event`` row or as part
of exactly one folded cost line, never both, because the line and its fold record commit together. After a
crash the unfolded rows (above the low watermark, not covered by their key's fold) are decoded again from
their payload and folded (:meth:`StreamProcessor.start`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import operator
import time
from collections.abc import Iterable
from decimal import Decimal, localcontext
from typing import Any

from finops_provider.core.money import MONEY_CONTEXT
from finops_provider.core.records import COLUMNS, CostRecord

#: Columns summed over the events of a line (costs and quantities).
SUMMED = (
    "billed_cost",
    "effective_cost",
    "list_cost",
    "contracted_cost",
    "pricing_quantity",
    "consumed_quantity",
)
#: Unit prices: kept when every event of the line has the same one, else left empty.
_SAME = ("list_unit_price", "contracted_unit_price")
_NOT_KEY = {*SUMMED, *_SAME, "charge_period_start", "charge_period_end", "x_line_item_id", "tags"}
_KEY_ATTRS = tuple(c.attr for c in COLUMNS if c.attr not in _NOT_KEY)
_KEY_GET = operator.attrgetter(*_KEY_ATTRS)
_SUM_GET = operator.attrgetter(*SUMMED)
_SAME_GET = operator.attrgetter(*_SAME)
_NO_SAME: list[Decimal | None] = [None] * len(_SAME)


GroupKey = tuple[dt.datetime, tuple[Any, ...], str]


#: hour -> the datetime at its start (``datetime.replace`` costs ~1.5 us a call here: more than the rest of the key)
_HOURS: dict[tuple[Any, ...], dt.datetime] = {}


def _hour(t: dt.datetime) -> dt.datetime:
    k = (t.year, t.month, t.day, t.hour, t.tzinfo, t.fold)
    h = _HOURS.get(k)
    if h is None:
        if len(_HOURS) > 10_000:
            _HOURS.clear()
        h = _HOURS[k] = t.replace(minute=0, second=0, microsecond=0)
    return h


def group_key(rec: CostRecord) -> GroupKey:
    """The cost line an event folds into: its attribution, currency, category and the hour of its time."""
    return (_hour(rec.charge_period_start), *group_part(rec))  # type: ignore[return-value]


def group_part(rec: CostRecord) -> tuple[tuple[Any, ...], str]:
    """:func:`group_key` apart from the hour (the stream decoder keeps it per template of events)."""
    return _KEY_GET(rec), json.dumps(rec.tags, sort_keys=True, ensure_ascii=False) if rec.tags else ""


def line_key(key: GroupKey) -> str:
    """A short digest of a group key: what ``finops_stream_event.line_key`` stores."""
    text = repr((key[0].isoformat(), key[1], key[2]))
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


@dataclasses.dataclass(slots=True)
class _Group:
    line_key: str
    first: CostRecord
    since: float  # monotonic time of its first pending event
    start: dt.datetime
    end: dt.datetime
    sums: list[Decimal | None]
    same: list[Decimal | None]
    first_seq: int  # seq of its first and last pending event
    last_seq: int
    events: int = 1


@dataclasses.dataclass(frozen=True, slots=True)
class FoldMark:
    """What a folded line covers: every event with ``line_key`` and ``first_seq <= seq <= last_seq`` not folded
    before (the ledger keeps ``last_seq`` per line key: ``finops_stream_fold``)."""

    line_key: str
    first_seq: int
    last_seq: int


class Folder:
    """Pending groups of applied-but-unfolded stream events, oldest first (pure; the runner writes them)."""

    def __init__(self) -> None:
        self._groups: dict[GroupKey, _Group] = {}
        self.events = 0

    def __len__(self) -> int:
        return len(self._groups)

    def add(self, rec: CostRecord, seq: int, now: float | None = None) -> str:
        """Count ``rec`` (the event with ``seq``) in its group; returns the group's :func:`line_key`."""
        return self.add_many((rec,), (seq,), time.monotonic() if now is None else now)[0]

    def add_many(
        self,
        records: Iterable[CostRecord],
        seqs: Iterable[int],
        now: float,
        parts: Iterable[tuple[Any, ...] | None] | None = None,
    ) -> list[str]:
        """Count each record in its group (one exact-arithmetic context for all); their :func:`line_key` s.
        ``seqs`` are the events' ``seq``, increasing (a group folds its pending events in seq order); ``parts``
        their :func:`group_part` where known (``None``: computed here)."""
        out: list[str] = []
        append = out.append
        groups = self._groups
        if parts is None:
            records = list(records)
            parts = [None] * len(records)
        with localcontext(MONEY_CONTEXT):
            for rec, seq, part in zip(records, seqs, parts, strict=True):
                key = (_hour(rec.charge_period_start), *(group_part(rec) if part is None else part))
                g = groups.get(key)
                self.events += 1
                if g is None:
                    g = groups[key] = _Group(
                        line_key(key),
                        rec,
                        now,
                        rec.charge_period_start,
                        rec.charge_period_end,
                        list(_SUM_GET(rec)),
                        list(_SAME_GET(rec)),
                        seq,
                        seq,
                    )
                    append(g.line_key)
                    continue
                g.events += 1
                g.last_seq = seq
                if rec.charge_period_start < g.start:
                    g.start = rec.charge_period_start
                if rec.charge_period_end > g.end:
                    g.end = rec.charge_period_end
                sums = g.sums
                i = 0
                for v in _SUM_GET(rec):
                    if v is not None:
                        cur = sums[i]
                        sums[i] = v if cur is None else cur + v
                    i += 1
                same = g.same
                if same != _NO_SAME:  # a unit price still shared by every event of the group
                    for j, v in enumerate(_SAME_GET(rec)):
                        if same[j] is not None and same[j] != v:
                            same[j] = None
                append(g.line_key)
        return out

    def due(self, older_than: float | None, limit: int | None = None) -> list[GroupKey]:
        """Keys of groups waiting since before ``older_than`` (monotonic; ``None``: all), oldest first."""
        out: list[GroupKey] = []
        for key, g in self._groups.items():  # insertion order is age order
            if (older_than is not None and g.since > older_than) or (limit is not None and len(out) >= limit):
                break
            out.append(key)
        return out

    def oldest_seq(self) -> int | None:
        """The lowest ``seq`` still pending (``None``: nothing pending): every event before it is folded."""
        for g in self._groups.values():  # groups are in the order of their first event
            return g.first_seq
        return None

    def take(self, keys: Iterable[GroupKey], fold_id: str) -> tuple[list[CostRecord], list[FoldMark], int]:
        """Remove ``keys``; return their cost lines, what each covers and the number of events they hold."""
        lines: list[CostRecord] = []
        marks: list[FoldMark] = []
        n = 0
        for key in keys:
            g = self._groups.pop(key)
            self.events -= g.events
            n += g.events
            marks.append(FoldMark(g.line_key, g.first_seq, g.last_seq))
            changes: dict[str, Any] = dict(zip(SUMMED, g.sums, strict=True))
            changes.update(zip(_SAME, g.same, strict=True))
            lines.append(
                dataclasses.replace(
                    g.first,
                    charge_period_start=g.start,
                    charge_period_end=g.end,
                    x_line_item_id=f"fold:{fold_id}:{g.line_key}",
                    **changes,
                )
            )
        return lines, marks, n

    def clear(self) -> None:
        self._groups.clear()
        self.events = 0
