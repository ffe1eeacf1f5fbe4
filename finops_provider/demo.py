"""Deterministic demo data: a month of multi-platform costs for a few dozen DAGs and teams.

Everything is priced from the rate card (no literal prices here) and generated from a fixed seed, so
``finops demo`` prints the same figures on every machine. The expected totals are computed exactly
while generating and returned, so tests can check the ledger against them.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finops_provider.core.money import Money, MoneyBag
from finops_provider.core.pricing import Price, RateCard
from finops_provider.core.records import CostRecord

if TYPE_CHECKING:
    from finops_provider.core.ledger import Ledger
    from finops_provider.core.reconcile import ReconcileReport

#: the demo's clock: data covers the 30 days before this instant
DEMO_NOW = dt.datetime(2026, 10, 24, 0, 0, tzinfo=dt.UTC)
DEMO_DAYS = 30
SEED = 20261024
SPIKE_DAG = "feature_store_backfill"
SPIKE_TASK = "backfill_embeddings"
#: run-time estimates: one DAG per platform, task_1 of the 02:00 run, on these days before the last one (so the
#: last day's anomaly scan is not disturbed); each estimate is off its truth by a platform-typical error (per mille)
ESTIMATED_DAGS = {
    "ingest_orders": (-120, 40),  # databricks: cluster spec x duration runs low / high
    "bi_daily_revenue": (-60, 150),  # snowflake: concurrent queries share credits -> estimates run high
    "ingest_crm": (-20, 20),  # bigquery: dry-run bytes are close to billed bytes
    "ingest_partner_feeds": (-80, 80),  # redshift
    "ingest_clickstream": (-200, 30),  # kubernetes: requests under-estimate usage
    "report_finance_close": (-50, 90),  # synapse
    "bi_product_usage": (-100, 100),  # fabric
}
ESTIMATE_DAYS_BEFORE_END = (4, 3, 2)
#: idle rows per day: share of the day's attributed usage left idle (Snowflake warehouses, Kubernetes nodes)
IDLE_SHARE = {"snowflake": Decimal("0.18"), "kubernetes": Decimal("0.25")}
#: the demo's Fabric capacity (its CU-hours not consumed by items are the idle row)
FABRIC_CAPACITY_SKU = "F32"


@dataclass(frozen=True)
class DemoDag:
    dag_id: str
    platform: str
    tasks: int
    base: Decimal  # typical usage quantity per task run, in the platform's unit
    hourly: bool = False
    growth_pct_per_day: Decimal = Decimal(0)


#: platform -> (rate-card platform, SKU, FOCUS provider, service name, service category, pricing unit)
PLATFORMS = {
    "databricks": ("databricks", "JOBS_COMPUTE", "Databricks", "Databricks Jobs Compute", "Analytics", "DBU"),
    "snowflake": ("snowflake", "CREDIT_ENTERPRISE", "Snowflake", "Snowflake Warehouse", "Databases", "credit"),
    "bigquery": ("bigquery", "ON_DEMAND_TIB", "Google Cloud", "BigQuery", "Analytics", "TiB"),
    "redshift": ("redshift", "ra3.4xlarge", "AWS", "Amazon Redshift", "Databases", "node-hour"),
    "synapse": ("synapse", "SPARK_VCORE_HOUR", "Microsoft", "Azure Synapse Analytics", "Analytics", "vCore-hour"),
    "fabric": ("fabric", "CU_HOUR", "Microsoft", "Microsoft Fabric", "Analytics", "CU-hour"),
}

DAGS: tuple[DemoDag, ...] = (
    DemoDag("ingest_orders", "databricks", 5, Decimal("40")),
    DemoDag("ingest_payments", "databricks", 4, Decimal("35")),
    DemoDag("ingest_clickstream", "kubernetes", 4, Decimal("6"), hourly=True),
    DemoDag("ingest_inventory", "snowflake", 3, Decimal("9")),
    DemoDag("ingest_crm", "bigquery", 3, Decimal("0.8")),
    DemoDag("cdc_postgres_orders", "kubernetes", 3, Decimal("4"), hourly=True),
    DemoDag("cdc_mysql_users", "kubernetes", 3, Decimal("3"), hourly=True),
    DemoDag("ingest_partner_feeds", "redshift", 4, Decimal("2")),
    DemoDag("bi_daily_revenue", "snowflake", 6, Decimal("14")),
    DemoDag("bi_customer_360", "snowflake", 7, Decimal("18")),
    DemoDag("bi_marketing_attribution", "bigquery", 5, Decimal("2.4")),
    DemoDag("report_exec_kpis", "snowflake", 4, Decimal("6")),
    DemoDag("report_finance_close", "synapse", 4, Decimal("60")),
    DemoDag("report_weekly_cohorts", "bigquery", 3, Decimal("3.2")),
    DemoDag("bi_product_usage", "fabric", 5, Decimal("90")),
    DemoDag("ml_train_recsys", "databricks", 6, Decimal("120")),
    DemoDag("ml_train_fraud", "databricks", 5, Decimal("80")),
    DemoDag("ml_batch_scoring", "kubernetes", 3, Decimal("10"), hourly=True),
    DemoDag("feature_store_materialize", "databricks", 3, Decimal("9"), hourly=True),
    DemoDag(SPIKE_DAG, "databricks", 4, Decimal("300")),
    DemoDag("ml_eval_nightly", "kubernetes", 4, Decimal("40")),
    DemoDag("growth_email_segments", "bigquery", 4, Decimal("1.1")),
    DemoDag("growth_ab_test_metrics", "snowflake", 5, Decimal("7")),
    DemoDag("growth_referrals", "databricks", 3, Decimal("25")),
    DemoDag("growth_paid_ads_sync", "kubernetes", 3, Decimal("5"), hourly=True, growth_pct_per_day=Decimal("4")),
    DemoDag("finance_ledger_close", "redshift", 5, Decimal("3")),
    DemoDag("finance_revenue_recognition", "snowflake", 4, Decimal("8")),
    DemoDag("finance_fx_rates", "kubernetes", 2, Decimal("1")),
    DemoDag("legacy_export_job", "redshift", 3, Decimal("2")),
    DemoDag("tmp_adhoc_backfill", "bigquery", 2, Decimal("1.5")),
)

TEAMS = ("data-eng", "analytics", "ml-platform", "growth", "finance-eng")
_Q4 = Decimal("0.0001")


@dataclass
class DemoData:
    """Generated records plus the exact expected totals (per currency) computed while generating."""

    records: list[CostRecord] = field(default_factory=list)
    expected: MoneyBag = field(default_factory=MoneyBag)
    expected_effective: MoneyBag = field(default_factory=MoneyBag)

    #: the ledger's totals after :func:`reconcile_demo` (every estimate has truth, so only billed rows remain)
    expected_after_reconcile: MoneyBag = field(default_factory=MoneyBag)

    def add(self, r: CostRecord) -> None:
        self.records.append(r)
        self.expected.add_raw(r.billed_cost, r.billing_currency)
        if r.x_cost_kind == "billed":
            self.expected_after_reconcile.add_raw(r.billed_cost, r.billing_currency)
        if r.effective_cost is not None:
            self.expected_effective.add_raw(r.effective_cost, r.billing_currency)

    @property
    def estimates(self) -> list[CostRecord]:
        return [r for r in self.records if r.x_cost_kind == "estimate"]


def _qty(rng: random.Random, base: Decimal, spread: float = 0.25) -> Decimal:
    """A usage quantity around ``base`` with 4 decimals, built from integers (exact)."""
    factor = Decimal(int(rng.gauss(10_000, 10_000 * spread))).max(Decimal(1000)) / 10_000
    return (base * factor).quantize(_Q4)


def _weekday_factor(day: dt.datetime) -> Decimal:
    return Decimal("0.55") if day.weekday() >= 5 else Decimal(1)


def generate(
    rate_card: RateCard | None = None,
    *,
    now: dt.datetime = DEMO_NOW,
    days: int = DEMO_DAYS,
    infra_resources: int = 300,
    seed: int = SEED,
) -> DemoData:
    """Build the demo month. ``infra_resources`` hourly cloud resources dominate the row count."""
    rc = rate_card or RateCard.load()
    rng = random.Random(seed)
    data = DemoData()
    start = now - dt.timedelta(days=days)
    on = start.date()
    k8s_cpu = rc.price("kubernetes", "cpu_core_hour", on=on)
    k8s_mem = rc.price("kubernetes", "memory_gb_hour", on=on)
    est_rng = random.Random(seed + 1)  # its own stream: the billed rows stay what they were without estimates
    for d in range(days):
        day = start + dt.timedelta(days=d)
        wf = _weekday_factor(day)
        used: dict[str, Decimal] = {"snowflake": Decimal(0), "kubernetes": Decimal(0), "fabric": Decimal(0)}
        for dag in DAGS:
            runs = [day + dt.timedelta(hours=h) for h in range(24)] if dag.hourly else [day + dt.timedelta(hours=2)]
            growth = 1 + dag.growth_pct_per_day * d / 100
            for run_at in runs:
                run_id = f"scheduled__{run_at:%Y-%m-%dT%H:%M:%S}+00:00"
                for t in range(dag.tasks):
                    task_id = f"task_{t + 1}" if not (dag.dag_id == SPIKE_DAG and t == 0) else SPIKE_TASK
                    base = dag.base * wf * growth
                    if dag.dag_id == SPIKE_DAG and task_id == SPIKE_TASK and d == days - 1:
                        base *= 8  # the injected incident: one task explodes on the last day
                    end_at = run_at + dt.timedelta(minutes=50)
                    common: dict[str, Any] = dict(
                        billing_account_id="acme-data-platform",
                        billing_account_name="Acme Data Platform",
                        charge_period_start=run_at,
                        charge_period_end=end_at,
                        billing_period_start=run_at.replace(day=1, hour=0),
                        charge_category="Usage",
                        charge_frequency="Usage-Based",
                        x_source="demo",
                        x_cost_kind="billed",
                        x_dag_id=dag.dag_id,
                        x_task_id=task_id,
                        x_run_id=run_id,
                        x_platform=dag.platform,
                        tags={"airflow_dag_id": dag.dag_id, "airflow_task_id": task_id},
                    )
                    estimated = (
                        dag.dag_id in ESTIMATED_DAGS
                        and t == 0
                        and run_at.hour == 2
                        and days - d in ESTIMATE_DAYS_BEFORE_END
                    )
                    if dag.platform == "kubernetes":
                        cores = _qty(rng, base)
                        gb = _qty(rng, base * 4)
                        used["kubernetes"] += cores
                        if estimated:
                            f = _estimate_factor(est_rng, dag.dag_id)
                            data.add(
                                _estimate(
                                    dag, task_id, run_at, end_at,
                                    k8s_cpu.cost(cores * f) + k8s_mem.cost(gb * f), cores * f, "core-hour", None,
                                )
                            )  # fmt: skip
                        for price, qty, what in ((k8s_cpu, cores, "CPU"), (k8s_mem, gb, "memory")):
                            cost = price.cost(qty).amount
                            data.add(
                                CostRecord(
                                    billed_cost=cost,
                                    effective_cost=cost,
                                    list_cost=cost,
                                    contracted_cost=cost,
                                    billing_currency="USD",
                                    provider_name="AWS",
                                    publisher_name="Amazon Web Services, Inc.",
                                    invoice_issuer_name="Amazon Web Services, Inc.",
                                    service_name="Amazon EKS",
                                    service_category="Compute",
                                    pricing_quantity=qty,
                                    pricing_unit=price.unit,
                                    consumed_quantity=qty,
                                    consumed_unit=price.unit,
                                    sku_id=price.sku,
                                    charge_description=f"Pod {what} {price.unit} ({price.source})",
                                    resource_id=f"pod/{dag.dag_id}-{task_id}-{run_at:%Y%m%d%H}",
                                    **common,
                                )
                            )
                    else:
                        rplat, sku, provider, service, category, unit = PLATFORMS[dag.platform]
                        price = rc.price(rplat, sku, on=on)
                        qty = _qty(rng, base)
                        cost = price.cost(qty).amount
                        if dag.platform in used:
                            used[dag.platform] += qty
                        if estimated:
                            q = qty * _estimate_factor(est_rng, dag.dag_id)
                            data.add(_estimate(dag, task_id, run_at, end_at, price.cost(q), q, unit, price))
                        data.add(
                            CostRecord(
                                billed_cost=cost,
                                effective_cost=cost,
                                list_cost=rc.price(rplat, sku, on=on).cost(qty).amount,
                                contracted_cost=cost,
                                billing_currency="USD",
                                provider_name=provider,
                                publisher_name=provider,
                                invoice_issuer_name=provider,
                                service_name=service,
                                service_category=category,
                                pricing_quantity=qty,
                                pricing_unit=unit,
                                consumed_quantity=qty,
                                consumed_unit=unit,
                                sku_id=sku,
                                charge_description=f"{qty} {unit} at {price.amount} ({price.source})",
                                **common,
                            )
                        )
        _idle_rows(data, rc, day, used)
    _infra(data, rng, start, days, infra_resources)
    return data


def _estimate_factor(rng: random.Random, dag_id: str) -> Decimal:
    lo, hi = ESTIMATED_DAGS[dag_id]
    return 1 + Decimal(rng.randint(lo, hi)) / 1000


def _estimate(
    dag: DemoDag,
    task_id: str,
    start: dt.datetime,
    end: dt.datetime,
    cost: Money,
    quantity: Decimal,
    unit: str,
    price: Price | None,
) -> CostRecord:
    """The run-time estimate of one task try, built like the platform hooks build theirs."""
    from finops_provider.core.estimate import TaskTry
    from finops_provider.core.platforms import estimate_record

    run_id = f"scheduled__{start:%Y-%m-%dT%H:%M:%S}+00:00"
    task = TaskTry(dag.dag_id, task_id, run_id, 1, start, end)
    rplat = PLATFORMS[dag.platform][0] if dag.platform in PLATFORMS else dag.platform
    return estimate_record(  # type: ignore[no-any-return]
        task,
        platform=dag.platform,
        cost=cost,
        quantity=quantity,
        unit=unit,
        sku=price.sku if price else None,
        description=f"demo estimate ({rplat})",
        price_text=price.describe() if price else None,
    )


def _idle_rows(data: DemoData, rc: RateCard, day: dt.datetime, used: dict[str, Decimal]) -> None:
    """One idle row per day for Snowflake (warehouse credits), Kubernetes (node cores) and Fabric (capacity CU)."""
    from finops_provider.core.azure_sizing import fabric_capacity_units

    on = day.date()
    capacity_cu_hours = fabric_capacity_units(FABRIC_CAPACITY_SKU) * 24
    rows = (
        ("snowflake", rc.price("snowflake", "CREDIT_ENTERPRISE", on=on), (used["snowflake"] * IDLE_SHARE["snowflake"])),
        ("kubernetes", rc.price("kubernetes", "cpu_core_hour", on=on), (used["kubernetes"] * IDLE_SHARE["kubernetes"])),
        ("fabric", rc.price("fabric", "CU_HOUR", on=on), max(capacity_cu_hours - used["fabric"], Decimal(0))),
    )
    for platform, price, qty in rows:
        qty = qty.quantize(_Q4)
        cost = price.cost(qty).amount
        data.add(
            CostRecord(
                billed_cost=cost,
                effective_cost=cost,
                list_cost=cost,
                contracted_cost=cost,
                billing_currency=price.amount.currency,
                charge_period_start=day,
                charge_period_end=day + dt.timedelta(days=1),
                billing_period_start=day.replace(day=1),
                billing_account_id="acme-data-platform",
                billing_account_name="Acme Data Platform",
                charge_category="Usage",
                charge_frequency="Usage-Based",
                charge_description=f"{platform} idle: {qty} {price.unit} not used by any job ({price.source})",
                pricing_quantity=qty,
                pricing_unit=price.unit,
                sku_id=price.sku,
                provider_name=PLATFORMS[platform][2] if platform in PLATFORMS else "Kubernetes",
                service_name=PLATFORMS[platform][3] if platform in PLATFORMS else "Kubernetes",
                tags={"finops_idle": "true"},
                x_source="demo",
                x_cost_kind="billed",
                x_platform=platform,
                x_job_id="(idle)",
                x_line_item_id=f"idle|{platform}|{on.isoformat()}",
            )
        )


def reconcile_demo(ledger: Ledger, *, now: dt.datetime = DEMO_NOW, days: int = DEMO_DAYS) -> ReconcileReport:
    """Supersede the demo month's estimates by their billed truth; the report's ``accuracy`` gives, per platform,
    the estimates' bias and mean absolute error (what ``finops demo`` prints)."""
    from finops_provider.core.reconcile import reconcile

    return reconcile(ledger, now - dt.timedelta(days=days), now)


