"""The FinOps task callback (per task try) and DAG-run callback (per run)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from finops_provider.core.estimate import TaskCostSpec

log = logging.getLogger(__name__)


class FinOpsTaskCallback:
    """``on_success_callback`` / ``on_failure_callback``: records the try's cost estimate, then enforces budgets.

    Runs in the task process after the task's state is final, so it cannot change the task's outcome; it
    never raises. The estimate is the declared fixed ``cost`` or duration x ``quantity_per_hour`` x the rate-card
    price of ``platform``/``sku``; a task overrides any of these with ``params={"finops": {...}}``. The
    ledger record is keyed ``dag/run/task/map_index/try`` (idempotent). When the ledger is unreachable the
    record goes to the local spool (``$FINOPS_HOME/spool.db``) and is flushed by the next callback.

    :param enforce: evaluate the affected budgets and perform the actions of new breaches.
    :param spec: defaults of :class:`~finops_provider.core.estimate.TaskCostSpec` (``cost``, ``platform``,
        ``sku``, ``quantity_per_hour``, ``currency``, ``region``, ``team``, ``cost_center``).
    """

    def __init__(self, *, enforce: bool = True, **spec: Any) -> None:
        TaskCostSpec.from_mapping(spec)  # fail at DAG parse time on a typo, not at run time
        self.enforce = enforce
        self.spec = spec
        self.__name__ = type(self).__name__  # Airflow logs callbacks by name

    def __call__(self, context: Mapping[str, Any]) -> None:
        from finops_provider.callbacks.runtime import handle_task_end

        t0 = time.monotonic()
        state = "failed" if context.get("exception") is not None else "success"
        try:
            handle_task_end(context, self.spec, state=state, act=self.enforce)
        except Exception:  # belt and braces: a callback must never break the task
            log.exception("finops task callback failed")
        log.info("finops task callback took %.0f ms", (time.monotonic() - t0) * 1000)


class FinOpsDagCallback:
    """DAG ``on_success_callback`` / ``on_failure_callback``: totals the run's cost, enforces run / day /
    month budgets of the DAG, and flushes the outbox (retries). Runs in the dag-processor; never raises.

    Logs the run total per currency; returns nothing (callbacks have no XCom).
    """

    def __init__(self) -> None:
        self.__name__ = type(self).__name__

    def __call__(self, context: Mapping[str, Any]) -> None:
        try:
            self._run(context)
        except Exception:
            log.exception("finops DAG callback failed")

    def _run(self, context: Mapping[str, Any]) -> None:
        from finops_provider.callbacks.runtime import api_base_url, run_enforcement
        from finops_provider.core.enforcement import Subject
        from finops_provider.settings import get_config, get_ledger

        dag_run = context.get("dag_run")
        dag = context.get("dag")
        dag_id = getattr(dag_run, "dag_id", None) or getattr(dag, "dag_id", None)
        run_id = getattr(dag_run, "run_id", None)
        config = get_config()
        with get_ledger(config=config) as ledger:
            totals = ledger.totals(dag_id=dag_id, run_id=run_id).to_json()
            teams = {t for (t,) in ledger.rows(["x_team"], dag_id=dag_id, run_id=run_id) if t}
            subject = Subject(
                dag_id=dag_id,
                run_id=run_id,
                team=next(iter(teams)) if len(teams) == 1 else None,
                base_url=api_base_url(),
            )
            res = run_enforcement(ledger, config, subject)
        log.info(
            "finops: run %s of %s cost %s (estimates); %d budgets evaluated, %d new breaches",
            run_id,
            dag_id,
            totals or "nothing recorded",
            len(res.statuses),
            len(res.fresh),
        )


def finops_default_args(*, enforce: bool = True, **spec: Any) -> dict[str, Any]:
    """``default_args`` entries attaching :class:`FinOpsTaskCallback` to every task, on success and failure.

    Merge with your own: ``default_args={**finops_default_args(platform="databricks", sku="JOBS_COMPUTE",
    quantity_per_hour="8"), "retries": 2}``.
    """
    cb = FinOpsTaskCallback(enforce=enforce, **spec)
    return {"on_success_callback": [cb], "on_failure_callback": [cb]}
