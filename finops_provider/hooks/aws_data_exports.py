"""AWS Data Exports (CUR 2.0 or FOCUS 1.2 export) read from S3 through the amazon provider's S3Hook.

An export delivers a billing period under ``s3://bucket/prefix/<name>/data/BILLING_PERIOD=YYYY-MM/``; each
delivery supersedes the previous one for that period, so a collection replaces the whole billing period in
the ledger (restated lines replace, vanished lines are removed with an audit entry, nothing doubles).
CUR 2.0 columns are translated to FOCUS here; FOCUS exports go through the core reader unchanged.

Every S3 request (the listing, one ``GetObject`` per file) runs under the hook's one retry policy
(:func:`~finops_provider.core.retry.call_with_retry`; botocore's own retries are off, the connection's other
botocore settings such as timeouts are kept): 503 SlowDown, 500 InternalError, timeouts, dropped connections and a
body cut short (fewer bytes than its Content-Length) are retried, the file is downloaded again from its first byte.
Refused credentials raise ``CredentialsError`` naming the connection, not retried. A billing period is handed to
the ledger only when every one of its files arrived whole.
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook

from finops_provider.collect import CollectResult
from finops_provider.core.focus import BadRow, read_focus
from finops_provider.core.money import MoneyError, to_decimal
from finops_provider.core.records import CostRecord, RecordError, build_record
from finops_provider.core.retry import RetryPolicy, call_with_retry
from finops_provider.hooks.aws_cost_explorer import aws_error_code, is_retryable_aws, refused_credentials

if TYPE_CHECKING:
    from botocore.config import Config

#: what the connection's principal needs on the export bucket (named when its credentials are refused)
S3_NEEDS = "s3:ListBucket and s3:GetObject on the export bucket"
#: S3's own codes for refused credentials, beside the AWS-wide ones :func:`refused_credentials` knows
_S3_CREDENTIAL_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "InvalidToken", "TokenRefreshRequired"})
#: S3's own codes of a transient failure (SlowDown is a 503, InternalError a 500, RequestTimeout a 400: the
#: connection sat idle too long)
_S3_RETRYABLE_CODES = frozenset({"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"})
_PERIOD_RE = re.compile(r"BILLING_PERIOD=(\d{4})-(\d{2})")
#: CUR 2.0 line_item_line_item_type -> FOCUS ChargeCategory
CHARGE_CATEGORY = {
    "Usage": "Usage",
    "DiscountedUsage": "Usage",
    "SavingsPlanCoveredUsage": "Usage",
    "SavingsPlanNegation": "Adjustment",
    "Credit": "Credit",
    "Refund": "Credit",
    "BundledDiscount": "Credit",
    "EdpDiscount": "Credit",
    "PrivateRateDiscount": "Credit",
    "Tax": "Tax",
    "Fee": "Purchase",
    "RIFee": "Purchase",
    "SavingsPlanRecurringFee": "Purchase",
    "SavingsPlanUpfrontFee": "Purchase",
}


def _dec(row: Mapping[str, Any], col: str) -> Decimal | None:
    v = row.get(col)
    if v is None or v == "":
        return None
    try:
        return to_decimal(v, field_name=col)
    except MoneyError as e:
        raise RecordError(col, str(e).split(": ", 1)[-1]) from None


def _tags(v: Any) -> dict[str, str]:
    """CUR 2.0 ``resource_tags``: a map (Parquet) or JSON text (CSV); user tags lose their ``user_`` prefix."""
    if not v:
        return {}
    if isinstance(v, str):
        import json

        try:
            v = json.loads(v)
        except ValueError:
            raise RecordError("resource_tags", "not a JSON object; check the export's format") from None
    items = v.items() if isinstance(v, Mapping) else v  # pyarrow maps come as [(k, v), ...]
    out = {}
    for k, val in items:
        key = str(k)
        out[key[5:] if key.startswith("user_") else key] = "" if val is None else str(val)
    return out


def cur2_record(row: Mapping[str, Any]) -> CostRecord:
    """Translate one CUR 2.0 row to a FOCUS record (EffectiveCost from the SP / RI effective cost columns)."""
    kind = str(row.get("line_item_line_item_type") or "Usage")
    billed = _dec(row, "line_item_unblended_cost")
    if kind == "SavingsPlanCoveredUsage":
        effective = _dec(row, "savings_plan_savings_plan_effective_cost")
    elif kind == "DiscountedUsage":
        effective = _dec(row, "reservation_effective_cost")
    elif kind in ("SavingsPlanNegation", "SavingsPlanUpfrontFee", "RIFee"):
        effective = Decimal(0)  # amortized into the covered usage above
    else:
        effective = _dec(row, "line_item_net_unblended_cost")
        effective = billed if effective is None else effective
    return build_record(
        billed_cost=billed,
        effective_cost=effective,
        list_cost=_dec(row, "pricing_public_on_demand_cost"),
        contracted_cost=effective,
        billing_currency=row.get("line_item_currency_code") or "USD",
        charge_period_start=row.get("line_item_usage_start_date"),
        charge_period_end=row.get("line_item_usage_end_date"),
        billing_period_start=row.get("bill_billing_period_start_date"),
        billing_period_end=row.get("bill_billing_period_end_date"),
        billing_account_id=_s(row.get("bill_payer_account_id")),
        billing_account_name=_s(row.get("bill_payer_account_name")),
        sub_account_id=_s(row.get("line_item_usage_account_id")),
        sub_account_name=_s(row.get("line_item_usage_account_name")),
        invoice_id=_s(row.get("bill_invoice_id")),
        charge_category=CHARGE_CATEGORY.get(kind, "Usage"),
        charge_description=_s(row.get("line_item_line_item_description")),
        provider_name="AWS",
        publisher_name=_s(row.get("bill_billing_entity")) or "AWS",
        invoice_issuer_name=_s(row.get("bill_invoicing_entity")) or "Amazon Web Services, Inc.",
        service_name=_s(row.get("product_servicecode") or row.get("line_item_product_code")),
        region_id=_s(row.get("product_region_code")),
        availability_zone=_s(row.get("line_item_availability_zone")),
        resource_id=_s(row.get("line_item_resource_id")),
        sku_id=_s(row.get("line_item_usage_type")),
        pricing_quantity=_dec(row, "line_item_usage_amount"),
        consumed_quantity=_dec(row, "line_item_usage_amount"),
        pricing_unit=_s(row.get("pricing_unit")),
        tags=_tags(row.get("resource_tags")),
        x_line_item_id=_s(row.get("identity_line_item_id")),
        x_source="aws-cur2",
        x_platform="aws",
        x_cost_kind="billed",
    )


def _s(v: Any) -> str | None:
    return None if v is None or v == "" else str(v)


def is_cur2(columns: list[str]) -> bool:
    return "line_item_unblended_cost" in columns and "line_item_usage_start_date" in columns


def read_cur2(path: Path) -> Iterator[CostRecord | BadRow]:
    """Stream a CUR 2.0 Parquet or CSV file as records and bad rows (never raises for one bad row)."""
    if str(path).endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        batches: Iterator[list[dict[str, Any]]] = (b.to_pylist() for b in pq.ParquetFile(path).iter_batches())
    else:
        import csv
        import gzip

        opener = gzip.open if str(path).endswith(".gz") else open
        fh = opener(path, "rt", encoding="utf-8", newline="")
        batches = iter([list(csv.DictReader(fh))])
    n = 0
    for batch in batches:
        for row in batch:
            n += 1
            try:
                yield cur2_record(row)
            except RecordError as e:
                yield BadRow(n, e.field, e.message, {k: str(v)[:200] for k, v in list(row.items())[:60]})


def _columns(path: Path) -> list[str]:
    if str(path).endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    import csv
    import gzip

    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        return next(csv.reader(fh), [])


def s3_retryable(exc: BaseException) -> bool:
    """Throttling, 5xx, timeouts, a dropped connection, a body that ended before its Content-Length, or a body whose
    checksum (``x-amz-checksum-*``, validated by botocore when the object has one) does not match."""
    from botocore.exceptions import FlexibleChecksumError, IncompleteReadError, ResponseStreamingError

    if isinstance(exc, (IncompleteReadError, ResponseStreamingError, FlexibleChecksumError)):
        return True
    return aws_error_code(exc) in _S3_RETRYABLE_CODES or is_retryable_aws(exc)


class AwsDataExportsHook(S3Hook):
    """Reads one billing period of an AWS Data Exports delivery (CUR 2.0 or FOCUS 1.2) from S3.

    :param aws_conn_id: the amazon provider connection (default ``aws_default``).
    :param retry_policy: backoff for throttling / 5xx / timeouts / truncated downloads (botocore's own retries are
        off: this is the one policy).
    :param sleep: how backoff waits (the tests' seam).
    """

    hook_name = "AWS Data Exports (FinOps)"

    def __init__(
        self,
        *,
        aws_conn_id: str | None = S3Hook.default_conn_name,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        **kwargs: Any,
    ) -> None:
        super().__init__(aws_conn_id=aws_conn_id, **kwargs)
        self.retry_policy = retry_policy or RetryPolicy()
        self.sleep = sleep
        self.requests_made = 0

    @property
    def config(self) -> Config:
        """The connection's botocore config (``config_kwargs`` extra: timeouts, addressing) with its retries off.

        botocore's standard mode would retry 503 / 500 / timeouts up to 3 times with its own sleeps inside each of
        our attempts; one policy keeps the number of requests bounded and known.
        """
        from botocore.config import Config

        return super().config.merge(Config(retries={"total_max_attempts": 1, "mode": "standard"}))

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        def once() -> Any:
            self.requests_made += 1
            return fn()

        try:
            return call_with_retry(once, what=what, is_retryable=s3_retryable, policy=self.retry_policy,
                                   sleep=self.sleep)  # fmt: skip
        except Exception as e:
            refused = refused_credentials(e, "S3", self.aws_conn_id, S3_NEEDS, also=_S3_CREDENTIAL_CODES)
            if refused is not None:
                raise refused from None  # S3's error document can carry the access key id and the string to sign
            raise

    def _download(self, bucket: str, key: str, local: Path) -> None:
        """One ``GetObject`` streamed to ``local`` (overwritten); raises unless every byte of Content-Length came."""
        from botocore.exceptions import IncompleteReadError

        resp = self.conn.get_object(Bucket=bucket, Key=key)
        body, expected, got = resp["Body"], resp.get("ContentLength"), 0
        try:
            with open(local, "wb") as fh:
                for chunk in body.iter_chunks(1 << 20):  # botocore also checks the length at the end of the body
                    fh.write(chunk)
                    got += len(chunk)
        finally:
            body.close()
        if expected is not None and got != expected:
            raise IncompleteReadError(actual_bytes=got, expected_bytes=expected)

    def collect_period(self, bucket: str, prefix: str, billing_period: str | None = None) -> CollectResult:
        """Read every data file of a delivery under ``prefix`` (optionally one ``BILLING_PERIOD=YYYY-MM``)."""
        sent_before = self.requests_made
        listed = self._call(f"S3 ListObjectsV2 s3://{bucket}/{prefix}",
                            lambda: self.list_keys(bucket_name=bucket, prefix=prefix))  # fmt: skip
        keys = [
            k
            for k in (listed or [])
            if k.endswith((".parquet", ".csv", ".csv.gz"))
            and (billing_period is None or f"BILLING_PERIOD={billing_period}" in k)
        ]
        res = CollectResult(source="aws-data-exports", scope=f"aws-data-exports:{bucket}/{prefix}")
        periods = {m.groups() for k in keys if (m := _PERIOD_RE.search(k))}
        if len(periods) == 1:
            y, mth = (int(x) for x in next(iter(periods)))
            start = dt.datetime(y, mth, 1, tzinfo=dt.UTC)
            res.window = (start, (start + dt.timedelta(days=32)).replace(day=1))
            res.scope += f":{y:04d}-{mth:02d}"
        with tempfile.TemporaryDirectory(prefix="finops-exports-") as tmp:
            for i, key in enumerate(sorted(keys)):
                local = Path(tmp) / f"{i}-{Path(key).name}"
                self._call(f"S3 GetObject s3://{bucket}/{key}", partial(self._download, bucket, key, local))
                rows = read_cur2(local) if is_cur2(_columns(local)) else read_focus(local)
                for item in rows:
                    if isinstance(item, BadRow):
                        res.bad_rows.append(item)
                    else:
                        item.x_source = "aws-data-exports"
                        res.records.append(item)
        res.requests = self.requests_made - sent_before  # list + one GetObject per file, retries included
        self.log.info(
            "AWS Data Exports s3://%s/%s: %d files, %d rows, %d bad",
            bucket, prefix, len(keys), len(res.records), len(res.bad_rows),
        )  # fmt: skip
        return res


def collect_aws_exports(
    ledger: Any,
    config: Any,
    start: dt.datetime,
    end: dt.datetime,
    *,
    conn_id: str | None = None,
    bucket: str,
    prefix: str,
    hook: AwsDataExportsHook | None = None,
    **_: Any,
) -> tuple[CollectResult, Any]:
    """Collect every billing period of the export touched by ``[start, end)``; each period replaces itself.

    A period is ingested only after all of its files were read whole; a failure raises before that period is
    written (the periods before it stay, each complete).
    """
    from finops_provider.collect import ingest_collected

    hook = hook or AwsDataExportsHook(aws_conn_id=conn_id or "aws_default")
    month = dt.datetime(start.year, start.month, 1, tzinfo=dt.UTC)
    total = CollectResult(source="aws-data-exports", scope=f"aws-data-exports:{bucket}/{prefix}")
    last = None
    while month < end:
        res = hook.collect_period(bucket, prefix, f"{month:%Y-%m}")
        total.requests += res.requests
        total.records.extend(res.records)
        total.bad_rows.extend(res.bad_rows)
        if res.records or res.bad_rows or res.window:
            last = ingest_collected(ledger, config, res)
        month = (month + dt.timedelta(days=32)).replace(day=1)
    if last is None:
        last = ledger.ingest([], source="aws-data-exports")
    return total, last
