"""KubernetesCostHook through the real KubernetesHook / kubernetes client against a local Kubernetes API."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.reconcile import reconcile
from tests.fixtures.kubernetes import node, pod, pod_metrics
from tests.fixtures.platforms import task_try

UTC = dt.UTC
DAY = dt.datetime(2026, 3, 1, tzinfo=UTC)
NEXT = DAY + dt.timedelta(days=1)
RUN = "scheduled__2026-03-01T00:00:00+00:00"
CPU, MEM, GPU = Decimal("0.031611"), Decimal("0.004237"), Decimal("0.95")  # the rate card's OpenCost defaults

PODS = [
    pod(
        "sales-etl-transform-abc",
        phase="Succeeded",
        start="2026-03-01T10:00:00Z",
        finished="2026-03-01T10:30:00Z",
        requests={"cpu": "2", "memory": "4Gi"},
        # KubernetesPodOperator's labels (run_id made label-safe) and the exact ids the FinOps policy annotates
        labels={
            "dag_id": "sales_etl",
            "task_id": "transform",
            "run_id": "scheduled__2026-03-01T0000000000-4b1c2d3e4",
            "team": "data-eng",
            "kubernetes_pod_operator": "True",
        },
        annotations={"airflow_dag_id": "sales_etl", "airflow_task_id": "transform", "airflow_run_id": RUN},
    ),
    pod(
        "web-gpu-0",
        namespace="web",
        start="2026-03-01T22:00:00Z",
        requests={"cpu": "500m", "memory": "1Gi"},
        limits={"nvidia.com/gpu": "1"},
    ),
    pod("pending-0", phase="Pending", requests={"cpu": "64"}),
]
NODES = [node("node-1", {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1", "pods": "110"})]
METRICS = [pod_metrics("sales-etl-transform-abc", "airflow", {"cpu": "2500m", "memory": "3145728Ki"})]


def _collect(ledger):
    from finops_provider.hooks.kubernetes_costs import collect_k8s

    return collect_k8s(ledger, FinOpsConfig(), DAY, NEXT, cluster_name="prod-eu", now=NEXT)


@pytest.mark.parametrize(
    ("metrics", "etl_cpu_cores", "basis"),
    [
        pytest.param(METRICS, Decimal("2.5"), "max(request,usage)", id="metrics-usage-above-request"),
        pytest.param(None, Decimal(2), "requests", id="no-metrics-server"),
    ],
)
def test_pod_cost_idle_row_and_conservation(kube_api, platform_ledger, metrics, etl_cpu_cores, basis) -> None:
    kube_api(PODS, NODES, metrics)
    res, _ = _collect(platform_ledger)
    etl = {r.sku_id: r for r in res.records if r.x_task_id == "transform"}
    assert etl["cpu_core_hour"].billed_cost == etl_cpu_cores * Decimal("0.5") * CPU
    assert etl["memory_gb_hour"].billed_cost == 4 * Decimal("0.5") * MEM  # request (4Gi) > usage (3Gi)
    assert etl["cpu_core_hour"].tags["finops_usage_source"] == basis
    assert (etl["cpu_core_hour"].x_dag_id, etl["cpu_core_hour"].x_run_id) == ("sales_etl", RUN)  # exact, not label
    assert etl["cpu_core_hour"].x_team == "data-eng"
    web = {r.sku_id: r for r in res.records if r.resource_id == "web/web-gpu-0"}
    assert web["gpu_hour"].billed_cost == 2 * GPU and web["gpu_hour"].tags["finops_usage_source"] == "requests"
    assert web["cpu_core_hour"].pricing_quantity == Decimal(1)  # 0.5 core x 2 h
    assert not any("pending" in (r.resource_id or "") for r in res.records)
    node_cost = 8 * 24 * CPU + 32 * 24 * MEM + 24 * GPU
    [idle] = [r for r in res.records if r.x_job_id == "(idle)"]
    workload = sum(r.billed_cost for r in res.records if r.x_job_id != "(idle)")
    assert idle.billed_cost == node_cost - workload
    assert platform_ledger.totals().get("USD").amount == node_cost  # conservation: workloads + idle = nodes
    _, again = _collect(platform_ledger)
    assert again.inserted == 0 and platform_ledger.totals().get("USD").amount == node_cost


def test_estimate_superseded_by_truth(kube_api, platform_ledger) -> None:
    kube_api(PODS, NODES, METRICS)
    from finops_provider.collect import CollectResult, ingest_collected
    from finops_provider.hooks.kubernetes_costs import KubernetesCostHook

    task = task_try(task_id="transform", run_id=RUN, minutes=30)
    est = KubernetesCostHook().estimate_run(task, requests={"cpu": "2", "memory": "4Gi"})
    assert est.billed_cost == 2 * Decimal("0.5") * CPU + 4 * Decimal("0.5") * MEM
    assert est.x_cost_kind == "estimate" and est.x_platform == "kubernetes"
    ingest_collected(platform_ledger, FinOpsConfig(), CollectResult(records=[est], source="airflow-estimate"),
                     replace_window=False)  # fmt: skip
    _collect(platform_ledger)
    rep = reconcile(platform_ledger, DAY, NEXT)
    [t] = rep.tasks
    truth = Decimal("2.5") * Decimal("0.5") * CPU + 4 * Decimal("0.5") * MEM
    assert t.truth.amount == truth and rep.superseded_rows == 1
    assert t.error_pct == ((est.billed_cost - truth) / truth * 100).quantize(Decimal("0.000001"))
    assert t.error_pct < 0  # requests under-estimate a pod that used more CPU than it requested
    assert platform_ledger.count(cost_kind="estimate") == 0


def test_estimate_reads_the_pod_spec(kube_api, httpserver) -> None:
    httpserver.expect_request("/api/v1/namespaces/airflow/pods/sales-etl-transform-abc").respond_with_json(PODS[0])
    kube_api(PODS, NODES, METRICS)
    from finops_provider.hooks.kubernetes_costs import KubernetesCostHook

    est = KubernetesCostHook().estimate_run(
        task_try(minutes=60), namespace="airflow", pod_name="sales-etl-transform-abc"
    )
    assert est.billed_cost == 2 * CPU + 4 * MEM
