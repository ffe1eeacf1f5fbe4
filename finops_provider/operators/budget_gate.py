"""The budget gate: placed before expensive tasks, it checks actual and forecasted spend (plus the next task's
pre-flight estimate) against the budgets and passes, skips downstream, fails, or asks a human (HITL)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal, localcontext
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

from finops_provider.core.money import MONEY_CONTEXT, decimal_text, to_decimal

OUTCOMES = ("pass", "skip", "fail", "approval")


class BudgetGateOperator(ApprovalOperator):
    """Gate downstream work on budget headroom.

    For each budget that applies to this DAG (or the ``budgets`` named), the gate compares
    ``actual + estimate`` and, with ``use_forecast``, ``forecast + estimate`` with ``threshold_pct`` % of the
    budget. Within budget: the gate succeeds. Over budget, ``on_breach`` decides:

    * ``pass``: log and continue; ``skip``: skip the downstream tasks; ``fail``: fail the gate;
    * ``approval``: post a Slack message linking to the Required Actions page and wait (HITL, Airflow 3.1+)
      for Approve (continue; who approved is recorded in the ledger) or Reject / timeout (skip downstream).

    :param budgets: budget names to check (default: every budget whose scope fits this DAG).
    :param estimate: the next task's pre-flight cost estimate (templated; a Decimal string, for example from a
        BigQuery dry run via :func:`finops_provider.core.estimate.bigquery_on_demand_estimate`).
    :param estimate_currency: currency of ``estimate``.
    :param on_breach: ``pass`` | ``skip`` | ``fail`` | ``approval``.
    :param slack_conn_id: where the approval request goes (None: no Slack message); sent once per gated task
        instance through the outbox, however often the gate is retried or re-run.
    :return: (XCom) ``{"decision": ..., "checks": [...]}``, money as canonical exact strings (the same on every
        ledger backend); after an approval, the ApprovalOperator's response (chosen option, who responded).
    """

    template_fields: Sequence[str] = (*ApprovalOperator.template_fields, "budgets", "estimate", "slack_conn_id")

    def __init__(
        self,
        *,
        budgets: Sequence[str] | None = None,
        estimate: str | Decimal | None = None,
        estimate_currency: str = "USD",
        threshold_pct: str | Decimal = "100",
        use_forecast: bool = True,
        on_breach: str = "approval",
        slack_conn_id: str | None = None,
        subject: str = "FinOps budget gate: continue over budget?",
        **kwargs: Any,
    ) -> None:
        if on_breach not in OUTCOMES:
            raise ValueError(f"on_breach={on_breach!r}; use one of {', '.join(OUTCOMES)}")
        kwargs.setdefault("defaults", [ApprovalOperator.REJECT])  # timeout -> Reject -> skip downstream
        super().__init__(subject=subject, **kwargs)
        self.budgets = list(budgets) if budgets is not None else None
        self.estimate = estimate
        self.estimate_currency = estimate_currency
        self.threshold_pct = to_decimal(threshold_pct, field_name="threshold_pct")
        self.use_forecast = use_forecast
        self.on_breach = on_breach
        self.slack_conn_id = slack_conn_id

    # ------------------------------------------------------------------------------------------ check
    def check(self, dag_id: str, run_id: str | None) -> dict[str, Any]:
        """Evaluate the budgets; returns ``{"over": bool, "checks": [...]}`` (money as strings)."""
        from finops_provider.core.budgets import BudgetEngine
        from finops_provider.core.enforcement import Subject, budget_applies
        from finops_provider.settings import get_config, get_ledger

        config = get_config()
        subject = Subject(dag_id=dag_id, run_id=run_id)
        names = [
            b.name
            for b in config.budgets
            if (self.budgets is None and budget_applies(b, subject)) or (self.budgets and b.name in self.budgets)
        ]
        est = to_decimal(self.estimate, field_name="estimate") if self.estimate not in (None, "", "None") else None
        checks = []
        with get_ledger(config=config) as ledger:
            statuses = BudgetEngine(config, ledger).evaluate_all(dt.datetime.now(dt.UTC), run_id=run_id, names=names)
        for st in statuses:
            extra = est if est is not None and self.estimate_currency == st.budget.currency else Decimal(0)
            with localcontext(MONEY_CONTEXT):
                limit = st.budget.amount * self.threshold_pct / 100
                projected = st.actual.amount + extra
                projected_fc = st.forecast.amount + extra
            over = projected >= limit or (self.use_forecast and projected_fc >= limit)
            checks.append(
                {
                    "budget": st.budget.name,
                    "currency": st.budget.currency,
                    "limit": decimal_text(limit),
                    "actual": decimal_text(st.actual.amount),
                    "forecast": decimal_text(st.forecast.amount),
                    "estimate": decimal_text(extra),
                    "over": over,
                }
            )
        return {"over": any(c["over"] for c in checks), "checks": checks}

    # ------------------------------------------------------------------------------------------ run
    def execute(self, context: Any) -> Any:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        ti = context["ti"]
        result = self.check(ti.dag_id, ti.run_id)
        over = [c for c in result["checks"] if c["over"]]
        if not over:
            self._record(context, "gate_pass", "finops", result)
            return {"decision": "pass", **result}
        summary = "; ".join(
            f"{c['budget']}: actual {c['actual']} + estimate {c['estimate']} (forecast {c['forecast']}) "
            f"vs limit {c['limit']} {c['currency']}"
            for c in over
        )
        if self.on_breach == "pass":
            self.log.warning("over budget, continuing as configured: %s", summary)
            self._record(context, "gate_pass_over", "finops", result)
            return {"decision": "pass", **result}
        if self.on_breach == "skip":
            self._record(context, "gate_skip", "finops", result)
            raise AirflowSkipException(f"over budget: {summary}")
        if self.on_breach == "fail":
            self._record(context, "gate_fail", "finops", result)
            raise AirflowFailException(f"over budget: {summary}")
        self.body = "Over budget:\n\n" + "\n".join(
            f"- **{c['budget']}**: actual {c['actual']} + estimate {c['estimate']}, forecast {c['forecast']}, "
            f"limit {c['limit']} {c['currency']}"
            for c in over
        )
        self._record(context, "approval_requested", "finops", result)
        if self.slack_conn_id:
            self._ask_on_slack(context, over)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        ret = super().execute_complete(context=context, event=event)  # Reject: downstream skipped
        user = event.get("responded_by_user") or {}
        actor = str(user.get("name") or user.get("id") or "unknown") if isinstance(user, dict) else str(user)
        approved = ret["chosen_options"][0] == self.APPROVE
        self._record(context, "approved" if approved else "rejected", actor, {"chosen": ret["chosen_options"]})
        return ret

    @staticmethod
    def _key(context: Any, what: str) -> str:
        """``<what>|<dag>|<run>|<task>|<map index>``: one per gated task instance, whatever its try."""
        ti = context["ti"]
        return f"{what}|{ti.dag_id}|{ti.run_id}|{ti.task_id}|{getattr(ti, 'map_index', -1)}"

    def _record(self, context: Any, kind: str, actor: str, detail: dict[str, Any]) -> None:
        """Log the gate's decision in the ledger: once per task instance and decision (a retried or re-run gate
        that decides the same again adds nothing); a human's approval or rejection is logged each time."""
        import sqlalchemy as sa

        from finops_provider.core.outbox import record_event
        from finops_provider.core.schema import enforcement_event
        from finops_provider.settings import get_ledger

        ti = context["ti"]
        key = self._key(context, f"gate:{kind}") if actor == "finops" else None
        try:
            with get_ledger() as ledger:
                if key is not None:
                    with ledger.engine.connect() as conn:
                        q = sa.select(enforcement_event.c.id).where(enforcement_event.c.dedupe_key == key).limit(1)
                        if conn.execute(q).first() is not None:
                            return
                record_event(
                    ledger,
                    kind,
                    actor=actor,
                    dag_id=ti.dag_id,
                    run_id=ti.run_id,
                    task_id=ti.task_id,
                    dedupe_key=key,
                    detail=detail,
                )
        except Exception as e:
            self.log.warning("could not record %s in the ledger (%s)", kind, type(e).__name__)

    def _ask_on_slack(self, context: Any, over: list[dict[str, Any]]) -> None:
        """Post the approval request through the outbox: one message per gated task instance (a retried or
        re-run gate does not ask again), retried with backoff when Slack is down."""
        from finops_provider.callbacks.runtime import drain, outbox_for
        from finops_provider.settings import get_ledger

        ti = context["ti"]
        c = over[0]
        try:
            link = self.generate_link_to_ui(task_instance=ti)
        except Exception:
            link = None
        key = self._key(context, "approval")
        payload = {
            "kind": "approval",
            "breach": {
                "dedupe_key": key,
                "budget": c["budget"],
                "budget_amount": {"amount": c["limit"], "currency": c["currency"]},
                "actual": {"amount": c["actual"], "currency": c["currency"]},
                "forecast": {"amount": c["forecast"], "currency": c["currency"]},
            },
            "dag_id": ti.dag_id,
            "run_id": ti.run_id,
            "task_id": ti.task_id,
            "link": link,
            "route": {"slack_conn_id": self.slack_conn_id or "slack_default"},
        }
        try:
            with get_ledger() as ledger:
                if not outbox_for(ledger).enqueue("slack", key, payload):
                    self.log.info("the approval request of this task instance was already sent or queued")
                res = drain(ledger, keys=[key])
            if res.failed or res.dead:
                self.log.warning("approval Slack message failed; the outbox retries it")
        except Exception as e:  # the approval request stays on the Required Actions page
            self.log.warning("approval Slack message failed (%s)", type(e).__name__)
