"""Run-time cost estimates of Airflow task tries, as ledger records (``x_cost_kind="estimate"``).

An estimate is either a fixed amount declared for the task or ``duration x quantity_per_hour x price`` with
the price from the rate card (for example Kubernetes ``cpu_core_hour`` x 4 declared cores, Databricks
``JOBS_COMPUTE`` x 8 DBU/h). Its ``x_line_item_id`` is ``dag/run/task/map_index/try``, so recording the same
try again (a callback run twice, a listener and a callback) replaces, never adds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import TYPE_CHECKING, Any

from finops_provider.core.money import MONEY_CONTEXT, Money, check_currency, to_decimal

if TYPE_CHECKING:  # imported where used: a DAG file that declares a TaskCostSpec needs only money.py
    from finops_provider.core.pricing import RateCard
    from finops_provider.core.records import CostRecord

SOURCE = "airflow-estimate"
_SECONDS_PER_HOUR = Decimal(3600)
#: estimates are rounded (HALF_EVEN) to 1e-10: the ledger stores at most 16 decimals exactly
QUANTUM = Decimal("1e-10")


@dataclass(frozen=True)
class TaskCostSpec:
    """How one task's cost is estimated; declared per task (``params={"finops": {...}}``) or per DAG.

    :param cost: a fixed estimate per try (Decimal string); wins over the rate when given.
    :param platform: rate-card platform for the duration x rate fallback.
    :param sku: rate-card SKU (``cpu_core_hour``, ``JOBS_COMPUTE``, ...).
    :param quantity_per_hour: units consumed per hour of run time (cores, DBU/h, slots).
    """

    cost: Decimal | None = None
    currency: str = "USD"
    platform: str = "kubernetes"
    sku: str = "cpu_core_hour"
    quantity_per_hour: Decimal = Decimal(1)
    region: str | None = None
    team: str | None = None
    cost_center: str | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> TaskCostSpec:
        d = dict(data or {})
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(
                f"finops cost spec: unknown key(s) {', '.join(sorted(unknown))}; "
                "use cost, currency, platform, sku, quantity_per_hour, region, team, cost_center"
            )
        kw: dict[str, Any] = {k: v for k, v in d.items() if v is not None}
        if "cost" in kw:
            kw["cost"] = to_decimal(kw["cost"], field_name="finops.cost")
        if "quantity_per_hour" in kw:
            kw["quantity_per_hour"] = to_decimal(kw["quantity_per_hour"], field_name="finops.quantity_per_hour")
        if "currency" in kw:
            kw["currency"] = check_currency(str(kw["currency"]), field_name="finops.currency")
        return cls(**kw)


@dataclass
class TaskTry:
    """What is known about one finished task try when its callback runs."""

    dag_id: str
    task_id: str
    run_id: str
    try_number: int
    start: dt.datetime
    end: dt.datetime
    map_index: int = -1
    state: str = "success"
    team: str | None = None
    cost_center: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    resource_id: str | None = None
    resource_type: str | None = None

    @property
    def line_item_id(self) -> str:
        from finops_provider.core.platforms import estimate_line_item_id

        return estimate_line_item_id(self.dag_id, self.run_id, self.task_id, self.map_index, self.try_number)


def estimate(t: TaskTry, spec: TaskCostSpec, rate_card: RateCard) -> CostRecord:
    """The estimate record of one try (duration x rate, or the declared fixed cost)."""
    from finops_provider.core.platforms import estimate_record

    seconds = Decimal(str(max(0.0, (t.end - t.start).total_seconds())))
    if spec.cost is not None:
        amount, currency, unit, qty, desc = spec.cost, spec.currency, "Run", Decimal(1), "declared estimate"
        platform, price_txt = spec.platform, None
    else:
        price = rate_card.price(spec.platform, spec.sku, region=spec.region, on=t.start.date())
        with localcontext(MONEY_CONTEXT):
            qty = (spec.quantity_per_hour * seconds / _SECONDS_PER_HOUR).quantize(QUANTUM, rounding=ROUND_HALF_EVEN)
            amount = price.cost(qty).amount.quantize(QUANTUM, rounding=ROUND_HALF_EVEN)
        currency = price.amount.currency
        unit, platform, price_txt = price.unit, spec.platform, price.describe()
        desc = f"{seconds}s x {spec.quantity_per_hour} {price.unit}/h"
    return estimate_record(
        t,
        platform=platform,
        cost=Money(amount, currency),
        quantity=qty,
        unit=unit,
        sku=None if spec.cost is not None else spec.sku,
        description=desc,
        price_text=price_txt,
        tags={"airflow_state": t.state},
        resource_id=t.resource_id,
        resource_type=t.resource_type,
        team=spec.team,
        cost_center=spec.cost_center,
    )


TIB = Decimal(2**40)


def bigquery_on_demand_estimate(total_bytes_processed: int | str, rate_card: RateCard | None = None) -> str:
    """Pre-flight cost of a BigQuery on-demand query from its dry run's ``totalBytesProcessed`` (a Decimal string
    in the price's currency; the monthly free TiB is ignored, so this is an upper bound)."""
    from finops_provider.core.pricing import RateCard

    card = rate_card or RateCard.load()
    price = card.price("bigquery", "ON_DEMAND_TIB")
    with localcontext(MONEY_CONTEXT):
        tib = Decimal(int(total_bytes_processed)) / TIB
    return format(price.cost(tib).amount, "f")


