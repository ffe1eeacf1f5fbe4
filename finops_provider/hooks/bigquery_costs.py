"""BigQuery query cost from ``INFORMATION_SCHEMA.JOBS`` by job labels, and dry-run pre-flight estimates.

Built on the google provider's :class:`BigQueryHook` (credentials, project, DB-API connection).

* On-demand jobs (no ``reservation_id``): ``total_bytes_billed / 2^40 x`` rate card ``bigquery/ON_DEMAND_TIB``.
  The monthly free TiB is not deducted per job.
* Editions jobs (a ``reservation_id``): ``total_slot_ms / 3,600,000 x`` rate card ``<EDITION>_SLOT_HOUR``.
  **An approximation**: reservations bill baseline and autoscaled slots, not the slot-ms a job used, so idle
  baseline slots are not in these rows; the billing export (issue 3) is the truth for editions.
* Script parents (``statement_type = 'SCRIPT'``) are skipped: their children are billed and listed themselves.

Labels (``airflow_dag_id``, ``airflow_task_id``, ``airflow_run_id``, ``team``, ``cost_center`` as the FinOps
policy stamps them) attribute the cost. :meth:`BigQueryCostHook.dry_run` prices a query before it runs
(bytes processed x on-demand price), for a budget gate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from decimal import Decimal, localcontext
from typing import Any

from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook

from finops_provider.collect import CollectResult, ingest_collected
from finops_provider.core.config import FinOpsConfig
from finops_provider.core.estimate import TaskTry
from finops_provider.core.ledger import IngestResult, Ledger
from finops_provider.core.money import MONEY_CONTEXT, Money, to_decimal
from finops_provider.core.platforms import estimate_record, ledger_amount, mapping_of, sql_timestamp, utc
from finops_provider.core.pricing import RateCard
from finops_provider.core.records import CostRecord, build_record
from finops_provider.hooks._sql import fetch_dicts, identifier, rate_card_for

PLATFORM = "bigquery"
SOURCE = "bigquery"
TIB = Decimal(2**40)
EDITIONS = ("STANDARD", "ENTERPRISE", "ENTERPRISE_PLUS")


class BigQueryCostHook(BigQueryHook):
    """BigQuery job costs by label (truth from INFORMATION_SCHEMA.JOBS) and dry-run estimates.

    :param gcp_conn_id: the google provider connection (default ``google_cloud_default``).
    :param location: region of the jobs view (``US`` -> ``region-us``).
    :param edition: editions price for reservation jobs (``STANDARD``, ``ENTERPRISE``, ``ENTERPRISE_PLUS``).
    :param jobs_view: the JOBS view to read (default ``` `region-<location>`.INFORMATION_SCHEMA.JOBS ```);
        with ``connection=`` this is the SQL seam the tests use (a DuckDB copy of the view).
    :param connection: a DB-API connection to use instead of ``get_conn()``.
    :param client: a ``google.cloud.bigquery.Client`` for dry runs (default: ``get_client()``).
    """

    hook_name = "BigQuery costs (FinOps)"

    def __init__(
        self,
        *,
        gcp_conn_id: str = "google_cloud_default",
        location: str = "US",
        edition: str = "ENTERPRISE",
        jobs_view: str | None = None,
        rate_card: RateCard | None = None,
        connection: Any = None,
        client: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(gcp_conn_id=gcp_conn_id, location=location, **kwargs)
        ed = edition.upper().replace(" ", "_").replace("-", "_")
        if ed not in EDITIONS:
            raise ValueError(f"edition {edition!r}: use one of {', '.join(EDITIONS)}")
        self.edition = ed
        self.jobs_view = identifier(jobs_view or f"`region-{location.lower()}`.INFORMATION_SCHEMA.JOBS", "jobs_view")
        self.rate_card = rate_card or RateCard.load()
        self._dbapi = connection
        self._client = client

    def _rows(self, sql: str) -> list[dict[str, Any]]:
        if self._dbapi is None:
            self._dbapi = self.get_conn()
        return fetch_dicts(self._dbapi, sql)

    def job_cost(self, row: dict[str, Any], on: dt.date) -> tuple[Money, Decimal, str, str]:
        """(cost, quantity, unit, sku) of one JOBS row."""
        if row.get("reservation_id"):
            sku = f"{self.edition}_SLOT_HOUR"
            with localcontext(MONEY_CONTEXT):
                qty = to_decimal(row.get("total_slot_ms") or 0) / Decimal(3_600_000)
            unit = "slot-hour"
        else:
            sku = "ON_DEMAND_TIB"
            with localcontext(MONEY_CONTEXT):
                qty = to_decimal(row.get("total_bytes_billed") or 0) / TIB
            unit = "TiB"
        return self.rate_card.price(PLATFORM, sku, on=on).cost(qty), qty, unit, sku

    # ------------------------------------------------------------------ truth
    def collect(self, start: dt.datetime, end: dt.datetime) -> CollectResult:
        """Query-job cost of ``[start, end)`` per day, project, labels and pricing model."""
        start, end = utc(start), utc(end)
        rows = self._rows(
            "SELECT job_id, project_id, user_email, creation_time, statement_type, reservation_id, "
            "total_bytes_billed, total_bytes_processed, total_slot_ms, cache_hit, labels "
            f"FROM {self.jobs_view} "
            f"WHERE creation_time >= {sql_timestamp(start)} AND creation_time < {sql_timestamp(end)} "
            "AND job_type = 'QUERY' AND state = 'DONE' "
            "AND (statement_type IS NULL OR statement_type <> 'SCRIPT')"
        )
        res = CollectResult(source=SOURCE, window=(start, end), scope=f"bigquery:{self.jobs_view}", requests=1)
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        scanned = 0
        for r in rows:
            created = utc(r["creation_time"])
            day = created.replace(hour=0, minute=0, second=0, microsecond=0)
            cost, qty, unit, sku = self.job_cost(r, day.date())
            labels = mapping_of(r.get("labels"))
            key = (day, r["project_id"], json.dumps(labels, sort_keys=True), sku, cost.currency)
            g = groups.setdefault(key, {"cost": Money.zero(cost.currency), "qty": Decimal(0), "jobs": 0, "unit": unit,
                                        "labels": labels})  # fmt: skip
            g["cost"] = g["cost"] + cost
            with localcontext(MONEY_CONTEXT):
                g["qty"] += qty
            g["jobs"] += 1
            scanned += int(r.get("total_bytes_processed") or 0)
        for (day, project, label_text, sku, currency), g in groups.items():
            price = self.rate_card.price(PLATFORM, sku, on=day.date())
            amount = ledger_amount(g["cost"].amount)
            lh = hashlib.blake2b(label_text.encode(), digest_size=8).hexdigest()
            approx = " (approximation: slot-ms x slot-hour price)" if sku != "ON_DEMAND_TIB" else ""
            res.records.append(
                build_record(
                    billed_cost=amount,
                    effective_cost=amount,
                    list_cost=amount,
                    billing_currency=currency,
                    charge_period_start=day,
                    charge_period_end=day + dt.timedelta(days=1),
                    charge_category="Usage",
                    charge_description=f"{g['jobs']} query jobs, {sku}{approx}",
                    pricing_quantity=ledger_amount(g["qty"]),
                    pricing_unit=g["unit"],
                    list_unit_price=price.amount.amount,
                    provider_name="Google Cloud",
                    publisher_name="Google",
                    invoice_issuer_name="Google",
                    service_name="BigQuery",
                    service_category="Analytics",
                    sku_id=sku,
                    sub_account_id=str(project),
                    tags=dict(g["labels"]),
                    x_line_item_id=f"{project}|{sku}|{lh}",
                    x_source=SOURCE,
                    x_platform=PLATFORM,
                    x_cost_kind="billed",
                )
            )
        res.bytes_scanned = scanned
        self.log.info(
            "BigQuery jobs %s..%s: %d jobs -> %d records", start.date(), end.date(), len(rows), len(res.records)
        )
        return res

    # ------------------------------------------------------------------ estimates
    @property
    def bq_client(self) -> Any:
        if self._client is None:
            self._client = self.get_client(project_id=self.project_id, location=self.location)
        return self._client

    def dry_run(self, sql: str, *, on: dt.date | None = None) -> tuple[int, Money]:
        """Bytes a query would process and its on-demand price, without running it (a BigQuery dry run).

        Usable by a budget gate before the query runs. Editions (slot) pricing cannot be known in advance.
        """
        from google.cloud import bigquery

        job = self.bq_client.query(sql, job_config=bigquery.QueryJobConfig(dry_run=True, use_query_cache=False))
        processed = int(job.total_bytes_processed or 0)
        price = self.rate_card.price(PLATFORM, "ON_DEMAND_TIB", on=on or dt.date.today())
        with localcontext(MONEY_CONTEXT):
            return processed, price.cost(Decimal(processed) / TIB)

    def estimate_run(self, task: TaskTry, *, sql: str | None = None, bytes_processed: int | None = None) -> CostRecord:
        """A task's estimate: the dry-run bytes of its query (or given ``bytes_processed``) x on-demand price."""
        if bytes_processed is None:
            if sql is None:
                raise ValueError("estimate_run needs sql= or bytes_processed=")
            bytes_processed, _ = self.dry_run(sql, on=task.start.date())
        price = self.rate_card.price(PLATFORM, "ON_DEMAND_TIB", on=task.start.date())
        with localcontext(MONEY_CONTEXT):
            tib = Decimal(bytes_processed) / TIB
        return estimate_record(
            task,
            platform=PLATFORM,
            cost=price.cost(tib),
            quantity=tib,
            unit="TiB",
            sku="ON_DEMAND_TIB",
            description=f"dry run: {bytes_processed} bytes processed x on-demand price",
            price_text=price.describe(),
            service_name="BigQuery",
        )


def collect_bigquery(
    ledger: Ledger,
    config: FinOpsConfig,
    start: dt.datetime,
    end: dt.datetime,
    *,
    conn_id: str | None = None,
    location: str = "US",
    edition: str = "ENTERPRISE",
    hook: BigQueryCostHook | None = None,
    **_: Any,
) -> tuple[CollectResult, IngestResult]:
    """Collector ``bigquery``: query-job costs by label from INFORMATION_SCHEMA.JOBS into the ledger."""
    hook = hook or BigQueryCostHook(
        gcp_conn_id=conn_id or "google_cloud_default", location=location, edition=edition,
        rate_card=rate_card_for(config),
    )  # fmt: skip
    res = hook.collect(start, end)
    return res, ingest_collected(ledger, config, res)
