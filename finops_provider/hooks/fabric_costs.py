"""Microsoft Fabric capacity cost, shared across workspaces / items by their CU consumption, plus estimates.

Built on :class:`~finops_provider.hooks.azure_cost_management.AzureCostManagementHook` (its credential and
Resource Manager pipeline; no second Azure client).

* **Capacity cost** (truth): the capacity (``GET .../providers/Microsoft.Fabric/capacities/{name}``, API
  2023-11-01: ``sku.name`` ``F2`` .. ``F2048``, ``properties.state``) costs ``CU x running hours x
  fabric/CU_HOUR`` per UTC day; ``F64`` has 64 CU. A ``Paused`` / ``Suspended`` capacity costs nothing. The
  state is a snapshot (the whole window counts as running while the capacity is active, up to ``now``): pass
  ``running=[(start, end), ...]`` (for example from the Activity Log's resume / suspend events) to be exact.
* **Sharing**: the day's cost is split across owners by CU-seconds (:func:`core.platforms.split_capacity`):
  rows of the Fabric Capacity Metrics semantic model (workspace, item, item kind, optional operation id, date,
  CU (s)), read with the Power BI ``executeQueries`` REST call (``POST /v1.0/myorg/datasets/{id}/executeQueries``)
  or handed in from an export. Unconsumed capacity is its own row (``x_job_id="(idle)"``, tag
  ``finops_idle=true``), so owners + idle add up to the capacity's cost exactly. Consumption above capacity
  (bursting / smoothing) leaves no idle and shares the whole cost.
* **Attribution**: ``runs`` maps a Fabric job instance (operation) id or item id to tags such as
  ``airflow_dag_id`` / ``airflow_task_id`` / ``airflow_run_id`` (what the Airflow task that started the item
  knows), so a task's share of the capacity is its billed truth.
* **Estimate**: a task's item CU-seconds / 3600 x ``CU_HOUR``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from decimal import Decimal, localcontext
from typing import Any

from finops_provider.collect import CollectResult, ingest_collected
from finops_provider.core.azure_sizing import fabric_capacity_units, is_paused
from finops_provider.core.config import FinOpsConfig
from finops_provider.core.estimate import TaskTry
from finops_provider.core.focus import BadRow
from finops_provider.core.ledger import IngestResult, Ledger
from finops_provider.core.money import MONEY_CONTEXT, Money, to_decimal
from finops_provider.core.platforms import estimate_record, hours_between, ledger_amount, split_capacity, utc
from finops_provider.core.pricing import RateCard
from finops_provider.core.records import CostRecord, build_record
from finops_provider.hooks._arm import ArmReadMixin
from finops_provider.hooks._sql import rate_card_for
from finops_provider.hooks._window import bounded_scope
from finops_provider.hooks.azure_cost_management import PROVIDER, AzureCostManagementHook

PLATFORM = "fabric"
SOURCE = "fabric-capacity"
IDLE = "(idle)"
FABRIC_API_VERSION = "2023-11-01"
POWERBI_URL = "https://api.powerbi.com"
POWERBI_SCOPE = "https://analysis.windows.net/powerbi/api/.default"
_SEP = "\x1f"
#: normalized metrics column name -> our field
_METRIC_COLUMNS = {
    "workspacename": "workspace",
    "workspaceid": "workspace",
    "itemname": "item",
    "itemid": "item",
    "itemkind": "item_kind",
    "operationid": "operation_id",
    "date": "date",
    "timepoint": "date",
    "starttime": "date",
    "cus": "cu_seconds",
    "cuseconds": "cu_seconds",
    "sumcu": "cu_seconds",
    "totalcus": "cu_seconds",
}


def metric_field(column: str) -> str | None:
    """Our field for a Capacity Metrics column (``Items[WorkspaceName]`` -> ``workspace``), None when not read."""
    name = str(column).rsplit("[", 1)[-1].rstrip("]")
    return _METRIC_COLUMNS.get(re.sub(r"[^a-z0-9]", "", name.lower()))


def metric_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """One Capacity Metrics row with our field names: ``Items[WorkspaceName]`` / ``CU (s)`` / ``sum_CU`` ... are read
    by name (the table prefix and punctuation are ignored)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        field = metric_field(str(key))
        if field and field not in out:
            out[field] = value
    if "cu_seconds" not in out or "date" not in out:
        raise ValueError(f"Capacity Metrics row needs a date and CU seconds; got columns {sorted(row)}")
    return out


