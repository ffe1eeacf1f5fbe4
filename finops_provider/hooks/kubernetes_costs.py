"""Kubernetes workload cost (OpenCost's allocation model) from the pod list, metrics API and node list.

Built on the cncf-kubernetes provider's :class:`KubernetesHook` (kube config, in-cluster auth, contexts).
For every pod that ran in the window, per UTC day:

``cost = max(request, usage) x hours x price`` for CPU cores, memory GiB and GPUs (OpenCost's rule), with the
prices of the rate card's ``kubernetes`` card (OpenCost defaults: ``cpu_core_hour``, ``memory_gb_hour``,
``gpu_hour``). Usage comes from ``metrics.k8s.io`` when the metrics server answers, else requests alone are
used; each record says which (tag ``finops_usage_source``: ``max(request,usage)`` or ``requests``). The
metrics API is a point-in-time sample, so usage is the usage seen at collection time: collect often.

Attribution comes from the pod's annotations first (the KubernetesExecutor and the FinOps policy write the exact
``dag_id`` / ``task_id`` / ``run_id`` there), then its labels (KubernetesPodOperator's ``dag_id``, ``task_id``,
``run_id`` labels, which Kubernetes' label rules may have shortened), plus ``team`` / ``cost_center`` labels
and the namespace.

Cluster idle = node cost (capacity x hours x the same prices) - the workload cost already in the ledger for that
day, written as its own row (``x_job_id = "(idle)"``). The pod list is a snapshot: a pod deleted before a
collection is not seen, so run the collector at least hourly (or use OpenCost's Prometheus history).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal, localcontext
from typing import Any

from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

from finops_provider.collect import CollectResult, CredentialsError, ingest_collected
from finops_provider.core.config import FinOpsConfig
from finops_provider.core.estimate import TaskTry
from finops_provider.core.focus import BadRow
from finops_provider.core.ledger import IngestResult, Ledger
from finops_provider.core.money import MONEY_CONTEXT, Money
from finops_provider.core.platforms import (
    GIB,
    estimate_record,
    hours_between,
    idle_remainder,
    ledger_amount,
    parse_k8s_quantity,
    utc,
)
from finops_provider.core.pricing import RateCard
from finops_provider.core.records import CostRecord, RecordError, build_record
from finops_provider.core.retry import RetryPolicy, call_with_retry, retry_after_seconds
from finops_provider.hooks._sql import rate_card_for

PLATFORM = "kubernetes"
SOURCE = "kubernetes"
IDLE = "(idle)"
#: resource -> (rate-card SKU, pricing unit, scale from the Kubernetes quantity)
RESOURCES: dict[str, tuple[str, str, Decimal]] = {
    "cpu": ("cpu_core_hour", "core-hour", Decimal(1)),
    "memory": ("memory_gb_hour", "GB-hour", GIB),  # OpenCost prices RAM per GiB-hour
    "gpu": ("gpu_hour", "GPU-hour", Decimal(1)),
}
GPU_KEYS = ("nvidia.com/gpu", "amd.com/gpu")
_ATTR_KEYS = {
    "x_dag_id": ("airflow_dag_id", "dag_id"),
    "x_task_id": ("airflow_task_id", "task_id"),
    "x_run_id": ("airflow_run_id", "run_id"),
}


def _days(start: dt.datetime, end: dt.datetime) -> Iterator[tuple[dt.datetime, dt.datetime]]:
    d = start.replace(hour=0, minute=0, second=0, microsecond=0)
    while d < end:
        yield d, d + dt.timedelta(days=1)
        d += dt.timedelta(days=1)


def _quantity(value: Any, field: str, where: str) -> Decimal:
    """A resource quantity; an unreadable one raises :class:`RecordError` naming the field and where it is."""
    try:
        return parse_k8s_quantity(value)
    except (ValueError, ArithmeticError) as e:
        raise RecordError(field, f"{where}: {e}") from None


def pod_requests(pod: dict[str, Any]) -> dict[str, Decimal]:
    """Summed container requests (cpu cores, memory bytes, gpus); GPUs fall back to limits.

    :raises RecordError: for a quantity that is not a Kubernetes quantity (the field is named).
    """
    out = {"cpu": Decimal(0), "memory": Decimal(0), "gpu": Decimal(0)}
    with localcontext(MONEY_CONTEXT):
        for c in (pod.get("spec") or {}).get("containers") or []:
            res = c.get("resources") or {}
            req, lim = res.get("requests") or {}, res.get("limits") or {}
            where = f"container {c.get('name')}"
            out["cpu"] += _quantity(req.get("cpu"), "resources.requests.cpu", where)
            out["memory"] += _quantity(req.get("memory"), "resources.requests.memory", where)
            for k in GPU_KEYS:
                out["gpu"] += _quantity(req.get(k) or lim.get(k), f"resources.requests.{k}", where)
    return out


def pod_usage(metrics_item: dict[str, Any] | None) -> dict[str, Decimal] | None:
    """Summed container usage from a metrics.k8s.io PodMetrics item (None when there is none)."""
    if metrics_item is None:
        return None
    out = {"cpu": Decimal(0), "memory": Decimal(0), "gpu": Decimal(0)}
    with localcontext(MONEY_CONTEXT):
        for c in metrics_item.get("containers") or []:
            u = c.get("usage") or {}
            where = f"container {c.get('name')}"
            out["cpu"] += _quantity(u.get("cpu"), "usage.cpu", where)
            out["memory"] += _quantity(u.get("memory"), "usage.memory", where)
    return out


def pod_interval(pod: dict[str, Any], now: dt.datetime) -> tuple[dt.datetime, dt.datetime] | None:
    """When the pod held its node: startTime .. last container finish (or now while it runs).

    :raises RecordError: for a timestamp that cannot be read.
    """
    status = pod.get("status") or {}
    started = status.get("startTime")
    if not started:
        return None  # never scheduled: holds no node resources
    try:
        start = utc(started)
        if status.get("phase") in ("Succeeded", "Failed"):
            ends = [
                utc(s["state"]["terminated"]["finishedAt"])
                for s in status.get("containerStatuses") or []
                if (s.get("state") or {}).get("terminated", {}).get("finishedAt")
            ]
            end = max(ends) if ends else start
        else:
            end = now
    except (ValueError, TypeError) as e:
        raise RecordError("status.startTime", f"pod times cannot be read: {e}") from None
    return start, max(start, min(end, now))


def _is_transient(exc: BaseException) -> bool:
    """429 (API priority and fairness), 5xx, timeouts, dropped connections and cut-off answers."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(exc, ApiException):
        return exc.status == 429 or (exc.status or 0) >= 500
    return isinstance(exc, (HTTPError, TimeoutError, ConnectionError, json.JSONDecodeError))


