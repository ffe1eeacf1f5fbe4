"""Fixtures for the streaming tests: configs, a decoder and an event factory."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from finops_provider.core.config import FinOpsConfig, parse_config
from finops_provider.streaming.events import EventDecoder, StreamEvent, cost_event, encode
from finops_provider.streaming.sources import JsonlPublisher

T0 = dt.datetime(2026, 10, 10, tzinfo=dt.UTC)  # a Saturday in the middle of a month

CONFIG: dict[str, Any] = {
    "teams": {"data-eng": {"cost_center": "CC-100"}, "ml": {"cost_center": "CC-300"}},
    "dags": {"ingest_*": {"team": "data-eng"}, "ml_*": {"team": "ml"}},
    "budgets": [
        {
            "name": "data-eng-month",
            "scope": {"team": "data-eng"},
            "period": "month",
            "amount": "1000",
            "thresholds": [
                {"pct": 50, "actions": ["notify"]},
                {"pct": 100, "actions": ["notify", "ticket"]},
                {"pct": 100, "basis": "forecasted", "actions": ["notify"]},
            ],
        },
        {
            "name": "ingest-orders-day",
            "scope": {"dag": "ingest_orders"},
            "period": "day",
            "amount": "100",
            "thresholds": [{"pct": 80}, {"pct": 100, "actions": ["pause_after_run"]}],
        },
    ],
    "anomaly": {"threshold_pct": 150, "min_impact": "10"},
    "rate_cards": {
        "overrides": [
            {
                "platform": "databricks",
                "sku": "JOBS_COMPUTE",
                "unit": "DBU",
                "price": "0.13",
                "effective_from": "2026-01-01",
            }
        ]
    },
}


@pytest.fixture
def config() -> FinOpsConfig:
    return parse_config(CONFIG)


@pytest.fixture
def decoder(config: FinOpsConfig) -> EventDecoder:
    return EventDecoder(config, clock=lambda: T0 + dt.timedelta(days=365))


EventFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def make_event() -> EventFactory:
    """A valid USD cost event ``minutes`` after T0 (override any cost_event argument)."""
    counter = iter(range(10**9))

    def make(amount: Any = "1.00", *, minutes: float = 0, **kw: Any) -> dict[str, Any]:
        args: dict[str, Any] = {
            "event_id": f"ev-{next(counter)}",
            "event_time": T0 + dt.timedelta(minutes=minutes),
            "source": "test",
            "amount": amount,
            "currency": "USD",
            "dag_id": "ingest_orders",
            "task_id": "load",
            "platform": "databricks",
        }
        args.update(kw)
        return cost_event(**args)

    return make


@pytest.fixture
def records(decoder: EventDecoder) -> Callable[..., list[Any]]:
    """Decode events to ledger records (asserting they are valid)."""

    def conv(*events: dict[str, Any]) -> list[Any]:
        out = []
        for e in events:
            d = decoder.decode(encode(e))
            assert isinstance(d, StreamEvent), d
            out.append(d.record)
        return out

    return conv


def write_events(path: Path, events: Iterable[dict[str, Any]]) -> Path:
    """``events`` published to a JSONL file (the embedded source's input); returns ``path``."""
    pub = JsonlPublisher(path)
    for ev in events:
        pub.publish(ev)
    pub.close()
    return path
