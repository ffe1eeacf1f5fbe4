"""AWS Data Exports (CUR 2.0 and FOCUS) from moto's S3 through the S3Hook, into the ledger."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.ledger import Ledger

PREFIX = "exports/cur2/data"


def _cur_table(rows: list[dict]) -> pa.Table:
    base = {
        "identity_line_item_id": None,
        "line_item_line_item_type": "Usage",
        "line_item_unblended_cost": None,
        "line_item_net_unblended_cost": None,
        "savings_plan_savings_plan_effective_cost": None,
        "reservation_effective_cost": None,
        "pricing_public_on_demand_cost": None,
        "line_item_currency_code": "USD",
        "line_item_usage_start_date": None,
        "line_item_usage_end_date": None,
        "bill_billing_period_start_date": "2026-10-01T00:00:00Z",
        "bill_billing_period_end_date": "2026-11-01T00:00:00Z",
        "bill_payer_account_id": "111122223333",
        "line_item_usage_account_id": "444455556666",
        "product_servicecode": "AmazonEC2",
        "product_region_code": "us-east-1",
        "line_item_resource_id": "i-0abc",
        "line_item_usage_type": "BoxUsage:m5.xlarge",
        "line_item_usage_amount": "1",
        "pricing_unit": "Hrs",
        "resource_tags": [],
    }
    full = [{**base, **r} for r in rows]
    cols = {k: [r[k] for r in full] for k in base}
    fields = [pa.field(k, pa.map_(pa.string(), pa.string()) if k == "resource_tags" else pa.string()) for k in base]
    return pa.table(cols, schema=pa.schema(fields))


ROWS = [
    {
        "identity_line_item_id": "li-1",
        "line_item_unblended_cost": "0.1920000000",
        "line_item_usage_start_date": "2026-10-03T00:00:00Z",
        "line_item_usage_end_date": "2026-10-03T01:00:00Z",
        "pricing_public_on_demand_cost": "0.192",
        "resource_tags": [("user_team", "data-eng"), ("user_airflow_dag_id", "ingest_orders")],
    },
    {
        "identity_line_item_id": "li-2",
        "line_item_line_item_type": "SavingsPlanCoveredUsage",
        "line_item_unblended_cost": "0.384",
        "savings_plan_savings_plan_effective_cost": "0.2611200000",
        "line_item_usage_start_date": "2026-10-03T01:00:00Z",
        "line_item_usage_end_date": "2026-10-03T02:00:00Z",
        "resource_tags": [("user_team", "ml-platform")],
    },
    {
        "identity_line_item_id": "li-3",
        "line_item_line_item_type": "Credit",
        "line_item_unblended_cost": "-5.00",
        "line_item_usage_start_date": "2026-10-01T00:00:00Z",
        "line_item_usage_end_date": "2026-11-01T00:00:00Z",
    },
    {
        "identity_line_item_id": "li-4",
        "line_item_unblended_cost": "NaN",
        "line_item_usage_start_date": "2026-10-03T00:00:00Z",
        "line_item_usage_end_date": "2026-10-03T01:00:00Z",
    },
]


@pytest.fixture
def s3(aws_env):
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="billing")
        yield client


def _put(s3, tmp_path: Path, key: str, table: pa.Table) -> None:
    local = tmp_path / Path(key).name
    pq.write_table(table, local)
    s3.upload_file(str(local), "billing", key)


def test_cur2_period_collects_exactly_and_quarantines(s3, tmp_path) -> None:
    from finops_provider.hooks.aws_data_exports import collect_aws_exports

    _put(s3, tmp_path, f"{PREFIX}/BILLING_PERIOD=2026-10/part-0.parquet", _cur_table(ROWS))
    led = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    start, end = dt.datetime(2026, 10, 1, tzinfo=dt.UTC), dt.datetime(2026, 10, 31, tzinfo=dt.UTC)
    for _ in range(3):
        res, ing = collect_aws_exports(led, FinOpsConfig(), start, end, bucket="billing", prefix=PREFIX)
    assert len(res.records) == 3 and len(res.bad_rows) == 1
    assert led.totals().get("USD").amount == Decimal("0.192") + Decimal("0.384") - Decimal("5.00")
    assert led.totals("effective").get("USD").amount == Decimal("0.192") + Decimal("0.26112") - Decimal("5.00")
    assert led.count() == 3 and ing.unchanged == 3
    q = led.quarantined()
    assert q and q[0]["field"] == "line_item_unblended_cost" and "NaN" in q[0]["reason"]
    assert led.totals(team="data-eng").get("USD").amount == Decimal("0.192")
    assert led.totals(dag_id="ingest_orders").get("USD").amount == Decimal("0.192")
    credit = [r for r in led.records() if r.charge_category == "Credit"]
    assert credit and credit[0].billed_cost == Decimal("-5.00")


def test_new_delivery_supersedes_the_period(s3, tmp_path) -> None:
    from finops_provider.hooks.aws_data_exports import collect_aws_exports

    key = f"{PREFIX}/BILLING_PERIOD=2026-10/part-0.parquet"
    _put(s3, tmp_path, key, _cur_table(ROWS[:3]))
    led = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    window = (dt.datetime(2026, 10, 1, tzinfo=dt.UTC), dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    collect_aws_exports(led, FinOpsConfig(), *window, bucket="billing", prefix=PREFIX)
    restated = [dict(ROWS[0], line_item_unblended_cost="0.2000000000"), ROWS[1]]  # li-1 restated, credit gone
    _put(s3, tmp_path, key, _cur_table(restated))
    _, ing = collect_aws_exports(led, FinOpsConfig(), *window, bucket="billing", prefix=PREFIX)
    assert (ing.restated, ing.removed, ing.unchanged) == (1, 1, 1)
    assert led.totals().get("USD").amount == Decimal("0.584")
    assert sorted(a["action"] for a in led.audit_log()) == ["removed", "restated"]


def test_focus_export_from_s3(s3, tmp_path, focus_sample_path) -> None:
    from finops_provider.hooks.aws_data_exports import AwsDataExportsHook

    s3.upload_file(str(focus_sample_path), "billing", "focus/data/BILLING_PERIOD=2024-09/focus.csv")
    res = AwsDataExportsHook(aws_conn_id="aws_default").collect_period("billing", "focus/data")
    assert len(res.records) == 1000 and not res.bad_rows
    assert res.totals() == {"USD": "20.52022672899"}
    assert res.window == (dt.datetime(2024, 9, 1, tzinfo=dt.UTC), dt.datetime(2024, 10, 1, tzinfo=dt.UTC))
