"""BigQuery query cost from ``INFORMATION_SCHEMA.JOBS`` by job labels, and dry-run pre-flight estimates.

Built on the google provider's :class:`BigQueryHook` (credentials, project, the ``google.cloud.bigquery`` client).

* On-demand jobs (no ``reservation_id``): ``total_bytes_billed / 2^40 x`` rate card ``bigquery/ON_DEMAND_TIB``.
  The monthly free TiB is not deducted per job.
* Editions jobs (a ``reservation_id``): ``total_slot_ms / 3,600,000 x`` rate card ``<EDITION>_SLOT_HOUR``.
  **An approximation**: reservations bill baseline and autoscaled slots, not the slot-ms a job used, so idle
  baseline slots are not in these rows; the billing export (issue 3) is the truth for editions.
* Script parents (``statement_type = 'SCRIPT'``) are skipped: their children are billed and listed themselves.

Labels (``airflow_dag_id``, ``airflow_task_id``, ``airflow_run_id``, ``team``, ``cost_center`` as the FinOps
policy stamps them) attribute the cost. :meth:`BigQueryCostHook.dry_run` prices a query before it runs
(bytes processed x on-demand price), for a budget gate.

Faults (the default path: the provider's ``google.cloud.bigquery.Client`` over REST). The statement goes through
:class:`~finops_provider.hooks._sql.SqlSession`: throttling (429, 403 ``rateLimitExceeded``), 5xx, timeouts, dropped
connections and a result page cut short are retried within one bounded budget; refused credentials (401,
403 ``accessDenied``, a revoked or expired service-account key) raise
:class:`~finops_provider.collect.CredentialsError` naming the connection. Each statement has one job id
(``finops_<uuid>``) kept by all its retries, so a retry after a lost answer attaches to the job BigQuery already
started (``jobs.insert`` answers 409 ``duplicate``; the job is read with ``jobs.get``) instead of running and
billing the query again. Only a job that itself failed is run again, under a new id. The client's own retries
are off (``retry=None``, ``job_retry=None``) and every HTTP request is bounded by ``timeout``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from decimal import Decimal, localcontext
from typing import Any

from finops_provider.collect import CollectResult, ingest_collected
from finops_provider.core.config import FinOpsConfig
from finops_provider.core.estimate import TaskTry
from finops_provider.core.ledger import IngestResult, Ledger
from finops_provider.core.money import MONEY_CONTEXT, Money, to_decimal
from finops_provider.core.platforms import estimate_record, ledger_amount, mapping_of, sql_timestamp, utc
from finops_provider.core.pricing import RateCard
from finops_provider.core.records import CostRecord, build_record
from finops_provider.core.retry import RetryPolicy, retry_after_seconds
from finops_provider.hooks._bigquery import BoundedBigQueryHook
from finops_provider.hooks._sql import Fault, SqlSession, fetch_dicts, identifier, rate_card_for

PLATFORM = "bigquery"
SOURCE = "bigquery"
TIB = Decimal(2**40)
EDITIONS = ("STANDARD", "ENTERPRISE", "ENTERPRISE_PLUS")
#: what the connection's service account needs to read every job of the project from the JOBS view
NEEDS = "roles/bigquery.jobUser and roles/bigquery.resourceViewer on the project"
#: BigQuery error reasons worth another attempt (the API's and a failed job's)
RETRYABLE_REASONS = frozenset(
    {"rateLimitExceeded", "backendError", "internalError", "badGateway", "jobBackendError", "jobInternalError",
     "jobRateLimitExceeded"}
)  # fmt: skip
#: 403 reasons that mean the credentials (or their roles) were refused
REFUSED_REASONS = frozenset({"accessDenied", "forbidden", "unauthorized", "authError"})


class TruncatedResultError(RuntimeError):
    """Fewer result rows arrived than the job reported (a page was cut short): read the job's results again."""


