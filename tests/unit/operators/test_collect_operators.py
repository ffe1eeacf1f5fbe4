"""CollectCostsOperator and IngestFocusFileOperator: templated windows, idempotent re-runs, XCom payloads."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pendulum
import pytest

from finops_provider.core.ledger import Ledger
from finops_provider.operators.collect import CollectCostsOperator
from finops_provider.operators.focus_ingest import IngestFocusFileOperator
from tests.fixtures.aws import ce_period


def _ctx(start: str, end: str) -> dict:
    return {
        "data_interval_start": pendulum.parse(start),
        "data_interval_end": pendulum.parse(end),
        "ds": start[:10],
    }


def test_collect_renders_window_and_is_idempotent(moto_ce, tmp_path) -> None:
    moto_ce(
        [
            {
                "ResultsByTime": [
                    ce_period("2026-10-02", "2026-10-03", [(["airflow_dag_id$etl", "AWS Glue"], "2.50", "2.00")]),
                    ce_period(
                        "2026-10-03",
                        "2026-10-04",
                        [
                            (["airflow_dag_id$etl", "AWS Glue"], "1.25", "1.00"),
                            (["airflow_dag_id$", "Amazon S3"], "0.01", "0.01"),
                        ],
                        estimated=True,
                    ),
                ]
            }
        ]
    )
    url = f"sqlite:///{tmp_path / 'l.db'}"
    op = CollectCostsOperator(
        task_id="collect", source="aws", trailing_days=1, ledger_url=url, options={"tag_key": "airflow_dag_id"}
    )
    op.render_template_fields(_ctx("2026-10-03T00:00:00+00:00", "2026-10-04T00:00:00+00:00"))
    assert op.window() == (dt.datetime(2026, 10, 2, tzinfo=dt.UTC), dt.datetime(2026, 10, 4, tzinfo=dt.UTC))
    outs = [op.execute({}) for _ in range(3)]
    json.dumps(outs[0])  # XCom-serialisable
    assert outs[0]["totals"] == {"USD": "3.76"}
    assert outs[0]["rows"] == 3 and outs[0]["provisional_rows"] == 2 and outs[0]["requests"] == 1
    assert outs[0]["ledger"]["inserted"] == 3 and outs[2]["ledger"]["unchanged"] == 3
    led = Ledger(url)
    assert led.totals().get("USD").amount == Decimal("3.76")
    assert led.totals(dag_id="etl").get("USD").amount == Decimal("3.75")


def test_collect_unknown_source_names_the_choices(tmp_path) -> None:
    op = CollectCostsOperator(
        task_id="c", source="oracle", start="2026-10-01", end="2026-10-02", ledger_url=f"sqlite:///{tmp_path / 'l.db'}"
    )
    with pytest.raises(ValueError, match=r"unknown source 'oracle'; available: .*aws"):
        op.execute({})


@pytest.mark.parametrize(
    ("start", "end", "msg"),
    [
        pytest.param("2026-10-05", "2026-10-01", "must be after", id="reversed"),
        pytest.param("yesterday", "2026-10-01", "not a date", id="garbage"),
    ],
)
def test_collect_rejects_bad_windows(start, end, msg) -> None:
    op = CollectCostsOperator(task_id="c", source="aws", start=start, end=end, trailing_days=0)
    with pytest.raises(ValueError, match=msg):
        op.window()


def test_ingest_focus_local_and_s3(aws_env, tmp_path, focus_sample_path) -> None:
    import boto3
    from moto import mock_aws

    url = f"sqlite:///{tmp_path / 'l.db'}"
    local = IngestFocusFileOperator(task_id="i", path=str(focus_sample_path), ledger_url=url)
    out = local.execute({})
    assert out["inserted"] == 1000 and out["totals"] == {"USD": "20.52022672899"}
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="exports")
        s3.upload_file(str(focus_sample_path), "exports", "focus/2024-09/part-0.csv")
        op = IngestFocusFileOperator(task_id="i2", path="s3://exports/focus/{{ ds[:7] }}/part-0.csv", ledger_url=url)
        op.render_template_fields({"ds": "2024-09-01"})
        assert op.path == "s3://exports/focus/2024-09/part-0.csv"
        again = op.execute({})
    assert again["unchanged"] == 1000 and again["inserted"] == 0  # same rows through S3: nothing doubles
    assert Ledger(url).totals().get("USD").amount == Decimal("20.52022672899")
