"""Fault matrix of the platform cost hooks, each on its real protocol peer, with the faults its transport can have.

* HTTP APIs — Kubernetes (local API server), Fabric (Resource Manager + Power BI executeQueries over TLS), Synapse
  (Cost Management Query API over TLS), Redshift (moto's DescribeClusters, faults injected on the wire):
  throttling with the server's Retry-After, 5xx, a server that stalls past the timeout, pages that never arrive
  or whose continue token expired, refused credentials, bad values in single rows, schema drift.
* SQL sources — Databricks system tables and BigQuery INFORMATION_SCHEMA.JOBS (DuckDB copies of the documented
  tables), Snowflake ACCOUNT_USAGE (fakesnow): the SQL itself runs unchanged, so the faults are in the data — a
  bad value in one row, a column the platform added (the SQL names its columns: ignored, exact) and a column that
  is gone (a clear error naming it, nothing written). Their network transports (the vendors' SQL connectors)
  have no local peer here.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from typing import Any

import pytest

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.ledger import Ledger
from finops_provider.core.retry import RetryExhaustedError, RetryPolicy
from tests.fixtures.azure import TOKEN, StaticTokenCredential
from tests.fixtures.fabric import CAPACITY_ID, DATASET_ID, FakeFabric, metrics_row
from tests.fixtures.kubernetes import node, pod

UTC = dt.UTC
DAY = dt.datetime(2026, 3, 1, tzinfo=UTC)
NEXT = DAY + dt.timedelta(days=1)
FAST = RetryPolicy(max_attempts=4, base_s=0.001, cap_s=0.002, budget_s=30)
STALL_S, TIMEOUT_S = 0.6, 0.2


def _stalled_sleep(waits: list[float]) -> Callable[[float], None]:
    """The hooks' ``sleep``: records the wait and outlasts the stalled request (the peers answer one at a time)."""

    def sleep(s: float) -> None:
        waits.append(s)
        time.sleep(STALL_S)

    return sleep


@pytest.fixture
def logged_warnings(capfd: pytest.CaptureFixture[str]) -> Callable[[], list[str]]:
    """Reads the warning lines logged so far (hooks log through Airflow 3's structlog, one line per event on the
    process's output, which caplog does not see)."""

    def read() -> list[str]:
        out, err = capfd.readouterr()
        return [line for line in (out + err).splitlines() if "[warning" in line]

    return read


# =========================================================================================== Kubernetes
CPU, MEM = Decimal("0.031611"), Decimal("0.004237")  # the rate card's OpenCost defaults (core-hour, GiB-hour)
POD_COST = CPU + MEM  # each pod: 1 core and 1 GiB for one hour
NODE_COST = 4 * 24 * CPU + 16 * 24 * MEM  # the node: 4 cores, 16 GiB for the whole day


def _pods(n: int = 5) -> list[dict[str, Any]]:
    return [
        pod(
            f"etl-{i}",
            phase="Succeeded",
            start=f"2026-03-01T{10 + i:02d}:00:00Z",
            finished=f"2026-03-01T{11 + i:02d}:00:00Z",
            requests={"cpu": "1", "memory": "1Gi"},
            labels={"team": "data-eng"},
        )
        for i in range(n)
    ]


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}  # fmt: skip