def _days(start: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
    out = []
    d = start.replace(hour=0, minute=0, second=0, microsecond=0)
    while d < end:
        out.append((d, d + dt.timedelta(days=1)))
        d += dt.timedelta(days=1)
    return out


class FabricCostHook(ArmReadMixin, AzureCostManagementHook):
    """A Fabric capacity's cost per day, shared by CU consumption with an explicit idle row; per-task estimates.

    :param capacity_id: the capacity's resource id
        (``/subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.Fabric/capacities/<name>``).
    :param powerbi_url: the Power BI REST endpoint for ``executeQueries`` (default ``https://api.powerbi.com``).
    :param rate_card: prices (default: the shipped cards).
    :param kwargs: :class:`AzureCostManagementHook` options (``conn_id``, ``credential``, ``base_url``, ...).
    """

    hook_name = "Microsoft Fabric costs (FinOps)"

    def __init__(
        self,
        *,
        capacity_id: str,
        powerbi_url: str = POWERBI_URL,
        rate_card: RateCard | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.capacity_id = "/" + capacity_id.strip("/")
        self.powerbi_url = powerbi_url.rstrip("/")
        self.rate_card = rate_card or RateCard.load()

    def capacity(self) -> dict[str, Any]:
        """``GET {capacity_id}?api-version=2023-11-01``."""
        return self.arm_get(self.capacity_id, FABRIC_API_VERSION)

    def metrics_query(self, dataset_id: str, dax: str) -> list[dict[str, Any]]:
        """Rows of a DAX query on the Capacity Metrics semantic model (Power BI ``executeQueries``)."""
        import requests

        token = self.get_token_credential().get_token(POWERBI_SCOPE).token
        url = f"{self.powerbi_url}/v1.0/myorg/datasets/{dataset_id}/executeQueries"
        body: dict[str, Any] = {"queries": [{"query": dax}], "serializerSettings": {"includeNulls": True}}

        def once() -> dict[str, Any]:
            headers = {"Authorization": f"Bearer {token}"}
            r = requests.post(url, json=body, headers=headers, timeout=self.timeout or 120)
            r.raise_for_status()
            return r.json()  # type: ignore[no-any-return]

        data = self._call(once, "Power BI executeQueries")
        return [
            row for res in data.get("results") or [] for t in res.get("tables") or [] for row in t.get("rows") or []
        ]

    # ------------------------------------------------------------------ truth
    def collect(  # type: ignore[override]
        self,
        start: dt.date | dt.datetime | str,
        end: dt.date | dt.datetime | str,
        *,
        metrics: Sequence[Mapping[str, Any]] = (),
        dataset_id: str | None = None,
        dax: str | None = None,
        runs: Mapping[str, Mapping[str, str]] | None = None,
        running: Sequence[tuple[dt.datetime, dt.datetime]] | None = None,
        now: dt.datetime | None = None,
        **_: Any,
    ) -> CollectResult:
        """Capacity cost per UTC day of ``[start, end)`` split by CU-seconds, plus one idle row per day.

        :param metrics: Capacity Metrics rows (workspace, item, item kind, operation id, date, CU (s)).
        :param dataset_id: with ``dax``: read the rows from the Capacity Metrics semantic model instead.
        :param runs: operation id or item id -> attribution tags (``airflow_dag_id``, ``team``, ...).
        :param running: intervals the capacity ran; default the state snapshot over the window.
        :return: :class:`CollectResult` (scope ``fabric-capacity:<capacity id>``).
        """
        start, end = utc(start), utc(end)  # type: ignore[arg-type]
        now = utc(now) if now else dt.datetime.now(dt.UTC)
        before = self.requests_made
        cap = self.capacity()
        sku = str((cap.get("sku") or {}).get("name") or "")
        state = str((cap.get("properties") or {}).get("state") or "")
        cu = fabric_capacity_units(sku)
        if dataset_id:
            if not dax:
                raise ValueError("dataset_id needs dax= (the Capacity Metrics query returning CU seconds per item)")
            metrics = self.metrics_query(dataset_id, dax)
        consumption, info, bad = self._consumption(metrics)
        if running is None:
            running = [] if is_paused(state) else [(start, min(end, now))]
        res = CollectResult(source=SOURCE, window=(start, end), scope=bounded_scope(f"{SOURCE}:{self.capacity_id}"))
        res.bad_rows = bad
        name = self.capacity_id.rsplit("/", 1)[-1]
        for d0, d1 in _days(start, end):
            hours = sum((hours_between(max(a, d0), min(b, d1)) for a, b in running), Decimal(0))
            if hours <= 0:
                continue  # paused all day: no compute cost
            price = self.rate_card.price(PLATFORM, "CU_HOUR", on=d0.date())
            with localcontext(MONEY_CONTEXT):
                total = price.cost(cu * hours)
                capacity_cus = cu * hours * 3600
            total = Money(ledger_amount(total.amount), total.currency)
            used = consumption.get(d0.date(), {})
            parts, idle = split_capacity(total, used, capacity_cus)
            for key, money in sorted(parts.items()):
                res.records.append(
                    self._share_record(d0, money, used[key], info[key], (runs or {}), price.describe(), name, sku)
                )
            res.records.append(self._idle(d0, idle, capacity_cus, hours, name, sku, state))
        res.requests = self.requests_made - before
        self.log.info(
            "Fabric %s (%s, %s) %s..%s: %d records, %d bad metrics rows quarantined",
            name,
            sku,
            state,
            start.date(),
            end.date(),
            len(res.records),
            len(res.bad_rows),
        )
        return res

    def _consumption(
        self, metrics: Sequence[Mapping[str, Any]]
    ) -> tuple[dict[dt.date, dict[str, Decimal]], dict[str, dict[str, Any]], list[BadRow]]:
        """CU-seconds per day and owner key, each key's metrics row, and the rows that could not be read.

        A column the collector does not read is logged once; no date or CU column at all is an error naming it.
        A row with an unreadable date or CU value is quarantined (its CU-seconds count as idle, so the day's cost
        still adds up).
        """
        columns = list(dict.fromkeys(str(k) for raw in metrics for k in raw))
        fields = {c: metric_field(c) for c in columns}
        unknown = [c for c, f in fields.items() if f is None]
        if unknown:
            self.log.warning(
                "Capacity Metrics rows have %d column(s) the collector does not read, ignored: %s",
                len(unknown),
                ", ".join(unknown[:20]),
            )
        missing = [f for f in ("date", "cu_seconds") if metrics and f not in fields.values()]
        if missing:
            names = {"date": "a date (Date / TimePoint)", "cu_seconds": "CU (s) (CU seconds / sum_CU)"}
            raise ValueError(
                f"Capacity Metrics rows have no column for {' or '.join(names[m] for m in missing)}; got columns "
                f"{columns}: the DAX query must return the date and the CU seconds per item"
            )
        consumption: dict[dt.date, dict[str, Decimal]] = defaultdict(dict)
        info: dict[str, dict[str, Any]] = {}
        bad: list[BadRow] = []
        for n, raw in enumerate(metrics, start=1):
            safe = {str(k): v for k, v in raw.items()}
            try:
                m = metric_row(raw)
            except ValueError as e:
                bad.append(BadRow(n, "ConsumedQuantity", f"Capacity Metrics row {n}: {e}", safe))
                continue
            where = f"Capacity Metrics row {n} ({m.get('workspace')} / {m.get('item')})"
            try:
                day = utc(str(m["date"])[:10]).date()
            except (ValueError, TypeError) as e:
                bad.append(BadRow(n, "ChargePeriodStart", f"{where}: date {m['date']!r} ({e})", safe))
                continue
            try:
                cu = to_decimal(m["cu_seconds"], field_name="CU (s)")
            except ValueError as e:
                bad.append(BadRow(n, "ConsumedQuantity", f"{where}: {e}; its CU-seconds count as idle", safe))
                continue
            key = _SEP.join(str(m.get(k) or "") for k in ("workspace", "item", "operation_id"))
            with localcontext(MONEY_CONTEXT):
                consumption[day][key] = consumption[day].get(key, Decimal(0)) + cu
            info[key] = m
        return consumption, info, bad

    def _base(self, d0: dt.datetime, money: Money, name: str, sku: str) -> dict[str, Any]:
        return {
            "billed_cost": money.amount,
            "effective_cost": money.amount,
            "list_cost": money.amount,
            "billing_currency": money.currency,
            "charge_period_start": d0,
            "charge_period_end": d0 + dt.timedelta(days=1),
            "charge_category": "Usage",
            "provider_name": PROVIDER,
            "publisher_name": PROVIDER,
            "invoice_issuer_name": PROVIDER,
            "service_name": "Microsoft Fabric",
            "service_category": "Analytics",
            "sku_id": "CU_HOUR",
            "sub_account_id": name,
            "x_source": SOURCE,
            "x_platform": PLATFORM,
            "x_cost_kind": "billed",
        }

    def _share_record(
        self,
        d0: dt.datetime,
        money: Money,
        cu_seconds: Decimal,
        m: Mapping[str, Any],
        runs: Mapping[str, Mapping[str, str]],
        price_text: str,
        name: str,
        sku: str,
    ) -> CostRecord:
        ws, item, op = (str(m.get(k) or "") for k in ("workspace", "item", "operation_id"))
        tags = {"fabric_workspace": ws, "fabric_item": item, "finops_price": price_text}
        if m.get("item_kind"):
            tags["fabric_item_kind"] = str(m["item_kind"])
        if op:
            tags["fabric_operation_id"] = op
        tags.update(runs.get(op) or runs.get(item) or {})
        with localcontext(MONEY_CONTEXT):
            cu_hours = cu_seconds / 3600
        return build_record(
            **self._base(d0, money, name, sku),
            charge_description=f"{sku} capacity {name}: share of {item or ws} by {cu_seconds} CU-seconds",
            pricing_quantity=ledger_amount(cu_hours),
            pricing_unit="CU-hour",
            consumed_quantity=ledger_amount(cu_hours),
            consumed_unit="CU-hour",
            resource_id=item or ws or None,
            resource_name=item or None,
            resource_type=str(m.get("item_kind") or "") or None,
            tags=tags,
            x_line_item_id=f"{SOURCE}|{self.capacity_id.lower()}|{ws}|{item}|{op}",
        )

    def _idle(
        self, d0: dt.datetime, idle: Money, capacity_cus: Decimal, hours: Decimal, name: str, sku: str, state: str
    ) -> CostRecord:
        return build_record(
            **self._base(d0, idle, name, sku),
            charge_description=f"{sku} capacity {name} idle: {hours} h running ({capacity_cus} CU-seconds) - consumed",
            resource_id=self.capacity_id,
            resource_name=name,
            resource_type="capacity",
            tags={"finops_idle": "true", "fabric_capacity_state": state},
            x_line_item_id=f"{SOURCE}|{self.capacity_id.lower()}|idle",
            x_job_id=IDLE,
        )

    # ------------------------------------------------------------------ estimate
    def estimate_run(
        self, task: TaskTry, *, cu_seconds: Any, item: str | None = None, operation_id: str | None = None
    ) -> CostRecord:
        """A task's Fabric item run: its CU-seconds / 3600 x ``fabric/CU_HOUR``.

        :param cu_seconds: the item run's CU (s) (Capacity Metrics, or the run's own report).
        """
        with localcontext(MONEY_CONTEXT):
            cu_hours = to_decimal(cu_seconds, field_name="cu_seconds") / 3600
        price = self.rate_card.price(PLATFORM, "CU_HOUR", on=task.start.date())
        tags = {k: v for k, v in (("fabric_item", item), ("fabric_operation_id", operation_id)) if v}
        return estimate_record(
            task,
            platform=PLATFORM,
            cost=price.cost(cu_hours),
            quantity=cu_hours,
            unit="CU-hour",
            sku="CU_HOUR",
            description=f"{cu_seconds} CU-seconds of {item or 'the item'} on {self.capacity_id.rsplit('/', 1)[-1]}",
            price_text=price.describe(),
            tags=tags,
            resource_id=item,
            service_name="Microsoft Fabric",
        )


def collect_fabric(
    ledger: Ledger,
    config: FinOpsConfig,
    start: dt.datetime,
    end: dt.datetime,
    *,
    conn_id: str | None = None,
    capacity_id: str | None = None,
    metrics: Sequence[Mapping[str, Any]] = (),
    dataset_id: str | None = None,
    dax: str | None = None,
    runs: Mapping[str, Mapping[str, str]] | None = None,
    now: dt.datetime | None = None,
    hook: FabricCostHook | None = None,
    **hook_kwargs: Any,
) -> tuple[CollectResult, IngestResult]:
    """Collector ``fabric``: a capacity's cost for ``[start, end)`` shared by CU consumption, idle as its own row."""
    if hook is None:
        if not capacity_id:
            raise ValueError("collector fabric needs capacity_id=/subscriptions/.../Microsoft.Fabric/capacities/<name>")
        hook = FabricCostHook(
            conn_id=conn_id or FabricCostHook.default_conn_name,
            capacity_id=capacity_id,
            rate_card=rate_card_for(config),
            **hook_kwargs,
        )
    res = hook.collect(start, end, metrics=metrics, dataset_id=dataset_id, dax=dax, runs=runs, now=now)
    return res, ingest_collected(ledger, config, res)
