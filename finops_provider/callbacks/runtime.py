"""The code every enforcement entry point shares (task / DAG callbacks, the listener, the budget gate).

Runs in the task process or the dag-processor: no Airflow ORM, only the ledger, the local spool, the public
REST API (pauses) and the notification targets.

The core (ledger, budgets, outbox, pricing) is imported by the functions that use it, when a callback runs:
``finops_provider.callbacks`` stays cheap to import at DAG-parse time (see ``bench/parse.py``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from finops_provider.core.config import FinOpsConfig
    from finops_provider.core.enforcement import EnforcementResult, Subject
    from finops_provider.core.estimate import TaskTry
    from finops_provider.core.ledger import Ledger
    from finops_provider.core.outbox import Outbox, OutboxItem
    from finops_provider.core.pricing import RateCard
    from finops_provider.core.records import CostRecord

log = logging.getLogger(__name__)


def option(key: str, fallback: str) -> str:
    """``[finops] key`` (``AIRFLOW__FINOPS__KEY``) with a fallback."""
    from finops_provider.settings import _airflow_option

    return _airflow_option(key, fallback)


def api_base_url() -> str | None:
    try:
        from airflow.configuration import conf

        return conf.get("api", "base_url", fallback=None) or None
    except Exception:
        return None


def rate_card(config: FinOpsConfig) -> RateCard:
    from finops_provider.core.pricing import RateCard

    return RateCard.for_config(config)  # cached per distinct overrides


def outbox_for(ledger: Ledger) -> Outbox:
    from finops_provider.core.outbox import Outbox, OutboxPolicy

    return Outbox(
        ledger,
        OutboxPolicy(
            backoff_base_s=float(option("outbox_backoff_base_s", "30")),
            max_attempts=int(option("outbox_max_attempts", "25")),
        ),
    )


# ------------------------------------------------------------------------------------------ attribution
def _tag_value(tags: Any, keys: tuple[str, ...]) -> str | None:
    """``team:data-eng`` / ``team=data-eng`` DAG tags."""
    for t in tags or ():
        for sep in (":", "="):
            k, s, v = str(t).partition(sep)
            if s and k.strip() in keys and v.strip():
                return v.strip()
    return None


def _resource_of(task: Any) -> tuple[str | None, str | None, dict[str, str]]:
    """What the task ran, when its operator exposes it: (resource id, resource type, tags)."""
    tags: dict[str, str] = {}
    job_id = getattr(task, "job_id", None)
    if isinstance(job_id, str) and job_id:  # BigQueryInsertJobOperator
        tags["bigquery_job_id"] = job_id
        return job_id, "bigquery_job", tags
    run_id = getattr(task, "run_id", None)
    if isinstance(run_id, int):  # Databricks operators
        tags["databricks_run_id"] = str(run_id)
        return str(run_id), "databricks_run", tags
    qids = getattr(task, "query_ids", None)
    if isinstance(qids, list) and qids:  # Snowflake SQL API operator
        tags["snowflake_query_ids"] = ",".join(map(str, qids))[:1000]
        qtag = (getattr(task, "session_parameters", None) or {}).get("QUERY_TAG")
        if qtag:
            tags["snowflake_query_tag"] = str(qtag)
        return str(qids[0]), "snowflake_query", tags
    pod = getattr(task, "pod", None)
    name = getattr(getattr(pod, "metadata", None), "name", None)
    if name:  # KubernetesPodOperator
        tags["kubernetes_pod"] = str(name)
        return str(name), "kubernetes_pod", tags
    return None, None, tags


def task_try_from_context(context: Mapping[str, Any], state: str) -> TaskTry:
    from finops_provider.core.estimate import TaskTry

    ti = context.get("ti") or context["task_instance"]
    dag = context.get("dag")
    params = context.get("params") or {}
    fin = dict(params.get("finops") or {}) if isinstance(params.get("finops"), Mapping) else {}
    now = dt.datetime.now(dt.UTC)
    start = getattr(ti, "start_date", None) or now
    end = getattr(ti, "end_date", None) or now
    rid, rtype, tags = _resource_of(context.get("task") or getattr(ti, "task", None))
    dag_tags = getattr(dag, "tags", None) or ()
    return TaskTry(
        dag_id=ti.dag_id,
        task_id=ti.task_id,
        run_id=ti.run_id,
        try_number=int(getattr(ti, "try_number", 1) or 1),
        map_index=int(getattr(ti, "map_index", -1) if getattr(ti, "map_index", None) is not None else -1),
        start=start,
        end=end,
        state=state,
        team=fin.get("team") or params.get("finops_team") or _tag_value(dag_tags, ("team",)),
        cost_center=fin.get("cost_center")
        or params.get("finops_cost_center")
        or _tag_value(dag_tags, ("cost_center", "cost-center")),
        tags=tags,
        resource_id=rid,
        resource_type=rtype,
    )


def estimate_from_context(
    context: Mapping[str, Any], defaults: Mapping[str, Any], config: FinOpsConfig, state: str
) -> CostRecord:
    """The estimate record of the task try in ``context`` (per-task ``params["finops"]`` beats ``defaults``)."""
    from finops_provider.core.allocation import Attributor
    from finops_provider.core.estimate import TaskCostSpec, estimate

    params = context.get("params") or {}
    declared = params.get("finops") if isinstance(params.get("finops"), Mapping) else {}
    spec = TaskCostSpec.from_mapping({**defaults, **(declared or {})})
    rec = estimate(task_try_from_context(context, state), spec, rate_card(config))
    return Attributor(config).apply(rec)


# ------------------------------------------------------------------------------------------ delivery
def make_deliverer(ledger: Ledger) -> Any:
    """A function delivering one outbox item (Slack alert or digest / Jira / ServiceNow / pause); records pauses."""

    def deliver(item: OutboxItem) -> str | None:
        p = item.payload
        route = p.get("route") or {}
        if item.kind == "slack":
            from finops_provider.notifications.slack import FinOpsSlackNotifier

            return FinOpsSlackNotifier(
                slack_conn_id=route.get("slack_conn_id") or "slack_default", channel=route.get("slack_channel")
            ).send_payload(p)
        if item.kind == "slack_digest":  # the executive-summary digest (PublishSummaryOperator)
            from finops_provider.reports.digest import FinOpsSlackDigestNotifier

            return FinOpsSlackDigestNotifier(
                slack_conn_id=route.get("slack_conn_id") or "slack_default", channel=route.get("slack_channel")
            ).send_payload(p)
        if item.kind == "jira":
            from finops_provider.notifications.jira import FinOpsJiraNotifier

            return FinOpsJiraNotifier(
                jira_conn_id=route.get("jira_conn_id") or "jira_default", project_key=route.get("jira_project")
            ).send_payload(p)
        if item.kind == "servicenow":
            from finops_provider.notifications.servicenow import FinOpsServiceNowNotifier

            return FinOpsServiceNowNotifier(
                servicenow_conn_id=route.get("servicenow_conn_id") or "servicenow_default"
            ).send_payload(p)
        if item.kind in ("pause_after_run", "pause_now"):
            return _pause(ledger, item)
        raise ValueError(f"unknown outbox kind {item.kind!r}")

    return deliver


def _pause(ledger: Ledger, item: OutboxItem) -> str:
    from finops_provider.core.outbox import NotYet, record_event
    from finops_provider.hooks.airflow_api import RUNNING, UNFINISHED, AirflowApiHook

    p = item.payload
    target = p["pause_dag_id"]
    hook = AirflowApiHook(airflow_api_conn_id=option("api_conn_id", AirflowApiHook.default_conn_name))
    if item.kind == "pause_after_run" and p.get("run_id") and target == p.get("dag_id"):
        # Airflow schedules no task of a paused DAG: pause once every task of the current run has finished
        # (the run's last task callback or the DAG-level callback gets here).
        left = [
            t["task_id"] for t in hook.task_instances(target, p["run_id"]) if t.get("state") in UNFINISHED + RUNNING
        ]
        if left:
            raise NotYet(f"run {p['run_id']} still has {len(left)} unfinished tasks", retry_in_s=0.5)
    dag = hook.set_paused(target, True)
    stopped = None
    if item.kind == "pause_now" and p.get("run_id") and target == p.get("dag_id"):
        stopped = hook.stop_run(target, p["run_id"], keep=(p["task_id"],) if p.get("task_id") else ())
    b = p.get("breach") or {}
    record_event(
        ledger,
        "pause",
        actor=f"finops:budget={b.get('budget')}",
        dag_id=target,
        run_id=p.get("run_id"),
        task_id=p.get("task_id"),
        reason=f"{item.kind}: budget {b.get('budget')} at {b.get('utilisation_pct')} % "
        f"crossed {b.get('threshold_pct')} % ({b.get('basis')})",
        dedupe_key=item.dedupe_key,
        detail={"mode": item.kind, "breach": b, "stopped": stopped, "is_paused": dag.get("is_paused")},
    )
    return "paused"


def drain(ledger: Ledger, *, keys: list[str] | None = None, time_budget_s: float | None = None) -> Any:
    budget = time_budget_s if time_budget_s is not None else float(option("callback_time_budget_s", "20"))
    return outbox_for(ledger).drain(make_deliverer(ledger), keys=keys, time_budget_s=budget, limit=20)


def run_enforcement(ledger: Ledger, config: FinOpsConfig, subject: Subject) -> EnforcementResult:
    """Evaluate, claim, enqueue; deliver this breach's actions now, then other due retries."""
    from finops_provider.core.enforcement import enforce

    res = enforce(ledger, config, subject, outbox=outbox_for(ledger))
    if res.enqueued:
        drain(ledger, keys=res.enqueued)
    drain(ledger, time_budget_s=5.0)
    return res