def classify_bigquery_error(exc: BaseException) -> Fault | None:
    """The :class:`Fault` of an error from the BigQuery client (or a DB-API wrapper of one), else ``None``.

    RETRY: 429, 403 ``rateLimitExceeded``, 500 / 502 / 503 / 504, a failed job with a transient reason, a dropped
    connection, a timeout, an answer or a result cut short. CREDENTIALS: 401, 403 ``accessDenied``, a token
    exchange google-auth could not complete (revoked / expired key). Anything else (a bad query, a missing table)
    is not ours: ``None``.
    """
    if type(exc).__module__.startswith("google.cloud.bigquery.dbapi") and exc.args:
        inner = exc.args[0]  # the google DB-API (``connection=``) wraps the client's error in a DatabaseError
        exc = inner if isinstance(inner, BaseException) else exc
    if isinstance(exc, TruncatedResultError | TimeoutError):  # concurrent.futures.TimeoutError is TimeoutError
        return Fault.RETRY
    module = type(exc).__module__
    if not module.startswith(("google.", "requests.", "urllib3.")):
        return None
    import requests
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as aexc

    dropped = (aexc.TransportError, requests.ConnectionError, requests.Timeout)
    cut = (requests.exceptions.ChunkedEncodingError, requests.exceptions.JSONDecodeError)  # an answer cut short
    if isinstance(exc, dropped + cut):
        return Fault.RETRY
    if isinstance(exc, aexc.RefreshError) and getattr(exc, "retryable", False):
        return Fault.RETRY  # the token endpoint itself was throttled or down
    if isinstance(exc, aexc.GoogleAuthError):
        return Fault.CREDENTIALS
    if not isinstance(exc, gexc.GoogleAPICallError):
        return None
    reasons = {str(e.get("reason")) for e in (exc.errors or []) if isinstance(e, dict) and e.get("reason")}
    if isinstance(exc, gexc.Unauthorized):
        return Fault.CREDENTIALS
    if isinstance(exc, gexc.Forbidden):
        if reasons & RETRYABLE_REASONS:
            return Fault.RETRY
        return Fault.CREDENTIALS if not reasons or reasons & REFUSED_REASONS else None  # quotaExceeded, ...: None
    transient = (gexc.TooManyRequests, gexc.InternalServerError, gexc.BadGateway, gexc.ServiceUnavailable,
                 gexc.GatewayTimeout)  # fmt: skip
    if isinstance(exc, transient) or reasons & RETRYABLE_REASONS:
        return Fault.RETRY
    return None


def _wait_hint(exc: BaseException) -> float | None:
    """The server's ``Retry-After`` (seconds), when its answer had one."""
    return retry_after_seconds(getattr(getattr(exc, "response", None), "headers", None))


class _Statement:
    """One statement's job id, kept by all its retries; a new id only after the job itself failed."""

    def __init__(self) -> None:
        self.base = f"finops_{uuid.uuid4().hex}"
        self.runs = 0  # jobs that failed: the next one is ``<base>_<runs>``
        self.created = False  # jobs.insert answered: the job exists, the next attempt only reads it

    @property
    def job_id(self) -> str:
        return self.base if not self.runs else f"{self.base}_{self.runs}"


