"""Triggers that poll the FinOps ledger from the triggerer, without holding a worker slot."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal, localcontext
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from finops_provider.core.money import MONEY_CONTEXT, decimal_text


def budget_headroom(
    budget: str, below_pct: str, *, config_path: str | None = None, ledger_url: str | None = None
) -> dict:
    """Current state of one budget: ``{"ok": utilisation < below_pct, "utilisation_pct", "actual", ...}``.

    The config is re-read on every call, so a raised budget is seen without restarting the triggerer. Money is
    canonical exact text (:func:`decimal_text`): the same state reads the same on every ledger backend.
    """
    from finops_provider.core.budgets import BudgetEngine
    from finops_provider.core.config import load_config
    from finops_provider.settings import config_path as resolve_config
    from finops_provider.settings import get_ledger

    config = load_config(resolve_config(config_path))
    if budget not in {b.name for b in config.budgets}:
        raise ValueError(f"no budget named {budget!r} in the FinOps config")
    with get_ledger(ledger_url, config=config) as ledger:
        (st,) = BudgetEngine(config, ledger).evaluate_all(dt.datetime.now(dt.UTC), names=[budget])
    with localcontext(MONEY_CONTEXT):
        limit = st.budget.amount * Decimal(below_pct) / 100
    return {
        "ok": st.actual.amount < limit,
        "budget": budget,
        "utilisation_pct": str(st.utilisation_pct),
        "actual": decimal_text(st.actual.amount),
        "limit": decimal_text(limit),
        "currency": st.budget.currency,
        "period_start": st.period_start.isoformat(),
    }


def billing_final(source: str, start: str, end: str, *, ledger_url: str | None = None) -> dict:
    """Whether the ledger holds billed rows of ``source`` in ``[start, end)`` and none is provisional."""
    from finops_provider.settings import get_ledger

    s, e = dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)
    rows = provisional = 0
    with get_ledger(ledger_url) as ledger:
        for (prov,) in ledger.rows(["x_provisional"], source=source, start=s, end=e, cost_kind="billed"):
            rows += 1
            provisional += 1 if prov else 0
    return {"ok": rows > 0 and provisional == 0, "source": source, "rows": rows, "provisional": provisional}


async def _poll(self: Any) -> AsyncIterator[TriggerEvent]:
    """The triggers' loop: run ``self.check()`` in a thread every ``poll_interval`` until its state is ``ok``
    (success event) or it raises (error event)."""
    while True:
        try:
            state = await asyncio.to_thread(self.check)
        except Exception as e:
            yield TriggerEvent({"status": "error", "message": f"{type(e).__name__}: {e}"})
            return
        if state["ok"]:
            yield TriggerEvent({"status": "success", **state})
            return
        await asyncio.sleep(self.poll_interval)


class BudgetHeadroomTrigger(BaseTrigger):
    """Fires when ``budget``'s actual spend is below ``below_pct`` % (new period, raised budget, restated bill).

    :param poll_interval: seconds between ledger reads.
    """

    def __init__(
        self,
        budget: str,
        below_pct: str = "100",
        poll_interval: float = 60.0,
        config_path: str | None = None,
        ledger_url: str | None = None,
    ) -> None:
        super().__init__()
        self.budget = budget
        self.below_pct = str(below_pct)
        self.poll_interval = float(poll_interval)
        self.config_path = config_path
        self.ledger_url = ledger_url

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "finops_provider.triggers.budget.BudgetHeadroomTrigger",
            {
                "budget": self.budget,
                "below_pct": self.below_pct,
                "poll_interval": self.poll_interval,
                "config_path": self.config_path,
                "ledger_url": self.ledger_url,
            },
        )

    def check(self) -> dict[str, Any]:
        state = budget_headroom(self.budget, self.below_pct, config_path=self.config_path, ledger_url=self.ledger_url)
        if not state["ok"]:
            self.log.info("budget %s at %s %%: waiting for headroom", self.budget, state["utilisation_pct"])
        return state

    run = _poll


class BillingFreshnessTrigger(BaseTrigger):
    """Fires when billed data of ``source`` for ``[start, end)`` is in the ledger and final (not provisional)."""

    def __init__(
        self, source: str, start: str, end: str, poll_interval: float = 300.0, ledger_url: str | None = None
    ) -> None:
        super().__init__()
        self.source = source
        self.start = start
        self.end = end
        self.poll_interval = float(poll_interval)
        self.ledger_url = ledger_url

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "finops_provider.triggers.budget.BillingFreshnessTrigger",
            {
                "source": self.source,
                "start": self.start,
                "end": self.end,
                "poll_interval": self.poll_interval,
                "ledger_url": self.ledger_url,
            },
        )

    def check(self) -> dict[str, Any]:
        return billing_final(self.source, self.start, self.end, ledger_url=self.ledger_url)

    run = _poll