K8S_ERRORS = {
    429: ("TooManyRequests", "Too many requests, please try again later."),
    500: ("InternalError", "Internal error occurred: etcdserver: request timed out"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    401: ("Unauthorized", "Unauthorized"),
    403: ("Forbidden", 'pods is forbidden: User "system:serviceaccount:airflow:finops" cannot list resource "pods"'),
    410: ("Expired", "The provided continue parameter is too old to display a consistent list result."),
}


class FaultyKubeApi:
    """The Kubernetes API as a local server: pod / node lists in pages of ``page_size`` with ``continue`` tokens,
    metrics.k8s.io answering 404 (no metrics-server), and faults per (path, page): ``"stall"`` or
    ``(status, headers)`` with the API server's Status body."""

    def __init__(self, httpserver: Any, pods: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> None:
        self.lists = {"/api/v1/pods": ("PodList", pods), "/api/v1/nodes": ("NodeList", nodes)}
        self.page_size = 2
        self.faults: dict[tuple[str, int], list[Any]] = {}
        self.requests: list[tuple[str, int]] = []
        for path in self.lists:
            httpserver.expect_request(path).respond_with_handler(partial(self._list, path))
        httpserver.expect_request("/apis/metrics.k8s.io/v1beta1/pods").respond_with_json(
            _status(404, "NotFound", "the server could not find the requested resource"), status=404
        )

    def _list(self, path: str, request: Any) -> Any:
        from werkzeug import Response

        token = request.args.get("continue") or ""
        page = int(token.rsplit("-", 1)[-1]) if token else 0
        self.requests.append((path, page))
        queue = self.faults.get((path, page))
        fault = queue.pop(0) if queue else None
        if fault == "stall":
            time.sleep(STALL_S)
        elif fault is not None:
            status, headers = fault
            body = _status(status, *K8S_ERRORS[status])
            return Response(json.dumps(body), status=status, headers=headers, content_type="application/json")
        kind, items = self.lists[path]
        chunk = items[page * self.page_size : (page + 1) * self.page_size]
        more = (page + 1) * self.page_size < len(items)
        meta = {"resourceVersion": "4711", **({"continue": f"eyJydiI6NDcxMX0-{page + 1}"} if more else {})}
        body = {"kind": kind, "apiVersion": "v1", "metadata": meta, "items": chunk}
        return Response(json.dumps(body), status=200, content_type="application/json")


@pytest.fixture
def kube(httpserver: Any, kube_api: Any) -> FaultyKubeApi:
    """``kube_api``: the ``kubernetes_default`` connection (kube config with a bearer token) to the local server."""
    return FaultyKubeApi(httpserver, _pods(), [node("node-1", {"cpu": "4", "memory": "16Gi", "pods": "110"})])


def _k8s_collect(led: Ledger, **kw: Any) -> tuple[Any, Any]:
    from finops_provider.hooks.kubernetes_costs import KubernetesCostHook, collect_k8s

    kw.setdefault("retry_policy", FAST)
    kw.setdefault("sleep", lambda s: None)
    return collect_k8s(led, FinOpsConfig(), DAY, NEXT, now=NEXT, hook=KubernetesCostHook(**kw))


def _k8s_exact(led: Ledger, res: Any, pods: int = 5) -> None:
    assert led.totals(scope=res.scope).get("USD").amount == pods * POD_COST  # every pod landed, exactly
    assert led.totals().get("USD").amount == NODE_COST  # pods + idle = the node's cost


@pytest.mark.parametrize(
    ("path", "page", "status", "headers"),
    [
        pytest.param("/api/v1/pods", 0, 429, {"Retry-After": "3"}, id="pods-429-retry-after"),
        pytest.param("/api/v1/pods", 2, 429, {"Retry-After": "1"}, id="pods-page3-429-retry-after"),
        pytest.param("/api/v1/pods", 1, 500, {}, id="pods-page2-500"),
        pytest.param("/api/v1/nodes", 0, 503, {}, id="nodes-503"),
    ],
)
def test_k8s_throttling_and_5xx_are_retried_as_the_server_asks(
    kube: FaultyKubeApi, sqlite_url: str, path: str, page: int, status: int, headers: dict[str, str], figures
) -> None:
    kube.faults[(path, page)] = [(status, headers)] * 2
    waits: list[float] = []
    with Ledger(sqlite_url) as led:
        res, ing = _k8s_collect(led, sleep=waits.append)
        figures.fault(f"k8s:{status}", 2)
        assert kube.requests.count((path, page)) == 3 and len(waits) == 2  # counted by the server
        if headers:
            assert waits == [float(headers["Retry-After"])] * 2
        assert ing.inserted == 5 * 2 + 1  # cpu + memory per pod, and the idle row
        _k8s_exact(led, res)
        figures.checked(valid=11, lost=11 - led.count(), duplicates=led.count() - 11)


@pytest.mark.parametrize("path", ["/api/v1/pods", "/api/v1/nodes"])
def test_k8s_a_stalled_api_server_times_out_and_is_retried(kube: FaultyKubeApi, sqlite_url: str, path: str, figures):
    kube.faults[(path, 0)] = ["stall"]
    waits: list[float] = []
    with Ledger(sqlite_url) as led:
        res, _ = _k8s_collect(led, sleep=_stalled_sleep(waits), timeout=TIMEOUT_S)
        figures.fault("k8s:stall")
        assert kube.requests.count((path, 0)) == 2 and len(waits) == 1
        _k8s_exact(led, res)


def test_k8s_a_page_that_never_arrives_writes_nothing_then_rerun_is_exact(kube: FaultyKubeApi, sqlite_url, figures):
    kube.faults[("/api/v1/pods", 2)] = [(503, {})] * 10
    with Ledger(sqlite_url) as led:
        with pytest.raises(RetryExhaustedError, match="pods"):
            _k8s_collect(led)
        figures.fault("k8s:truncated-pagination", 4)
        assert led.count() == 0  # pages 1-2 never reached the ledger on their own
        kube.faults.clear()
        res, _ = _k8s_collect(led)
        _k8s_exact(led, res)
        figures.checked(valid=11, lost=11 - led.count(), duplicates=led.count() - 11)


def test_k8s_an_expired_continue_token_lists_again_from_the_start(kube: FaultyKubeApi, sqlite_url, figures) -> None:
    kube.faults[("/api/v1/pods", 1)] = [(410, {})]
    with Ledger(sqlite_url) as led:
        res, _ = _k8s_collect(led)
        figures.fault("k8s:410-continue-expired")
        pods = [p for path, p in kube.requests if path == "/api/v1/pods"]
        assert pods == [0, 1, 0, 1, 2]  # the list restarted; no pod counted twice
        _k8s_exact(led, res)


@pytest.mark.parametrize("status", [pytest.param(401, id="401-expired-token"), pytest.param(403, id="403-rbac")])
def test_k8s_refused_credentials_name_the_connection(kube: FaultyKubeApi, status: int, figures) -> None:
    from finops_provider.collect import CredentialsError
    from finops_provider.hooks.kubernetes_costs import KubernetesCostHook

    kube.faults[("/api/v1/pods", 0)] = [(status, {})] * 5
    with pytest.raises(CredentialsError) as err:
        KubernetesCostHook(retry_policy=FAST, sleep=lambda s: None).collect_pods(DAY, NEXT, now=NEXT)
    figures.fault(f"k8s:{status}")
    figures.secret_probes += 1
    msg = str(err.value)
    assert kube.requests == [("/api/v1/pods", 0)]  # not retried
    assert "'kubernetes_default'" in msg and f"HTTP {status}" in msg and "ClusterRole" in msg
    assert "test-token" not in msg  # the kube config's bearer token


BAD_PODS = [  # (pod change, field the quarantine must name)
    pytest.param({"requests": {"cpu": "lots", "memory": "1Gi"}}, "resources.requests.cpu", id="cpu-not-a-quantity"),
    pytest.param({"requests": {"cpu": "1", "memory": "1Zi"}}, "resources.requests.memory", id="memory-bad-suffix"),
    pytest.param({"limits": {"nvidia.com/gpu": "one"}}, "resources.requests.nvidia.com/gpu", id="gpu-not-a-quantity"),
    pytest.param({"start": "yesterday"}, "status.startTime", id="start-not-a-time"),
]


@pytest.mark.parametrize(("change", "field"), BAD_PODS)
def test_k8s_a_bad_pod_is_quarantined_and_the_others_land(
    httpserver: Any, kube_api: Any, sqlite_url: str, change: dict[str, Any], field: str, figures
) -> None:
    args: dict[str, Any] = {"phase": "Succeeded", "start": "2026-03-01T20:00:00Z", "finished": "2026-03-01T21:00:00Z",
                            "requests": {"cpu": "1", "memory": "1Gi"}, **change}  # fmt: skip
    pods = _pods()
    pods.insert(2, pod("bad-0", **args))
    FaultyKubeApi(httpserver, pods, [node("node-1", {"cpu": "4", "memory": "16Gi"})])
    figures.bad_input(f"k8s-pod:{field}")
    with Ledger(sqlite_url) as led:
        res, ing = _k8s_collect(led)
        (q,) = led.quarantined()
        assert q["field"] == field and "airflow/bad-0" in q["reason"] and q["row_number"] == 3
        assert ing.quarantined == 1
        _k8s_exact(led, res)
        figures.checked(valid=11, lost=11 - led.count(), duplicates=led.count() - 11)


BAD_NODES = [  # (node change, field the quarantine must name)
    pytest.param({"capacity": {"cpu": "four", "memory": "16Gi"}}, "status.capacity.cpu", id="cpu-not-a-quantity"),
    pytest.param({"capacity": {"cpu": "4", "memory": "16Qi"}}, "status.capacity.memory", id="memory-bad-suffix"),
    pytest.param(
        {"capacity": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "x"}}, "status.capacity.nvidia.com/gpu", id="gpu"
    ),
    pytest.param({"created": "last tuesday"}, "metadata.creationTimestamp", id="created-not-a-time"),
]


@pytest.mark.parametrize(("change", "field"), BAD_NODES)
def test_k8s_a_node_with_unreadable_capacity_is_quarantined_and_the_rest_lands(
    httpserver: Any, kube_api: Any, sqlite_url: str, change: dict[str, Any], field: str, figures
) -> None:
    """One node the collector cannot read no longer stops the collection: every pod lands, the readable node's
    idle cost lands, and the unreadable node is quarantined naming the field (it used to raise out of node_cost)."""
    args: dict[str, Any] = {"capacity": {"cpu": "4", "memory": "16Gi"}, **change}
    FaultyKubeApi(httpserver, _pods(), [node("node-1", {"cpu": "4", "memory": "16Gi"}), node("bad-node", **args)])
    figures.bad_input(f"k8s-node:{field}")
    with Ledger(sqlite_url) as led:
        res, ing = _k8s_collect(led)
        (q,) = led.quarantined()
        assert q["field"] == field and "node bad-node" in q["reason"] and q["row_number"] == 2
        assert ing.quarantined == 1
        _k8s_exact(led, res)  # pods exact, and pods + idle = the one readable node's cost
        figures.checked(valid=11, lost=11 - led.count(), duplicates=led.count() - 11)


# =============================================================================================== Fabric
CU_HOUR = Decimal("0.18")  # ratecards/fabric.yaml
CAPACITY_COST = 2 * 24 * CU_HOUR  # F2 running the whole day
ROWS = [
    metrics_row("Sales", "transform_nb", "Notebook", "2026-03-01", 3600, op="op-7"),
    metrics_row("ML", "train", "SparkJobDefinition", "2026-03-01", 5400.5),
    metrics_row("ML", "score", "SparkJobDefinition", "2026-03-01", 1799.5),
]


class FaultyFabric(FakeFabric):
    """The Fabric peers, plus faults for the next executeQueries calls: ``"stall"`` or ``(status, headers)``."""

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.faults: list[Any] = []
        self.calls = 0

    def _execute(self, request: Any) -> Any:
        from werkzeug import Response

        self.calls += 1
        fault = self.faults.pop(0) if self.faults else None
        if fault == "stall":
            time.sleep(STALL_S)
        elif fault is not None:
            status, headers = fault
            body = {"error": {"code": "TooManyRequests" if status == 429 else str(status), "message": "injected"}}
            return Response(json.dumps(body), status=status, headers=headers, content_type="application/json")
        return super()._execute(request)


@pytest.fixture
def fabric(azure_cost_api: Any, azure_tls_server: Any) -> FaultyFabric:
    """``azure_cost_api``: the ``azure_default`` connection on the same TLS server."""
    api = FaultyFabric(azure_tls_server)
    api.rows = list(ROWS)
    return api


def _fabric_collect(api: FaultyFabric, led: Ledger, **kw: Any) -> tuple[Any, Any]:
    from finops_provider.hooks.fabric_costs import FabricCostHook, collect_fabric

    base = api.server.url_for("/")
    kw.setdefault("retry_policy", FAST)
    kw.setdefault("sleep", lambda s: None)
    hook = FabricCostHook(capacity_id=CAPACITY_ID, base_url=base, powerbi_url=base, credential=StaticTokenCredential(),
                          **kw)  # fmt: skip
    return collect_fabric(led, FinOpsConfig(), DAY, NEXT, hook=hook, dataset_id=DATASET_ID, dax="EVALUATE ...",
                          now=NEXT)  # fmt: skip


def _fabric_shares(led: Ledger) -> Decimal:
    return sum((r.billed_cost for r in led.records() if r.x_job_id != "(idle)"), Decimal(0))


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param((429, {"Retry-After": "6"}), id="429-retry-after"),
        pytest.param((503, {}), id="503"),
        pytest.param("stall", id="stall"),
    ],
)
def test_fabric_metrics_query_faults_are_retried(fabric: FaultyFabric, sqlite_url: str, fault: Any, figures) -> None:
    fabric.faults = [fault, fault]
    waits: list[float] = []
    sleep = _stalled_sleep(waits) if fault == "stall" else waits.append
    with Ledger(sqlite_url) as led:
        _, ing = _fabric_collect(fabric, led, sleep=sleep, timeout=TIMEOUT_S)
        figures.fault(f"fabric-powerbi:{fault if fault == 'stall' else fault[0]}", 2)
        assert fabric.calls == 3 and len(waits) == 2
        if fault != "stall" and fault[1]:
            assert waits == [6.0, 6.0]
        assert ing.inserted == 4  # three shares and the idle row
        assert led.totals().get("USD").amount == CAPACITY_COST
        assert _fabric_shares(led) == (3600 + Decimal("5400.5") + Decimal("1799.5")) / 3600 * CU_HOUR