# ------------------------------------------------------------------------------------------ unpause
def reconcile_unpause(ledger: Ledger, dag_id: str, run_id: str | None, run_started: dt.datetime | None) -> bool:
    """Record once that a human resumed a DAG FinOps paused (a run started after the pause).

    Who resumed it comes from the Airflow audit log (``GET /api/v2/eventLogs``, event ``patch_dag`` with
    ``is_paused`` false) when the API user may read it; ``unknown`` otherwise.
    """
    from finops_provider.core.outbox import last_pause_state, record_event

    last = last_pause_state(ledger, dag_id)
    if not last or last["kind"] != "pause" or run_started is None or run_started <= last["at"]:
        return False
    claim = outbox_for(ledger)
    key = f"unpause:{dag_id}:{last['id']}"
    if not claim.enqueue("record", key, {"dag_id": dag_id, "pause_event": last["id"]}):
        return False
    actor, when = "unknown", None
    try:
        from finops_provider.hooks.airflow_api import AirflowApiHook

        hook = AirflowApiHook(airflow_api_conn_id=option("api_conn_id", AirflowApiHook.default_conn_name))
        for e in hook.event_logs(dag_id):
            extra = e.get("extra")
            extra = json.loads(extra) if isinstance(extra, str) and extra.startswith("{") else (extra or {})
            if e.get("event") == "patch_dag" and str(extra.get("is_paused")).lower() == "false":
                actor, when = str(e.get("owner") or "unknown"), e.get("when")
                break
    except Exception as e:
        log.info("could not read the audit log of %s (%s)", dag_id, type(e).__name__)
    record_event(
        ledger,
        "unpause",
        actor=actor,
        dag_id=dag_id,
        run_id=run_id,
        reason="the DAG was resumed after a FinOps pause",
        dedupe_key=key,
        detail={"paused_at": last["at"].isoformat(), "resumed_at": when, "pause_reason": last["reason"]},
    )
    for item in claim.claim_due(keys=[key]):
        claim.complete(item, "recorded")
    return True


