"""Budget enforcement planning: evaluate the budgets a piece of work affects, claim new breaches, enqueue actions.

Pure core (no Airflow). The Airflow layer (callbacks, listener, gate) builds a :class:`Subject`, calls
:func:`enforce`, then drains the outbox with deliverers for Slack / Jira / ServiceNow / the Airflow REST API.

Exactly once: a breach's actions are enqueued only by the caller that claimed the breach
(``Ledger.claim_breach``, atomic), and each outbox row has a unique key ``<breach dedupe_key>|<kind>``.
Escalation follows the configured thresholds (for example notify at 80 %, ticket at 100 %, incident +
pause at 120 %). A recovery notice is enqueued once when a claimed actual-basis breach of the current
period is no longer crossed (budget raised, spend restated).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Any

import sqlalchemy as sa

from finops_provider.core.alerts import dag_url
from finops_provider.core.budgets import Breach, BudgetEngine, BudgetStatus
from finops_provider.core.config import BudgetConfig, FinOpsConfig
from finops_provider.core.ledger import Ledger
from finops_provider.core.money import MONEY_CONTEXT, MoneyBag
from finops_provider.core.outbox import Outbox
from finops_provider.core.schema import breach as breach_table

log = logging.getLogger(__name__)

#: threshold action -> outbox kind (approval and fail_task are acted on by the budget gate, not here)
ACTION_KINDS = {
    "pause_now": "pause_now",
    "pause_after_run": "pause_after_run",
    "notify": "slack",
    "ticket": "jira",
    "incident": "servicenow",
}
#: delivery order within one breach: stop spending first, then tell people
_ORDER = ("pause_now", "pause_after_run", "slack", "jira", "servicenow")


@dataclass(frozen=True)
class Subject:
    """The work whose cost triggered an evaluation (a task try, a DAG run)."""

    dag_id: str | None
    run_id: str | None = None
    task_id: str | None = None
    team: str | None = None
    cost_center: str | None = None
    base_url: str | None = None


@dataclass
class EnforcementResult:
    statuses: list[BudgetStatus] = field(default_factory=list)
    fresh: list[Breach] = field(default_factory=list)
    enqueued: list[str] = field(default_factory=list)  # outbox dedupe keys


def _matches(scope_value: Any, actual: str | None) -> bool:
    return actual is not None and str(scope_value) == actual


def budget_applies(budget: BudgetConfig, s: Subject) -> bool:
    """Could this subject's spend count toward ``budget``? (Unknown dimensions count as yes.)"""
    for k, v in budget.scope.items():
        if k == "dag" and not _matches(v, s.dag_id):
            return False
        if k == "job" and not _matches(v, s.dag_id):
            return False
        if k == "team" and s.team is not None and str(v) != s.team:
            return False
        if k == "cost_center" and s.cost_center is not None and str(v) != s.cost_center:
            return False
        if k == "task" and s.task_id is not None and str(v) != s.task_id:
            return False
    return True


def route_for(config: FinOpsConfig, s: Subject, budget: str) -> dict[str, Any]:
    """Where alerts go: the first ``notifications`` route whose ``match`` fits, then team settings, then defaults."""
    facts = {"dag": s.dag_id, "team": s.team, "cost_center": s.cost_center, "budget": budget}
    team = config.teams.get(s.team or "")
    out: dict[str, Any] = {
        "slack_conn_id": "slack_default",
        "slack_channel": team.slack_channel if team else None,
        "jira_conn_id": "jira_default",
        "jira_project": (team.jira_project if team else None) or "FINOPS",
        "servicenow_conn_id": "servicenow_default",
    }
    for routes in config.notifications.values():
        for r in routes:
            if all(facts.get(k) == v for k, v in r.match.items()):
                for key in ("slack_conn_id", "jira_conn_id", "jira_project", "servicenow_conn_id"):
                    if getattr(r, key):
                        out[key] = getattr(r, key)
                return out
    return out


def top_tasks(ledger: Ledger, budget: BudgetConfig, st: BudgetStatus, limit: int = 5) -> list[dict[str, str]]:
    """The most expensive (dag, task) pairs in the budget's scope and period, per currency."""
    filters: dict[str, Any] = {}
    if budget.period == "run":
        filters["run_id"] = st.run_id
    else:
        filters.update(start=st.period_start, end=st.period_end)
    if "dag" in budget.scope:
        filters["dag_id"] = str(budget.scope["dag"])
    if "team" in budget.scope:
        filters["team"] = str(budget.scope["team"])
    bags: dict[tuple[str, str], MoneyBag] = defaultdict(MoneyBag)
    for dag, task, amount, cur in ledger.rows(["x_dag_id", "x_task_id", "billed_cost", "billing_currency"], **filters):
        if amount is not None and task:
            bags[(dag or "", task)].add_raw(amount, cur)
    rows = [
        {"task_id": f"{d}.{t}" if d else t, "cost": format(m.amount.normalize(), "f"), "currency": m.currency}
        for (d, t), bag in bags.items()
        for m in bag.items()
    ]
    rows.sort(key=lambda r: Decimal(r["cost"]), reverse=True)
    return rows[:limit]


