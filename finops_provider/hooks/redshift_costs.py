"""Amazon Redshift compute cost: provisioned node-hours and Serverless RPU-hours, attributed by query group.

Built on the amazon provider's :class:`AwsBaseHook` (``client_type="redshift"``).

* Provisioned: ``DescribeClusters`` gives node type, node count, status and creation time; cost = nodes x hours
  of the window the cluster existed x rate card ``redshift/<node type>``. A ``paused`` cluster costs no
  compute (storage is billed separately and not included). Cluster tags attribute the cost. The status is a
  snapshot: collect at least daily so pause/resume changes are seen per day.
* Serverless: ``SYS_SERVERLESS_USAGE.charged_seconds`` are RPU-seconds (AWS's documented cost query divides
  them by 3600 and multiplies by the RPU-hour price, rate card ``SERVERLESS_RPU_HOUR``). Each day's cost is
  split over ``SYS_QUERY_HISTORY.query_label`` (the query group, ``SET query_group TO ...``) in proportion to
  elapsed time; unlabelled time stays unallocated. Read through a DB-API connection
  (``RedshiftSQLHook(redshift_conn_id).get_conn()`` or ``connection=``, the SQL seam) in a
  :class:`~finops_provider.hooks._sql.SqlSession`: a dropped connection, a socket timeout or a server that refuses
  connections for a while is retried on a new connection under the hook's one retry policy; refused credentials
  (SQLSTATE 28000 / 28P01, or AWS refusing the IAM token request) raise ``CredentialsError`` at once. A stalled
  server is only noticed when the connection sets redshift_connector's socket ``timeout`` (extra, seconds).
"""

from __future__ import annotations

import datetime as dt
import inspect
import struct
import time
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal, localcontext
from functools import cached_property
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

from finops_provider.collect import CollectResult, ingest_collected
from finops_provider.core.allocation import split_shared
from finops_provider.core.config import FinOpsConfig
from finops_provider.core.estimate import TaskTry
from finops_provider.core.focus import BadRow
from finops_provider.core.ledger import IngestResult, Ledger
from finops_provider.core.money import MONEY_CONTEXT, Money, to_decimal
from finops_provider.core.platforms import (
    estimate_record,
    hours_between,
    ledger_amount,
    parse_tag_text,
    sql_timestamp,
    utc,
)
from finops_provider.core.pricing import PriceNotFoundError, RateCard
from finops_provider.core.records import CostRecord, build_record
from finops_provider.core.retry import RetryPolicy, call_with_retry
from finops_provider.hooks._sql import Fault, SqlSession, rate_card_for
from finops_provider.hooks.aws_cost_explorer import is_retryable_aws, refused_credentials

