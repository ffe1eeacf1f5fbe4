"""Budget-headroom and billing-freshness triggers: serialize() round-trips and they fire on the ledger state."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import time
from decimal import Decimal
from pathlib import Path

import pytest

from finops_provider.core.ledger import Ledger
from finops_provider.core.records import build_record
from finops_provider.triggers.budget import BillingFreshnessTrigger, BudgetHeadroomTrigger


def _today() -> dt.datetime:
    """Today's UTC midnight: the triggers evaluate the day of the real clock (the env fixture avoids midnight)."""
    return dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _today_start() -> dt.datetime:
    return _today() + dt.timedelta(seconds=1)


def _rec(cost: str, *, provisional: bool = False, kind: str = "estimate", n: int = 0):  # type: ignore[no-untyped-def]
    start = _today_start()
    return build_record(
        billed_cost=Decimal(cost),
        billing_currency="USD",
        charge_period_start=start,
        charge_period_end=start + dt.timedelta(seconds=1),
        x_dag_id="etl",
        x_line_item_id=f"l{n}",
        x_cost_kind=kind,
        x_source="aws-ce",
        x_provisional=provisional,
    )


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    now = dt.datetime.now(dt.UTC)
    to_midnight = (now.replace(hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(days=1) - now).total_seconds()
    if to_midnight < 20:  # a test must not see the day change between writing its rows and the trigger's check
        time.sleep(to_midnight + 0.5)
    cfg = tmp_path / "config.yaml"
    cfg.write_text('budgets:\n  - {name: etl-day, scope: {dag: etl}, period: day, amount: "10"}\n')
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("FINOPS_LEDGER_URL", url)
    return cfg, url


@pytest.mark.parametrize(
    "trigger",
    [
        pytest.param(BudgetHeadroomTrigger("b", below_pct="90", poll_interval=5, config_path="/c.yaml"), id="headroom"),
        pytest.param(
            BillingFreshnessTrigger("aws-ce", "2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00"), id="fresh"
        ),
    ],
)
def test_serialize_round_trips(trigger) -> None:  # type: ignore[no-untyped-def]
    path, kwargs = trigger.serialize()
    mod, _, name = path.rpartition(".")
    again = getattr(importlib.import_module(mod), name)(**kwargs)
    assert again.serialize() == (path, kwargs)


def _first_event(trigger, timeout: float = 10):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        async for ev in trigger.run():
            return ev.payload

    return asyncio.run(asyncio.wait_for(go(), timeout))


def test_headroom_fires_when_the_budget_is_raised(env: tuple[Path, str]) -> None:
    cfg, url = env
    with Ledger(url) as led:
        led.ingest([_rec("12")], source="t")
    trig = BudgetHeadroomTrigger("etl-day", below_pct="100", poll_interval=0.2, config_path=str(cfg))

    async def scenario():  # type: ignore[no-untyped-def]
        task = asyncio.ensure_future(trig.run().__anext__())
        await asyncio.sleep(1.0)
        assert not task.done()  # 12 of 10: no headroom, still waiting
        cfg.write_text('budgets:\n  - {name: etl-day, scope: {dag: etl}, period: day, amount: "20"}\n')
        return (await asyncio.wait_for(task, 10)).payload

    ev = asyncio.run(scenario())
    assert ev["status"] == "success" and ev["utilisation_pct"] == "60.00" and ev["limit"] == "20"


def test_headroom_reports_a_missing_budget(env: tuple[Path, str]) -> None:
    cfg, _ = env
    ev = _first_event(BudgetHeadroomTrigger("nope", config_path=str(cfg)))
    assert ev["status"] == "error" and "nope" in ev["message"]


def test_freshness_waits_for_final_rows(env: tuple[Path, str]) -> None:
    _, url = env
    start, end = _today().isoformat(), (_today() + dt.timedelta(days=1)).isoformat()
    with Ledger(url) as led:
        led.ingest([_rec("1", provisional=True, kind="billed")], source="aws-ce")
    trig = BillingFreshnessTrigger("aws-ce", start, end, poll_interval=0.2)

    async def scenario():  # type: ignore[no-untyped-def]
        task = asyncio.ensure_future(trig.run().__anext__())
        await asyncio.sleep(1.0)
        assert not task.done()
        with Ledger(url) as led:  # Cost Explorer restates the day as final
            led.ingest([_rec("1.2", provisional=False, kind="billed")], source="aws-ce")
        return (await asyncio.wait_for(task, 10)).payload

    assert asyncio.run(scenario()) == {"status": "success", "ok": True, "source": "aws-ce", "rows": 1, "provisional": 0}