def pause_target(budget: BudgetConfig, s: Subject) -> str | None:
    """The exact dag_id a pause action stops: the budget's ``dag`` scope, else the DAG that spent."""
    v = budget.scope.get("dag")
    if v is not None and not any(ch in str(v) for ch in "*?["):
        return str(v)
    return s.dag_id


def _payload(kind: str, b: Breach, budget: BudgetConfig, s: Subject, route: dict[str, Any], tops: list) -> dict:
    target = pause_target(budget, s)
    return {
        "kind": "breach",
        "action": kind,
        "breach": b.to_json(),
        "dag_id": s.dag_id,
        "run_id": s.run_id,
        "task_id": s.task_id,
        "team": s.team,
        "cost_center": s.cost_center,
        "pause_dag_id": target,
        "dag_url": dag_url(s.base_url, target) if target else None,
        "top_tasks": tops,
        "route": route,
    }


def enforce(
    ledger: Ledger,
    config: FinOpsConfig,
    subject: Subject,
    *,
    outbox: Outbox,
    now: dt.datetime | None = None,
    names: list[str] | None = None,
) -> EnforcementResult:
    """Evaluate the budgets ``subject`` affects; for each newly claimed breach enqueue its actions once."""
    now = now or dt.datetime.now(dt.UTC)
    budgets = {b.name: b for b in config.budgets if budget_applies(b, subject) and (names is None or b.name in names)}
    res = EnforcementResult()
    if not budgets:
        return res
    engine = BudgetEngine(config, ledger)
    res.statuses = engine.evaluate_all(now, run_id=subject.run_id, names=list(budgets))
    res.fresh = engine.new_breaches(res.statuses)
    status_of = {st.budget.name: st for st in res.statuses}
    for b in res.fresh:
        budget = budgets[b.budget]
        kinds = {ACTION_KINDS[a] for a in b.actions if a in ACTION_KINDS}
        if not kinds:
            continue
        route = route_for(config, subject, b.budget)
        tops = top_tasks(ledger, budget, status_of[b.budget])
        for kind in _ORDER:
            if kind not in kinds:
                continue
            payload = _payload(kind, b, budget, subject, route, tops)
            if kind.startswith("pause") and not payload["pause_dag_id"]:
                log.warning("budget %s: %s needs a DAG; the breach has none", b.budget, kind)
                continue
            key = f"{b.dedupe_key}|{kind}"
            if outbox.enqueue(kind, key, payload):
                res.enqueued.append(key)
        log.info("budget %s crossed %s %% (%s): actions %s", b.budget, b.threshold_pct, b.basis, ",".join(b.actions))
    res.enqueued.extend(_recoveries(ledger, config, subject, res.statuses, outbox))
    return res


def _recoveries(
    ledger: Ledger, config: FinOpsConfig, s: Subject, statuses: list[BudgetStatus], outbox: Outbox
) -> list[str]:
    """Enqueue one recovery notice per claimed actual breach of this period that is no longer crossed."""
    out: list[str] = []
    for st in statuses:
        if st.budget.period == "run":
            continue
        with ledger.engine.connect() as conn:
            claimed = list(
                conn.execute(
                    sa.select(breach_table).where(
                        breach_table.c.budget == st.budget.name,
                        breach_table.c.period_start == st.period_start,
                        breach_table.c.basis == "actual",
                    )
                ).mappings()
            )
        for c in claimed:
            with localcontext(MONEY_CONTEXT):
                limit = st.budget.amount * Decimal(c["threshold_pct"]) / 100
            if st.actual.amount >= limit or "notify" not in c["actions"]:
                continue
            key = f"{c['dedupe_key']}|recovery"
            payload = {
                "kind": "recovery",
                "action": "slack",
                "breach": {
                    "dedupe_key": c["dedupe_key"],
                    "budget": st.budget.name,
                    "period": st.budget.period,
                    "period_start": st.period_start.isoformat(),
                    "threshold_pct": str(c["threshold_pct"]),
                    "basis": "actual",
                    "budget_amount": {"amount": str(st.budget.amount), "currency": st.budget.currency},
                    "actual": st.actual.to_json(),
                    "forecast": st.forecast.to_json(),
                    "utilisation_pct": str(st.utilisation_pct),
                },
                "dag_id": s.dag_id,
                "team": s.team,
                "route": route_for(config, s, st.budget.name),
            }
            if outbox.enqueue("slack", key, payload):
                out.append(key)
    return out
