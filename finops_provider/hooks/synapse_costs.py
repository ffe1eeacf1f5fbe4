"""Azure Synapse Analytics cost: billed meters from Cost Management (truth) and per-task run-time estimates.

Built on :class:`~finops_provider.hooks.azure_cost_management.AzureCostManagementHook` (the one Azure billing
client: its credential, Resource Manager pipeline, retries and ``nextLink`` paging are reused unchanged).

Truth: one Query API request per cost type and window (ActualCost -> BilledCost, AmortizedCost ->
EffectiveCost), ``granularity=Daily``, filtered to ``MeterCategory = "Azure Synapse Analytics"`` (and the
workspace's resource group when a workspace is named), grouped by ``ResourceId`` and ``Meter``, summing
``Cost`` and ``UsageQuantity``. Each row becomes a record with ``x_platform="synapse"``; the meter family is read
from the resource id (``/sqlPools/`` dedicated SQL pool, ``/bigDataPools/`` Spark pool, the workspace itself
serverless SQL) and the meter name (``DWU``, ``vCore``, ``Data Processed``), giving ``sku_id``
``DW100c_HOUR`` / ``SPARK_VCORE_HOUR`` / ``SERVERLESS_SQL_TB`` (pipelines, data flows and storage keep their
cost with no SKU). Attribution comes from the pools' Azure resource tags (``GET .../sqlPools`` and
``.../bigDataPools``, Synapse Resource Manager API 2021-06-01), where the FinOps convention puts
``airflow_dag_id`` / ``airflow_task_id`` / ``airflow_run_id`` / ``team``; tags are read at collection time.

Estimates (``x_cost_kind="estimate"``, line item ``dag/run/task/map/try``), priced from ``ratecards/synapse.yaml``:

* dedicated SQL pool: ``DWxxx c / 100 x DW100c_HOUR x task hours`` from the pool's ``sku.name`` and
  ``properties.status`` (a ``Paused`` pool costs 0 compute). Azure bills started hours; the estimate uses
  exact hours;
* serverless SQL: MB processed (``sys.dm_external_data_processed``) / 10^6 x ``SERVERLESS_SQL_TB``;
* Spark: node vCores (pool ``nodeSize``) x nodes x hours x ``SPARK_VCORE_HOUR``; nodes = the batch's
  ``numExecutors`` + 1 driver and hours = ``livyInfo.runningAt`` .. ``schedulerInfo.endedAt`` of the Livy batch
  (``GET .../livyApi/versions/2019-11-01-preview/sparkPools/{pool}/batches/{id}``, what
  ``AzureSynapseHook.get_job_run_status`` reads); without a batch, the pool's node count (``autoScale.maxNodeCount``
  when autoscaling, an upper bound) x the task's duration.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from decimal import Decimal, localcontext
from typing import Any

from finops_provider.collect import CollectResult, ingest_collected
from finops_provider.core.azure_sizing import dw100c_multiple, is_paused, megabytes_to_tb, spark_node_vcores
from finops_provider.core.config import FinOpsConfig
from finops_provider.core.estimate import TaskTry
from finops_provider.core.focus import BadRow
from finops_provider.core.ledger import IngestResult, Ledger
from finops_provider.core.money import MONEY_CONTEXT
from finops_provider.core.platforms import estimate_record, hours_between, utc
from finops_provider.core.pricing import RateCard
from finops_provider.core.records import CostRecord, RecordError, build_record
from finops_provider.hooks._arm import ArmReadMixin
from finops_provider.hooks._sql import rate_card_for
from finops_provider.hooks._window import bounded_scope, day_window
from finops_provider.hooks.azure_cost_management import (
    COST_FIELDS,
    COST_TYPES,
    PROVIDER,
    QUERY_COLUMNS,
    AzureCostManagementHook,
    _amount,
    _usage_day,
)

PLATFORM = "synapse"
SOURCE = "azure-synapse"
METER_CATEGORY = "Azure Synapse Analytics"
#: the columns the Synapse query answers with (others are schema drift: ignored, warned about once)
SYNAPSE_COLUMNS = QUERY_COLUMNS | {"ResourceId", "Meter", "UsageQuantity"}
SYNAPSE_API_VERSION = "2021-06-01"
#: meter family -> (rate-card SKU, pricing unit, FOCUS service subcategory)
FAMILIES: dict[str, tuple[str | None, str | None, str]] = {
    "dedicated": ("DW100c_HOUR", "100 DWU-hour", "Dedicated SQL pool"),
    "serverless": ("SERVERLESS_SQL_TB", "TB", "Serverless SQL pool"),
    "spark": ("SPARK_VCORE_HOUR", "vCore-hour", "Apache Spark pool"),
    "other": (None, None, "Other Synapse meters"),
}


def meter_family(resource_id: str, meter: str) -> str:
    """``dedicated`` / ``serverless`` / ``spark`` / ``other`` from the billed resource and meter name."""
    rid, m = resource_id.lower(), meter.lower()
    if "/sqlpools/" in rid or "dwu" in m:
        return "dedicated"
    if "/bigdatapools/" in rid or "vcore" in m:
        return "spark"
    if "data processed" in m:
        return "serverless"
    return "other"


class SynapseCostHook(ArmReadMixin, AzureCostManagementHook):
    """Synapse billed meters (Cost Management) and per-task estimates (dedicated SQL, serverless SQL, Spark).

    :param workspace_id: the workspace's resource id
        (``/subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.Synapse/workspaces/<ws>``): narrows the
        query to its resource group and rows to its resources, and is where pools are read for tags and sizes.
    :param rate_card: prices for the estimates (default: the shipped cards).
    :param kwargs: :class:`AzureCostManagementHook` options (``conn_id``, ``scope``, ``amortized``, ...).
    """

    hook_name = "Azure Synapse costs (FinOps)"

    def __init__(self, *, workspace_id: str | None = None, rate_card: RateCard | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("repull_days", 3)
        super().__init__(**kwargs)
        self.workspace_id = "/" + workspace_id.strip("/") if workspace_id else None
        self.rate_card = rate_card or RateCard.load()

    # ------------------------------------------------------------------ Resource Manager reads
    def _workspace(self) -> str:
        if not self.workspace_id:
            raise ValueError("no Synapse workspace: pass workspace_id='/subscriptions/.../workspaces/<name>'")
        return self.workspace_id

    def sql_pool(self, name: str) -> dict[str, Any]:
        """``GET .../workspaces/{ws}/sqlPools/{name}`` (``sku.name`` and ``properties.status``)."""
        return self.arm_get(f"{self._workspace()}/sqlPools/{name}", SYNAPSE_API_VERSION)

    def big_data_pool(self, name: str) -> dict[str, Any]:
        """``GET .../workspaces/{ws}/bigDataPools/{name}`` (``properties.nodeSize``, ``nodeCount``, ``autoScale``)."""
        return self.arm_get(f"{self._workspace()}/bigDataPools/{name}", SYNAPSE_API_VERSION)

    def pool_tags(self) -> dict[str, dict[str, str]]:
        """Lower-cased resource id -> tags of the workspace, its SQL pools and its Spark pools."""
        ws = self._workspace()
        out: dict[str, dict[str, str]] = {}
        for kind in ("sqlPools", "bigDataPools"):
            for item in self.arm_list(f"{ws}/{kind}", SYNAPSE_API_VERSION):
                out[str(item.get("id", "")).lower()] = {str(k): str(v) for k, v in (item.get("tags") or {}).items()}
        return out

    # ------------------------------------------------------------------ truth
    def synapse_query_body(self, cost_type: str, window: tuple[dt.datetime, dt.datetime]) -> dict[str, Any]:
        """The Query API body: daily Cost and UsageQuantity of the Synapse meter category by resource and meter."""
        body = self.query_body(cost_type, window, tag_key="-", cost_column=self.cost_column)
        body["dataset"]["aggregation"]["totalQuantity"] = {"name": "UsageQuantity", "function": "Sum"}
        body["dataset"]["grouping"] = [
            {"type": "Dimension", "name": "ResourceId"},
            {"type": "Dimension", "name": "Meter"},
        ]
        meter = {"dimensions": {"name": "MeterCategory", "operator": "In", "values": [METER_CATEGORY]}}
        if self.workspace_id:
            rg = (
                self.workspace_id.split("/resourceGroups/", 1)[1].split("/", 1)[0]
                if "/resourceGroups/" in (self.workspace_id)
                else None
            )
            if rg:
                group = {"dimensions": {"name": "ResourceGroupName", "operator": "In", "values": [rg]}}
                body["dataset"]["filter"] = {"and": [meter, group]}
                return body
        body["dataset"]["filter"] = meter
        return body

    def collect(  # type: ignore[override]
        self, start: dt.date | dt.datetime | str, end: dt.date | dt.datetime | str, **_: Any
    ) -> CollectResult:
        """Billed Synapse meters of ``[start, end)`` (plus the re-pull days): one record per day, resource and meter.

        :return: :class:`CollectResult` (scope ``azure-synapse:<scope>[:<workspace>]``).
        """
        window = day_window(start, end, extend_back_days=self.repull_days)
        before = self.requests_made
        queries = [(t, self.synapse_query_body(t, window)) for t in COST_TYPES if t == "ActualCost" or self.amortized]
        merged = self._merge_queries(queries, self._synapse_rows)
        tags = self.pool_tags() if self.workspace_id else {}

        def record(key: tuple[dt.date, str, str, str], amounts: dict[str, Decimal]) -> CostRecord | None:
            day, rid, meter, currency = key
            if self.workspace_id and not rid.lower().startswith(self.workspace_id.lower()):
                return None  # another workspace in the same resource group
            try:
                return self._synapse_record(day, rid, meter, currency, amounts, tags.get(rid.lower(), {}))
            except RecordError as e:
                raise RecordError(e.field, f"Synapse meter {day} {rid} {meter}: {e.message}") from None

        res = CollectResult(source=SOURCE, window=window)
        res.records, res.bad_rows = merged.build(record)
        res.requests = self.requests_made - before
        res.scope = bounded_scope(f"{SOURCE}:{self.scope}" + (f":{self.workspace_id}" if self.workspace_id else ""))
        self.log.info(
            "Synapse meters %s..%s: %d records in %d request(s)",
            window[0].date(),
            window[1].date(),
            len(res.records),
            res.requests,
        )
        return res

    def _synapse_rows(
        self, page: Mapping[str, Any], *, cost_type: str, numbers: Iterator[int], warned: set[str]
    ) -> Iterator[tuple[int, tuple[dt.date, str, str, str] | None, Mapping[str, Decimal] | BadRow]]:
        """(row number, (day, resource id, meter, currency), amounts) per row; a bad value is a :class:`BadRow`."""
        names, idx, rows = self._page_columns(page, SYNAPSE_COLUMNS, warned)
        cost_col = next((c for c in (self.cost_column, "Cost", "PreTaxCost", "CostUSD") if c in idx), None)
        missing = ([] if cost_col else [self.cost_column]) + [c for c in ("UsageDate", "Currency") if c not in idx]
        if rows and missing:
            field = {"UsageDate": "ChargePeriodStart", "Currency": "BillingCurrency"}.get(missing[0], "BilledCost")
            raise RecordError(field, f"the Synapse query answer has no column {', '.join(missing)} (columns: {names})")
        for row in rows:
            n = next(numbers)

            def col(name: str, row: Any = row) -> Any:
                i = idx.get(name)
                return row[i] if i is not None and i < len(row) else None

            rid, meter = str(col("ResourceId") or ""), str(col("Meter") or "")
            raw = {name: col(name) for name in names}
            try:
                day = _usage_day(col("UsageDate"))
            except (ValueError, TypeError) as e:
                yield n, None, BadRow(n, "ChargePeriodStart", f"Synapse {cost_type} row {n} ({rid} {meter}): {e}", raw)
                continue
            key = (day, rid, meter, str(col("Currency") or ""))
            where = f"Synapse {cost_type} row {n} ({day} {rid} {meter})"
            amounts: dict[str, Decimal] = {}
            try:
                amounts[cost_type] = _amount(col(str(cost_col)), str(cost_col))
            except (ValueError, ArithmeticError) as e:
                yield n, key, BadRow(n, COST_FIELDS.get(cost_type, "BilledCost"), f"{where}: {e}", raw)
                continue
            if cost_type == "ActualCost":
                qty = col("UsageQuantity")
                try:
                    amounts["qty"] = _amount(qty, "UsageQuantity") if qty is not None else Decimal(0)
                except (ValueError, ArithmeticError) as e:
                    yield n, key, BadRow(n, "PricingQuantity", f"{where}: {e}", raw)
                    continue
            yield n, key, amounts

    def _synapse_record(
        self, day: dt.date, rid: str, meter: str, currency: str, amounts: Mapping[str, Decimal], tags: dict[str, str]
    ) -> CostRecord:
        family = meter_family(rid, meter)
        sku, unit, subcategory = FAMILIES[family]
        start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        qty = amounts.get("qty", Decimal(0))
        return build_record(
            billed_cost=amounts.get("ActualCost", Decimal(0)),
            effective_cost=amounts.get("AmortizedCost", Decimal(0)) if self.amortized else None,
            billing_currency=currency,
            charge_period_start=start,
            charge_period_end=start + dt.timedelta(days=1),
            charge_category="Usage",
            charge_description=f"Synapse meter {meter or '?'} ({subcategory})",
            pricing_quantity=qty,
            pricing_unit=unit,
            consumed_quantity=qty,
            consumed_unit=unit,
            provider_name=PROVIDER,
            publisher_name=PROVIDER,
            invoice_issuer_name=PROVIDER,
            service_name=METER_CATEGORY,
            service_category="Analytics",
            service_subcategory=subcategory,
            sku_id=sku,
            resource_id=rid or None,
            resource_name=rid.rsplit("/", 1)[-1] or None,
            resource_type=family,
            tags=dict(tags),
            x_line_item_id=f"{SOURCE}|{rid.lower()}|{meter}|{currency}",
            x_source=SOURCE,
            x_platform=PLATFORM,
            x_cost_kind="billed",
        )

    # ------------------------------------------------------------------ estimates
    def estimate_sql_pool(
        self, task: TaskTry, *, sql_pool: Mapping[str, Any] | None = None, pool_name: str | None = None
    ) -> CostRecord:
        """A dedicated SQL pool task: ``DW<n>c / 100 x DW100c_HOUR x task hours`` (0 while the pool is paused).

        :param sql_pool: the pool's ``GET .../sqlPools/{name}`` body; read from the API when only ``pool_name``
            is given.
        """
        pool = dict(sql_pool) if sql_pool is not None else self.sql_pool(_required(pool_name, "pool_name"))
        objective = str((pool.get("sku") or {}).get("name") or "")
        status = str((pool.get("properties") or {}).get("status") or "")
        units = Decimal(0) if is_paused(status) else dw100c_multiple(objective)
        hours = hours_between(task.start, task.end)
        price = self.rate_card.price(PLATFORM, "DW100c_HOUR", on=task.start.date())
        with localcontext(MONEY_CONTEXT):
            qty = units * hours
        return estimate_record(
            task,
            platform=PLATFORM,
            cost=price.cost(qty),
            quantity=qty,
            unit="100 DWU-hour",
            sku="DW100c_HOUR",
            description=f"dedicated SQL pool {pool.get('name')} {objective} ({status or 'status unknown'}) x {hours} h",
            price_text=price.describe(),
            tags={"synapse_pool_status": status} if status else None,
            resource_id=pool.get("id"),
            service_name=METER_CATEGORY,
        )

    def estimate_serverless(self, task: TaskTry, *, data_processed_mb: Any) -> CostRecord:
        """A serverless SQL task: MB processed (``sys.dm_external_data_processed``) / 10^6 x ``SERVERLESS_SQL_TB``."""
        tb = megabytes_to_tb(data_processed_mb)
        price = self.rate_card.price(PLATFORM, "SERVERLESS_SQL_TB", on=task.start.date())
        return estimate_record(
            task,
            platform=PLATFORM,
            cost=price.cost(tb),
            quantity=tb,
            unit="TB",
            sku="SERVERLESS_SQL_TB",
            description=f"serverless SQL {data_processed_mb} MB processed",
            price_text=price.describe(),
            resource_id=self.workspace_id,
            service_name=METER_CATEGORY,
        )

    def estimate_spark(
        self,
        task: TaskTry,
        *,
        big_data_pool: Mapping[str, Any] | None = None,
        pool_name: str | None = None,
        batch: Mapping[str, Any] | None = None,
    ) -> CostRecord:
        """A Spark pool task: node vCores x nodes x hours x ``SPARK_VCORE_HOUR``.

        :param big_data_pool: the pool's ``GET .../bigDataPools/{name}`` body (read when only ``pool_name`` given).
        :param batch: the Livy batch (``numExecutors`` + 1 driver nodes, ``runningAt`` .. ``endedAt``); without it
            the pool's node count over the task's duration.
        """
        pool = (
            dict(big_data_pool) if big_data_pool is not None else self.big_data_pool(_required(pool_name, "pool_name"))
        )
        props = pool.get("properties") or {}
        vcores = spark_node_vcores(str(props.get("nodeSize") or ""))
        start, end = task.start, task.end
        if batch is not None:
            livy = batch.get("livyInfo") or {}
            request = livy.get("jobCreationRequest") or {}
            nodes = int(request.get("numExecutors") or 0) + 1
            began = (
                livy.get("runningAt") or livy.get("startingAt") or (batch.get("schedulerInfo") or {}).get("scheduledAt")
            )
            ended = (batch.get("schedulerInfo") or {}).get("endedAt") or livy.get("successAt") or livy.get("deadAt")
            if began and ended:
                start, end = utc(began), utc(ended)
            basis = f"batch {batch.get('id')}: {nodes} nodes (numExecutors + driver)"
        else:
            auto = props.get("autoScale") or {}
            nodes = int((auto.get("maxNodeCount") if auto.get("enabled") else None) or props.get("nodeCount") or 0)
            basis = f"pool {pool.get('name')}: {nodes} nodes" + (" (autoscale max)" if auto.get("enabled") else "")
        hours = hours_between(start, end)
        with localcontext(MONEY_CONTEXT):
            qty = Decimal(vcores * nodes) * hours
        price = self.rate_card.price(PLATFORM, "SPARK_VCORE_HOUR", on=task.start.date())
        return estimate_record(
            task,
            platform=PLATFORM,
            cost=price.cost(qty),
            quantity=qty,
            unit="vCore-hour",
            sku="SPARK_VCORE_HOUR",
            description=f"Spark {basis} x {vcores} vCores ({props.get('nodeSize')}) x {hours} h",
            price_text=price.describe(),
            resource_id=pool.get("id"),
            service_name=METER_CATEGORY,
        )


def _required(value: str | None, name: str) -> str:
    if not value:
        raise ValueError(f"give the pool body or {name}=")
    return value


def collect_synapse(
    ledger: Ledger,
    config: FinOpsConfig,
    start: dt.datetime,
    end: dt.datetime,
    *,
    conn_id: str | None = None,
    scope: str | None = None,
    workspace_id: str | None = None,
    hook: SynapseCostHook | None = None,
    **hook_kwargs: Any,
) -> tuple[CollectResult, IngestResult]:
    """Collector ``synapse``: billed Synapse meters for ``[start, end)`` (plus re-pull days) into the ledger.

    :param workspace_id: the Synapse workspace resource id (pools' tags attribute the cost).
    :param hook_kwargs: further :class:`SynapseCostHook` options (``amortized``, ``repull_days``, ...).
    """
    hook = hook or SynapseCostHook(
        conn_id=conn_id or SynapseCostHook.default_conn_name,
        scope=scope,
        workspace_id=workspace_id,
        rate_card=rate_card_for(config),
        **hook_kwargs,
    )
    res = hook.collect(start, end)
    return res, ingest_collected(ledger, config, res)