def test_fabric_refused_credentials_name_the_connection(fabric: FaultyFabric, sqlite_url: str, figures) -> None:
    from finops_provider.collect import CredentialsError

    fabric.faults = [(401, {})] * 5
    with Ledger(sqlite_url) as led, pytest.raises(CredentialsError) as err:
        _fabric_collect(fabric, led)
    figures.fault("fabric-powerbi:401")
    figures.secret_probes += 1
    assert fabric.calls == 1 and "'azure_default'" in str(err.value) and "HTTP 401" in str(err.value)
    assert TOKEN not in str(err.value) and "not-a-real-secret" not in str(err.value)


BAD_METRICS = [  # (CU seconds or date of row 2, field)
    pytest.param({"[CU (s)]": "n/a"}, "ConsumedQuantity", id="cu-not-a-number"),
    pytest.param({"[CU (s)]": None}, "ConsumedQuantity", id="cu-null"),
    pytest.param({"[CU (s)]": "NaN"}, "ConsumedQuantity", id="cu-nan"),
    pytest.param({"MetricsByItemandOperationandDay[Date]": "not a date"}, "ChargePeriodStart", id="bad-date"),
]


@pytest.mark.parametrize(("change", "field"), BAD_METRICS)
def test_fabric_a_bad_metrics_row_is_quarantined_and_the_day_still_adds_up(
    fabric: FaultyFabric, sqlite_url: str, change: dict[str, Any], field: str, figures
) -> None:
    fabric.rows[1] = {**fabric.rows[1], **change}
    figures.bad_input(f"fabric-metrics:{field}")
    with Ledger(sqlite_url) as led:
        _, ing = _fabric_collect(fabric, led)
        (q,) = led.quarantined()
        assert q["field"] == field and q["row_number"] == 2 and "ML / train" in q["reason"]
        assert ing.inserted == 3 and ing.quarantined == 1
        assert led.totals().get("USD").amount == CAPACITY_COST  # the unread CU-seconds count as idle
        assert _fabric_shares(led) == (3600 + Decimal("1799.5")) / 3600 * CU_HOUR


