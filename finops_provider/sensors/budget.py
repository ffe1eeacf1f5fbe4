"""Deferrable sensors that wait on the FinOps ledger instead of holding a worker slot."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from airflow.sdk.bases.sensor import BaseSensorOperator

# The triggers module (and airflow.triggers.base) is imported when a sensor runs, not when a DAG file is parsed.


def _default_deferrable() -> bool:
    from finops_provider.settings import _airflow_option

    return _airflow_option("default_deferrable", "true").lower() in ("1", "true", "yes")


def _complete(event: dict[str, Any] | None) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowException

    if not event or event.get("status") != "success":
        raise AirflowException(f"finops trigger failed: {(event or {}).get('message', 'no event')}")
    return {k: v for k, v in event.items() if k != "status"}


class BudgetHeadroomSensor(BaseSensorOperator):
    """Wait until ``budget`` has headroom: actual spend below ``below_pct`` % of the budget (a new period
    started, the budget was raised, or spend was restated).

    :param budget: budget name from the FinOps config.
    :param below_pct: headroom threshold in percent.
    :param deferrable: wait in the triggerer (default ``[finops] default_deferrable``, true).
    :return: (XCom) ``{"budget", "utilisation_pct", "actual", "limit", "currency", ...}`` (money as strings).
    """

    template_fields: Sequence[str] = ("budget", "below_pct")

    def __init__(self, *, budget: str, below_pct: str = "100", deferrable: bool | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.budget = budget
        self.below_pct = str(below_pct)
        self.deferrable = _default_deferrable() if deferrable is None else deferrable

    def poke(self, context: Any) -> Any:
        from airflow.sdk import PokeReturnValue

        from finops_provider.triggers.budget import budget_headroom

        state = budget_headroom(self.budget, self.below_pct)
        return PokeReturnValue(is_done=state["ok"], xcom_value=state)

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        from finops_provider.triggers.budget import BudgetHeadroomTrigger, budget_headroom

        state = budget_headroom(self.budget, self.below_pct)
        if state["ok"]:
            return state
        self.defer(
            trigger=BudgetHeadroomTrigger(
                budget=self.budget, below_pct=self.below_pct, poll_interval=self.poke_interval
            ),
            method_name="execute_complete",
            timeout=dt.timedelta(seconds=self.timeout) if self.timeout else None,
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        return _complete(event)


class BillingDataFreshnessSensor(BaseSensorOperator):
    """Wait until the billed data of ``source`` for ``[start, end)`` is final in the ledger (rows exist and none
    is provisional, e.g. Cost Explorer no longer ``Estimated``).

    :param source: ledger ``x_source`` of the collector (``aws-ce``, ``gcp-billing``, ...).
    :param start: window start (ISO 8601, templated), :param end: window end.
    :return: (XCom) ``{"source", "rows", "provisional"}``.
    """

    template_fields: Sequence[str] = ("source", "start", "end")

    def __init__(self, *, source: str, start: str, end: str, deferrable: bool | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.start = start
        self.end = end
        self.deferrable = _default_deferrable() if deferrable is None else deferrable

    def poke(self, context: Any) -> Any:
        from airflow.sdk import PokeReturnValue

        from finops_provider.triggers.budget import billing_final

        state = billing_final(self.source, self.start, self.end)
        return PokeReturnValue(is_done=state["ok"], xcom_value=state)

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        from finops_provider.triggers.budget import BillingFreshnessTrigger, billing_final

        state = billing_final(self.source, self.start, self.end)
        if state["ok"]:
            return state
        self.defer(
            trigger=BillingFreshnessTrigger(self.source, self.start, self.end, poll_interval=self.poke_interval),
            method_name="execute_complete",
            timeout=dt.timedelta(seconds=self.timeout) if self.timeout else None,
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        return _complete(event)
