"""Databricks cost: billed DBUs from system tables (truth) and per-run estimates from the Jobs API.

Truth (:class:`DatabricksCostHook`, on the databricks provider's :class:`DatabricksSqlHook`): every
``system.billing.usage`` record of the window joined to ``system.billing.list_prices`` on ``sku_name``,
``cloud``, ``usage_unit`` and the price validity window (``usage_end_time`` in
``[price_start_time, price_end_time)``), as Databricks documents. ``record_type`` ORIGINAL / RETRACTION /
RESTATEMENT records are summed with their sign (a retraction is negative), so a corrected day nets to the
restated amount. Cost = DBUs x ``pricing.effective_list.default`` (BilledCost; ``pricing.default`` when absent)
and DBUs x ``pricing.default`` (ListCost). Usage without a list price is priced from the rate card
(``databricks/<SKU>``) and says so. Attribution: ``usage_metadata.job_id`` / ``job_run_id`` and
``custom_tags`` (the FinOps policy stamps ``airflow_dag_id`` / ``airflow_task_id`` / ``airflow_run_id`` / ``team``
/ ``cost_center`` there). Negotiated discounts are not in the system tables: override prices in the rate card.

The system tables are read from catalog ``system`` by default; ``catalog=`` names another one (a Delta-Sharing
copy, or the DuckDB copy the tests use, see ``hooks/_sql.py``).

Estimate (:meth:`DatabricksCostHook.estimate_run`): the Jobs run (``GET /api/2.2/jobs/runs/get`` through
:class:`DatabricksHook`) gives each task's cluster spec and duration; DBUs = (workers + driver) x DBU/hour of
the node type (rate card ``node_type_dbu_per_hour``; autoscaling clusters count ``max_workers``, an upper bound)
x hours, priced at ``JOBS_COMPUTE`` (``ALL_PURPOSE_COMPUTE`` on an existing cluster). Serverless tasks have no
cluster spec: their DBUs are taken from ``system.billing.usage`` when already present.

Network faults on the default path (``DatabricksSqlHook.get_conn()``: databricks-sql-connector, Thrift TCLIService
over HTTPS to the SQL warehouse) are handled in two layers, see :class:`DatabricksCostHook`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable
from decimal import Decimal, localcontext
from typing import Any

from airflow.providers.databricks.hooks.databricks_sql import DatabricksSqlHook

from finops_provider.collect import CollectResult, ingest_collected
from finops_provider.core.config import FinOpsConfig
from finops_provider.core.estimate import TaskTry
from finops_provider.core.focus import BadRow
from finops_provider.core.ledger import IngestResult, Ledger
from finops_provider.core.money import MONEY_CONTEXT, Money, to_decimal
from finops_provider.core.platforms import estimate_record, ledger_amount, mapping_of, utc
from finops_provider.core.pricing import PriceNotFoundError, RateCard
from finops_provider.core.records import CostRecord, build_record
from finops_provider.core.retry import RetryPolicy
from finops_provider.hooks._sql import Fault, SqlSession, identifier, rate_card_for

PLATFORM = "databricks"
SOURCE = "databricks"
_TIERS = ("STANDARD_", "PREMIUM_", "ENTERPRISE_")
_RATE_CARD_SKUS = ("JOBS_COMPUTE", "ALL_PURPOSE_COMPUTE", "SQL_CLASSIC", "SQL_PRO", "SQL_SERVERLESS")

#: The connector's own retry settings (``databricks.sql.connect`` keywords), used unless the connection extra or
#: the hook's keywords set them. The connector retries one HTTP request on the same session; its 429 / 503 wait is
#: max(Retry-After, ``_retry_delay_max``) and it gives up at once when that wait would pass
#: ``_retry_stop_after_attempts_duration`` (its bounds: delay_max >= 5 s, duration >= 1 s, attempts >= 1).
#: The socket timeout is longer than that duration, so a timed-out read is never sent again by the connector (a
#: re-sent FetchResults skips the rows of the lost answer; a re-sent ExecuteStatement runs the query twice).
CONNECTOR_RETRY: dict[str, float | int] = {
    "_socket_timeout": 120.0,
    "_retry_stop_after_attempts_count": 5,
    "_retry_stop_after_attempts_duration": 60.0,
    "_retry_delay_min": 1.0,
    "_retry_delay_max": 5.0,
}
#: SqlSession's statement retries: after the connector gave up, or on what it never retries
STATEMENT_RETRY = RetryPolicy(max_attempts=4, base_s=2.0, cap_s=30.0, budget_s=300.0)
_NEEDS = (
    "CAN USE on the SQL warehouse and USE CATALOG, USE SCHEMA and SELECT on system.billing.usage and "
    "system.billing.list_prices"
)


def classify_databricks_error(e: BaseException) -> Fault | None:
    """The :class:`Fault` of a databricks-sql-connector (Thrift backend) error, or ``None`` (raised unchanged).

    * ``CREDENTIALS``: a :class:`~databricks.sql.exc.RequestError` for an HTTP 401 (expired / revoked / wrong
      token) or 403 (the principal may not use the warehouse).
    * ``RETRY``: the other ``RequestError`` s: the connector gave up on 429 / 503 (``MaxRetryDurationError`` or
      out of attempts), a 5xx it does not retry (on ExecuteStatement), a GetOperationStatus that kept failing;
      urllib3 errors the connector passes through unwrapped (a response cut mid-body, a read timeout, a refused or
      reset connection); Thrift transport errors; and the ``DataError`` the connector raises when a FetchResults
      answer was lost and the request sent again (the warehouse moved past the lost rows).
    * ``None``: 400 / 404 / 501 (a wrong ``http_path`` or request), a TLS certificate the client does not trust,
      SQL errors of the statement, anything else.
    """
    import ssl

    import urllib3.exceptions
    from databricks.sql import exc
    from thrift.transport.TTransport import TTransportException

    if isinstance(e, exc.RequestError):
        if isinstance(e, exc.NonRecoverableNetworkError | exc.SessionAlreadyClosedError | exc.CursorAlreadyClosedError):
            return None
        cause = e.args[1] if len(e.args) > 1 else None
        if isinstance(e, exc.MaxRetryDurationError) or isinstance(cause, exc.MaxRetryDurationError):
            return Fault.RETRY  # its http-code is the previous response's: the 429 / 503 is not recorded
        code = e.context.get("http-code") if isinstance(e.context, dict) else None
        if code in (401, 403):
            return Fault.CREDENTIALS
        if code in (400, 404, 501):
            return None
        return Fault.RETRY
    if isinstance(e, urllib3.exceptions.MaxRetryError) and isinstance(e.reason, urllib3.exceptions.SSLError):
        return None
    if isinstance(e, ssl.SSLCertVerificationError):
        return None
    if isinstance(e, urllib3.exceptions.HTTPError | OSError | TTransportException):
        return Fault.RETRY
    if isinstance(e, exc.DataError) and str(e).startswith("fetch_results failed due to inconsistency"):
        return Fault.RETRY
    return None


def rate_card_sku(sku_name: str) -> str | None:
    """The rate-card SKU for a Databricks ``sku_name`` (``PREMIUM_JOBS_COMPUTE`` -> ``JOBS_COMPUTE``)."""
    s = sku_name.upper()
    for t in _TIERS:
        s = s.removeprefix(t)
    if "SERVERLESS" in s and "SQL" in s:
        return "SQL_SERVERLESS"
    if s.startswith("SQL_PRO") or s.startswith("DBSQL_PRO"):
        return "SQL_PRO"
    for k in _RATE_CARD_SKUS:
        if s.startswith(k):
            return k
    return None


def _price_of(pricing: Any, *path: str) -> Decimal | None:
    v: Any = pricing if isinstance(pricing, dict) else (json.loads(pricing) if isinstance(pricing, str) else None)
    for p in path:
        if not isinstance(v, dict) or v.get(p) is None:
            return None
        v = v[p]
    return to_decimal(v, field_name=".".join(path))


class DatabricksCostHook(DatabricksSqlHook):
    """Databricks billed DBUs per job run and custom tags, and run-time estimates.

    Faults on the default path (``get_conn()``, Thrift over HTTPS) are retried in two layers:

    1. the connector, per HTTP request on the same session (settings :data:`CONNECTOR_RETRY`, overridable in the
       connection extra or as keywords): 429 / 503 on any call, honouring ``Retry-After`` but waiting at least
       ``_retry_delay_max``; other 5xx on every call but ExecuteStatement; a connection refused or reset before the
       answer; GetOperationStatus transport errors. At most ``_retry_stop_after_attempts_count`` attempts within
       ``_retry_stop_after_attempts_duration`` seconds per request; a wait that would pass it is not slept. Each
       attempt waits at most ``_socket_timeout`` for the warehouse.
    2. :class:`~finops_provider.hooks._sql.SqlSession`, per statement (``retry_policy``, default
       :data:`STATEMENT_RETRY`): whatever the connector gave up on or does not retry (see
       :func:`classify_databricks_error`): the connection is closed, a new session is opened and the read-only
       statement runs again from the start, so a half-read result never reaches the ledger. Its waits are its own
       backoff: the connector discards the server's ``Retry-After`` when it gives up.

    Budget: the connector gives up on a request after at most ``_retry_stop_after_attempts_duration`` of retrying
    plus one ``_socket_timeout`` (60 + 120 s by default; GetOperationStatus, which its Thrift loop retries around
    urllib3's, after at most twice that duration plus one timeout); the statement is not tried again once
    ``retry_policy.budget_s`` (300 s) has passed since its first attempt, nor more than ``retry_policy.max_attempts``
    (4) times. Refused credentials (401 / 403) are retried by neither layer:
    :class:`~finops_provider.collect.CredentialsError` names the connection, never the token.

    :param databricks_conn_id: the databricks provider connection (default ``databricks_default``).
    :param http_path: SQL warehouse HTTP path (or set it in the connection extra), as for DatabricksSqlHook.
    :param catalog_name: catalog holding ``billing.usage`` / ``billing.list_prices`` (default ``system``).
    :param connection: a DB-API connection to use instead of ``get_conn()`` (the SQL seam; it is reused, not
        reopened, after a fault).
    :param retry_policy: the statement retries (layer 2).
    :param sleep: the wait between statement attempts (tests inject one).
    :param kwargs: passed to :class:`DatabricksSqlHook`; keywords it does not know go to ``databricks.sql.connect``
        (for example the connector's ``_socket_timeout`` / ``_retry_*`` settings).
    """

    hook_name = "Databricks costs (FinOps)"

    def __init__(
        self,
        *,
        databricks_conn_id: str = "databricks_default",
        catalog_name: str = "system",
        rate_card: RateCard | None = None,
        connection: Any = None,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        **kwargs: Any,
    ) -> None:
        super().__init__(databricks_conn_id=databricks_conn_id, **kwargs)
        self.catalog_name = identifier(catalog_name, "catalog_name")
        self.rate_card = rate_card or RateCard.load()
        self.sql_session = SqlSession(
            self._open_connection,
            classify=classify_databricks_error,
            what=f"Databricks {self.catalog_name}.billing query",
            conn_id=databricks_conn_id,
            needs=_NEEDS,
            connection=connection,
            policy=retry_policy or STATEMENT_RETRY,
            sleep=sleep,
        )

    def _open_connection(self) -> Any:
        """A new connector session with the bounded connector retries of :data:`CONNECTOR_RETRY`."""
        extra = self.databricks_conn.extra_dejson
        for key, value in CONNECTOR_RETRY.items():
            if key not in extra:
                self.additional_params.setdefault(key, value)
        if self._sql_conn is not None and not getattr(self._sql_conn, "open", False):
            self._sql_conn = None  # closed by the session after a fault: get_conn() would hand it back
        return self.get_conn()

    def _rows(self, sql: str) -> list[dict[str, Any]]:
        return self.sql_session.rows(sql)

    def usage_rows(self, start: dt.date, end: dt.date, *, job_run_id: str | None = None) -> list[dict[str, Any]]:
        """``system.billing.usage`` x ``list_prices`` rows with usage_date in ``[start, end)``."""
        c = self.catalog_name
        extra = ""
        if job_run_id is not None:
            if not (str(job_run_id).isascii() and str(job_run_id).isdigit()):  # ASCII: "１２" is "digits" too
                raise ValueError(f"job_run_id must be digits, got {job_run_id!r}")
            extra = f" AND u.usage_metadata.job_run_id = '{job_run_id}'"
        return self._rows(
            "SELECT u.record_id, u.workspace_id, u.usage_date, u.sku_name, u.cloud, u.usage_unit, u.record_type, "
            "u.usage_quantity, u.usage_metadata.job_id AS job_id, u.usage_metadata.job_run_id AS job_run_id, "
            "u.usage_metadata.cluster_id AS cluster_id, u.usage_metadata.warehouse_id AS warehouse_id, "
            "u.billing_origin_product, u.custom_tags, lp.currency_code, lp.pricing "
            f"FROM {c}.billing.usage u "
            f"LEFT JOIN {c}.billing.list_prices lp "
            "ON u.sku_name = lp.sku_name AND u.cloud = lp.cloud AND u.usage_unit = lp.usage_unit "
            "AND u.usage_end_time >= lp.price_start_time "
            "AND (lp.price_end_time IS NULL OR u.usage_end_time < lp.price_end_time) "
            f"WHERE u.usage_date >= DATE '{start.isoformat()}' AND u.usage_date < DATE '{end.isoformat()}'{extra}"
        )

    # ------------------------------------------------------------------ truth
    def collect(self, start: dt.datetime, end: dt.datetime) -> CollectResult:
        """Billed DBU cost of usage dates in ``[start, end)``: one record per day, workspace, SKU, job run and tags.

        :return: :class:`CollectResult`; usage with no list price and no rate-card SKU is a quarantined bad row.
        """
        start, end = utc(start), utc(end)
        sent = self.sql_session.attempts
        rows = self.usage_rows(start.date(), end.date())
        res = CollectResult(
            source=SOURCE,
            window=(start, end),
            scope=f"databricks:{self.catalog_name}",
            requests=self.sql_session.attempts - sent,
        )
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        for i, r in enumerate(rows):
            day = r["usage_date"]
            day = day if isinstance(day, dt.date) else dt.date.fromisoformat(str(day)[:10])
            try:
                field = "usage_quantity"
                qty = to_decimal(r["usage_quantity"], field_name="usage_quantity")
                field = "pricing"
                billed_price = _price_of(r.get("pricing"), "effective_list", "default") or _price_of(
                    r.get("pricing"), "default"
                )
                list_price = _price_of(r.get("pricing"), "default")
            except (ValueError, ArithmeticError) as e:  # quarantined; the other usage records land
                raw = {k: str(r.get(k)) for k in ("record_id", "usage_date", "sku_name", "usage_quantity", "pricing")}
                res.bad_rows.append(BadRow(i + 1, field, f"usage record {r.get('record_id')}: {e}", raw))
                continue
            if str(r.get("record_type") or "").upper() == "RETRACTION" and qty > 0:
                qty = -qty  # a retraction cancels usage: it is negative by definition
            currency = r.get("currency_code")
            price_source = "system.billing.list_prices"
            if billed_price is None:
                sku = rate_card_sku(str(r["sku_name"]))
                try:
                    if sku is None:
                        raise PriceNotFoundError(f"no rate-card SKU for {r['sku_name']}")
                    p = self.rate_card.price(PLATFORM, sku, on=day)
                except PriceNotFoundError as e:
                    res.bad_rows.append(
                        BadRow(
                            row_number=i + 1,
                            field="sku_name",
                            reason=f"{e}; add the SKU under rate_cards.overrides",
                            raw={"sku_name": r["sku_name"], "usage_date": str(day), "record_id": r.get("record_id")},
                        )
                    )
                    continue
                billed_price = list_price = p.amount.amount
                currency, price_source = p.amount.currency, f"rate card {p.describe()}"
            tags = mapping_of(r.get("custom_tags"))
            tag_text = json.dumps(tags, sort_keys=True)
            key = (day, r["workspace_id"], r["sku_name"], r.get("job_id"), r.get("job_run_id"), tag_text, currency)
            g = groups.setdefault(
                key,
                {"qty": Decimal(0), "billed": Decimal(0), "list": Decimal(0), "records": 0, "tags": tags, "row": r,
                 "price_source": price_source, "unit_price": list_price},
            )  # fmt: skip
            with localcontext(MONEY_CONTEXT):
                g["qty"] += qty
                g["billed"] += qty * billed_price
                g["list"] += qty * (list_price if list_price is not None else billed_price)
            g["records"] += 1
        for (day, ws, sku_name, job_id, job_run_id, tag_text, currency), g in groups.items():
            res.records.append(self._record(day, ws, sku_name, job_id, job_run_id, tag_text, str(currency or "USD"), g))
        self.log.info(
            "Databricks usage %s..%s: %d usage records -> %d cost records, %d without price",
            start.date(),
            end.date(),
            len(rows),
            len(res.records),
            len(res.bad_rows),
        )
        return res

    def _record(
        self,
        day: dt.date,
        workspace_id: Any,
        sku_name: str,
        job_id: Any,
        job_run_id: Any,
        tag_text: str,
        currency: str,
        g: dict[str, Any],
    ) -> CostRecord:
        tags = dict(g["tags"])
        if job_id:
            tags.setdefault("databricks_job_id", str(job_id))
        if job_run_id:
            tags.setdefault("databricks_job_run_id", str(job_run_id))
        r = g["row"]
        start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        thash = hashlib.blake2b(tag_text.encode(), digest_size=8).hexdigest()
        return build_record(
            billed_cost=ledger_amount(g["billed"]),
            effective_cost=ledger_amount(g["billed"]),
            list_cost=ledger_amount(g["list"]),
            billing_currency=currency,
            charge_period_start=start,
            charge_period_end=start + dt.timedelta(days=1),
            charge_category="Usage",
            charge_description=f"{g['records']} usage records of {sku_name}; priced by {g['price_source']}"[:4000],
            pricing_quantity=ledger_amount(g["qty"]),
            pricing_unit=str(r.get("usage_unit") or "DBU"),
            consumed_quantity=ledger_amount(g["qty"]),
            consumed_unit=str(r.get("usage_unit") or "DBU"),
            list_unit_price=g["unit_price"],
            provider_name="Databricks",
            publisher_name="Databricks, Inc.",
            invoice_issuer_name="Databricks, Inc.",
            service_name=str(r.get("billing_origin_product") or "Databricks"),
            service_category="Compute",
            sku_id=sku_name,
            sub_account_id=str(workspace_id),
            resource_id=str(r.get("cluster_id") or r.get("warehouse_id") or "") or None,
            tags=tags,
            x_line_item_id=f"{workspace_id}|{sku_name}|{job_id}|{job_run_id}|{thash}|{currency}",
            x_source=SOURCE,
            x_platform=PLATFORM,
            x_cost_kind="billed",
        )

    # ------------------------------------------------------------------ estimate
    def estimate_run(
        self,
        task: TaskTry,
        *,
        run_id: int,
        dbu_per_hour: dict[str, Any] | None = None,
        include_serverless: bool = True,
    ) -> CostRecord:
        """Estimate a Databricks job run (the run a task submitted) from its cluster specs and task durations.

        :param run_id: the Jobs run id (``DatabricksSubmitRunOperator`` / ``DatabricksRunNowOperator`` XCom
            ``run_id``).
        :param dbu_per_hour: node type -> DBU/hour, overriding the rate card's ``node_type_dbu_per_hour``.
        :param include_serverless: add DBUs already in ``system.billing.usage`` for serverless tasks of the run.
        :return: an estimate record (``x_cost_kind="estimate"``).
        """
        from airflow.providers.databricks.hooks.databricks import DatabricksHook

        run = DatabricksHook(databricks_conn_id=self.databricks_conn_id).get_run(int(run_id))
        rates = {**self.rate_card.rate(PLATFORM, "node_type_dbu_per_hour"), **(dbu_per_hour or {})}
        clusters = {c.get("job_cluster_key"): c.get("new_cluster") or {} for c in run.get("job_clusters") or []}
        tasks = run.get("tasks") or [run]
        on = task.start.date()
        total: Money | None = None
        dbus_total = Decimal(0)
        parts: list[str] = []
        serverless = 0
        for t in tasks:
            spec = (
                t.get("new_cluster")
                or clusters.get(t.get("job_cluster_key"))
                or ((run.get("cluster_spec") or {}).get("new_cluster") if t is run else None)
            )
            sku = "JOBS_COMPUTE"
            if not spec and t.get("existing_cluster_id"):
                spec, sku = (t.get("cluster_instance") or {}).get("spec") or {}, "ALL_PURPOSE_COMPUTE"
            if not spec:
                serverless += 1
                continue
            node = spec.get("node_type_id")
            driver = spec.get("driver_node_type_id") or node
            auto = spec.get("autoscale") or {}
            workers = int(auto.get("max_workers", spec.get("num_workers", 0)) or 0)
            if node not in rates or driver not in rates:
                raise PriceNotFoundError(
                    f"no DBU/hour for node type {node if node not in rates else driver}; pass dbu_per_hour="
                )
            ms = int(t.get("end_time") or 0) - int(t.get("start_time") or 0)
            with localcontext(MONEY_CONTEXT):
                hours = Decimal(max(ms, 0)) / Decimal(3_600_000)
                dbus = (to_decimal(rates[node]) * workers + to_decimal(rates[driver])) * hours
            price = self.rate_card.price(PLATFORM, sku, on=on)
            c = price.cost(dbus)
            total = c if total is None else total + c
            dbus_total += dbus
            parts.append(f"{t.get('task_key', 'run')}: ({workers} x {node} + {driver}) x {hours} h at {sku}")
        if serverless and include_serverless:
            for r in self.usage_rows(on - dt.timedelta(days=1), on + dt.timedelta(days=2), job_run_id=str(run_id)):
                if "SERVERLESS" not in str(r["sku_name"]).upper():
                    continue
                p = _price_of(r.get("pricing"), "effective_list", "default") or _price_of(r.get("pricing"), "default")
                if p is None:
                    continue
                q = to_decimal(r["usage_quantity"])
                c = Money(q * p, str(r.get("currency_code") or "USD"))
                total = c if total is None else total + c
                dbus_total += q
            parts.append(f"{serverless} serverless task(s) from system.billing.usage")
        if total is None:
            total = self.rate_card.price(PLATFORM, "JOBS_COMPUTE", on=on).cost(0)
        return estimate_record(
            task,
            platform=PLATFORM,
            cost=total,
            quantity=dbus_total,
            unit="DBU",
            sku="JOBS_COMPUTE",
            description="; ".join(parts) or "no cluster",
            tags={"databricks_job_run_id": str(run_id)},
            service_name="Jobs Compute",
        )


def collect_databricks(
    ledger: Ledger,
    config: FinOpsConfig,
    start: dt.datetime,
    end: dt.datetime,
    *,
    conn_id: str | None = None,
    http_path: str | None = None,
    catalog_name: str = "system",
    hook: DatabricksCostHook | None = None,
    **_: Any,
) -> tuple[CollectResult, IngestResult]:
    """Collector ``databricks``: billed DBU cost from the system tables for ``[start, end)`` into the ledger."""
    if hook is None:
        kw: dict[str, Any] = {"http_path": http_path} if http_path else {}
        hook = DatabricksCostHook(
            databricks_conn_id=conn_id or "databricks_default",
            catalog_name=catalog_name,
            rate_card=rate_card_for(config),
            **kw,
        )
    res = hook.collect(start, end)
    return res, ingest_collected(ledger, config, res)