def _infra(data: DemoData, rng: random.Random, start: dt.datetime, days: int, n: int) -> None:
    """Hourly cloud line items (EC2 / RDS / NAT / Azure VMs), some tagged with a team, some not."""
    kinds = (
        ("Amazon Elastic Compute Cloud", "Compute", "AWS", "USD", Decimal("0.384")),
        ("Amazon Relational Database Service", "Databases", "AWS", "USD", Decimal("0.480")),
        ("Amazon Virtual Private Cloud", "Networking", "AWS", "USD", Decimal("0.045")),
        ("Virtual Machines", "Compute", "Microsoft", "EUR", Decimal("0.192")),
    )
    resources = []
    for i in range(n):
        svc, cat, prov, cur, hourly = kinds[i % len(kinds)]
        team = TEAMS[i % len(TEAMS)] if i % 7 else None  # every 7th resource is untagged
        resources.append((f"res-{i:04d}", svc, cat, prov, cur, hourly, team, Decimal(rng.randint(80, 120)) / 100))
    for h in range(days * 24):
        at = start + dt.timedelta(hours=h)
        for rid, svc, cat, prov, cur, hourly, team, scale in resources:
            cost = (hourly * scale).quantize(Decimal("0.0000001"))
            eff = (cost * Decimal("0.72")).quantize(Decimal("0.0000001")) if svc.startswith("Amazon Elastic") else cost
            data.add(
                CostRecord(
                    billed_cost=cost,
                    effective_cost=eff,
                    list_cost=cost,
                    contracted_cost=eff,
                    billing_currency=cur,
                    charge_period_start=at,
                    charge_period_end=at + dt.timedelta(hours=1),
                    billing_period_start=at.replace(day=1, hour=0),
                    billing_account_id="acme-cloud" if cur == "USD" else "acme-eu",
                    billing_account_name="Acme Cloud" if cur == "USD" else "Acme EU",
                    provider_name=prov,
                    publisher_name=prov,
                    invoice_issuer_name=prov,
                    service_name=svc,
                    service_category=cat,
                    charge_category="Usage",
                    charge_frequency="Usage-Based",
                    pricing_quantity=Decimal(1),
                    pricing_unit="Hours",
                    resource_id=rid,
                    region_id="us-east-1" if cur == "USD" else "westeurope",
                    tags={"team": team} if team else {},
                    x_source="demo",
                    x_cost_kind="billed",
                    x_line_item_id=f"{rid}@{at:%Y%m%d%H}",
                )
            )


def sample_path() -> Path:
    """The bundled real FOCUS sample (FinOps Foundation, CC BY 4.0)."""
    return Path(str(resources.files("finops_provider") / "data" / "focus1.0_multicloud_sample_1000.csv"))


def demo_config_path() -> Path:
    return Path(str(resources.files("finops_provider") / "data" / "demo_config.yaml"))


def iter_days(start: dt.datetime, days: int) -> Iterator[dt.datetime]:
    for d in range(days):
        yield start + dt.timedelta(days=d)