def test_fabric_schema_drift(
    fabric: FaultyFabric, sqlite_url: str, logged_warnings: Callable[[], list[str]], figures
) -> None:
    fabric.rows = [{**r, "Items[CapacityId]": "cap-1", "[Throttling (s)]": 0} for r in ROWS]
    with Ledger(sqlite_url) as led:
        _fabric_collect(fabric, led)
        figures.bad_input("fabric-metrics:extra-column")
        drift = [m for m in logged_warnings() if "Items[CapacityId]" in m]
        assert len(drift) == 1 and "[Throttling (s)]" in drift[0]  # one warning for three rows
        assert led.totals().get("USD").amount == CAPACITY_COST
        fabric.rows = [{k: v for k, v in r.items() if k != "[CU (s)]"} for r in ROWS]
        with pytest.raises(ValueError, match=r"CU \(s\)"):
            _fabric_collect(fabric, led)
        figures.bad_input("fabric-metrics:missing-column")


# ============================================================================================== Synapse
SYNAPSE_COLUMNS = [("Cost", "Number"), ("UsageQuantity", "Number"), ("UsageDate", "Number"),
                   ("ResourceId", "String"), ("Meter", "String"), ("Currency", "String")]  # fmt: skip


@pytest.fixture
def synapse(azure_cost_api: Any, synapse_arm: Any) -> Any:
    from tests.fixtures.synapse import WORKSPACE_ID, sql_pool

    ws = WORKSPACE_ID.lower()
    rows = [
        [288.0, 240.0, 20260301, f"{ws}/sqlpools/dwh", "100 DWUs", "USD"],
        [3.575, 25.0, 20260301, f"{ws}/bigdatapools/etl", "vCore", "USD"],
        [2.5, 0.5, 20260301, ws, "Standard Data Processed", "USD"],
    ]
    azure_cost_api.set("ActualCost", rows, columns=SYNAPSE_COLUMNS)
    azure_cost_api.set("AmortizedCost", [list(r) for r in rows], columns=SYNAPSE_COLUMNS)
    synapse_arm.pools["sqlPools"] = [sql_pool("dwh", tags={"team": "data-eng"})]
    return azure_cost_api


