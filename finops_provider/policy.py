"""Cluster policy: stamp dag_id / task_id / run_id / team / cost_center onto what operators send to platforms.

Billed truth can only be joined back to Airflow tasks if the platform's bill carries the task's identity. This
``task_policy`` adds it at DAG-parse time, as templated values (``{{ run_id }}`` is rendered when the task
runs), without overriding anything the DAG author set. Wire it in ``airflow_local_settings.py``::

    from finops_provider.policy import task_policy  # noqa: F401

and opt in with ``[finops] cluster_policy = True`` (``AIRFLOW__FINOPS__CLUSTER_POLICY=True``); without the
setting the policy does nothing. ``team`` / ``cost_center`` come from the FinOps config's ``dags:`` / ``teams:``
mappings.

Covered operators (matched by class name, so no provider or SDK is imported here):

========================================  ===================================================================
``DatabricksSubmitRunOperator``           ``custom_tags`` of ``json.new_cluster``, every ``tasks[].new_cluster``
                                          and ``job_clusters[].new_cluster`` (exact values)
``BigQueryInsertJobOperator``             ``configuration.labels`` (label-safe values, see below)
``SnowflakeSqlApiOperator``, and          ``hook_params.session_parameters.QUERY_TAG``: a JSON object
``SQLExecuteQueryOperator`` (and its      (exact values); only when the connection id names Snowflake or the
subclasses) on a Snowflake connection     operator is a Snowflake one
``KubernetesPodOperator``                 ``labels`` team / cost_center (label-safe) and ``annotations``
                                          ``airflow_dag_id`` / ``airflow_task_id`` / ``airflow_run_id`` (exact);
                                          the operator already labels pods with dag_id / task_id / run_id
========================================  ===================================================================

``EmrCreateJobFlowOperator``              ``job_flow_overrides["Tags"]`` (``Key`` / ``Value`` list, exact values,
                                          run id templated) when the overrides are a dict
``EmrServerlessStartJobOperator``         ``config["tags"]`` (passed to ``StartJobRun``; exact values)
``GlueJobOperator``                       ``create_job_kwargs["Tags"]``: dag / task / team / cost center (Glue tags
                                          the job when the operator creates it, not each run: no run id)

Not covered yet: Synapse and Fabric operators, ``DatabricksRunNowOperator`` (a job's tags live in the job
definition: set them there).

Label rules: BigQuery label values must be lowercase ``[a-z0-9_-]`` and at most 63 characters (Kubernetes label
values similar). Static values go through :func:`finops_provider.core.platforms.label_value`; the run id is
rendered at run time as ``{{ run_id | lower | replace(':', '_') | replace('+', '_') | replace('.', '_') }}``,
which equals ``label_value(run_id)`` for Airflow's generated run ids (``scheduled__...``, ``manual__...``,
``asset_triggered__...``). Reconciliation compares ids in that label-safe form.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from finops_provider.core.platforms import label_value

log = logging.getLogger(__name__)

RUN_ID = "{{ run_id }}"
RUN_ID_LABEL = "{{ run_id | lower | replace(':', '_') | replace('+', '_') | replace('.', '_') }}"
TRUE = ("1", "true", "yes", "on")


def enabled() -> bool:
    """``[finops] cluster_policy`` (default off)."""
    from finops_provider.settings import _airflow_option

    return _airflow_option("cluster_policy", "False").strip().lower() in TRUE


def _class_names(task: Any) -> set[str]:
    return {c.__name__ for c in type(task).__mro__}


def identity(task: Any) -> dict[str, str]:
    """The exact attribution of a task: airflow ids (run id templated) and team / cost center from config."""
    out = {"airflow_dag_id": str(task.dag_id), "airflow_task_id": str(task.task_id), "airflow_run_id": RUN_ID}
    try:
        from finops_provider.settings import get_config

        cfg = get_config()
        dag = cfg.dag(task.dag_id)
        team = dag.team if dag else None
        cc = (dag.cost_center if dag else None) or cfg.team_cost_center(team)
    except Exception as e:  # a broken config must never break DAG parsing
        log.warning("finops policy: config not usable (%s); stamping ids only", type(e).__name__)
        team = cc = None
    if team:
        out["team"] = team
    if cc:
        out["cost_center"] = cc
    return out


def _merge(target: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    for k, v in values.items():
        target.setdefault(k, v)  # never override what the DAG author set
    return target


def _databricks(task: Any, ids: dict[str, str]) -> None:
    spec = task.json if isinstance(getattr(task, "json", None), dict) else None
    if spec is None:
        return
    clusters = [spec.get("new_cluster")]
    clusters += [t.get("new_cluster") for t in spec.get("tasks") or [] if isinstance(t, dict)]
    clusters += [c.get("new_cluster") for c in spec.get("job_clusters") or [] if isinstance(c, dict)]
    for c in clusters:
        if isinstance(c, dict):
            c["custom_tags"] = _merge(dict(c.get("custom_tags") or {}), ids)


def _bigquery(task: Any, ids: dict[str, str]) -> None:
    conf = getattr(task, "configuration", None)
    if not isinstance(conf, dict):
        return
    labels = {k: (RUN_ID_LABEL if v == RUN_ID else label_value(v)) for k, v in ids.items()}
    conf["labels"] = _merge(dict(conf.get("labels") or {}), labels)


def _snowflake(task: Any, ids: dict[str, str]) -> None:
    names = _class_names(task)
    conn_id = str(getattr(task, "conn_id", None) or getattr(task, "snowflake_conn_id", None) or "")
    if not (any("Snowflake" in n for n in names) or "snowflake" in conn_id.lower()):
        return
    hp = dict(getattr(task, "hook_params", None) or {})
    sp = dict(hp.get("session_parameters") or {})
    sp.setdefault("QUERY_TAG", json.dumps(ids, sort_keys=True))
    hp["session_parameters"] = sp
    task.hook_params = hp


def _kubernetes(task: Any, ids: dict[str, str]) -> None:
    labels = dict(getattr(task, "labels", None) or {})
    for k in ("team", "cost_center"):
        if k in ids:
            labels.setdefault(k, label_value(ids[k]))
    task.labels = labels
    task.annotations = _merge(dict(getattr(task, "annotations", None) or {}), ids)


def _emr(task: Any, ids: dict[str, str]) -> None:
    overrides = getattr(task, "job_flow_overrides", None)
    if not isinstance(overrides, dict):
        return  # a template file name or a string: rendered later, left alone
    tags = [t for t in overrides.get("Tags") or [] if isinstance(t, dict)]
    have = {t.get("Key") for t in tags}
    tags += [{"Key": k, "Value": v} for k, v in ids.items() if k not in have]
    overrides["Tags"] = tags


def _emr_serverless(task: Any, ids: dict[str, str]) -> None:
    config = getattr(task, "config", None)
    if not isinstance(config, dict):
        return
    config["tags"] = _merge(dict(config.get("tags") or {}), ids)


def _glue(task: Any, ids: dict[str, str]) -> None:
    kwargs = dict(getattr(task, "create_job_kwargs", None) or {})
    # Glue tags the job (set when the operator creates it), not each run: the run id would be stale
    static = {k: v for k, v in ids.items() if k != "airflow_run_id"}
    kwargs["Tags"] = _merge(dict(kwargs.get("Tags") or {}), static)
    task.create_job_kwargs = kwargs


#: operator class name -> stamping function
COVERED: dict[str, Any] = {
    "DatabricksSubmitRunOperator": _databricks,
    "BigQueryInsertJobOperator": _bigquery,
    "SQLExecuteQueryOperator": _snowflake,
    "KubernetesPodOperator": _kubernetes,
    "EmrCreateJobFlowOperator": _emr,
    "EmrServerlessStartJobOperator": _emr_serverless,
    "GlueJobOperator": _glue,
}


def stamp(task: Any) -> bool:
    """Stamp ``task`` regardless of the opt-in setting; True when an operator rule applied."""
    names = _class_names(task)
    applied = False
    ids: dict[str, str] | None = None
    for cls_name, fn in COVERED.items():
        if cls_name in names:
            ids = ids or identity(task)
            fn(task, ids)
            applied = True
    return applied


def task_policy(task: Any) -> None:
    """Airflow ``task_policy`` hook: stamps covered operators when ``[finops] cluster_policy`` is on."""
    if enabled():
        stamp(task)
