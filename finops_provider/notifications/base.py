"""What every FinOps notifier shares: a payload from the breach (budget engine) or from the callback context."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier


def payload_from_context(context: Any) -> dict[str, Any]:
    """A status payload for plain callback use: the DAG / task / run and its estimated cost so far."""
    if isinstance(context, dict) and context.get("finops_alert"):
        return dict(context["finops_alert"])
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    dag = context.get("dag")
    dag_id = getattr(ti, "dag_id", None) or getattr(dag, "dag_id", None)
    run_id = getattr(ti, "run_id", None) or getattr(dag_run, "run_id", None)
    payload: dict[str, Any] = {
        "kind": "status",
        "dag_id": dag_id,
        "run_id": run_id,
        "task_id": getattr(ti, "task_id", None),
        "state": str(getattr(ti, "state", None) or getattr(dag_run, "state", None) or ""),
    }
    try:
        from finops_provider.core.alerts import dag_url
        from finops_provider.settings import get_ledger

        with get_ledger() as ledger:
            payload["run_cost"] = ledger.totals(dag_id=dag_id, run_id=run_id).to_json()
        from airflow.sdk import conf

        payload["dag_url"] = dag_url(conf.get("api", "base_url", fallback=None), dag_id) if dag_id else None
    except Exception as e:  # a status message still goes out without the cost
        logging.getLogger(__name__).info("no run cost for the status message (%s)", type(e).__name__)
    return payload


class FinOpsNotifier(BaseNotifier):
    """Base: ``notify(context)`` builds the payload; subclasses implement :meth:`send_payload`.

    :param payload: a fixed payload (the budget engine passes breach payloads here).
    """

    def __init__(self, *, payload: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.payload = payload

    def notify(self, context: Any) -> None:
        self.send_payload(self.payload or payload_from_context(context))

    def send_payload(self, payload: dict[str, Any]) -> str | None:
        """Deliver one payload; returns a reference (ticket key, incident id) or None. Raises on failure."""
        raise NotImplementedError
