"""Task-instance listener: records every task try's cost estimate (like the task callback) without DAG changes.

Enabled with ``[finops] listener_enabled = True`` (``AIRFLOW__FINOPS__LISTENER_ENABLED``). Only the
task-process hooks are implemented: Airflow calls them in the task process with a ``RuntimeTaskInstance``.
Scheduler-side calls (an ORM ``TaskInstance``, e.g. a task failed by the scheduler) are ignored: no database
writes from the scheduler. ``[finops] listener_enforce = True`` also evaluates budgets and acts.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)


def _enabled(key: str) -> bool:
    from finops_provider.settings import _airflow_option

    return _airflow_option(key, "false").lower() in ("1", "true", "yes")


def _record(task_instance: Any, state: str) -> None:
    if not _enabled("listener_enabled"):
        return
    if not hasattr(task_instance, "get_template_context"):  # not the task process: never write from there
        return
    try:
        from finops_provider.callbacks.cost import FinOpsTaskCallback
        from finops_provider.callbacks.runtime import handle_task_end

        task = getattr(task_instance, "task", None)
        attached = [
            *(getattr(task, "on_success_callback", None) or []),
            *(getattr(task, "on_failure_callback", None) or []),
        ]
        if any(isinstance(cb, FinOpsTaskCallback) for cb in attached):
            return  # the task's own FinOps callback records it (with its declared cost spec)

        context = task_instance.get_template_context()
        handle_task_end(context, {}, state=state, act=_enabled("listener_enforce"))
    except Exception:
        log.exception("finops listener failed (task not affected)")


@hookimpl
def on_task_instance_success(previous_state: Any, task_instance: Any) -> None:
    _record(task_instance, "success")


@hookimpl
def on_task_instance_failed(previous_state: Any, task_instance: Any, error: Any) -> None:
    _record(task_instance, "failed")