def _synapse_collect(api: Any, led: Ledger, **kw: Any) -> tuple[Any, Any]:
    from finops_provider.hooks.synapse_costs import SynapseCostHook, collect_synapse
    from tests.fixtures.synapse import WORKSPACE_ID

    hook = SynapseCostHook(base_url=api.server.url_for("/"), credential=StaticTokenCredential(), retry_policy=FAST,
                           sleep=kw.pop("sleep", lambda s: None), repull_days=0, workspace_id=WORKSPACE_ID)  # fmt: skip
    return collect_synapse(led, FinOpsConfig(), DAY, NEXT, hook=hook)


SYNAPSE_TOTAL = Decimal("294.075")


@pytest.mark.parametrize(
    ("row", "field"),
    [
        pytest.param(["oops", 1.0, 20260301, "/x/sqlpools/bad", "100 DWUs", "USD"], "BilledCost", id="bad-cost"),
        pytest.param([1.0, "many", 20260301, "/x/sqlpools/bad", "100 DWUs", "USD"], "PricingQuantity", id="bad-qty"),
        pytest.param([1.0, 1.0, "someday", "/x/sqlpools/bad", "100 DWUs", "USD"], "ChargePeriodStart", id="bad-day"),
        pytest.param([1.0, 1.0, 20260301, "/x/sqlpools/bad", "100 DWUs", "ZZZ"], "BillingCurrency", id="bad-currency"),
    ],
)
def test_synapse_a_bad_row_is_quarantined_and_the_others_land(
    synapse: Any, sqlite_url: str, row: list[Any], field: str, figures
) -> None:
    from tests.fixtures.synapse import WORKSPACE_ID

    row[3] = WORKSPACE_ID.lower() + "/sqlpools/bad"
    columns, rows = synapse.pages["ActualCost"][0]
    synapse.set("ActualCost", [*rows[:1], row, *rows[1:]], columns=columns)
    synapse.throttle(1, retry_after="2")  # and the first query is throttled once
    figures.bad_input(f"synapse-query-row:{field}")
    figures.fault("synapse:429")
    waits: list[float] = []
    with Ledger(sqlite_url) as led:
        _, ing = _synapse_collect(synapse, led, sleep=waits.append)
        (q,) = led.quarantined()
        assert q["field"] == field and "sqlpools/bad" in q["reason"] and q["row_number"] == 2
        assert ing.inserted == 3 and ing.quarantined == 1 and waits == [2.0]
        assert led.totals().get("USD").amount == SYNAPSE_TOTAL
        assert led.totals(team="data-eng").get("USD").amount == Decimal(288)  # the pool's tag still attributes
        figures.checked(valid=3, lost=3 - led.count(), duplicates=led.count() - 3)