class BigQueryCostHook(BoundedBigQueryHook):
    """BigQuery job costs by label (truth from INFORMATION_SCHEMA.JOBS) and dry-run estimates.

    Connection (``google_cloud_platform``): the provider's usual fields (key file / keyfile JSON / ADC /
    impersonation, ``project``), plus the ``api_endpoint`` extra (send BigQuery API calls to another endpoint, for
    example a Private Service Connect address; tests use it for a local server).

    :param gcp_conn_id: the google provider connection (default ``google_cloud_default``).
    :param location: region of the jobs view (``US`` -> ``region-us``).
    :param edition: editions price for reservation jobs (``STANDARD``, ``ENTERPRISE``, ``ENTERPRISE_PLUS``).
    :param jobs_view: the JOBS view to read (default ``` `region-<location>`.INFORMATION_SCHEMA.JOBS ```);
        with ``connection=`` this is the SQL seam the tests use (a DuckDB copy of the view).
    :param connection: a DB-API connection to use instead of the BigQuery client (statements then run with
        :func:`~finops_provider.hooks._sql.fetch_dicts`, the connection's own retries and timeouts).
    :param client: a ``google.cloud.bigquery.Client`` for dry runs (default: ``get_client()``).
    :param retry_policy: backoff for throttling, 5xx, timeouts and truncated results; a ``Retry-After`` is honoured.
    :param sleep: the wait function between attempts (tests inject one).
    :param timeout: seconds each BigQuery HTTP request, and the wait for the query job, may take before the attempt
        counts as failed and is retried (the client would otherwise wait forever on a stalled connection).
    :param page_size: rows per ``jobs.getQueryResults`` page.
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
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = 120.0,
        page_size: int | None = 10_000,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("use_legacy_sql", False)  # the JOBS query is GoogleSQL (the provider defaults to legacy)
        super().__init__(gcp_conn_id=gcp_conn_id, location=location, **kwargs)
        ed = edition.upper().replace(" ", "_").replace("-", "_")
        if ed not in EDITIONS:
            raise ValueError(f"edition {edition!r}: use one of {', '.join(EDITIONS)}")
        self.edition = ed
        self.jobs_view = identifier(jobs_view or f"`region-{location.lower()}`.INFORMATION_SCHEMA.JOBS", "jobs_view")
        self.rate_card = rate_card or RateCard.load()
        self._dbapi = connection
        self._client = client
        self.timeout = timeout
        self.page_size = page_size
        self.requests_made = 0  # HTTP answers from BigQuery (the default path), throttled and failed ones included
        self._statement = _Statement()
        self.session = SqlSession(
            self._connect,
            classify=classify_bigquery_error,
            what=f"BigQuery {self.jobs_view}",
            conn_id=gcp_conn_id,
            needs=NEEDS,
            connection=connection,
            policy=retry_policy,
            wait_hint=_wait_hint,
            sleep=sleep,
            fetch=self._fetch,
        )

    # ------------------------------------------------------------------ client
    def _connect(self) -> Any:
        """A new ``google.cloud.bigquery.Client`` (bounded, counted: :meth:`BoundedBigQueryHook.bounded_client`).

        Not :meth:`get_conn`: the provider's PEP 249 connection (``BigQueryConnection``) reads results through the
        discovery API with its own retries (``num_retries``, sleeps up to a minute), returns TIMESTAMP columns as
        float seconds and RECORD columns unparsed, and takes no job id or timeout.
        """
        return self.bounded_client()

    def _rows(self, sql: str) -> list[dict[str, Any]]:
        self._statement = _Statement()  # one job id for this statement and all its retries
        return self.session.rows(sql)

    def _fetch(self, conn: Any, sql: str, params: Any) -> list[dict[str, Any]]:
        if self._dbapi is not None:
            return fetch_dicts(conn, sql, params)
        return self._run_job(conn, sql)

    def _run_job(self, client: Any, sql: str) -> list[dict[str, Any]]:
        """Run ``sql`` as the statement's query job (or attach to it, if an earlier attempt created it); all rows.

        The client's retries are off: :class:`SqlSession` is the one retry layer, so one budget bounds it all.
        """
        from google.api_core import exceptions as gexc
        from google.cloud import bigquery

        st, where = self._statement, {"project": self.project_id, "location": self.location}
        job_id = st.job_id
        job = None
        if not st.created:
            config = bigquery.QueryJobConfig(use_legacy_sql=False, labels={"finops_collector": "bigquery-jobs"})
            try:
                job = client.query(
                    sql, job_config=config, job_id=job_id, retry=None, job_retry=None, timeout=self.timeout, **where
                )
            except gexc.Conflict:
                # an earlier attempt's jobs.insert reached BigQuery but its answer was lost: that job runs (and is
                # billed) already, so read it instead of starting the query again
                self.log.info("BigQuery job %s exists already (an earlier attempt started it): reading it", job_id)
            st.created = True
        if job is None:
            job = client.get_job(job_id, retry=None, timeout=self.timeout, **where)
        try:
            result = job.result(page_size=self.page_size, retry=None, job_retry=None, timeout=self.timeout)
            rows = [{str(k).lower(): v for k, v in row.items()} for row in result]
        except gexc.GoogleAPICallError:
            if job.state == "DONE" and job.error_result:  # the job itself failed: run it again, as a new job
                st.runs, st.created = st.runs + 1, False
            raise
        total = result.total_rows
        if total is not None and len(rows) != total:
            raise TruncatedResultError(f"job {job_id}: {len(rows)} of {total} result rows arrived (truncated)")
        return rows

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
        http_before, attempts_before = self.requests_made, self.session.attempts
        rows = self._rows(
            "SELECT job_id, project_id, user_email, creation_time, statement_type, reservation_id, "
            "total_bytes_billed, total_bytes_processed, total_slot_ms, cache_hit, labels "
            f"FROM {self.jobs_view} "
            f"WHERE creation_time >= {sql_timestamp(start)} AND creation_time < {sql_timestamp(end)} "
            "AND job_type = 'QUERY' AND state = 'DONE' "
            "AND (statement_type IS NULL OR statement_type <> 'SCRIPT')"
        )
        requests = (
            (self.requests_made - http_before) if self._dbapi is None else self.session.attempts - attempts_before
        )
        res = CollectResult(source=SOURCE, window=(start, end), scope=f"bigquery:{self.jobs_view}", requests=requests)
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