def asset_uri(asset: Any) -> str:
    """The identifier of an outlet: an Airflow ``Asset`` (its ``uri``, else ``name``) or a URI string."""
    if isinstance(asset, str):
        uri = asset
    else:
        uri = getattr(asset, "uri", None) or getattr(asset, "name", None) or ""
    uri = str(uri).strip()
    if not uri:
        raise ValueError(f"outlet {asset!r} has no uri or name; give Asset(uri=...) or a URI string")
    return uri


def split_by_assets(record: CostRecord, assets: Any, *, weights: Mapping[str, Any] | None = None) -> list[CostRecord]:
    """Attribute a task's cost record to the tables (assets) it writes: one record per asset with ``x_asset`` set.

    Rule: the cost is split equally across the task's distinct outlets (or in proportion to ``weights``, asset URI
    -> rows / bytes written) with :func:`~finops_provider.core.allocation.split_shared`, so each cost basis (billed,
    effective, list) and the pricing quantity of the parts add up to the record's exactly. Each part keeps every
    other column; its line item is ``<record line item>#<asset uri>`` (re-recording the same try replaces it).
    No outlets: the record itself, unchanged.

    :param assets: Airflow ``Asset`` objects (``task.outlets``) or URI strings.
    """
    from finops_provider.core.allocation import split_shared

    uris = list(dict.fromkeys(asset_uri(a) for a in (assets or [])))
    if not uris:
        return [record]
    if weights is not None:
        w = {u: to_decimal(weights.get(u, 0), field_name=f"weight of {u}") for u in uris}
        if not any(v > 0 for v in w.values()):
            raise ValueError("split_by_assets: every weight is 0; give a positive weight to at least one asset")
    else:
        w = {u: Decimal(1) for u in uris}
    cur = record.billing_currency
    split: dict[str, dict[str, Decimal]] = {}
    for attr in ("billed_cost", "effective_cost", "list_cost", "pricing_quantity"):
        value = getattr(record, attr)
        if value is not None:
            split[attr] = {u: m.amount for u, m in split_shared(Money(value, cur), w, quantum=QUANTUM).items()}
    base = record.x_line_item_id or record.identity()
    out = []
    for u in uris:
        changes: dict[str, Any] = {attr: parts[u] for attr, parts in split.items()}
        out.append(
            record.replace(x_asset=u, x_line_item_id=f"{base}#{u}", tags={**record.tags, "x_asset": u}, **changes)
        )
    return out