def test_synapse_schema_drift(synapse: Any, sqlite_url: str, logged_warnings: Callable[[], list[str]], figures) -> None:
    for cost_type, pages in list(synapse.pages.items()):
        synapse.set_pages(
            cost_type, [([*SYNAPSE_COLUMNS, ("PricingModel", "String")], [[*r, "OnDemand"] for r in rows])
                        for _, rows in pages]
        )  # fmt: skip
    with Ledger(sqlite_url) as led:
        _synapse_collect(synapse, led)
        figures.bad_input("synapse-query-schema:extra-column")
        drift = [m for m in logged_warnings() if "PricingModel" in m]
        assert len(drift) == 1 and led.totals().get("USD").amount == SYNAPSE_TOTAL
        cols = [c for c in SYNAPSE_COLUMNS if c[0] != "Currency"]
        for cost_type, pages in list(synapse.pages.items()):
            synapse.set_pages(cost_type, [(cols, [r[:5] for r in rows]) for _, rows in pages])
        from finops_provider.core.records import RecordError

        with pytest.raises(RecordError, match=r"no column Currency"):
            _synapse_collect(synapse, led)
        figures.bad_input("synapse-query-schema:missing-column")
        assert led.totals().get("USD").amount == SYNAPSE_TOTAL  # the earlier run's rows stay as they were


# ============================================================================================= Redshift
def _answer_with(client: Any, plan: list[Any]) -> list[int]:
    """Answer the next DescribeClusters calls from ``plan`` on the wire: (code, status) as AWS's query-protocol XML
    error, an exception, or None (the real peer, moto)."""
    from botocore.awsrequest import AWSResponse

    class _Raw:
        def __init__(self, body: bytes) -> None:
            self._body = body

        def stream(self, *_: Any, **__: Any) -> Any:
            yield self._body

    calls: list[int] = []

    def handler(request: Any, **_: Any) -> Any:
        calls.append(1)
        step = plan[len(calls) - 1] if len(calls) <= len(plan) else None
        if step is None:
            return None
        if isinstance(step, Exception):
            raise step
        code, status = step
        body = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>injected</Message></Error>"
            "<RequestId>4f1e</RequestId></ErrorResponse>"
        ).encode()
        return AWSResponse(request.url, status, {"Content-Type": "text/xml"}, _Raw(body))

    client.meta.events.register("before-send.redshift.DescribeClusters", handler)
    return calls


@pytest.fixture
def redshift(moto_ce: Any) -> Any:  # moto_ce: mock_aws + the aws_default connection (key and secret "testing")
    import boto3

    client = boto3.client("redshift", region_name="us-east-1")
    kw = {"MasterUsername": "admin", "MasterUserPassword": "Passw0rd!x", "ClusterType": "multi-node"}
    client.create_cluster(ClusterIdentifier="analytics", NodeType="ra3.4xlarge", NumberOfNodes=2,
                          Tags=[{"Key": "team", "Value": "analytics"}], **kw)  # fmt: skip
    return client


def _redshift_hook() -> Any:
    from finops_provider.hooks.redshift_costs import RedshiftCostHook

    return RedshiftCostHook(aws_conn_id="aws_default", region_name="us-east-1", retry_policy=FAST)


