"""Google Cloud Billing export hook: one grouped, parameterized BigQuery query per window -> FOCUS records.

Built on the google provider's :class:`BigQueryHook`: credentials, impersonation and the connection are the
provider's (connection type ``google_cloud_platform``). The query reads the Cloud Billing export table
(standard ``gcp_billing_export_v1_<ACCOUNT>`` or detailed ``gcp_billing_export_resource_v1_<ACCOUNT>``) and
lets BigQuery do the GROUP BY; only the aggregates cross into Python.

Cost columns (FOCUS):

* ``BilledCost`` = Σ ``cost`` (what the invoice charges before credits),
* ``EffectiveCost`` = Σ ``cost`` + Σ ``credits.amount`` (credits are negative: the net cost),
* ``ListCost`` = Σ ``cost_at_list`` when the export has that column, else empty.

Every float of the export is cast to ``NUMERIC`` (9 decimals) row by row before it is summed, so the sums are
exact decimals; the Python side only adds ``cost + credits`` with :func:`~finops_provider.core.money.exact_sum`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from typing import TYPE_CHECKING, Any

from finops_provider.collect import CollectResult, CredentialsError, ingest_collected
from finops_provider.core.config import AttributionConfig, FinOpsConfig
from finops_provider.core.focus import BadRow
from finops_provider.core.money import exact_sum
from finops_provider.core.records import CostRecord, RecordError, build_record
from finops_provider.core.retry import RetryPolicy, call_with_retry, retry_after_seconds
from finops_provider.hooks._bigquery import BoundedBigQueryHook
from finops_provider.hooks._window import bounded_scope, day_window

if TYPE_CHECKING:
    from finops_provider.core.ledger import IngestResult, Ledger

#: FOCUS ProviderName / PublisherName / InvoiceIssuerName of Google Cloud charges
PROVIDER = "Google Cloud"
SOURCE = "gcp-billing"
#: ownership dimensions: record attribute -> AttributionConfig field whose keys are looked up in the labels
OWNER_DIMENSIONS: dict[str, str] = {
    "x_team": "team",
    "x_cost_center": "cost_center",
    "x_dag_id": "dag_id",
    "x_task_id": "task_id",
}
#: export ``cost_type`` -> FOCUS ChargeCategory
CHARGE_CATEGORIES = {"regular": "Usage", "tax": "Tax", "adjustment": "Adjustment", "rounding_error": "Adjustment"}
#: columns that may be partition filters (BigQuery cannot take identifiers as query parameters)
PARTITION_COLUMNS = ("_PARTITIONTIME", "export_time")
#: export columns the billing query reads (``resource`` too with ``include_resource``): a table without one of
#: them is not a billing export, or its schema changed
REQUIRED_COLUMNS = (
    "billing_account_id", "service", "sku", "usage_start_time", "project", "labels", "location", "cost", "currency",
    "usage", "credits", "invoice", "cost_type",
)  # fmt: skip
#: the other documented columns of the standard and detailed exports; any further column is logged once (ignored)
OPTIONAL_COLUMNS = frozenset(
    {
        "usage_end_time", "system_labels", "resource", "tags", "transaction_type", "seller_name", "export_time",
        "currency_conversion_rate", "adjustment_info", "price", "cost_at_list", "cost_at_effective_price",
        "cost_at_list_consumption_model", "consumption_model", "subscription", "_PARTITIONTIME", "_PARTITIONDATE",
    }
)  # fmt: skip

_PROJECT_RE = re.compile(r"^(?:[a-z][a-z0-9.-]{0,61}[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,1023}$")
_RETRYABLE_REASONS = frozenset({"rateLimitExceeded", "backendError", "internalError", "jobBackendError"})


class BillingExportConfigError(ValueError):
    """The export table reference or an option is invalid; the message names it and the fix."""


def check_identifier(kind: str, value: str) -> str:
    """Validate a project / dataset / table name that must be written into the SQL text.

    :raises BillingExportConfigError: for anything but a plain BigQuery name (no quotes, dots or spaces).
    """
    pattern = _PROJECT_RE if kind == "project" else _NAME_RE
    if not isinstance(value, str) or not pattern.fullmatch(value):
        hint = (
            "a project id such as my-billing-project"
            if kind == "project"
            else "letters, digits and underscores, for example gcp_billing_export_v1_01A2B3_C4D5E6_F7A8B9"
        )
        raise BillingExportConfigError(f"{kind} name {str(value)[:80]!r} is not valid; use {hint}")
    return value


@dataclass(frozen=True)
class QueryParam:
    """A BigQuery query parameter, SDK-free (scalar, or ARRAY of ``type_``)."""

    name: str
    type_: str
    value: Any
    array: bool = False


def _label_pick(source: str, param: str) -> str:
    # first configured key present (and non-empty) in this label array, in the configured order
    return (
        f"(SELECT AS STRUCT l.key AS key, l.value AS value FROM UNNEST({source}) AS l "
        f"JOIN UNNEST(@{param}) AS k WITH OFFSET AS pos ON l.key = k "
        f"WHERE l.value <> '' ORDER BY pos LIMIT 1)"
    )


def build_query(
    table_ref: str,
    *,
    usage_window: tuple[dt.datetime, dt.datetime],
    attribution: AttributionConfig,
    partition_column: str | None = "_PARTITIONTIME",
    late_days: int = 3,
    list_cost: bool = False,
    include_resource: bool = False,
    label_key: str | None = None,
    label_values: Sequence[str] | None = None,
) -> tuple[str, list[QueryParam]]:
    """The grouped billing query and its parameters.

    ``table_ref`` must already be validated (``project.dataset.table``). Dates, label keys and label
    values only ever travel as query parameters.

    :param late_days: the partition filter reaches this many days past the window end, so rows exported
        late for the window's days are read.
    """
    if partition_column is not None and partition_column not in PARTITION_COLUMNS:
        raise BillingExportConfigError(
            f"partition_column {partition_column!r} is not supported; use one of {PARTITION_COLUMNS} or None"
        )
    u_start, u_end = usage_window
    params = [
        QueryParam("usage_start", "TIMESTAMP", u_start),
        QueryParam("usage_end", "TIMESTAMP", u_end),
    ]
    where = ["usage_start_time >= @usage_start", "usage_start_time < @usage_end"]
    if partition_column:
        # an export partition holds what was exported that day: never before the usage, maybe days after
        params += [
            QueryParam("partition_start", "TIMESTAMP", u_start - dt.timedelta(days=1)),
            QueryParam("partition_end", "TIMESTAMP", u_end + dt.timedelta(days=max(0, late_days) + 1)),
        ]
        where = [f"{partition_column} >= @partition_start", f"{partition_column} < @partition_end", *where]
    if label_values:
        if not label_key:
            raise BillingExportConfigError("label_values needs label_key (the label whose values to keep)")
        params += [
            QueryParam("filter_key", "STRING", label_key),
            QueryParam("filter_values", "STRING", list(label_values), array=True),
        ]
        where.append(
            "(EXISTS (SELECT 1 FROM UNNEST(labels) AS fl WHERE fl.key = @filter_key "
            "AND fl.value IN UNNEST(@filter_values)) OR EXISTS (SELECT 1 FROM UNNEST(project.labels) AS fl "
            "WHERE fl.key = @filter_key AND fl.value IN UNNEST(@filter_values)))"
        )
    owner_cols: list[str] = []
    owner_keys: list[str] = []
    for attr, field_name in OWNER_DIMENSIONS.items():
        dim = attr.removeprefix("x_")
        param = f"{dim}_keys"
        params.append(QueryParam(param, "STRING", list(getattr(attribution, field_name)), array=True))
        owner_cols.append(
            f"    COALESCE({_label_pick('labels', param)},\n"
            f"             {_label_pick('project.labels', param)}) AS {dim}"
        )
        owner_keys += [f"{dim}.key AS {dim}_key", f"{dim}.value AS {dim}_value"]
    resource_cols = (
        "    resource.global_name AS resource_id,\n    resource.name AS resource_name,\n" if include_resource else ""
    )
    list_expr = "CAST(cost_at_list AS NUMERIC)" if list_cost else "CAST(NULL AS NUMERIC)"
    dims = [
        "usage_day",
        "billing_account_id",
        "invoice_month",
        "cost_type",
        "service_id",
        "service_description",
        "sku_id",
        "sku_description",
        "project_id",
        "region",
        "currency",
        *(["resource_id", "resource_name"] if include_resource else []),
    ]
    group_aliases = dims + [k.split(" AS ")[1] for k in owner_keys]
    owner_sql = ",\n".join(owner_cols)
    where_sql = "\n    AND ".join(where)
    sql = f"""WITH src AS (
  SELECT
    DATE(usage_start_time) AS usage_day,
    billing_account_id,
    invoice.month AS invoice_month,
    cost_type,
    service.id AS service_id,
    service.description AS service_description,
    sku.id AS sku_id,
    sku.description AS sku_description,
    project.id AS project_id,
    location.region AS region,
    currency,
{resource_cols}    CAST(cost AS NUMERIC) AS cost,
    IFNULL((SELECT SUM(CAST(c.amount AS NUMERIC)) FROM UNNEST(credits) AS c), 0) AS credits,
    {list_expr} AS cost_at_list,
    CAST(usage.amount_in_pricing_units AS NUMERIC) AS pricing_quantity,
    usage.pricing_unit AS pricing_unit,
{owner_sql}
  FROM `{table_ref}`
  WHERE {where_sql}
)
SELECT
  {", ".join(dims)},
  {", ".join(owner_keys)},
  SUM(cost) AS cost,
  SUM(credits) AS credits,
  SUM(cost_at_list) AS cost_at_list,
  SUM(pricing_quantity) AS pricing_quantity,
  ANY_VALUE(pricing_unit) AS pricing_unit,
  COUNT(*) AS export_rows
