"""GcpBillingExportHook through the real BigQuery client against a local BigQuery REST peer.

The peer (tests/fixtures/gcp.py) runs the submitted SQL over raw export rows in DuckDB, so grouping,
label mapping, credits and the partition filter are exercised for real, not replayed.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any

import pytest

from finops_provider.core.config import AttributionConfig, FinOpsConfig, parse_config
from finops_provider.core.ledger import Ledger
from finops_provider.core.retry import RetryExhaustedError, RetryPolicy
from tests.fixtures.gcp import PROJECT, ROW_BYTES, FakeBigQuery, bigquery_connection, export_row

FAST = RetryPolicy(max_attempts=4, base_s=0.001, cap_s=0.002, budget_s=5)
CONFIG = parse_config(
    {
        "teams": {"data-eng": {"cost_center": "CC-100-DATA"}, "ml": {"cost_center": "CC-200-ML"}},
        "attribution": {
            "team": ["team", "owner_team"],
            "cost_center": ["cost_center"],
            "dag_id": ["airflow_dag_id"],
            "task_id": ["airflow_task_id"],
        },
    }
)


def _dec(totals: dict[str, str]) -> dict[str, Decimal]:
    """Per-currency totals compared as numbers (the peer writes NUMERIC without trailing zeros, as BigQuery does)."""
    return {c: Decimal(v) for c, v in totals.items()}


def _hook(**kw: Any) -> Any:
    from finops_provider.hooks.gcp_billing import GcpBillingExportHook

    kw.setdefault("repull_days", 0)
    kw.setdefault("retry_policy", FAST)
    return GcpBillingExportHook(**kw)


def _collect(ledger: Ledger, start: str, end: str, **kw: Any) -> tuple[Any, Any]:
    from finops_provider.hooks.gcp_billing import collect_gcp

    hook = kw.pop("hook", None) or _hook(**kw)
    return collect_gcp(ledger, CONFIG, dt.date.fromisoformat(start), dt.date.fromisoformat(end), hook=hook)


def test_one_grouped_query_per_window_with_paging(fake_bigquery: FakeBigQuery, sqlite_url: str) -> None:
    # 2 days x 24 hours x 3 owners = 144 raw export rows -> 6 groups, computed by the query, read in 3 pages
    for day in ("2026-10-01", "2026-10-02"):
        for owner in ("data-eng", "ml", None):
            labels = {"team": owner} if owner else {}
            fake_bigquery.add(*[export_row(day, "0.125", labels=labels, hour=h) for h in range(24)])
    # exported long ago: in a partition the query must not scan
    fake_bigquery.add(export_row("2026-10-01", "999", exported="2026-08-01T00:00:00"))
    led = Ledger(sqlite_url)
    res, ing = _collect(led, "2026-10-01", "2026-10-03", page_size=2)

    assert len(fake_bigquery.calls("insert")) == 1  # one query per window
    assert len(fake_bigquery.calls("results")) == 3  # 6 groups / page_size 2, following pageToken
    assert [c["args"].get("pageToken") for c in fake_bigquery.calls("results")] == [None, "2", "4"]
    assert res.requests == len(fake_bigquery.requests) == 6  # tables.get + insert + jobs.get + 3 pages
    assert len(res.records) == 6 and ing.inserted == 6
    assert res.bytes_scanned == 144 * ROW_BYTES  # the job's totalBytesProcessed: the far partition was pruned
    assert res.to_json()["bytes_scanned"] == 144 * ROW_BYTES
    assert _dec(led.totals().to_json()) == _dec({"USD": "18.000"})  # 144 x 0.125, exact
    sql = fake_bigquery.calls("insert")[0]["json"]["configuration"]["query"]["query"]
    assert "GROUP BY" in sql and "_PARTITIONTIME >= @partition_start" in sql
    r = next(x for x in res.records if x.x_team == "ml" and x.charge_period_start.day == 2)
    assert (r.billed_cost, r.service_name, r.sub_account_id, r.region_id) == (
        Decimal("3.000"),
        "Compute Engine",
        "analytics-prod",
        "us-central1",
    )
    assert (r.provider_name, r.x_source, r.billing_account_id) == (
        "Google Cloud",
        "gcp-billing",
        "0A1B2C-3D4E5F-6A7B8C",
    )
    assert r.charge_period_end - r.charge_period_start == dt.timedelta(days=1)
    assert r.pricing_quantity == Decimal(24) and r.pricing_unit == "hour"


def test_sql_text_carries_no_values_only_parameters(fake_bigquery: FakeBigQuery) -> None:
    fake_bigquery.add(export_row("2026-10-01", "1", labels={"squad": "x' OR 1=1 --"}))
    hook = _hook()
    attribution = AttributionConfig(team=("squad", "owner-squad"), cost_center=("finance-code",))
    res = hook.collect(
        "2026-10-01",
        "2026-10-02",
        attribution=attribution,
        label_key="squad",
        label_values=["x' OR 1=1 --", "data-eng"],
    )
    assert [r.x_team for r in res.records] == ["x' OR 1=1 --"]  # the value went through as data
    body = fake_bigquery.calls("insert")[0]["json"]
    query = body["configuration"]["query"]
    sql = query["query"]
    for literal in ("x' OR 1=1", "data-eng", "squad", "owner-squad", "finance-code"):
        assert literal not in sql
    assert not re.search(r"\d{4}-\d{2}-\d{2}", sql), "a date literal leaked into the SQL text"
    assert query["parameterMode"] == "NAMED" and query["useLegacySql"] is False
    params = {p["name"]: p for p in query["queryParameters"]}
    assert [v["value"] for v in params["filter_values"]["parameterValue"]["arrayValues"]] == [
        "x' OR 1=1 --",
        "data-eng",
    ]
    assert params["filter_key"]["parameterValue"]["value"] == "squad"
    assert [v["value"] for v in params["team_keys"]["parameterValue"]["arrayValues"]] == ["squad", "owner-squad"]
    assert params["usage_start"]["parameterType"]["type"] == "TIMESTAMP"
    assert params["usage_start"]["parameterValue"]["value"].startswith("2026-10-01")
    assert params["usage_end"]["parameterValue"]["value"].startswith("2026-10-02")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("table", "gcp_billing_export_v1_X`; DROP TABLE t; --", id="table-injection"),
        pytest.param("dataset", "billing.other", id="dataset-dot"),
        pytest.param("export_project_id", "Bad Project", id="project-space"),
    ],
)
def test_identifiers_are_validated_before_any_request(fake_bigquery: FakeBigQuery, field: str, value: str) -> None:
    from finops_provider.hooks.gcp_billing import BillingExportConfigError

    hook = _hook(**{field: value}, list_cost=False)
    with pytest.raises(BillingExportConfigError, match="is not valid"):
        hook.collect("2026-10-01", "2026-10-02")
    assert fake_bigquery.requests == []


def test_labels_map_to_team_cost_center_dag_and_task(fake_bigquery: FakeBigQuery, sqlite_url: str) -> None:
    fake_bigquery.add(
        # resource labels win over project labels; the first configured key present wins
        export_row(
            "2026-10-01",
            "4.00",
            labels={
                "owner_team": "ml",
                "team": "data-eng",
                "airflow_dag_id": "ingest_orders",
                "airflow_task_id": "load",
            },
            project_labels={"team": "platform", "cost_center": "CC-9"},
        ),
        # only project labels: the project's team; cost center from the project label
        export_row("2026-10-01", "2.50", project="ml-sandbox", project_labels={"team": "ml", "cost_center": "CC-7"}),
        # no ownership labels at all: kept, unallocated
        export_row("2026-10-01", "1.25", project="shared-net", labels={"env": "prod"}),
        # an empty label value does not count as an owner
        export_row("2026-10-01", "0.75", project="shared-net", labels={"team": ""}, sku_id="OTHER"),
    )
    led = Ledger(sqlite_url)
    _collect(led, "2026-10-01", "2026-10-02")
    by_project = {(r.sub_account_id, r.sku_id): r for r in led.records()}
    a = by_project[("analytics-prod", "2B2F-ADB1-9C4B")]
    assert (a.x_team, a.x_dag_id, a.x_task_id) == ("data-eng", "ingest_orders", "load")
    assert a.x_cost_center == "CC-9"  # the project label, since the resource has no cost_center label
    assert a.tags == {
        "team": "data-eng",
        "cost_center": "CC-9",
        "airflow_dag_id": "ingest_orders",
        "airflow_task_id": "load",
    }
    assert a.x_job_id == "ingest_orders"  # attribution: the DAG is the job
    b = by_project[("ml-sandbox", "2B2F-ADB1-9C4B")]
    assert (b.x_team, b.x_cost_center) == ("ml", "CC-7")
    for key in (("shared-net", "2B2F-ADB1-9C4B"), ("shared-net", "OTHER")):
        assert by_project[key].x_team is None and by_project[key].tags == {}
    assert _dec(led.totals(team="data-eng").to_json()) == _dec({"USD": "4.00"})
    assert _dec(led.totals().to_json()) == _dec({"USD": "8.50"})  # nothing dropped


def test_team_without_cost_center_label_gets_the_teams_cost_center(
    fake_bigquery: FakeBigQuery, sqlite_url: str
) -> None:
    fake_bigquery.add(export_row("2026-10-01", "3", labels={"team": "ml"}))
    led = Ledger(sqlite_url)
    _collect(led, "2026-10-01", "2026-10-02")
    (r,) = list(led.records())
    assert (r.x_team, r.x_cost_center) == ("ml", "CC-200-ML")


def test_credits_make_effective_cost_exact(fake_bigquery: FakeBigQuery, sqlite_url: str) -> None:
    fake_bigquery.add(
        export_row("2026-10-01", "0.1", credits=["-0.03", "-0.000000001"], cost_at_list="0.2", hour=0),
        export_row("2026-10-01", "0.2", credits=["-0.07"], cost_at_list="0.25", hour=1),
        # a promotion larger than the usage: effective cost below zero is kept, not clipped
        export_row("2026-10-01", "0.05", sku_id="FREE-TIER", credits=["-0.5"], cost_at_list="0.05"),
    )
    led = Ledger(sqlite_url)
    res, _ = _collect(led, "2026-10-01", "2026-10-02", list_cost=None)  # None: read the table schema
    assert len(fake_bigquery.calls("table")) == 1
    recs = {r.sku_id: r for r in res.records}
    core = recs["2B2F-ADB1-9C4B"]
    assert core.billed_cost == Decimal("0.3")  # 0.1 + 0.2 as decimals, not 0.30000000000000004
    assert core.effective_cost == Decimal("0.199999999")  # 0.3 - 0.03 - 0.000000001 - 0.07
    assert core.effective_cost == core.billed_cost + Decimal("-0.100000001")
    assert core.list_cost == Decimal("0.45")
    free = recs["FREE-TIER"]
    assert (free.billed_cost, free.effective_cost) == (Decimal("0.05"), Decimal("-0.45"))
    assert _dec(led.totals("effective").to_json()) == _dec({"USD": "-0.250000001"})
    assert _dec(led.totals("billed").to_json()) == _dec({"USD": "0.35"})


def test_list_cost_left_empty_when_the_export_has_no_cost_at_list(fake_bigquery: FakeBigQuery) -> None:
    fake_bigquery.schema = [f for f in fake_bigquery.schema if f["name"] != "cost_at_list"]
    fake_bigquery.add(export_row("2026-10-01", "1.5", cost_at_list="2"))
    res = _hook().collect("2026-10-01", "2026-10-02")
    assert "CAST(cost_at_list" not in fake_bigquery.calls("insert")[0]["json"]["configuration"]["query"]["query"]
    assert [r.list_cost for r in res.records] == [None]


def test_detailed_export_groups_by_resource(httpserver: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    peer = FakeBigQuery(httpserver, detailed=True)
    bigquery_connection(monkeypatch, httpserver)
    try:
        peer.add(
            export_row("2026-10-01", "1.5", resource="vm-a", labels={"team": "ml"}),
            export_row("2026-10-01", "2.5", resource="vm-a", labels={"team": "ml"}, hour=1),
            export_row("2026-10-01", "4", resource="vm-b", labels={"team": "ml"}),
        )
        res = _hook(include_resource=True, list_cost=False).collect("2026-10-01", "2026-10-02")
        got = sorted((r.resource_name, r.resource_id, r.billed_cost) for r in res.records)
        assert got == [
            ("vm-a", "//compute.googleapis.com/vm-a", Decimal(4)),
            ("vm-b", "//compute.googleapis.com/vm-b", Decimal(4)),
        ]
        assert res.scope.endswith(":resource")
        assert len({r.x_line_item_id for r in res.records}) == 2
    finally:
        peer.db.close()
        httpserver.clear()


def test_three_reruns_leave_the_ledger_unchanged(fake_bigquery: FakeBigQuery, sqlite_url: str) -> None:
    fake_bigquery.add(
        *[export_row(f"2026-10-0{d}", "1.1", labels={"team": t}) for d in (1, 2, 3) for t in ("ml", "data-eng")]
    )
    led = Ledger(sqlite_url)
    totals = []
    for _ in range(3):
        _, ing = _collect(led, "2026-10-01", "2026-10-04")
        totals.append((led.totals().to_json(), led.totals("effective").to_json(), led.count()))
    assert totals == [({"USD": "6.6"}, {"USD": "6.6"}, 6)] * 3  # exact text: nothing re-summed in floats
    assert (ing.inserted, ing.restated, ing.unchanged, ing.removed) == (0, 0, 6, 0)


def test_late_rows_restate_the_day_they_belong_to(fake_bigquery: FakeBigQuery, sqlite_url: str) -> None:
    led = Ledger(sqlite_url)
    fake_bigquery.add(
        export_row("2026-10-01", "10", labels={"team": "ml"}),
        export_row("2026-10-02", "5", labels={"team": "ml"}),
    )
    _collect(led, "2026-10-01", "2026-10-03", repull_days=0)
    assert _dec(led.totals().to_json()) == _dec({"USD": "15"})
    # two days later the export delivers a late row and a correction for 2026-10-01 into today's partition
    fake_bigquery.add(
        export_row("2026-10-01", "2.5", labels={"team": "ml"}, hour=7, exported="2026-10-03T09:00:00"),
        export_row("2026-10-01", "-1", labels={"team": "ml"}, cost_type="adjustment", exported="2026-10-03T10:00:00"),
    )
    # the next daily run collects 2026-10-03 only, but re-pulls 2 trailing days
    res, ing = _collect(led, "2026-10-03", "2026-10-04", repull_days=2)
    assert res.window == (dt.datetime(2026, 10, 1, tzinfo=dt.UTC), dt.datetime(2026, 10, 4, tzinfo=dt.UTC))
    assert (ing.restated, ing.inserted, ing.unchanged) == (1, 1, 1)  # day-1 usage restated, adjustment new
    assert _dec(led.totals().to_json()) == _dec({"USD": "16.5"})
    day1 = [r for r in led.records() if r.charge_period_start.day == 1]
    assert sorted((r.charge_category, r.billed_cost) for r in day1) == [
        ("Adjustment", Decimal("-1")),
        ("Usage", Decimal("12.5")),
    ]
    assert [(a["action"], a["old_billed_cost"], a["new_billed_cost"]) for a in led.audit_log()] == [
        ("restated", Decimal("10"), Decimal("12.5"))
    ]


def test_backfill_reads_partitions_exported_after_the_window(fake_bigquery: FakeBigQuery) -> None:
    fake_bigquery.add(
        export_row("2026-10-01", "1", exported="2026-10-01T06:00:00"),
        export_row("2026-10-01", "2", hour=3, exported="2026-10-03T06:00:00"),  # 2 days late
        export_row("2026-10-01", "4", hour=4, exported="2026-10-09T06:00:00"),  # 8 days late: past the re-pull
    )
    res = _hook(repull_days=3).collect("2026-10-01", "2026-10-02")
    assert _dec(res.totals()) == _dec({"USD": "3"})
    res = _hook(repull_days=8).collect("2026-10-01", "2026-10-02")
    assert _dec(res.totals()) == _dec({"USD": "7"})


def test_currencies_stay_separate(fake_bigquery: FakeBigQuery, sqlite_url: str) -> None:
    fake_bigquery.add(
        export_row("2026-10-01", "10.10", currency="USD", labels={"team": "ml"}),
        export_row("2026-10-01", "20.20", currency="EUR", labels={"team": "ml"}, credits=["-0.20"]),
        export_row("2026-10-01", "0.05", currency="EUR", labels={"team": "ml"}, hour=2),
    )
    led = Ledger(sqlite_url)
    res, _ = _collect(led, "2026-10-01", "2026-10-02")
    assert sorted((r.billing_currency, r.billed_cost, r.effective_cost) for r in res.records) == [
        ("EUR", Decimal("20.25"), Decimal("20.05")),
        ("USD", Decimal("10.1"), Decimal("10.1")),
    ]
    assert _dec(led.totals().to_json()) == _dec({"EUR": "20.25", "USD": "10.1"})
    assert _dec(led.totals(team="ml", currency="EUR").to_json()) == _dec({"EUR": "20.25"})


@pytest.mark.parametrize(
    ("endpoint", "status", "reason"),
    [
        pytest.param("insert", 503, "backendError", id="insert-503"),
        pytest.param("insert", 403, "rateLimitExceeded", id="insert-403-rate-limit"),
        pytest.param("get_job", 500, "internalError", id="jobs-get-500"),
        pytest.param("results", 429, "rateLimitExceeded", id="results-429"),
        pytest.param("results", 502, "backendError", id="results-502"),
    ],
)
def test_transient_errors_are_retried(fake_bigquery: FakeBigQuery, endpoint: str, status: int, reason: str) -> None:
    fake_bigquery.add(export_row("2026-10-01", "3", labels={"team": "ml"}))
    fake_bigquery.fail(endpoint, status, times=2, reason=reason)
    waits: list[float] = []
    res = _hook(sleep=waits.append, list_cost=False).collect("2026-10-01", "2026-10-02")
    assert _dec(res.totals()) == _dec({"USD": "3"})
    assert len(fake_bigquery.calls(endpoint)) == 3 and len(waits) == 2
    assert res.requests == len(fake_bigquery.requests)  # failed answers are requests too


def test_a_failed_job_is_submitted_again(fake_bigquery: FakeBigQuery) -> None:
    fake_bigquery.add(export_row("2026-10-01", "3"))
    fake_bigquery.fail_job("backendError")
    res = _hook(sleep=lambda s: None, list_cost=False).collect("2026-10-01", "2026-10-02")
    assert _dec(res.totals()) == _dec({"USD": "3"})
    assert len(fake_bigquery.calls("insert")) == 2


def test_a_second_page_failure_rereads_without_rerunning_the_query(fake_bigquery: FakeBigQuery) -> None:
    fake_bigquery.add(*[export_row("2026-10-01", "1", sku_id=f"SKU-{i}") for i in range(5)])
    waits: list[float] = []
    hook = _hook(sleep=waits.append, list_cost=False, page_size=2)
    fake_bigquery.fail("results", 503, page_token="2")
    res = hook.collect("2026-10-01", "2026-10-02")
    assert _dec(res.totals()) == _dec({"USD": "5"}) and len(res.records) == 5
    assert len(fake_bigquery.calls("insert")) == 1  # no second query: the finished job's pages were re-read
    assert [c["args"].get("pageToken") for c in fake_bigquery.calls("results")] == [None, "2", "2", "4"]
    assert len(waits) == 1


def test_non_transient_errors_are_not_retried(fake_bigquery: FakeBigQuery) -> None:
    fake_bigquery.fail("insert", 403, reason="accessDenied", times=5)
    with pytest.raises(Exception, match=r"accessDenied|injected 403"):
        _hook(list_cost=False).collect("2026-10-01", "2026-10-02")
    assert len(fake_bigquery.calls("insert")) == 1


def test_retries_are_bounded(fake_bigquery: FakeBigQuery) -> None:
    fake_bigquery.fail("insert", 503, times=50)
    with pytest.raises(RetryExhaustedError, match=r"BigQuery jobs\.insert: still failing after 4 attempts"):
        _hook(list_cost=False, sleep=lambda s: None).collect("2026-10-01", "2026-10-02")
    assert len(fake_bigquery.calls("insert")) == 4


def test_test_connection_makes_one_free_call(fake_bigquery: FakeBigQuery) -> None:
    ok, msg = _hook().test_connection()
    assert ok and PROJECT in msg
    assert [c["endpoint"] for c in fake_bigquery.requests] == ["table"]
    ok, msg = _hook(table="gcp_billing_export_v1_missing").test_connection()
    assert not ok and "NotFound" in msg and "gcp_billing_export_v1_missing" in msg


def test_collect_gcp_is_the_registered_gcp_collector(fake_bigquery: FakeBigQuery, sqlite_url: str) -> None:
    from finops_provider.collect import get_collector

    fake_bigquery.add(export_row("2026-10-01", "2", labels={"team": "ml"}))
    led = Ledger(sqlite_url)
    res, ing = get_collector("gcp")(
        led,
        FinOpsConfig(),
        dt.datetime(2026, 10, 1, tzinfo=dt.UTC),
        dt.datetime(2026, 10, 2, tzinfo=dt.UTC),
        repull_days=0,
        overrides={"x_job_id": "nightly-billing"},
    )
    assert ing.inserted == 1 and res.source == "gcp-billing"
    (r,) = list(led.records())
    assert (r.x_team, r.x_job_id) == ("ml", "nightly-billing")
