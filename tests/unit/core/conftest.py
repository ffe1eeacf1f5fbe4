"""Fixtures for the pure-core tests: a record factory and the parsed FOCUS sample."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from finops_provider.core.focus import BadRow, read_focus
from finops_provider.core.records import CostRecord, build_record

UTC = dt.UTC
T0 = dt.datetime(2024, 9, 1, tzinfo=UTC)

RecordFactory = Callable[..., CostRecord]


@pytest.fixture
def make_record() -> RecordFactory:
    """Build a valid record: one USD hour starting ``day`` days after 2024-09-01 (override any column)."""

    def make(cost: Any = "1.00", *, day: int = 0, hour: int = 0, **kw: Any) -> CostRecord:
        start = T0 + dt.timedelta(days=day, hours=hour)
        fields: dict[str, Any] = {
            "billed_cost": Decimal(str(cost)),
            "effective_cost": Decimal(str(cost)),
            "billing_currency": "USD",
            "charge_period_start": start,
            "charge_period_end": start + dt.timedelta(hours=1),
            "provider_name": "AWS",
            "service_name": "Amazon S3",
        }
        fields.update(kw)
        return build_record(**fields)

    return make


@pytest.fixture(scope="session")
def _sample_items(focus_sample_path: Path) -> tuple[CostRecord | BadRow, ...]:
    return tuple(read_focus(focus_sample_path))


@pytest.fixture
def sample_records(_sample_items: tuple[CostRecord | BadRow, ...]) -> list[CostRecord]:
    """The 1,000 sample records, as fresh copies a test may mutate."""
    return [r.replace(tags=dict(r.tags)) for r in _sample_items if isinstance(r, CostRecord)]