FROM src
GROUP BY {", ".join(group_aliases)}"""
    return sql, params


def _is_transient(exc: BaseException) -> bool:
    """429, 5xx, BigQuery's 403 rateLimitExceeded and dropped connections: worth another attempt."""
    from google.api_core import exceptions as gexc

    if isinstance(
        exc,
        (
            gexc.TooManyRequests,
            gexc.InternalServerError,
            gexc.BadGateway,
            gexc.ServiceUnavailable,
            gexc.GatewayTimeout,
        ),
    ):
        return True
    if isinstance(exc, gexc.GoogleAPICallError):
        reasons = {e.get("reason") for e in (exc.errors or []) if isinstance(e, dict)}
        return bool(reasons & _RETRYABLE_REASONS)
    import requests

    # TimeoutError: job.result() gave up waiting (its requests timed out); reading again is safe
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, TimeoutError))


class _JobFailedRetryableError(RuntimeError):
    """The query job itself failed for a transient reason (backendError, rateLimitExceeded): run it again."""


class _TruncatedResultError(RuntimeError):
    """Fewer result rows arrived than the job reported (a page was cut short): read the results again."""


def _wait_hint(exc: BaseException) -> float | None:
    """The server's ``Retry-After`` (seconds), when its answer had one."""
    return retry_after_seconds(getattr(getattr(exc, "response", None), "headers", None))


