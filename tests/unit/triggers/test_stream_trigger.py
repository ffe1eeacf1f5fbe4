"""StreamFeedTrigger: serialize() round-trips, and it fires on a breach the stream engine wrote to the feed."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from finops_provider.core.config import parse_config
from finops_provider.core.ledger import Ledger
from finops_provider.streaming.events import cost_event
from finops_provider.streaming.runner import build_processor
from finops_provider.streaming.sources import JsonlPublisher
from finops_provider.triggers.stream import StreamFeedTrigger

T0 = dt.datetime(2026, 10, 10, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "kw",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {
                "kinds": ["breach", "anomaly"],
                "budgets": ["b"],
                "after_id": 7,
                "poll_interval": 0.5,
                "ledger_url": "sqlite:////x.db",
                "once": True,
            },
            id="all-options",
        ),
    ],
)
def test_serialize_round_trips(kw: dict[str, Any]) -> None:
    t = StreamFeedTrigger(**kw)
    path, kwargs = t.serialize()
    mod, _, cls = path.rpartition(".")
    again = getattr(importlib.import_module(mod), cls)(**kwargs)
    assert again.serialize() == (path, kwargs)


async def _first(trigger: StreamFeedTrigger, timeout: float = 20) -> Any:
    agen = trigger.run()
    try:
        return await asyncio.wait_for(agen.__anext__(), timeout)
    finally:
        await agen.aclose()


def _stream(url: str, tmp_path: Path, n: int) -> None:
    cfg = parse_config(
        {
            "budgets": [
                {"name": "b", "scope": {"dag": "etl"}, "period": "day", "amount": "10", "thresholds": [{"pct": 100}]}
            ]
        }
    )
    pub = JsonlPublisher(tmp_path / "e.jsonl")
    for i in range(n):
        pub.publish(
            cost_event(
                event_id=f"e{i}", event_time=T0 + dt.timedelta(minutes=i), source="t", amount="2.5", dag_id="etl"
            )
        )
    pub.close()
    with Ledger(url) as led:
        build_processor(led, cfg, f"file://{tmp_path / 'e.jsonl'}", poll_timeout=0.01).run(idle_exit=0.2)


def test_fires_on_a_breach_in_the_feed_and_not_before(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    _stream(url, tmp_path, 3)  # 7.50 of 10: no breach yet
    trigger = StreamFeedTrigger(ledger_url=url, poll_interval=0.05, once=True)
    with pytest.raises(TimeoutError):
        asyncio.run(_first(trigger, timeout=0.5))
    _stream(url, tmp_path, 4)  # the 4th event crosses 100 %
    ev = asyncio.run(_first(trigger))
    assert ev.payload["status"] == "breach"
    assert ev.payload["dedupe_key"] == "b|day:2026-10-10T00:00:00Z|actual|100"
    actual = ev.payload["payload"]["actual"]
    assert (Decimal(actual["amount"]), actual["currency"]) == (Decimal(10), "USD")
    # a trigger that starts after that feed id does not fire again for it
    later = StreamFeedTrigger(ledger_url=url, poll_interval=0.05, after_id=ev.payload["id"], once=True)
    with pytest.raises(TimeoutError):
        asyncio.run(_first(later, timeout=0.5))