# ------------------------------------------------------------------------------------------ entry point
def handle_task_end(context: Mapping[str, Any], defaults: Mapping[str, Any], *, state: str, act: bool = True) -> Any:
    """Record the try's estimate; evaluate budgets and act. Never raises (errors are logged)."""
    try:
        from finops_provider.core.enforcement import Subject
        from finops_provider.core.estimate import SOURCE, split_by_assets
        from finops_provider.core.ledger import finops_home
        from finops_provider.core.outbox import LocalSpool, flush_spool
        from finops_provider.settings import get_config, get_ledger

        config = get_config()
        rec = estimate_from_context(context, defaults, config, state)
        # table-level cost: a task that writes tables (outlets) has its cost split across them, exactly
        recs = split_by_assets(rec, getattr(context.get("task"), "outlets", None) or [])
    except Exception:
        log.exception("finops: could not estimate the cost of this task try (task not affected)")
        return None
    try:
        ledger = get_ledger(config=config)
    except Exception as e:
        LocalSpool().put_records(recs, source=SOURCE, scope=f"{SOURCE}:{rec.x_dag_id}")
        log.warning("finops: ledger unreachable (%s); estimate spooled locally", type(e).__name__)
        return rec
    with ledger:
        try:
            if (finops_home() / "spool.db").exists():
                flush_spool(ledger, LocalSpool())
            ledger.ingest(recs, source=SOURCE, scope=f"{SOURCE}:{rec.x_dag_id}")
        except Exception as e:
            LocalSpool().put_records(recs, source=SOURCE, scope=f"{SOURCE}:{rec.x_dag_id}")
            log.warning("finops: ledger write failed (%s); estimate spooled locally", type(e).__name__)
            return rec
        if not act:
            return rec
        try:
            subject = Subject(
                dag_id=rec.x_dag_id,
                run_id=rec.x_run_id,
                task_id=rec.x_task_id,
                team=rec.x_team,
                cost_center=rec.x_cost_center,
                base_url=api_base_url(),
            )
            run_enforcement(ledger, config, subject)
            dag_run = context.get("dag_run")
            started = getattr(dag_run, "start_date", None) or getattr(dag_run, "run_after", None)
            reconcile_unpause(ledger, rec.x_dag_id or "", rec.x_run_id, started)
        except Exception:
            log.exception("finops: budget evaluation failed; it is retried on the next callback")
    return rec
