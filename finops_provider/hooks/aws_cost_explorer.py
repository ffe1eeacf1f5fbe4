"""AWS Cost Explorer hook: grouped, paginated, throttling-aware, normalized to FOCUS cost records.

Built on the amazon provider's :class:`AwsBaseHook` (``client_type="ce"``): auth, assume-role and
connection handling are the provider's. One grouped ``GetCostAndUsage`` query per window returns the
costs of every tag value at once (N jobs cost pages, not N requests); AWS charges $0.01 per request page.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

from finops_provider.collect import CollectResult, CredentialsError
from finops_provider.core.focus import BadRow
from finops_provider.core.records import CostRecord, RecordError, build_record
from finops_provider.core.retry import RetryPolicy, call_with_retry

#: Cost Explorer metric -> FOCUS cost column
METRIC_COLUMNS = {
    "UnblendedCost": "billed_cost",
    "AmortizedCost": "effective_cost",
    "NetAmortizedCost": "effective_cost",
    "NetUnblendedCost": "effective_cost",
    "BlendedCost": "list_cost",
}
_RETRYABLE_CODES = {
    "ThrottlingException",
    "Throttling",
    "LimitExceededException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalServerError",
    "InternalFailure",
}


#: error codes meaning the connection's credentials were refused (renewing them is the fix, retrying is not)
_CREDENTIAL_CODES = {
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "AccessDeniedException",
}


def aws_error_code(exc: BaseException) -> str:
    """The ``Error.Code`` of a botocore ``ClientError`` (``""`` for anything else)."""
    resp = getattr(exc, "response", None)
    return str(resp.get("Error", {}).get("Code", "")) if isinstance(resp, dict) else ""


def refused_credentials(
    exc: BaseException, service: str, conn_id: str | None, needs: str, also: frozenset[str] = frozenset()
) -> CredentialsError | None:
    """The error to raise when an AWS call failed because ``conn_id``'s credentials were refused, else ``None``.

    :param also: the service's own refusal codes beside the AWS-wide ones (S3: ``AccessDenied``, ...).
    """
    code = aws_error_code(exc)
    if code not in _CREDENTIAL_CODES and code not in also:
        return None
    return CredentialsError(
        f"{service} refused the credentials of connection {conn_id!r} ({code}); renew or fix that connection's "
        f"keys / role (it needs {needs})"
    )


def is_retryable_aws(exc: BaseException) -> bool:
    """Throttling, 5xx and connection errors of an AWS client (shared by the Cost Explorer, S3 and Redshift hooks)."""
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):
        code = resp.get("Error", {}).get("Code", "")
        status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in _RETRYABLE_CODES or (isinstance(status, int) and status >= 500)
    name = type(exc).__name__
    return name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError")


def _day(d: dt.date | dt.datetime | str) -> dt.date:
    if isinstance(d, dt.datetime):
        return d.astimezone(dt.UTC).date() if d.tzinfo else d.date()
    if isinstance(d, dt.date):
        return d
    return dt.date.fromisoformat(str(d)[:10])


def _as_datetime(d: dt.date | dt.datetime | str) -> dt.datetime:
    if isinstance(d, str):
        d = dt.datetime.fromisoformat(d.replace("Z", "+00:00"))
    if not isinstance(d, dt.datetime):
        d = dt.datetime(d.year, d.month, d.day)
    return d.replace(tzinfo=dt.UTC) if d.tzinfo is None else d.astimezone(dt.UTC)


class AwsCostExplorerHook(AwsBaseHook):
    """Cost Explorer ``GetCostAndUsage`` grouped by a cost-allocation tag (and a dimension such as SERVICE).

    :param aws_conn_id: the amazon provider connection (default ``aws_default``).
    :param retry_policy: backoff for ThrottlingException / LimitExceeded / 5xx.
    """

    conn_name_attr = "aws_conn_id"
    default_conn_name = "aws_default"
    conn_type = "aws"
    hook_name = "AWS Cost Explorer (FinOps)"

    def __init__(
        self,
        *,
        aws_conn_id: str | None = default_conn_name,
        region_name: str | None = "us-east-1",
        retry_policy: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        if "config" not in kwargs:
            from botocore.config import Config

            # our backoff is the one retry policy; botocore's own retries would multiply requests
            kwargs["config"] = Config(retries={"total_max_attempts": 1, "mode": "standard"})
        super().__init__(aws_conn_id=aws_conn_id, client_type="ce", region_name=region_name, **kwargs)
        self.retry_policy = retry_policy or RetryPolicy()
        self.requests_made = 0

    def _call(self, **params: Any) -> dict[str, Any]:
        def once() -> dict[str, Any]:
            self.requests_made += 1
            return self.conn.get_cost_and_usage(**params)  # type: ignore[no-any-return]

        try:
            return call_with_retry(
                once, what="Cost Explorer GetCostAndUsage", is_retryable=is_retryable_aws, policy=self.retry_policy
            )
        except Exception as e:
            refused = refused_credentials(e, "Cost Explorer", self.aws_conn_id, "ce:GetCostAndUsage")
            if refused is not None:
                raise refused from e
            raise

    def iter_results(
        self,
        start: dt.date | dt.datetime | str,
        end: dt.date | dt.datetime | str,
        *,
        granularity: str = "DAILY",
        metrics: Sequence[str] = ("UnblendedCost", "AmortizedCost"),
        group_by: Sequence[dict[str, str]] = (),
        filter_expression: dict[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield every ``ResultsByTime`` entry, following ``NextPageToken``."""
        fmt = "%Y-%m-%dT%H:%M:%SZ" if granularity == "HOURLY" else "%Y-%m-%d"
        s: dt.date = _day(start) if granularity != "HOURLY" else _as_datetime(start)
        e: dt.date = _day(end) if granularity != "HOURLY" else _as_datetime(end)
        params: dict[str, Any] = {
            "TimePeriod": {"Start": s.strftime(fmt), "End": e.strftime(fmt)},
            "Granularity": granularity,
            "Metrics": list(metrics),
        }
        if group_by:
            params["GroupBy"] = list(group_by)
        if filter_expression:
            params["Filter"] = filter_expression
        token: str | None = None
        while True:
            page = self._call(**params, **({"NextPageToken": token} if token else {}))
            yield from page.get("ResultsByTime", [])
            token = page.get("NextPageToken")
            if not token:
                break

    def collect(
        self,
        start: dt.date | dt.datetime | str,
        end: dt.date | dt.datetime | str,
        *,
        tag_key: str,
        tag_values: Sequence[str] | None = None,
        dimension: str | None = "SERVICE",
        granularity: str = "DAILY",
        cost_metric: str = "UnblendedCost",
        effective_metric: str = "AmortizedCost",
    ) -> CollectResult:
        """Costs per tag value (and ``dimension``) for ``[start, end)`` as FOCUS records.

        Untagged spend (``<tag>$`` key) becomes a record with no tag: the explicit unallocated row.
        ``Estimated`` periods are marked ``x_provisional``; re-collecting the window restates them.

        :return: :class:`CollectResult` with records and the number of API requests made.
        """
        if cost_metric not in METRIC_COLUMNS or effective_metric not in METRIC_COLUMNS:
            raise ValueError(f"metrics must be among {sorted(METRIC_COLUMNS)}")
        group_by = [{"Type": "TAG", "Key": tag_key}]
        if dimension:
            group_by.append({"Type": "DIMENSION", "Key": dimension})
        flt = {"Tags": {"Key": tag_key, "Values": list(tag_values), "MatchOptions": ["EQUALS"]}} if tag_values else None
        before = self.requests_made
        res = CollectResult(source="aws-ce")
        account = None
        for period in self.iter_results(
            start,
            end,
            granularity=granularity,
            metrics=sorted({cost_metric, effective_metric}),
            group_by=group_by,
            filter_expression=flt,
        ):
            for item in self._period_records(
                period, tag_key, dimension, granularity, cost_metric, effective_metric, account
            ):
                if isinstance(item, BadRow):  # quarantined in the same ledger batch; the valid groups land
                    res.bad_rows.append(item)
                else:
                    res.records.append(item)
        res.requests = self.requests_made - before
        res.provisional = sum(1 for r in res.records if r.x_provisional)
        s, e = _day(start), _day(end)
        res.window = (
            dt.datetime(s.year, s.month, s.day, tzinfo=dt.UTC),
            dt.datetime(e.year, e.month, e.day, tzinfo=dt.UTC),
        )
        res.scope = f"aws-ce:{tag_key}:{dimension or '-'}:{granularity}" + (
            f":{','.join(sorted(tag_values))}" if tag_values else ""
        )
        self.log.info(
            "Cost Explorer %s..%s by tag %s: %d records (%d provisional) in %d request(s)",
            s,
            e,
            tag_key,
            len(res.records),
            res.provisional,
            res.requests,
        )
        return res

    def _period_records(
        self,
        period: dict[str, Any],
        tag_key: str,
        dimension: str | None,
        granularity: str,
        cost_metric: str,
        effective_metric: str,
        account: str | None,
    ) -> Iterator[CostRecord | BadRow]:
        tp = period["TimePeriod"]
        estimated = bool(period.get("Estimated", False))
        for n, g in enumerate(period.get("Groups", []), start=1):
            keys = g.get("Keys", [])
            tag_part = keys[0] if keys else ""
            value = tag_part.split("$", 1)[1] if "$" in tag_part else tag_part
            dim_value = keys[1] if len(keys) > 1 else None
            metrics = g.get("Metrics", {})
            cost = metrics.get(cost_metric) or {"Amount": "0", "Unit": "USD"}
            eff = metrics.get(effective_metric) or cost
            cost, eff = (m if isinstance(m, dict) else {"Amount": m} for m in (cost, eff))  # wrong types: bad rows
            try:
                yield build_record(
                    billed_cost=cost.get("Amount"),
                    effective_cost=eff.get("Amount"),
                    billing_currency=cost.get("Unit", "USD"),
                    charge_period_start=tp["Start"],
                    charge_period_end=tp["End"],
                    provider_name="AWS",
                    publisher_name="Amazon Web Services, Inc.",
                    invoice_issuer_name="Amazon Web Services, Inc.",
                    service_name=dim_value if dimension == "SERVICE" else None,
                    sub_account_id=dim_value if dimension == "LINKED_ACCOUNT" else None,
                    region_id=dim_value if dimension == "REGION" else None,
                    charge_category="Usage",
                    charge_description=f"Cost Explorer {granularity.lower()} {cost_metric}",
                    tags={tag_key: value} if value else {},
                    x_source="aws-ce",
                    x_platform="aws",
                    x_cost_kind="billed",
                    x_provisional=estimated,
                    x_line_item_id=f"{granularity}|{tag_key}={value}|{dimension}={dim_value}",
                )
            except RecordError as e:
                yield BadRow(
                    n,  # the group's position in its period
                    e.field,
                    f"Cost Explorer group {keys!r} in {tp}: {e.message}",
                    {"TimePeriod": tp, "Keys": keys, "Metrics": metrics},
                )

    def test_connection(self) -> tuple[bool, str]:
        """Make one cheap Cost Explorer call (one day, no grouping)."""
        try:
            today = dt.date.today()
            next(self.iter_results(today - dt.timedelta(days=1), today, metrics=("UnblendedCost",)), None)
            return True, "Cost Explorer reachable"
        except Exception as e:
            return False, f"{type(e).__name__}: {str(e)[:200]}"