def _refusal(exc: BaseException) -> str | None:
    """Why Google refused the connection's credentials (401, 403 accessDenied, a failed token exchange), else None."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as aexc

    if isinstance(exc, aexc.GoogleAuthError) and not isinstance(exc, aexc.TransportError):
        return f"{type(exc).__name__}: {str(exc.args[0] if exc.args else exc)[:200]}"
    if isinstance(exc, (gexc.Unauthorized, gexc.Forbidden)):
        reasons = sorted({str(e.get("reason")) for e in (exc.errors or []) if isinstance(e, dict) and e.get("reason")})
        if isinstance(exc, gexc.Forbidden) and not {"accessDenied", "forbidden", "unauthorized"} & set(reasons):
            return None  # billingNotEnabled, quotaExceeded...: not the credentials
        return " ".join([f"HTTP {exc.code}", *reasons])
    return None


class GcpBillingExportHook(BoundedBigQueryHook):
    """Reads the Cloud Billing export in BigQuery: one grouped query per window, pushed-down GROUP BY.

    Group keys: usage day (UTC), billing account, invoice month, cost type, service, SKU, project, region,
    currency and the ownership labels (resource labels first, then project labels) chosen by the config's
    attribution keys for team / cost center / DAG / task. Records are keyed by those group keys
    (``x_line_item_id``), so re-pulling a window restates rows instead of adding them.

    Connection (``google_cloud_platform``): the provider's usual fields (key file / keyfile JSON /
    ADC / impersonation, ``project``). Extras read here: ``billing_dataset``, ``billing_table`` and
    ``billing_project`` (defaults for the arguments below) and ``api_endpoint`` (send BigQuery API calls to
    another endpoint, for example a Private Service Connect address; tests use it for a local server).

    :param gcp_conn_id: the google provider connection (default ``google_cloud_default``).
    :param dataset: dataset holding the export (``billing_dataset`` extra when not given).
    :param table: export table, ``gcp_billing_export_v1_<ACCOUNT>`` or ``gcp_billing_export_resource_v1_<ACCOUNT>``
        (``billing_table`` extra when not given).
    :param export_project_id: project of the dataset (default: the connection's project); queries run and are
        billed in the connection's project.
    :param location: BigQuery location of the dataset (``US``, ``EU``, a region); default the connection's.
    :param repull_days: every collection also re-reads this many days before ``start`` and scans export
        partitions up to this many days after ``end``, so late and restated export rows replace old ones.
    :param partition_column: ``_PARTITIONTIME`` (the export tables' partitioning), ``export_time`` or ``None``.
    :param list_cost: read ``cost_at_list`` into ListCost; ``None`` checks the table schema once (a free
        ``tables.get``).
    :param include_resource: also group by ``resource.global_name`` / ``resource.name`` (detailed export only).
    :param maximum_bytes_billed: fail the query instead of billing more than this many bytes.
    :param page_size: rows per ``getQueryResults`` page.
    :param retry_policy: backoff for 429 / 5xx / rateLimitExceeded / timeouts (the SDK's own retries are off);
        a ``Retry-After`` from the server is honoured.
    :param sleep: the wait function between attempts (tests inject one).
    :param timeout: seconds each BigQuery HTTP request may take before it counts as failed (and is retried); the
        client would otherwise wait forever on a stalled connection.
    """

    conn_name_attr = "gcp_conn_id"
    default_conn_name = "google_cloud_default"
    conn_type = "google_cloud_platform"
    hook_name = "Google Cloud Billing export (FinOps)"

    def __init__(
        self,
        *,
        gcp_conn_id: str = default_conn_name,
        dataset: str | None = None,
        table: str | None = None,
        export_project_id: str | None = None,
        location: str | None = None,
        repull_days: int = 3,
        partition_column: str | None = "_PARTITIONTIME",
        list_cost: bool | None = None,
        include_resource: bool = False,
        maximum_bytes_billed: int | None = None,
        page_size: int = 10_000,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = 120.0,
        impersonation_chain: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        loc_kw: dict[str, Any] = {"location": location} if location is not None else {}
        super().__init__(
            gcp_conn_id=gcp_conn_id,
            use_legacy_sql=False,
            impersonation_chain=impersonation_chain,
            **loc_kw,
            **kwargs,
        )
        if repull_days < 0:
            raise BillingExportConfigError(f"repull_days must be >= 0, got {repull_days}")
        if partition_column is not None and partition_column not in PARTITION_COLUMNS:
            raise BillingExportConfigError(
                f"partition_column {partition_column!r} is not supported; use one of {PARTITION_COLUMNS} or None"
            )
        self.dataset = dataset or self._get_field("billing_dataset", None)
        self.table = table or self._get_field("billing_table", None)
        self.export_project_id = export_project_id or self._get_field("billing_project", None)
        self.repull_days = repull_days
        self.partition_column = partition_column
        self.list_cost = list_cost
        self.include_resource = include_resource
        self.maximum_bytes_billed = maximum_bytes_billed
        self.page_size = page_size
        self.retry_policy = retry_policy or RetryPolicy()
        self.sleep = sleep
        self.timeout = timeout
        self.requests_made = 0

    # ------------------------------------------------------------------ client
    @cached_property
    def client(self) -> Any:
        """The ``google.cloud.bigquery.Client`` (bounded, counted: :meth:`BoundedBigQueryHook.bounded_client`)."""
        return self.bounded_client()

    def table_ref(self) -> str:
        """``project.dataset.table`` of the export, each part validated (they are written into the SQL)."""
        if not self.dataset or not self.table:
            raise BillingExportConfigError(
                "no export table: pass dataset= and table= or set the connection extras billing_dataset and "
                "billing_table (for example gcp_billing_export_v1_01A2B3_C4D5E6_F7A8B9)"
            )
        project = self.export_project_id or self.project_id
        return ".".join(
            (
                check_identifier("project", str(project)),
                check_identifier("dataset", self.dataset),
                check_identifier("table", self.table),
            )
        )

    def _retry(self, fn: Callable[[], Any], what: str, retryable: Callable[[BaseException], bool]) -> Any:
        try:
            return call_with_retry(
                fn, what=what, is_retryable=retryable, policy=self.retry_policy, wait_hint=_wait_hint, sleep=self.sleep
            )
        except Exception as e:
            refusal = None if isinstance(e, CredentialsError) else _refusal(e)
            if refusal is None:
                raise
            raise CredentialsError(
                f"{what}: the credentials of connection {self.gcp_conn_id!r} were refused ({refusal}); renew the "
                "connection's service-account key (or its impersonation / workload identity) if it expired or was "
                "revoked, and grant the service account roles/bigquery.jobUser on the project and "
                "roles/bigquery.dataViewer on the billing export dataset"
            ) from e

    def has_list_cost(self) -> bool:
        """Whether the export table has ``cost_at_list`` (one free ``tables.get``, cached on the hook).

        The same call checks the schema: a missing required column raises :class:`BillingExportConfigError`
        naming it, columns the collector does not know are logged once and ignored.
        """
        if self.list_cost is None:
            table = self._retry(
                lambda: self.client.get_table(self.table_ref(), retry=None), "BigQuery tables.get", _is_transient
            )
            names = [f.name for f in table.schema]
            self.check_schema(names)
            self.list_cost = "cost_at_list" in names
        return bool(self.list_cost)

    def check_schema(self, names: Sequence[str]) -> None:
        """Required export columns present (else :class:`BillingExportConfigError`); unknown ones warned about."""
        have = set(names)
        required = (*REQUIRED_COLUMNS, "resource") if self.include_resource else REQUIRED_COLUMNS
        missing = [c for c in required if c not in have]
        if missing:
            raise BillingExportConfigError(
                f"export table {self.table_ref()} has no column {', '.join(missing)}: it is not a Cloud Billing "
                "export (standard, or detailed with include_resource) or its schema changed; point dataset= / "
                "table= at the export table"
            )
        unknown = [n for n in names if n not in REQUIRED_COLUMNS and n not in OPTIONAL_COLUMNS]
        if unknown:
            self.log.warning(
                "export table %s has %d column(s) the collector does not read, ignored: %s",
                self.table_ref(),
                len(unknown),
                ", ".join(unknown[:20]),
            )

    # ------------------------------------------------------------------- query
    def run_query(self, sql: str, params: Sequence[QueryParam]) -> tuple[list[Any], Any]:
        """Run one parameterized query; return (rows, finished job).

        ``jobs.insert`` and the result reads are retried separately (re-reading a finished job's pages
        costs no bytes); a job that failed for a transient reason is submitted again.
        """
        from google.cloud import bigquery

        qparams: list[Any] = [
            bigquery.ArrayQueryParameter(p.name, p.type_, p.value)
            if p.array
            else bigquery.ScalarQueryParameter(p.name, p.type_, p.value)
            for p in params
        ]
        config = bigquery.QueryJobConfig(
            query_parameters=qparams,
            use_legacy_sql=False,
            maximum_bytes_billed=self.maximum_bytes_billed,
            labels={"finops_collector": "gcp-billing"},
        )

        def insert() -> Any:
            return self.client.query(
                sql, job_config=config, location=self.location, retry=None, job_retry=None, project=self.project_id
            )

        def read(job: Any) -> list[Any]:
            try:
                rows_iter = job.result(page_size=self.page_size, retry=None, job_retry=None)
                rows = list(rows_iter)
            except Exception as e:
                err = getattr(job, "error_result", None) or {}
                if err:
                    if err.get("reason") in _RETRYABLE_REASONS:
                        raise _JobFailedRetryableError(f"job {job.job_id} failed: {err.get('reason')}") from e
                    raise
                raise
            total = rows_iter.total_rows
            if total is not None and len(rows) != total:
                raise _TruncatedResultError(f"job {job.job_id}: {len(rows)} of {total} result rows arrived (truncated)")
            return rows

        def attempt() -> tuple[list[Any], Any]:
            current = {"job": self._retry(insert, "BigQuery jobs.insert", _is_transient)}

            def read_current() -> list[Any]:
                job = current["job"]
                try:
                    return read(job)
                except _TruncatedResultError:  # the job object keeps the pages it read: re-read through a new one
                    current["job"] = self.client.get_job(
                        job.job_id, project=job.project, location=job.location, retry=None
                    )
                    raise

            rows = self._retry(
                read_current,
                "BigQuery getQueryResults",
                lambda e: (
                    isinstance(e, _TruncatedResultError)
                    or (_is_transient(e) and not isinstance(e, _JobFailedRetryableError))
                ),
            )
            return rows, current["job"]

        return self._retry(  # type: ignore[no-any-return]
            attempt, "BigQuery billing query", lambda e: isinstance(e, _JobFailedRetryableError)
        )

    def collect(
        self,
        start: dt.date | dt.datetime | str,
        end: dt.date | dt.datetime | str,
        *,
        attribution: AttributionConfig | None = None,
        label_key: str | None = None,
        label_values: Sequence[str] | None = None,
    ) -> CollectResult:
        """Daily costs for ``[start, end)`` plus the trailing re-pull days, as FOCUS records.

        One query (a few result pages) per call; ``bytes_scanned`` is the job's ``totalBytesProcessed``.

        :param attribution: which label keys carry team / cost center / DAG / task (first present wins).
        :param label_key: with ``label_values``, keep only rows carrying one of these values for that label.
        :return: :class:`CollectResult` (XCom-safe summary via ``to_json()``).
        """
        attribution = attribution or AttributionConfig()
        window = day_window(start, end, extend_back_days=self.repull_days)
        table_ref = self.table_ref()
        before = self.requests_made
        sql, params = build_query(
            table_ref,
            usage_window=window,
            attribution=attribution,
            partition_column=self.partition_column,
            late_days=self.repull_days,
            list_cost=self.has_list_cost(),
            include_resource=self.include_resource,
            label_key=label_key,
            label_values=label_values,
        )
        rows, job = self.run_query(sql, params)
        res = CollectResult(source=SOURCE, window=window)
        for n, row in enumerate(rows, start=1):
            group = dict(row.items())
            try:
                res.records.append(self._record(group))
            except RecordError as e:  # quarantined in the same ledger batch; the valid groups land
                res.bad_rows.append(BadRow(n, e.field, e.message, {k: str(v) for k, v in group.items()}))
        res.requests = self.requests_made - before
        res.bytes_scanned = int(job.total_bytes_processed or 0)
        scope = f"{SOURCE}:{table_ref}" + (":resource" if self.include_resource else "")
        if label_values:
            scope += f":{label_key}={','.join(sorted(label_values))}"
        res.scope = bounded_scope(scope)
        self.log.info(
            "Billing export %s %s..%s: %d records, %d bad rows quarantined, %d request(s), %s bytes processed, "
            "%s bytes billed",
            table_ref,
            window[0].date(),
            window[1].date(),
            len(res.records),
            len(res.bad_rows),
            res.requests,
            res.bytes_scanned,
            job.total_bytes_billed,
        )
        return res

    @staticmethod
    def _record(row: Mapping[str, Any]) -> CostRecord:
        """One aggregated export group -> a FOCUS record (billed = cost, effective = cost + credits)."""
        day: dt.date = row["usage_day"]
        if isinstance(day, str):
            day = dt.date.fromisoformat(day)
        start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        cost = row["cost"] if row["cost"] is not None else Decimal(0)
        credits = row["credits"] if row["credits"] is not None else Decimal(0)
        tags: dict[str, str] = {}
        owners: dict[str, str] = {}
        for attr in OWNER_DIMENSIONS:
            dim = attr.removeprefix("x_")
            key, value = row.get(f"{dim}_key"), row.get(f"{dim}_value")
            if key and value:
                tags[str(key)] = str(value)
                owners[attr] = str(value)
        period_start = period_end = None
        month = row.get("invoice_month")
        if month and len(str(month)) == 6 and str(month).isdigit():
            y, m = int(str(month)[:4]), int(str(month)[4:])
            period_start = dt.datetime(y, m, 1, tzinfo=dt.UTC)
            period_end = dt.datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=dt.UTC)
        ident = "\x1f".join(
            "" if row.get(k) is None else str(row.get(k))
            for k in (
                "billing_account_id",
                "invoice_month",
                "cost_type",
                "service_id",
                "sku_id",
                "project_id",
                "region",
                "currency",
                "resource_id",
                *[f"{a.removeprefix('x_')}_{p}" for a in OWNER_DIMENSIONS for p in ("key", "value")],
            )
        )
        line_id = f"{SOURCE}|{day.isoformat()}|{hashlib.blake2b(ident.encode(), digest_size=16).hexdigest()}"
        try:
            return build_record(
                billed_cost=cost,
                effective_cost=exact_sum((cost, credits)),
                list_cost=row.get("cost_at_list"),
                billing_currency=row["currency"],
                charge_period_start=start,
                charge_period_end=start + dt.timedelta(days=1),
                billing_period_start=period_start,
                billing_period_end=period_end,
                billing_account_id=row.get("billing_account_id"),
                charge_category=CHARGE_CATEGORIES.get(str(row.get("cost_type") or "regular"), "Usage"),
                charge_class=None,
                charge_description=row.get("sku_description"),
                provider_name=PROVIDER,
                publisher_name=PROVIDER,
                invoice_issuer_name=PROVIDER,
                service_name=row.get("service_description"),
                sku_id=row.get("sku_id"),
                sub_account_id=row.get("project_id"),
                region_id=row.get("region"),
                resource_id=row.get("resource_id"),
                resource_name=row.get("resource_name"),
                pricing_quantity=row.get("pricing_quantity"),
                pricing_unit=row.get("pricing_unit"),
                tags=tags,
                x_source=SOURCE,
                x_platform="gcp",
                x_cost_kind="billed",
                x_line_item_id=line_id,
                **owners,
            )
        except RecordError as e:
            raise RecordError(e.field, f"billing export group {day} {row.get('sku_id')}: {e.message}") from None

    def test_connection(self) -> tuple[bool, str]:  # type: ignore[override]
        """One cheap call: ``tables.get`` on the export table (free; proves credentials, project and table)."""
        try:
            table = self._retry(
                lambda: self.client.get_table(self.table_ref(), retry=None), "BigQuery tables.get", _is_transient
            )
            return True, f"billing export {table.full_table_id} reachable ({table.num_rows} rows)"
        except Exception as e:
            return False, f"{type(e).__name__}: {str(e)[:200]}"


def collect_gcp(
    ledger: Ledger,
    config: FinOpsConfig,
    start: dt.datetime,
    end: dt.datetime,
    *,
    conn_id: str | None = None,
    dataset: str | None = None,
    table: str | None = None,
    project_id: str | None = None,
    label_key: str | None = None,
    label_values: Sequence[str] | None = None,
    overrides: dict[str, Any] | None = None,
    hook: GcpBillingExportHook | None = None,
    **hook_kwargs: Any,
) -> tuple[CollectResult, IngestResult]:
    """Collect the billing export for ``[start, end)`` (plus the re-pull days) and replace that window in the ledger.

    :param project_id: project holding the export dataset (default: the connection's project).
    :param overrides: attribution set on the records (explicit values are kept), e.g. ``{"x_job_id": ...}``.
    :param hook_kwargs: further :class:`GcpBillingExportHook` options (``repull_days``, ``location``...).
    """
    hook = hook or GcpBillingExportHook(
        gcp_conn_id=conn_id or GcpBillingExportHook.default_conn_name,
        dataset=dataset,
        table=table,
        export_project_id=project_id,
        **hook_kwargs,
    )
    res = hook.collect(start, end, attribution=config.attribution, label_key=label_key, label_values=label_values)
    return res, ingest_collected(ledger, config, res, overrides=overrides)