def _redshift_day(client: Any) -> tuple[dt.datetime, dt.datetime]:
    """The UTC day moto created the cluster (now), and two hours later (the window is two days: midnight may fall
    inside the two hours)."""
    born = client.describe_clusters(ClusterIdentifier="analytics")["Clusters"][0]["ClusterCreateTime"]
    return born.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0), born + dt.timedelta(hours=2)


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(("Throttling", 400), id="throttling"),
        pytest.param(("ServiceUnavailable", 503), id="503"),
        pytest.param("read-timeout", id="read-timeout"),
    ],
)
def test_redshift_throttling_5xx_and_timeouts_are_retried(redshift: Any, platform_ledger: Ledger, fault, figures):
    from botocore.exceptions import ReadTimeoutError

    from finops_provider.hooks.redshift_costs import collect_redshift

    day, now = _redshift_day(redshift)
    hook = _redshift_hook()
    timeout = ReadTimeoutError(endpoint_url="https://redshift.us-east-1.amazonaws.com")
    step = timeout if fault == "read-timeout" else fault
    calls = _answer_with(hook.conn, [step, step])
    res, _ = collect_redshift(platform_ledger, FinOpsConfig(), day, day + dt.timedelta(days=2), hook=hook, now=now)
    figures.fault(f"redshift:{fault if isinstance(fault, str) else fault[0]}", 2)
    assert len(calls) == 3 and res.requests == 3
    assert platform_ledger.totals().get("USD").amount == 2 * 2 * Decimal("3.26")  # 2 nodes x 2 h


@pytest.mark.parametrize("code", ["ExpiredToken", "InvalidClientTokenId", "SignatureDoesNotMatch"])
def test_redshift_refused_credentials_name_the_connection(redshift: Any, code: str, figures) -> None:
    from finops_provider.collect import CredentialsError

    hook = _redshift_hook()
    calls = _answer_with(hook.conn, [(code, 403)] * 5)
    with pytest.raises(CredentialsError) as err:
        hook.collect_provisioned(DAY, NEXT)
    figures.fault(f"redshift:{code}")
    figures.secret_probes += 1
    assert len(calls) == 1 and "'aws_default'" in str(err.value) and code in str(err.value)
    assert "testing" not in str(err.value)  # the connection's key and secret


def test_redshift_an_unpriced_node_type_is_quarantined_and_the_rest_lands(redshift, platform_ledger, figures) -> None:
    from finops_provider.hooks.redshift_costs import collect_redshift

    redshift.create_cluster(ClusterIdentifier="future", NodeType="ra9.mega", NumberOfNodes=1, ClusterType="single-node",
                            MasterUsername="admin", MasterUserPassword="Passw0rd!x")  # fmt: skip
    day, now = _redshift_day(redshift)
    figures.bad_input("redshift-cluster:NodeType")
    _, ing = collect_redshift(platform_ledger, FinOpsConfig(), day, day + dt.timedelta(days=2), hook=_redshift_hook(),
                              now=now)  # fmt: skip
    (q,) = platform_ledger.quarantined()
    assert q["field"] == "NodeType" and "future" in q["reason"] and "ra9.mega" in q["reason"]
    assert ing.quarantined == 1
    assert platform_ledger.totals().get("USD").amount == 2 * 2 * Decimal("3.26")


# =========================================================================================== Databricks
def _databricks_seed(st: Any) -> None:
    st.price("PREMIUM_JOBS_COMPUTE", "0.15", "2024-01-01 00:00:00")
    for i in range(3):
        st.usage("PREMIUM_JOBS_COMPUTE", "10", f"2026-03-01 1{i}:00:00", f"2026-03-01 1{i}:30:00",
                 tags={"team": "data-eng"}, job_id="111", job_run_id=f"900{i}")  # fmt: skip


def _databricks_collect(st: Any, led: Ledger) -> tuple[Any, Any]:
    from finops_provider.hooks.databricks_costs import DatabricksCostHook, collect_databricks

    hook = DatabricksCostHook(catalog_name="system_copy", connection=st.conn)
    return collect_databricks(led, FinOpsConfig(), DAY, NEXT, hook=hook)


def test_databricks_a_bad_usage_record_is_quarantined_and_the_others_land(
    databricks_system_tables: Any, platform_ledger: Ledger, figures
) -> None:
    st = databricks_system_tables
    _databricks_seed(st)
    st.usage("PREMIUM_JOBS_COMPUTE", None, "2026-03-01 20:00:00", "2026-03-01 21:00:00", job_run_id="9999")
    figures.bad_input("databricks-usage:usage_quantity")
    _, ing = _databricks_collect(st, platform_ledger)
    (q,) = platform_ledger.quarantined()
    assert q["field"] == "usage_quantity" and "rec-4" in q["reason"]
    assert ing.inserted == 3 and ing.quarantined == 1
    assert platform_ledger.totals().get("USD").amount == 3 * 10 * Decimal("0.15")


