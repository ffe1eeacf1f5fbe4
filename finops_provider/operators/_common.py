"""Helpers shared by the FinOps operators (window parsing, config and ledger resolution)."""

from __future__ import annotations

import datetime as dt
from typing import Any


def as_utc(value: Any, name: str) -> dt.datetime:
    """A rendered template value (datetime, date or ISO string) as an aware UTC datetime."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, str) and value.strip():
        text = value.strip().replace("Z", "+00:00")
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not a date or timestamp; use ISO 8601 (YYYY-MM-DD)") from None
        return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)
    raise ValueError(f"{name}: missing; pass a date, for example '{{{{ data_interval_start }}}}'")


def floor_day(t: dt.datetime) -> dt.datetime:
    return t.replace(hour=0, minute=0, second=0, microsecond=0)
