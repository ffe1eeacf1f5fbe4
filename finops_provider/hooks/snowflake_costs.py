"""Snowflake compute cost: billed credits per query tag and idle warehouse time, plus run-time estimates.

Built on the snowflake provider's :class:`SnowflakeHook` (connection, auth, session). Truth comes from
``SNOWFLAKE.ACCOUNT_USAGE``:

* ``QUERY_ATTRIBUTION_HISTORY.CREDITS_ATTRIBUTED_COMPUTE`` (+ ``CREDITS_USED_QUERY_ACCELERATION``), summed
  per day, warehouse and ``QUERY_TAG``; the tag (JSON or ``k=v;k=v``, as the FinOps cluster policy sets it)
  carries dag / task / run / team / cost center;
* ``WAREHOUSE_METERING_HISTORY``: ``CREDITS_USED_COMPUTE - CREDITS_ATTRIBUTED_COMPUTE_QUERIES`` per day and
  warehouse is the idle time, reported as its own row (Snowflake's documented idle-cost query).

Sums are taken over ``CAST(... AS NUMBER(38, 9))`` so FLOAT credit columns add up exactly (to 1e-9 credit).
Credits are priced with the rate card's ``snowflake/CREDIT_<EDITION>``. Cloud-services credits (billed only
above 10 % of daily compute) and serverless features are not in these views and are not included.
The views lag real time (up to 3 h for metering, 8 h for query attribution): that gap is what the estimate
covers.

Who retries what on the default path (``SnowflakeHook.get_conn()``, snowflake-connector-python over HTTPS):

1. **The connector** re-sends one HTTP request itself, with its own backoff (1 s, then up to 16 s), on 429, 5xx,
   400 / 403 / 408, a read that timed out or a connection that dropped, and a body that is not JSON, until
   ``network_timeout`` runs out; each read waits at most ``socket_timeout``. A login is tried twice, within
   ``login_timeout``. A result shorter than the row count the server declared is fetched once more. Its own
   defaults leave a statement's retries unbounded (``network_timeout`` is infinite), so the hook passes
   :data:`CONNECTOR_TIMEOUTS` unless the connection's extras name them. ``network_timeout`` also cancels a
   statement still running after it: raise it in the extras for an account whose ACCOUNT_USAGE reads are slow.
2. **This hook** (:class:`~finops_provider.hooks._sql.SqlSession`, classified by :func:`snowflake_fault`): when
   the connector gives up (``TooManyRequests``, ``ServiceUnavailableError``, ``GatewayTimeoutError``, an
   ``OperationalError`` for a timeout, a dropped connection or an incomplete result, a session that is gone) or
   does not retry at all (a body cut short by a closed connection escapes it as ``ChunkedEncodingError``),
   the connection is closed, a new one logs in and the statement runs again, within ``retry_policy``
   (:data:`RETRY_POLICY`). Statements are reads, so running one again is safe; a collection writes the ledger
   only after every statement returned, so a run that gives up writes nothing.
3. **Refused credentials** are retried by neither: a wrong or rotated password (390100), a key pair whose public
   key is not the user's (390144 and the 3943xx JWT codes), an expired or invalid OAuth token (390318, 390303)
   raise :class:`~finops_provider.collect.CredentialsError` naming the connection id after one login.
4. Airflow's task ``retries`` come last, for outages longer than the budget above.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation, localcontext
from functools import cached_property
from typing import Any

from airflow.providers.snowflake.hooks.snowflake import SnowflakeHook

from finops_provider.collect import CollectResult, ingest_collected
from finops_provider.core.config import FinOpsConfig
from finops_provider.core.estimate import TaskTry
from finops_provider.core.ledger import IngestResult, Ledger
from finops_provider.core.money import MONEY_CONTEXT, Money, to_decimal
from finops_provider.core.platforms import (
    estimate_record,
    ledger_amount,
    parse_tag_text,
    sql_timestamp,
    utc,
)
from finops_provider.core.pricing import RateCard
from finops_provider.core.records import CostRecord, build_record
from finops_provider.core.retry import RetryPolicy
from finops_provider.hooks._sql import Fault, SqlSession, identifier, rate_card_for

PLATFORM = "snowflake"
SOURCE = "snowflake"
EDITIONS = ("STANDARD", "ENTERPRISE", "BUSINESS_CRITICAL")
_QID_CHARS = frozenset("0123456789abcdefABCDEF-")

#: the connector's network bounds in seconds, passed unless the connection's extras set them (the connector's
#: own defaults: 120 s to log in, no bound on retrying a statement's requests, 60 s per socket read — Snowflake
#: holds a query request up to ~45 s before answering "still running", so reads need more than that)
CONNECTOR_TIMEOUTS: dict[str, int] = {"login_timeout": 60, "network_timeout": 300, "socket_timeout": 60}
#: statement retries after the connector gave up: each attempt may take up to ``network_timeout`` itself
RETRY_POLICY = RetryPolicy(max_attempts=3, base_s=2.0, cap_s=30.0, budget_s=900.0)
#: what the connection's principal needs, for the message of refused credentials
NEEDS = (
    "a current password, key pair (its public key set on the user) or OAuth token, and a role with "
    "IMPORTED PRIVILEGES on the SNOWFLAKE database"
)

# snowflake.connector.errorcode values (the connector's own errnos, 25xxxx)
_ER_FAILED_TO_CONNECT_TO_DB = 250001  # login gave up after its retries, or was refused with no server code
_ER_CONNECTION_IS_CLOSED = 250002
_ER_FAILED_TO_REQUEST = 250003  # a request's retries ran out (read timeout, dropped connection, bad body)
_ER_CONNECTION_TIMEOUT = 251011
_ER_RETRYABLE_CODE = 251012
_ER_CURSOR_IS_CLOSED = 252006
_ER_INCOMPLETE_RESULT_CHUNK = 252013  # fewer rows arrived than the server declared
_CONNECTOR_TRANSIENT = frozenset(
    {_ER_FAILED_TO_CONNECT_TO_DB, _ER_FAILED_TO_REQUEST, _ER_CONNECTION_TIMEOUT, _ER_RETRYABLE_CODE,
     _ER_INCOMPLETE_RESULT_CHUNK}
)  # fmt: skip
# Snowflake's login codes: the credentials themselves were refused
_LOGIN_REFUSED = frozenset(
    {
        390100,  # incorrect username or password (also a password that was changed or expired)
        390144,  # JWT token is invalid (key pair: public key not set on the user, rotated, or clock skew)
        390195,  # the cached ID token is invalid
        390303,  # invalid OAuth access token
        390318,  # OAuth access token expired
        *range(394300, 394307),  # the JWT codes (expired, not yet valid, fingerprint mismatch, algorithm ...)
    }
)
# the session is gone (expired, logged out): a new login with the same credentials works
_SESSION_GONE = frozenset({390104, 390111, 390112, 390114, _ER_CONNECTION_IS_CLOSED, _ER_CURSOR_IS_CLOSED})
_SQLSTATE_AUTHORIZATION_FAILURE = "28000"


def snowflake_fault(e: BaseException) -> Fault | None:
    """How :class:`SqlSession` handles a snowflake-connector error (``None``: raised unchanged).

    :data:`Fault.RETRY` for what the connector gave up retrying (HTTP 429 / 5xx / 408, a timeout, a dropped
    connection or a response cut short, an incomplete result, a session that is gone);
    :data:`Fault.CREDENTIALS` for a login Snowflake refused. SQL errors (a missing column or grant) are neither.
    """
    if isinstance(e, (ConnectionError, TimeoutError)):  # the socket itself: reset, refused, timed out
        return Fault.RETRY
    if not type(e).__module__.startswith("snowflake.connector"):
        return None
    from snowflake.connector import errors as sf
    from snowflake.connector.vendored.requests import exceptions as http
    from snowflake.connector.vendored.urllib3 import exceptions as urllib3

    if isinstance(
        e,
        (http.ConnectionError, http.Timeout, http.ChunkedEncodingError, http.ContentDecodingError,
         urllib3.ProtocolError, urllib3.TimeoutError),
    ):  # fmt: skip
        # the connector lets a body cut short by a closed connection (ChunkedEncodingError) escape unwrapped
        return Fault.RETRY
    if isinstance(e, (sf.NonRetryableTlsError, sf.RevocationCheckError)):
        return None  # a certificate problem does not go away on retry
    if isinstance(
        e,
        (sf.TooManyRequests, sf.ServiceUnavailableError, sf.GatewayTimeoutError, sf.BadGatewayError,
         sf.InternalServerError, sf.RequestTimeoutError),
    ):  # fmt: skip
        return Fault.RETRY
    errno = getattr(e, "errno", None)
    if isinstance(e, sf.OtherHTTPRetryableError):
        return Fault.RETRY if isinstance(errno, int) and (errno >= 500 or errno in (408, 429)) else None
    if isinstance(e, sf.OperationalError):
        return Fault.RETRY if errno in _CONNECTOR_TRANSIENT else None
    if isinstance(e, (sf.DatabaseError, sf.InterfaceError)):
        if errno in _SESSION_GONE:
            return Fault.RETRY
        if isinstance(e, sf.DatabaseError) and (
            errno in _LOGIN_REFUSED
            or getattr(e, "sqlstate", None) == _SQLSTATE_AUTHORIZATION_FAILURE
            or errno == _ER_FAILED_TO_CONNECT_TO_DB  # a login refused without a Snowflake code
        ):
            return Fault.CREDENTIALS
    return None


class SnowflakeCostHook(SnowflakeHook):
    """Snowflake credits per query tag (truth), idle warehouse credits, and per-task estimates.

    :param snowflake_conn_id: the snowflake provider connection (default ``snowflake_default``); its role
        needs ``SNOWFLAKE.ACCOUNT_USAGE`` access (``IMPORTED PRIVILEGES`` on the ``SNOWFLAKE`` database).
    :param edition: account edition, picks the credit price (``STANDARD``, ``ENTERPRISE``, ``BUSINESS_CRITICAL``).
    :param account_usage: schema holding the views (default ``SNOWFLAKE.ACCOUNT_USAGE``).
    :param query_history: where the estimate reads the task's queries (default
        ``SNOWFLAKE.ACCOUNT_USAGE.QUERY_HISTORY``, up to 45 min behind; pass
        ``TABLE(<db>.INFORMATION_SCHEMA.QUERY_HISTORY())`` for no latency).
    :param rate_card: prices (default: the shipped cards).
    :param connection: a DB-API connection to use instead of ``get_conn()`` (the SQL seam, see ``hooks/_sql.py``).
    :param retry_policy: how often and how long a statement is run again after the connector gave up
        (default :data:`RETRY_POLICY`); see the module docstring for which layer retries what.
    :param sleep: the wait between statement attempts (tests inject one).

    Connection extras read here besides the snowflake provider's: ``login_timeout``, ``network_timeout`` and
    ``socket_timeout`` (seconds, default :data:`CONNECTOR_TIMEOUTS`) and ``protocol`` (``https``; ``http`` only
    for a local endpoint), passed to the connector.
    """

    hook_name = "Snowflake costs (FinOps)"

    def __init__(
        self,
        *,
        snowflake_conn_id: str = "snowflake_default",
        edition: str = "ENTERPRISE",
        account_usage: str = "SNOWFLAKE.ACCOUNT_USAGE",
        query_history: str | None = None,
        rate_card: RateCard | None = None,
        connection: Any = None,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        **kwargs: Any,
    ) -> None:
        # ACCOUNT_USAGE timestamps are TIMESTAMP_LTZ: days are cut in UTC (Snowflake's advice for these views)
        kwargs.setdefault("session_parameters", {"TIMEZONE": "UTC"})
        super().__init__(snowflake_conn_id=snowflake_conn_id, **kwargs)
        ed = edition.upper().replace(" ", "_").replace("-", "_")
        if ed not in EDITIONS:
            raise ValueError(f"edition {edition!r}: use one of {', '.join(EDITIONS)}")
        self.edition = ed
        self.account_usage = identifier(account_usage, "account_usage")
        self.query_history = query_history or f"{self.account_usage}.QUERY_HISTORY"
        self.rate_card = rate_card or RateCard.load()
        self.retry_policy = retry_policy or RETRY_POLICY
        self.sleep = sleep
        self._dbapi = connection

    @cached_property
    def _connector_options(self) -> dict[str, Any]:
        """The connector parameters the snowflake provider does not pass: the timeouts (hook defaults unless the
        connection's extras set them) and ``protocol``."""
        conn_id = self.get_conn_id()
        extra = self.get_connection(conn_id).extra_dejson
        options: dict[str, Any] = {}
        for key, default in CONNECTOR_TIMEOUTS.items():
            raw = extra.get(key, default)
            seconds = _whole_seconds(raw)
            if seconds is None:
                raise ValueError(
                    f"connection {conn_id!r}: extra {key}={raw!r} is not a whole number of seconds > 0 "
                    f"(the connector counts whole seconds; default {default})"
                )
            options[key] = seconds
        protocol = extra.get("protocol")
        if protocol is not None:
            if str(protocol).lower() not in ("https", "http"):
                raise ValueError(f"connection {conn_id!r}: extra protocol={protocol!r}: use https (or http)")
            options["protocol"] = str(protocol).lower()
        return options

    def _get_conn_params(self) -> dict[str, Any]:
        return {**super()._get_conn_params(), **self._connector_options}

    @cached_property
    def _session(self) -> SqlSession:
        return SqlSession(
            self.get_conn,
            classify=snowflake_fault,
            what="Snowflake",
            conn_id=self.get_conn_id(),
            needs=NEEDS,
            connection=self._dbapi,
            policy=self.retry_policy,
            sleep=self.sleep,
        )

    def _rows(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        return self._session.rows(sql, params)

    def credit_price(self, day: dt.date) -> Any:
        return self.rate_card.price(PLATFORM, f"CREDIT_{self.edition}", on=day)

    # ------------------------------------------------------------------ truth
    def collect(self, start: dt.datetime, end: dt.datetime) -> CollectResult:
        """Billed credits of ``[start, end)`` per day, warehouse and query tag, plus one idle row per warehouse-day.

        :return: :class:`CollectResult` (records priced from the rate card; scope ``snowflake:<edition>``).
        """
        start, end = utc(start), utc(end)
        au = self.account_usage
        s, e = sql_timestamp(start), sql_timestamp(end)
        attributed = self._rows(
            "SELECT DATE_TRUNC('day', start_time) AS usage_day, warehouse_name, query_tag, "
            "SUM(CAST(credits_attributed_compute AS NUMBER(38, 9))) AS credits_compute, "
            "SUM(CAST(COALESCE(credits_used_query_acceleration, 0) AS NUMBER(38, 9))) AS credits_qas, "
            "COUNT(*) AS queries "
            f"FROM {au}.QUERY_ATTRIBUTION_HISTORY "
            f"WHERE start_time >= {s} AND start_time < {e} "
            "GROUP BY 1, 2, 3"
        )
        metered = self._rows(
            "SELECT DATE_TRUNC('day', start_time) AS usage_day, warehouse_name, "
            "SUM(CAST(credits_used_compute AS NUMBER(38, 9))) AS credits_compute, "
            "SUM(CAST(credits_attributed_compute_queries AS NUMBER(38, 9))) AS credits_queries "
            f"FROM {au}.WAREHOUSE_METERING_HISTORY "
            f"WHERE start_time >= {s} AND start_time < {e} "
            "GROUP BY 1, 2"
        )
        res = CollectResult(source=SOURCE, window=(start, end), scope=f"snowflake:{self.edition}", requests=2)
        for r in attributed:
            day = utc(r["usage_day"])
            credits = _dec(r["credits_compute"]) + _dec(r["credits_qas"])
            tag_text = r.get("query_tag") or ""
            tags = parse_tag_text(tag_text)
            tag_hash = hashlib.blake2b(tag_text.encode(), digest_size=8).hexdigest()
            res.records.append(
                self._record(
                    day,
                    r["warehouse_name"],
                    credits,
                    tags=tags,
                    line=f"query|{r['warehouse_name']}|{tag_hash}",
                    description=f"{r['queries']} queries, attributed compute + query acceleration credits",
                )
            )
        for r in metered:
            day = utc(r["usage_day"])
            with localcontext(MONEY_CONTEXT):
                idle = _dec(r["credits_compute"]) - _dec(r["credits_queries"])
            res.records.append(
                self._record(
                    day,
                    r["warehouse_name"],
                    max(idle, Decimal(0)),
                    tags={"finops_idle": "true"},
                    line=f"idle|{r['warehouse_name']}",
                    description="idle warehouse credits (metered compute - credits attributed to queries)",
                    idle=True,
                )
            )
        self.log.info(
            "Snowflake %s..%s: %d query-tag rows, %d warehouse-day idle rows",
            start.date(),
            end.date(),
            len(attributed),
            len(metered),
        )
        return res

    def _record(
        self,
        day: dt.datetime,
        warehouse: str,
        credits: Decimal,
        *,
        tags: dict[str, str],
        line: str,
        description: str,
        idle: bool = False,
    ) -> CostRecord:
        price = self.credit_price(day.date())
        cost = ledger_amount(price.cost(credits).amount)
        day_start = day.replace(hour=0, minute=0, second=0, microsecond=0)
        return build_record(
            billed_cost=cost,
            effective_cost=cost,
            list_cost=cost,
            billing_currency=price.amount.currency,
            charge_period_start=day_start,
            charge_period_end=day_start + dt.timedelta(days=1),
            charge_category="Usage",
            charge_description=description,
            pricing_quantity=ledger_amount(credits),
            pricing_unit="credit",
            consumed_quantity=ledger_amount(credits),
            consumed_unit="credit",
            list_unit_price=price.amount.amount,
            provider_name="Snowflake",
            publisher_name="Snowflake Inc.",
            invoice_issuer_name="Snowflake Inc.",
            service_name="Snowflake Virtual Warehouse",
            service_category="Compute",
            sku_id=f"CREDIT_{self.edition}",
            resource_id=warehouse,
            resource_name=warehouse,
            resource_type="warehouse",
            tags=tags,
            x_line_item_id=f"{line}|{day_start.date().isoformat()}",
            x_source=SOURCE,
            x_platform=PLATFORM,
            x_cost_kind="billed",
            x_job_id="(idle)" if idle else None,
        )

    # ------------------------------------------------------------------ estimate
    def estimate_run(
        self,
        task: TaskTry,
        *,
        query_ids: Sequence[str] | None = None,
        query_tag: str | None = None,
    ) -> CostRecord:
        """Estimate a finished task from its queries: Σ warehouse-size credits/hour x execution time.

        The queries are found by id (``SnowflakeHook.query_ids`` / ``SnowflakeSqlApiOperator`` XCom) or by
        the task's exact ``QUERY_TAG``; sizes come from the rate card's ``warehouse_credits_per_hour``. Running
        queries concurrently on one warehouse share its credits, so this is an upper bound for busy warehouses.

        :return: an estimate record (``x_cost_kind="estimate"``) with line item ``dag/run/task/map/try``.
        """
        if not query_ids and not query_tag:
            raise ValueError("estimate_run needs query_ids or query_tag")
        if query_ids:
            bad = [q for q in query_ids if not q or not set(q) <= _QID_CHARS]
            if bad:
                raise ValueError(f"not Snowflake query ids: {bad[:3]}")
            where, params = "query_id IN (" + ", ".join(f"'{q}'" for q in query_ids) + ")", None
        else:
            assert query_tag is not None
            # a bound parameter (pyformat, the connector's default): Snowflake string literals treat a
            # backslash as an escape, so quoting the tag into the text could be broken out of
            where, params = "query_tag = %(query_tag)s", {"query_tag": query_tag}
        rows = self._rows(
            "SELECT query_id, warehouse_name, warehouse_size, execution_time, total_elapsed_time "
            f"FROM {self.query_history} WHERE {where}",
            params,
        )
        sizes = self.rate_card.rate(PLATFORM, "warehouse_credits_per_hour")
        credits = Decimal(0)
        with localcontext(MONEY_CONTEXT):
            for r in rows:
                size = str(r.get("warehouse_size") or "").upper()
                if not size or size not in sizes:
                    continue  # no warehouse (metadata / result-cache queries cost no warehouse credits)
                ms = _dec(r.get("execution_time") if r.get("execution_time") is not None else r["total_elapsed_time"])
                credits += _dec(sizes[size]) * ms / Decimal(3_600_000)
        price = self.credit_price(task.start.date())
        warehouses = sorted({str(r.get("warehouse_name")) for r in rows if r.get("warehouse_name")})
        return estimate_record(
            task,
            platform=PLATFORM,
            cost=price.cost(credits),
            quantity=credits,
            unit="credit",
            sku=f"CREDIT_{self.edition}",
            description=f"{len(rows)} queries x warehouse credits/hour x execution time",
            price_text=price.describe(),
            resource_id=",".join(warehouses) or None,
            service_name="Snowflake Virtual Warehouse",
        )

    def test_connection(self) -> tuple[bool, str]:  # type: ignore[override]
        try:
            self._rows(f"SELECT COUNT(*) AS n FROM {self.account_usage}.WAREHOUSE_METERING_HISTORY WHERE 1 = 0")
            return True, "ACCOUNT_USAGE readable"
        except Exception as e:
            return False, f"{type(e).__name__}: {str(e)[:200]}"


def _whole_seconds(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    try:
        d = Decimal(str(v).strip())
    except InvalidOperation:
        return None
    return int(d) if d.is_finite() and d > 0 and d == d.to_integral_value() else None


def _dec(v: Any) -> Decimal:
    return Decimal(0) if v is None else to_decimal(v, field_name="credits")


def collect_snowflake(
    ledger: Ledger,
    config: FinOpsConfig,
    start: dt.datetime,
    end: dt.datetime,
    *,
    conn_id: str | None = None,
    edition: str = "ENTERPRISE",
    account_usage: str = "SNOWFLAKE.ACCOUNT_USAGE",
    hook: SnowflakeCostHook | None = None,
    **_: Any,
) -> tuple[CollectResult, IngestResult]:
    """Collector ``snowflake``: billed credits by query tag + idle rows for ``[start, end)`` into the ledger."""
    hook = hook or SnowflakeCostHook(
        snowflake_conn_id=conn_id or "snowflake_default",
        edition=edition,
        account_usage=account_usage,
        rate_card=rate_card_for(config),
    )
    res = hook.collect(start, end)
    return res, ingest_collected(ledger, config, res)


def credits_cost(credits: Decimal, edition: str, rate_card: RateCard, on: dt.date) -> Money:
    """Cost of ``credits`` at the edition's credit price (used by the demo and tests)."""
    return rate_card.price(PLATFORM, f"CREDIT_{edition.upper()}", on=on).cost(credits)