@pytest.mark.parametrize(
    ("ddl", "error"),
    [
        pytest.param("ALTER TABLE system_copy.billing.usage ADD COLUMN usage_location VARCHAR", None, id="added"),
        pytest.param("ALTER TABLE system_copy.billing.usage DROP COLUMN record_type", "record_type", id="dropped"),
        pytest.param("ALTER TABLE system_copy.billing.list_prices DROP COLUMN pricing", "pricing", id="no-pricing"),
    ],
)
def test_databricks_schema_drift(databricks_system_tables: Any, platform_ledger: Ledger, ddl, error, figures) -> None:
    st = databricks_system_tables
    _databricks_seed(st)
    st.conn.execute(ddl)
    figures.bad_input("databricks-schema:" + ("extra-column" if error is None else "missing-column"))
    if error is None:
        _databricks_collect(st, platform_ledger)
        assert platform_ledger.totals().get("USD").amount == 3 * 10 * Decimal("0.15")
        return
    with pytest.raises(Exception, match=rf"(?i)\b{error}\b"):
        _databricks_collect(st, platform_ledger)
    assert platform_ledger.count() == 0


# ====================================================================================== BigQuery (jobs)
def test_bigquery_jobs_schema_drift(bigquery_jobs: Any, platform_ledger: Ledger, figures) -> None:
    from finops_provider.hooks.bigquery_costs import BigQueryCostHook, collect_bigquery

    for i in range(3):
        bigquery_jobs.job(f"2026-03-01 1{i}:00:00+00", bytes_billed=2**40, labels={"team": "bi"})

    def collect() -> Any:
        hook = BigQueryCostHook(jobs_view="region_us.jobs", connection=bigquery_jobs.conn)
        return collect_bigquery(platform_ledger, FinOpsConfig(), DAY, NEXT, hook=hook)

    bigquery_jobs.conn.execute("ALTER TABLE region_us.jobs ADD COLUMN transferred_bytes BIGINT")
    _, ing = collect()
    figures.bad_input("bigquery-jobs-schema:extra-column")
    total = platform_ledger.totals().get("USD").amount
    assert ing.inserted == 1 and total == 3 * Decimal("6.25")  # 3 TiB on demand, the new column ignored
    bigquery_jobs.conn.execute("ALTER TABLE region_us.jobs DROP COLUMN total_bytes_billed")
    with pytest.raises(Exception, match=r"(?i)\btotal_bytes_billed\b"):
        collect()
    figures.bad_input("bigquery-jobs-schema:missing-column")
    assert platform_ledger.totals().get("USD").amount == total  # nothing half-written


# ============================================================================================ Snowflake
def test_snowflake_odd_values_land_and_schema_drift_is_named(
    snowflake_account_usage: Any, platform_ledger: Ledger, figures
) -> None:
    from finops_provider.hooks.snowflake_costs import SnowflakeCostHook, collect_snowflake

    seed = snowflake_account_usage
    qah = [  # (query id, warehouse, tag, start, compute credits, acceleration credits)
        ("q1", "TRANSFORM_WH", '{"team": "data-eng"}', "2026-03-01 10:00:00", "1.5", None),
        ("q2", "TRANSFORM_WH", "not json; no = pairs =", "2026-03-01 11:00:00", "0.25", "0.125"),
        ("q3", None, None, "2026-03-01 12:00:00", None, None),  # no warehouse, no tag, no credits
    ]
    seed(
        "QUERY_ATTRIBUTION_HISTORY",
        [(q, None, None, 1, wh, "h", "ph", tag, "AIRFLOW", start, start, c, qas) for q, wh, tag, start, c, qas in qah],
    )
    seed("WAREHOUSE_METERING_HISTORY",
         [("2026-03-01 10:00:00", "2026-03-01 11:00:00", 1, "TRANSFORM_WH", "2.5", "2", "0.5", "1.75")])  # fmt: skip
    figures.bad_input("snowflake-row:null-and-garbage", 3)

    def collect() -> Any:
        return collect_snowflake(platform_ledger, FinOpsConfig(), DAY, NEXT, hook=SnowflakeCostHook())

    res, ing = collect()
    credits = sum((r.pricing_quantity for r in res.records), Decimal(0))
    assert credits == Decimal("1.5") + Decimal("0.375") + 0 + Decimal("0.25")  # queries + idle (2 - 1.75)
    assert ing.inserted == 4 and ing.quarantined == 0
    import snowflake.connector

    with snowflake.connector.connect(account="finops-test", user="seed", password="x") as conn:
        conn.cursor().execute(
            "ALTER TABLE SNOWFLAKE.ACCOUNT_USAGE.QUERY_ATTRIBUTION_HISTORY DROP COLUMN CREDITS_USED_QUERY_ACCELERATION"
        )
    with pytest.raises(Exception, match=r"(?i)credits_used_query_acceleration"):
        collect()
    figures.bad_input("snowflake-schema:missing-column")
    assert platform_ledger.count() == 4  # the failed run changed nothing
