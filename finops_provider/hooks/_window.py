"""Small helpers shared by the billing hooks: UTC day windows and bounded collection-scope names."""

from __future__ import annotations

import datetime as dt
import hashlib

#: ``finops_cost_line.collection_scope`` is VARCHAR(200)
MAX_SCOPE = 200


def utc_day(value: dt.date | dt.datetime | str) -> dt.date:
    """The UTC calendar day of a date, an aware / naive (UTC) datetime or an ISO string."""
    if isinstance(value, str):
        text = value.strip()
        if len(text) == 10:
            return dt.date.fromisoformat(text)
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).date() if value.tzinfo else value.date()
    return value


def day_start(day: dt.date) -> dt.datetime:
    """Midnight UTC of ``day``."""
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def day_window(
    start: dt.date | dt.datetime | str, end: dt.date | dt.datetime | str, *, extend_back_days: int = 0
) -> tuple[dt.datetime, dt.datetime]:
    """``[start, end)`` as whole UTC days (an ``end`` inside a day includes that day), optionally re-pulling
    ``extend_back_days`` more days before ``start``.

    :raises ValueError: when the window is empty.
    """
    s = utc_day(start) - dt.timedelta(days=max(0, extend_back_days))
    e_day = utc_day(end)
    if _has_time(end) and _as_utc(end) > day_start(e_day):
        e_day += dt.timedelta(days=1)  # a partial last day is collected whole
    if e_day <= s:
        raise ValueError(f"empty window {s}..{e_day}: end must be after start")
    return day_start(s), day_start(e_day)


def _has_time(value: dt.date | dt.datetime | str) -> bool:
    return isinstance(value, dt.datetime) or (isinstance(value, str) and len(value.strip()) > 10)


def _as_utc(value: dt.date | dt.datetime | str) -> dt.datetime:
    d = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00")) if isinstance(value, str) else value
    if not isinstance(d, dt.datetime):
        d = dt.datetime(d.year, d.month, d.day)
    return d.replace(tzinfo=dt.UTC) if d.tzinfo is None else d.astimezone(dt.UTC)


def bounded_scope(scope: str) -> str:
    """``scope`` itself when it fits the ledger column, else a readable prefix plus a stable hash."""
    if len(scope) <= MAX_SCOPE:
        return scope
    digest = hashlib.blake2b(scope.encode("utf-8"), digest_size=12).hexdigest()
    return f"{scope[: MAX_SCOPE - len(digest) - 1]}#{digest}"