def _wait_hint(exc: BaseException) -> float | None:
    """The API server's ``Retry-After`` (sent with 429 and some 5xx answers)."""
    return retry_after_seconds(getattr(exc, "headers", None))


def pod_attribution(pod: dict[str, Any]) -> dict[str, str | None]:
    meta = pod.get("metadata") or {}
    ann, labels = meta.get("annotations") or {}, meta.get("labels") or {}
    out: dict[str, str | None] = {}
    for attr, keys in _ATTR_KEYS.items():
        out[attr] = next((src[k] for src in (ann, labels) for k in keys if src.get(k)), None)
    return out


class KubernetesCostHook(KubernetesHook):
    """Pod cost (max(request, usage) x hours x price), node cost and cluster idle, plus per-task estimates.

    :param kubernetes_conn_id: the cncf-kubernetes connection (default ``kubernetes_default``).
    :param cluster_name: names the cluster in records (``sub_account_id``) and in the collection scope.
    :param rate_card: prices (default: the shipped cards, OpenCost defaults).
    :param retry_policy: backoff for 429 / 5xx / timeouts; the API server's ``Retry-After`` is honoured.
    :param sleep: the wait function between attempts (tests inject one).
    :param timeout: seconds each API request may take before it counts as failed (and is retried).
    """

    hook_name = "Kubernetes costs (FinOps)"

    def __init__(
        self,
        *,
        kubernetes_conn_id: str = "kubernetes_default",
        cluster_name: str = "default",
        rate_card: RateCard | None = None,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(conn_id=kubernetes_conn_id, **kwargs)
        self.cluster_name = cluster_name
        self.rate_card = rate_card or RateCard.load()
        self.retry_policy = retry_policy or RetryPolicy()
        self.sleep = sleep
        self.timeout = timeout
        self.requests_made = 0

    def get_conn(self) -> Any:
        """The provider's API client with urllib3's own retries off: our backoff is the one retry policy (urllib3
        would otherwise re-send timed-out reads and sleep out a 429's Retry-After itself, outside the budget)."""
        api_client = super().get_conn()
        pool = api_client.rest_client.pool_manager
        pool.connection_pool_kw["retries"] = False
        pool.clear()
        return api_client

    # ------------------------------------------------------------------ API reads (raw JSON, real shapes)
    def _get(
        self,
        call: Callable[..., Any],
        *args: Any,
        what: str,
        retryable: Callable[[BaseException], bool] = _is_transient,
        **kw: Any,
    ) -> dict[str, Any]:
        """One API read as parsed JSON: bounded by ``timeout``, retried on 429 / 5xx / timeouts (``Retry-After``
        honoured); refused credentials raise :class:`CredentialsError` naming the connection."""
        from kubernetes.client.exceptions import ApiException

        def once() -> dict[str, Any]:
            self.requests_made += 1
            resp = call(*args, _preload_content=False, _request_timeout=self.timeout, **kw)
            return json.loads(resp.data)  # type: ignore[no-any-return]

        try:
            return call_with_retry(  # type: ignore[no-any-return]
                once,
                what=what,
                is_retryable=retryable,
                policy=self.retry_policy,
                wait_hint=_wait_hint,
                sleep=self.sleep,
            )
        except ApiException as e:
            if e.status not in (401, 403):
                raise
            raise CredentialsError(
                f"{what}: the Kubernetes API refused the credentials of connection {self.conn_id!r} "
                f"(HTTP {e.status} {e.reason}); renew the kube config's token or client certificate if it expired, "
                "and grant its user list on pods and nodes and on pods.metrics.k8s.io (a ClusterRole)"
            ) from e

    def _list(self, call: Any, what: str) -> list[dict[str, Any]]:
        from kubernetes.client.exceptions import ApiException

        items: list[dict[str, Any]] = []
        token: str | None = None
        restarts = 0
        while True:
            kw: dict[str, Any] = {"limit": 500}
            if token:
                kw["_continue"] = token
            try:
                page = self._get(call, what=what, **kw)
            except ApiException as e:
                if e.status != 410 or not token or restarts >= 2:
                    raise
                # 410 Gone: the continue token expired mid-list; the list is read again from the start
                self.log.warning("%s: continue token expired after %d items; listing again", what, len(items))
                items, token, restarts = [], None, restarts + 1
                continue
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    def list_pods(self) -> list[dict[str, Any]]:
        """``GET /api/v1/pods`` (all namespaces, paginated)."""
        return self._list(self.core_v1_client.list_pod_for_all_namespaces, "GET /api/v1/pods")

    def list_nodes(self) -> list[dict[str, Any]]:
        """``GET /api/v1/nodes`` (paginated)."""
        return self._list(self.core_v1_client.list_node, "GET /api/v1/nodes")

    def pod_metrics(self) -> dict[tuple[str, str], dict[str, Any]] | None:
        """``GET /apis/metrics.k8s.io/v1beta1/pods`` keyed by (namespace, name); None without a metrics server."""
        from kubernetes.client.exceptions import ApiException

        try:
            page = self._get(
                self.custom_object_client.list_cluster_custom_object,
                "metrics.k8s.io",
                "v1beta1",
                "pods",
                what="GET /apis/metrics.k8s.io/v1beta1/pods",
                retryable=lambda e: _is_transient(e) and getattr(e, "status", None) != 503,
            )
        except ApiException as e:
            if e.status in (404, 503):  # no metrics-server (503: its APIService is registered but down)
                self.log.info("metrics.k8s.io not available (%s): pricing requests only", e.status)
                return None
            raise
        items = page.get("items") or []
        return {(m["metadata"].get("namespace", ""), m["metadata"]["name"]): m for m in items}

    # ------------------------------------------------------------------ truth
    def price(self, resource: str, on: dt.date) -> Any:
        return self.rate_card.price(PLATFORM, RESOURCES[resource][0], on=on)

    def collect_pods(self, start: dt.datetime, end: dt.datetime, *, now: dt.datetime | None = None) -> CollectResult:
        """Workload cost of every pod that ran in ``[start, end)``: one record per pod, resource and UTC day."""
        start, end = utc(start), utc(end)
        now = utc(now) if now else dt.datetime.now(dt.UTC)
        before = self.requests_made
        pods = self.list_pods()
        metrics = self.pod_metrics()
        res = CollectResult(source=SOURCE, window=(start, end), scope=f"k8s:{self.cluster_name}:pods")
        for n, pod in enumerate(pods, start=1):
            meta = pod.get("metadata") or {}
            ns, name, uid = meta.get("namespace", ""), meta.get("name", ""), meta.get("uid") or meta.get("name")
            try:
                iv = pod_interval(pod, now)
                if iv is None:
                    continue
                req = pod_requests(pod)
                use = pod_usage(metrics.get((ns, name))) if metrics is not None else None
            except RecordError as e:  # quarantined in the same ledger batch; the other pods land
                raw = {"namespace": ns, "name": name, "uid": uid, "spec": pod.get("spec"), "status": pod.get("status")}
                res.bad_rows.append(BadRow(n, e.field, f"pod {ns}/{name}: {e.message}", raw))
                continue
            basis = "max(request,usage)" if use is not None else "requests"
            amounts = {k: max(req[k], use[k]) if use is not None else req[k] for k in req}
            attribution = pod_attribution(pod)
            tags = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
            tags.update({"namespace": ns, "finops_usage_source": basis})
            for d0, d1 in _days(max(iv[0], start), min(iv[1], end)):
                hours = hours_between(max(iv[0], d0, start), min(iv[1], d1, end))
                if hours <= 0:
                    continue
                for resource, amount in amounts.items():
                    if amount <= 0:
                        continue
                    res.records.append(
                        self._record(
                            d0, resource, amount, hours, tags=tags, attribution=attribution,
                            line=f"pod|{uid}|{resource}", resource_id=f"{ns}/{name}", resource_type="pod",
                            description=f"pod {ns}/{name} {resource} {basis}",
                        )
                    )  # fmt: skip
        res.requests = self.requests_made - before
        res.notes.append(f"usage source: {'metrics.k8s.io' if metrics is not None else 'requests only'}")
        self.log.info(
            "Kubernetes %s: %d pods, %d records, %d bad pods quarantined (%s)",
            self.cluster_name,
            len(pods),
            len(res.records),
            len(res.bad_rows),
            "metrics.k8s.io" if metrics is not None else "requests only",
        )
        return res

    def node_cost(
        self,
        start: dt.datetime,
        end: dt.datetime,
        *,
        now: dt.datetime | None = None,
        bad_rows: list[BadRow] | None = None,
    ) -> dict[dt.datetime, Money]:
        """Node capacity cost per UTC day of ``[start, end)`` (nodes alive at collection time).

        :param bad_rows: receives a :class:`BadRow` naming the field for each node whose capacity or creation time
            cannot be read; that node is left out and the other nodes still count. Without it, such a node raises
            :class:`RecordError`.
        """
        start, end = utc(start), utc(end)
        now = utc(now) if now else dt.datetime.now(dt.UTC)
        out: dict[dt.datetime, Money] = {}
        for n, node in enumerate(self.list_nodes(), start=1):
            meta, cap = node.get("metadata") or {}, (node.get("status") or {}).get("capacity") or {}
            name = meta.get("name", "")
            try:
                try:
                    born = utc(meta["creationTimestamp"]) if meta.get("creationTimestamp") else start
                except (ValueError, TypeError) as e:
                    raise RecordError("metadata.creationTimestamp", f"cannot be read: {e}") from None
                qty = {
                    "cpu": _quantity(cap.get("cpu"), "status.capacity.cpu", "capacity"),
                    "memory": _quantity(cap.get("memory"), "status.capacity.memory", "capacity"),
                    "gpu": sum(
                        (_quantity(cap.get(k), f"status.capacity.{k}", "capacity") for k in GPU_KEYS), Decimal(0)
                    ),
                }
            except RecordError as e:
                if bad_rows is None:
                    raise
                reason = f"node {name}: {e.message}; this node is left out of the cluster's idle cost"
                raw = {"name": name, "capacity": cap, "creationTimestamp": meta.get("creationTimestamp")}
                bad_rows.append(BadRow(n, e.field, reason, raw))
                continue
            for d0, d1 in _days(start, end):
                hours = hours_between(max(born, d0), min(d1, now))
                if hours <= 0:
                    continue
                for resource, amount in qty.items():
                    if amount <= 0:
                        continue
                    price = self.price(resource, d0.date())
                    with localcontext(MONEY_CONTEXT):
                        cost = price.cost(amount / RESOURCES[resource][2] * hours)
                    out[d0] = out[d0] + cost if d0 in out else cost
        return out

    def idle_records(
        self, node_costs: dict[dt.datetime, Money], workload: dict[dt.datetime, Money]
    ) -> list[CostRecord]:
        """One idle row per day: node cost - workload cost (never negative)."""
        out = []
        for d0, total in sorted(node_costs.items()):
            used = workload.get(d0)
            idle = idle_remainder(total, [used] if used is not None else [])
            amount = ledger_amount(idle.amount)
            out.append(
                build_record(
                    billed_cost=amount,
                    effective_cost=amount,
                    list_cost=amount,
                    billing_currency=idle.currency,
                    charge_period_start=d0,
                    charge_period_end=d0 + dt.timedelta(days=1),
                    charge_category="Usage",
                    charge_description=f"cluster {self.cluster_name} idle: node cost {total.amount} - workloads",
                    provider_name="Kubernetes",
                    service_name="Kubernetes",
                    service_category="Compute",
                    sub_account_id=self.cluster_name,
                    resource_id=self.cluster_name,
                    resource_type="cluster",
                    tags={"finops_idle": "true"},
                    x_line_item_id=f"idle|{self.cluster_name}",
                    x_source=SOURCE,
                    x_platform=PLATFORM,
                    x_cost_kind="billed",
                    x_job_id=IDLE,
                )
            )
        return out

    def _record(
        self,
        day: dt.datetime,
        resource: str,
        amount: Decimal,
        hours: Decimal,
        *,
        tags: dict[str, str],
        attribution: dict[str, str | None],
        line: str,
        resource_id: str,
        resource_type: str,
        description: str,
    ) -> CostRecord:
        sku, unit, scale = RESOURCES[resource]
        price = self.price(resource, day.date())
        with localcontext(MONEY_CONTEXT):
            qty = amount / scale * hours
        cost = ledger_amount(price.cost(qty).amount)
        return build_record(
            billed_cost=cost,
            effective_cost=cost,
            list_cost=cost,
            billing_currency=price.amount.currency,
            charge_period_start=day,
            charge_period_end=day + dt.timedelta(days=1),
            charge_category="Usage",
            charge_description=description,
            pricing_quantity=ledger_amount(qty),
            pricing_unit=unit,
            list_unit_price=price.amount.amount,
            provider_name="Kubernetes",
            service_name="Kubernetes",
            service_category="Compute",
            sku_id=sku,
            sub_account_id=self.cluster_name,
            resource_id=resource_id,
            resource_type=resource_type,
            tags=tags,
            x_line_item_id=f"{line}|{day.date().isoformat()}",
            x_source=SOURCE,
            x_platform=PLATFORM,
            x_cost_kind="billed",
            **attribution,  # type: ignore[arg-type]
        )

    # ------------------------------------------------------------------ estimate
    def estimate_run(
        self,
        task: TaskTry,
        *,
        requests: dict[str, Any] | None = None,
        namespace: str | None = None,
        pod_name: str | None = None,
    ) -> CostRecord:
        """Estimate a finished task's pod: requests x task duration x price (CPU, memory, GPU).

        :param requests: ``{"cpu": "2", "memory": "4Gi", "gpu": 0}``; when absent the pod is read from the API
            (``namespace`` + ``pod_name``).
        """
        if requests is None:
            if not (namespace and pod_name):
                raise ValueError("estimate_run needs requests= or namespace= and pod_name=")
            pod = self._get(self.core_v1_client.read_namespaced_pod, pod_name, namespace, what="GET pod")
            req = pod_requests(pod)
        else:
            req = {k: parse_k8s_quantity(requests.get(k)) for k in ("cpu", "memory", "gpu")}
        hours = hours_between(task.start, task.end)
        total: Money | None = None
        parts = []
        for resource, amount in req.items():
            if amount <= 0:
                continue
            price = self.price(resource, task.start.date())
            with localcontext(MONEY_CONTEXT):
                c = price.cost(amount / RESOURCES[resource][2] * hours)
            total = c if total is None else total + c
            parts.append(f"{resource} {amount / RESOURCES[resource][2]} x {price.amount.amount}/{price.unit}")
        if total is None:
            total = Money.zero(self.price("cpu", task.start.date()).amount.currency)
        return estimate_record(
            task,
            platform=PLATFORM,
            cost=total,
            quantity=hours,
            unit="hour",
            sku=None,
            description=f"requests x {hours} h ({'; '.join(parts)})",
            tags={"finops_usage_source": "requests"},
            resource_id=f"{namespace}/{pod_name}" if pod_name else None,
            service_name="Kubernetes",
        )

    def test_connection(self) -> tuple[bool, str]:
        try:
            self.core_v1_client.list_node(limit=1)
            return True, "Kubernetes API reachable"
        except Exception as e:
            return False, f"{type(e).__name__}: {str(e)[:200]}"


def collect_k8s(
    ledger: Ledger,
    config: FinOpsConfig,
    start: dt.datetime,
    end: dt.datetime,
    *,
    conn_id: str | None = None,
    cluster_name: str = "default",
    now: dt.datetime | None = None,
    hook: KubernetesCostHook | None = None,
    **_: Any,
) -> tuple[CollectResult, IngestResult]:
    """Collector ``k8s``: pod costs, then one idle row per day (node cost - workload cost in the ledger).

    Pod rows are upserted without removing earlier ones (a deleted pod's cost stays); the idle row is computed
    from the ledger's workload totals so deleted pods still count as used.
    """
    hook = hook or KubernetesCostHook(
        kubernetes_conn_id=conn_id or "kubernetes_default", cluster_name=cluster_name, rate_card=rate_card_for(config)
    )
    start, end = utc(start), utc(end)
    res = hook.collect_pods(start, end, now=now)
    ing = ingest_collected(ledger, config, res, replace_window=False)
    bad_nodes: list[BadRow] = []
    nodes = hook.node_cost(start, end, now=now, bad_rows=bad_nodes)
    workload: dict[dt.datetime, Money] = {}
    for d0 in nodes:
        bag = ledger.totals(scope=res.scope, start=d0, end=d0 + dt.timedelta(days=1))
        cur = nodes[d0].currency
        workload[d0] = bag.get(cur) or Money.zero(cur)
    idle = CollectResult(
        records=hook.idle_records(nodes, workload),
        source=SOURCE,
        window=(start, end),
        scope=f"k8s:{hook.cluster_name}:idle",
        bad_rows=bad_nodes,  # quarantined with the idle rows; the other nodes and every pod still land
    )
    ing_idle = ingest_collected(ledger, config, idle)
    res.records.extend(idle.records)
    res.requests = hook.requests_made
    for k in ("inserted", "restated", "unchanged", "removed", "quarantined", "rows_in"):
        setattr(ing, k, getattr(ing, k) + getattr(ing_idle, k))
    return res, ing