PLATFORM = "redshift"
SOURCE = "redshift"
UNLABELLED = "(unallocated)"
#: what the Serverless connection's principal needs (named when its credentials are refused)
SERVERLESS_NEEDS = (
    "a database user that can read SYS_SERVERLESS_USAGE and SYS_QUERY_HISTORY; with iam=true, "
    "redshift-serverless:GetCredentials or redshift:GetClusterCredentials for its AWS connection"
)
#: SQLSTATE classes / codes of a connection the server ended or could not accept yet (08: connection exception,
#: 57P01-57P03: admin shutdown / crash shutdown / cannot connect now, 53300: too many connections)
_RETRY_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")
_CREDENTIAL_SQLSTATES = ("28000", "28P01")  # invalid authorization specification / invalid password


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a server error as redshift_connector raises it (``args[0]`` is the ErrorResponse fields)."""
    fields = exc.args[0] if exc.args else None
    code = fields.get("C") if isinstance(fields, dict) else None
    return code if isinstance(code, str) else None


def _raised_in_driver(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "redshift_connector" in tb.tb_frame.f_code.co_filename


def redshift_fault(exc: BaseException) -> Fault | None:
    """Classify an error of a redshift_connector session (and of the IAM token request before it).

    * SQLSTATE 28000 / 28P01 (wrong or expired password, a user not allowed to log in, an IAM token the server
      refused) and AWS refusing keys (``GetClusterCredentials`` / ``GetCredentials``): :attr:`Fault.CREDENTIALS`.
    * The network: redshift_connector wraps socket errors while connecting as ``InterfaceError("communication
      error", OSError)`` / ``OperationalError("connection time out", timeout)`` and a closed socket as
      ``InterfaceError("BrokenPipe: server socket closed ...")``, but raises a socket timeout or reset *during a
      query* unwrapped (``TimeoutError``, ``ConnectionResetError``) and a message cut short by an orderly close as
      ``struct.error`` from its parser. All of these, the 08 / 57P0x / 53300 SQLSTATEs and AWS throttling / 5xx:
      :attr:`Fault.RETRY` (on a new connection).
    * Anything else (SQL errors, a bad configuration): ``None``, raised unchanged.
    """
    state = _sqlstate(exc)
    if state is not None:
        if state in _CREDENTIAL_SQLSTATES:
            return Fault.CREDENTIALS
        return Fault.RETRY if state.startswith(_RETRY_SQLSTATES) else None
    if isinstance(getattr(exc, "response", None), dict):  # botocore ClientError of the IAM token request
        if refused_credentials(exc, "Redshift", None, "") is not None:
            return Fault.CREDENTIALS
        return Fault.RETRY if is_retryable_aws(exc) else None
    if type(exc).__module__.startswith("botocore") and is_retryable_aws(exc):  # endpoint / read timeouts of AWS
        return Fault.RETRY
    from redshift_connector import InterfaceError, OperationalError  # the amazon provider's dependency

    if isinstance(exc, (InterfaceError, OperationalError)):
        if any(isinstance(a, OSError) for a in exc.args):
            return Fault.RETRY
        text = str(exc.args[0]) if exc.args else ""
        if text.startswith("BrokenPipe") or text == "connection is closed":
            return Fault.RETRY
        if "no password was provided" in text:
            return Fault.CREDENTIALS
        return None
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return Fault.RETRY
    if isinstance(exc, struct.error) and _raised_in_driver(exc):
        return Fault.RETRY
    return None


class RedshiftCostHook(AwsBaseHook):
    """Redshift provisioned and Serverless compute cost.

    :param aws_conn_id: the amazon provider connection (default ``aws_default``).
    :param redshift_conn_id: a ``redshift`` SQL connection for Serverless usage (``SYS_*`` views).
    :param connection: a DB-API connection to use for the Serverless SQL instead (the SQL seam).
    :param retry_policy: backoff for throttling / 5xx / timeouts of the Redshift API (botocore's own retries are off)
        and for dropped / refused / timed-out Serverless SQL connections (the provider's own ``get_conn`` retries
        are bypassed, so this is the one policy).
    :param sleep: how backoff waits (the tests' seam).
    """

    conn_name_attr = "aws_conn_id"
    default_conn_name = "aws_default"
    conn_type = "aws"
    hook_name = "Amazon Redshift costs (FinOps)"

    def __init__(
        self,
        *,
        aws_conn_id: str | None = default_conn_name,
        redshift_conn_id: str | None = None,
        rate_card: RateCard | None = None,
        connection: Any = None,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        **kwargs: Any,
    ) -> None:
        if "config" not in kwargs:
            from botocore.config import Config

            # our backoff is the one retry policy; botocore's own retries would multiply requests
            kwargs["config"] = Config(retries={"total_max_attempts": 1, "mode": "standard"})
        super().__init__(aws_conn_id=aws_conn_id, client_type="redshift", **kwargs)
        self.redshift_conn_id = redshift_conn_id
        self.rate_card = rate_card or RateCard.load()
        self._dbapi = connection
        self.retry_policy = retry_policy or RetryPolicy()
        self.sleep = sleep
        self.requests_made = 0

    def clusters(self) -> list[dict[str, Any]]:
        """Every provisioned cluster (``DescribeClusters``, following ``Marker``; each page retried on its own).

        :raises CredentialsError: when AWS refuses the connection's credentials (names the connection).
        """
        out: list[dict[str, Any]] = []
        marker: str | None = None
        while True:
            params = {"Marker": marker} if marker else {}

            def once(params: dict[str, Any] = params) -> dict[str, Any]:
                self.requests_made += 1
                return self.conn.describe_clusters(**params)  # type: ignore[no-any-return]

            try:
                page = call_with_retry(
                    once, what="Redshift DescribeClusters", is_retryable=is_retryable_aws, policy=self.retry_policy,
                    sleep=self.sleep,
                )  # fmt: skip
            except Exception as e:
                refused = refused_credentials(e, "Redshift", self.aws_conn_id, "redshift:DescribeClusters")
                if refused is not None:
                    raise refused from e
                raise
            out.extend(page.get("Clusters", []))
            marker = page.get("Marker")
            if not marker:
                return out

    def _record(
        self, day: dt.datetime, cost: Money, qty: Decimal, unit: str, sku: str, *, line: str, tags: dict[str, str],
        description: str, resource_id: str, resource_type: str,
    ) -> CostRecord:  # fmt: skip
        amount = ledger_amount(cost.amount)
        return build_record(
            billed_cost=amount,
            effective_cost=amount,
            list_cost=amount,
            billing_currency=cost.currency,
            charge_period_start=day,
            charge_period_end=day + dt.timedelta(days=1),
            charge_category="Usage",
            charge_description=description,
            pricing_quantity=ledger_amount(qty),
            pricing_unit=unit,
            provider_name="AWS",
            publisher_name="Amazon Web Services, Inc.",
            invoice_issuer_name="Amazon Web Services, Inc.",
            service_name="Amazon Redshift",
            service_category="Databases",
            sku_id=sku,
            resource_id=resource_id,
            resource_type=resource_type,
            tags=tags,
            x_line_item_id=f"{line}|{day.date().isoformat()}",
            x_source=SOURCE,
            x_platform=PLATFORM,
            x_cost_kind="billed",
        )

    def collect_provisioned(
        self, start: dt.datetime, end: dt.datetime, *, now: dt.datetime | None = None
    ) -> CollectResult:
        """Node-hours per cluster and UTC day of ``[start, end)``; paused clusters contribute nothing."""
        start, end = utc(start), utc(end)
        now = utc(now) if now else dt.datetime.now(dt.UTC)
        res = CollectResult(source=SOURCE, window=(start, end), scope="redshift:provisioned")
        for n, c in enumerate(self.clusters(), start=1):
            status = str(c.get("ClusterStatus", "")).lower()
            if status in ("paused", "pausing", "deleting"):
                res.notes.append(f"{c['ClusterIdentifier']}: {status}, no compute cost")
                continue
            try:
                self.rate_card.price(PLATFORM, c["NodeType"], on=start.date())
            except PriceNotFoundError as e:  # quarantined in the same ledger batch; the other clusters land
                raw = {k: str(c.get(k)) for k in ("ClusterIdentifier", "NodeType", "NumberOfNodes", "ClusterStatus")}
                reason = f"cluster {c.get('ClusterIdentifier')}: {e}; add the node type under rate_cards.overrides"
                res.bad_rows.append(BadRow(n, "NodeType", reason, raw))
                continue
            born = utc(c["ClusterCreateTime"]) if c.get("ClusterCreateTime") else start
            nodes = int(c.get("NumberOfNodes") or 1)
            tags = {t["Key"]: t["Value"] for t in c.get("Tags", [])}
            d = start.replace(hour=0, minute=0, second=0, microsecond=0)
            while d < end:
                hours = hours_between(max(born, d, start), min(d + dt.timedelta(days=1), end, now))
                if hours > 0:
                    price = self.rate_card.price(PLATFORM, c["NodeType"], on=d.date())
                    with localcontext(MONEY_CONTEXT):
                        qty = hours * nodes
                    res.records.append(
                        self._record(
                            d, price.cost(qty), qty, price.unit, c["NodeType"],
                            line=f"cluster|{c['ClusterIdentifier']}",
                            tags=tags, description=f"{nodes} x {c['NodeType']} x {hours} h ({status})",
                            resource_id=c["ClusterIdentifier"], resource_type="cluster",
                        )
                    )  # fmt: skip
                d += dt.timedelta(days=1)
        res.requests = self.requests_made
        return res

    def _connect_serverless(self) -> Any:
        """A new redshift_connector connection from the ``redshift`` Airflow connection.

        ``RedshiftSQLHook.get_conn`` carries its own tenacity retry (5 attempts, exponential waits up to 20 s, on
        every ``InterfaceError`` / ``OperationalError``, which includes SQLSTATE 28000, a refused login): inside
        our retries it would multiply the attempts and retry refused credentials for ~15 s. The undecorated
        method runs instead, so :attr:`retry_policy` is the one policy.
        """
        from airflow.providers.amazon.aws.hooks.redshift_sql import RedshiftSQLHook

        sql_hook = RedshiftSQLHook(redshift_conn_id=self.redshift_conn_id)
        if "timeout" not in sql_hook.conn.extra_dejson:
            self.log.warning(
                "Redshift connection %r sets no socket timeout: a stalled server would block this task; set its "
                "extra 'timeout' (seconds)", self.redshift_conn_id,
            )  # fmt: skip
        try:
            return inspect.unwrap(RedshiftSQLHook.get_conn)(sql_hook)
        except Exception as e:  # with iam=true, AWS may refuse the AWS connection's keys before any login
            refused = refused_credentials(
                e, f"Redshift (the IAM login of connection {self.redshift_conn_id!r})", sql_hook.aws_conn_id,
                "redshift:GetClusterCredentials, or redshift-serverless:GetCredentials for Serverless",
            )  # fmt: skip
            if refused is not None:
                raise refused from None
            raise

    @cached_property
    def _serverless_sql(self) -> SqlSession:
        if self._dbapi is None and not self.redshift_conn_id:
            raise ValueError("Serverless usage needs redshift_conn_id= (a redshift SQL connection) or connection=")
        return SqlSession(
            self._connect_serverless,
            classify=redshift_fault,
            what="Redshift Serverless SQL",
            conn_id=self.redshift_conn_id,
            needs=SERVERLESS_NEEDS,
            connection=self._dbapi,
            policy=self.retry_policy,
            sleep=self.sleep,
        )

    def _rows(self, sql: str) -> list[dict[str, Any]]:
        return self._serverless_sql.rows(sql)

    def collect_serverless(self, start: dt.datetime, end: dt.datetime, *, workgroup: str = "default") -> CollectResult:
        """RPU-hours per day from SYS_SERVERLESS_USAGE, split by query_label share of elapsed time.

        Both statements are read before any record is built: a failure leaves nothing to ingest.

        :raises CredentialsError: the database or AWS (IAM token) refused the connection's credentials.
        :raises RetryExhaustedError: the connection kept dropping, timing out or being refused.
        """
        start, end = utc(start), utc(end)
        s, e = sql_timestamp(start), sql_timestamp(end)
        sent_before = self._serverless_sql.attempts
        usage = self._rows(
            "SELECT DATE_TRUNC('day', start_time) AS usage_day, SUM(charged_seconds) AS charged_seconds "
            f"FROM sys_serverless_usage WHERE start_time >= {s} AND start_time < {e} GROUP BY 1"
        )
        labels = self._rows(
            "SELECT DATE_TRUNC('day', start_time) AS usage_day, query_label, SUM(elapsed_time) AS elapsed "
            f"FROM sys_query_history WHERE start_time >= {s} AND start_time < {e} GROUP BY 1, 2"
        )
        weights: dict[dt.datetime, dict[str, Decimal]] = defaultdict(dict)
        for r in labels:
            label = (r.get("query_label") or "").strip() or UNLABELLED
            if label.lower() == "default":  # the query group when none was set
                label = UNLABELLED
            w = weights[utc(r["usage_day"])]
            w[label] = w.get(label, Decimal(0)) + to_decimal(r["elapsed"] or 0)
        res = CollectResult(
            source=SOURCE, window=(start, end), scope=f"redshift:serverless:{workgroup}",
            requests=self._serverless_sql.attempts - sent_before,  # statements sent, retries included
        )  # fmt: skip
        for r in usage:
            day = utc(r["usage_day"])
            price = self.rate_card.price(PLATFORM, "SERVERLESS_RPU_HOUR", on=day.date())
            with localcontext(MONEY_CONTEXT):
                rpu_hours = to_decimal(r["charged_seconds"] or 0) / Decimal(3600)
            total = price.cost(rpu_hours)
            shares = split_shared(total, weights.get(day) or {UNLABELLED: Decimal(1)})
            for label, cost in shares.items():
                with localcontext(MONEY_CONTEXT):
                    qty = rpu_hours * cost.amount / total.amount if total.amount else Decimal(0)
                tags = {} if label == UNLABELLED else parse_tag_text(label)
                res.records.append(
                    self._record(
                        day, cost, qty, price.unit, "SERVERLESS_RPU_HOUR", line=f"serverless|{workgroup}|{label}",
                        tags=tags, description=f"Serverless RPU-hours, query group {label} share of elapsed time",
                        resource_id=workgroup, resource_type="workgroup",
                    )
                )  # fmt: skip
        return res

    def estimate_run(self, task: TaskTry, *, base_rpus: int = 8, workgroup: str = "default") -> CostRecord:
        """Serverless estimate of a task: base RPU capacity x task duration (at least 60 s) x RPU-hour price.

        An upper bound when the workgroup runs other queries at the same time (they share the RPUs).
        """
        seconds = max(Decimal(60), hours_between(task.start, task.end) * 3600)
        with localcontext(MONEY_CONTEXT):
            rpu_hours = Decimal(base_rpus) * seconds / Decimal(3600)
        price = self.rate_card.price(PLATFORM, "SERVERLESS_RPU_HOUR", on=task.start.date())
        return estimate_record(
            task,
            platform=PLATFORM,
            cost=price.cost(rpu_hours),
            quantity=rpu_hours,
            unit=price.unit,
            sku="SERVERLESS_RPU_HOUR",
            description=f"{base_rpus} base RPUs x {seconds} s",
            price_text=price.describe(),
            resource_id=workgroup,
            service_name="Amazon Redshift",
        )

    def test_connection(self) -> tuple[bool, str]:
        try:
            self.conn.describe_clusters(MaxRecords=20)
            return True, "DescribeClusters reachable"
        except Exception as e:
            return False, f"{type(e).__name__}: {str(e)[:200]}"


def collect_redshift(
    ledger: Ledger,
    config: FinOpsConfig,
    start: dt.datetime,
    end: dt.datetime,
    *,
    conn_id: str | None = None,
    region_name: str | None = None,
    redshift_conn_id: str | None = None,
    workgroup: str = "default",
    now: dt.datetime | None = None,
    hook: RedshiftCostHook | None = None,
    **_: Any,
) -> tuple[CollectResult, IngestResult]:
    """Collector ``redshift``: provisioned node-hours, plus Serverless RPU-hours when a SQL connection is given."""
    hook = hook or RedshiftCostHook(
        aws_conn_id=conn_id or "aws_default", region_name=region_name, redshift_conn_id=redshift_conn_id,
        rate_card=rate_card_for(config),
    )  # fmt: skip
    res = hook.collect_provisioned(start, end, now=now)
    ing = ingest_collected(ledger, config, res)
    if hook.redshift_conn_id or hook._dbapi is not None:
        sres = hook.collect_serverless(start, end, workgroup=workgroup)
        sing = ingest_collected(ledger, config, sres)
        res.records.extend(sres.records)
        for k in ("inserted", "restated", "unchanged", "removed", "quarantined", "rows_in"):
            setattr(ing, k, getattr(ing, k) + getattr(sing, k))
    return res, ing
