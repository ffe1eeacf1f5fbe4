"""AwsCostExplorerHook against moto's Cost Explorer: grouping, pagination, Estimated periods, throttling."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from finops_provider.core.ledger import Ledger
from finops_provider.core.retry import RetryExhaustedError, RetryPolicy
from tests.fixtures.aws import ce_period

FAST = RetryPolicy(max_attempts=4, base_s=0.001, cap_s=0.002, budget_s=5)


def _hook(**kw: Any) -> Any:
    from finops_provider.hooks.aws_cost_explorer import AwsCostExplorerHook

    return AwsCostExplorerHook(aws_conn_id="aws_default", retry_policy=FAST, **kw)


def test_500_jobs_in_at_most_three_requests(moto_ce, tmp_path) -> None:
    # 500 tagged jobs + untagged spend, two days, split over two pages as Cost Explorer does.
    jobs = [f"job-{i:03d}" for i in range(500)]
    day1 = [
        ([f"airflow_dag_id${j}", "Amazon Elastic Compute Cloud - Compute"], f"{i}.0125", f"{i}.01")
        for i, j in enumerate(jobs)
    ]
    day1.append((["airflow_dag_id$", "Amazon Simple Storage Service"], "7.5", "7.5"))
    day2 = [([f"airflow_dag_id${j}", "Amazon Elastic Compute Cloud - Compute"], "1.0000000001", "1") for j in jobs]
    page1 = {"ResultsByTime": [ce_period("2026-10-01", "2026-10-02", day1)], "NextPageToken": "p2"}
    page2 = {"ResultsByTime": [ce_period("2026-10-02", "2026-10-03", day2)]}
    moto_ce([page1, page2])
    hook = _hook()
    res = hook.collect("2026-10-01", "2026-10-03", tag_key="airflow_dag_id")
    assert res.requests == 2
    assert len(res.records) == 1001
    untagged = [r for r in res.records if not r.tags]
    assert len(untagged) == 1 and untagged[0].billed_cost == Decimal("7.5")
    expected = sum(Decimal(f"{i}.0125") for i in range(500)) + Decimal("7.5") + 500 * Decimal("1.0000000001")
    assert Decimal(res.totals()["USD"]) == expected
    led = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    led.ingest(res.records, source="aws-ce", scope=res.scope, window=res.window, replace_window=True)
    assert led.totals().get("USD").amount == expected
    r = next(x for x in res.records if x.tags.get("airflow_dag_id") == "job-007")
    assert (r.service_name, r.provider_name, r.x_source) == ("Amazon Elastic Compute Cloud - Compute", "AWS", "aws-ce")
    assert r.effective_cost == Decimal("7.01")
    assert r.charge_period_start == dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


def test_estimated_period_is_provisional_then_restated(moto_ce, tmp_path) -> None:
    led = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    est = ce_period(
        "2026-10-05",
        "2026-10-06",
        [(["app$etl", "AWS Glue"], "10.00", "10.00"), (["app$ml", "Amazon SageMaker"], "4.00", "4.00")],
        estimated=True,
    )
    moto_ce([{"ResultsByTime": [est]}])
    res = _hook().collect("2026-10-05", "2026-10-06", tag_key="app")
    assert res.provisional == 2 and all(r.x_provisional for r in res.records)
    led.ingest(res.records, source="aws-ce", scope=res.scope, window=res.window, replace_window=True)
    assert led.totals().get("USD").amount == Decimal("14.00")

    # the bill is final: etl restated, ml line vanished (credited), a new line appeared
    final = ce_period(
        "2026-10-05",
        "2026-10-06",
        [(["app$etl", "AWS Glue"], "12.34", "12.00"), (["app$", "AWS Glue"], "0.66", "0.66")],
    )
    moto_ce([{"ResultsByTime": [final]}], reset=True)
    for _ in range(3):  # re-pulling the trailing window any number of times never double counts
        res2 = _hook().collect("2026-10-05", "2026-10-06", tag_key="app")
        ing = led.ingest(res2.records, source="aws-ce", scope=res2.scope, window=res2.window, replace_window=True)
    assert res2.provisional == 0
    assert led.totals().get("USD").amount == Decimal("13.00")
    assert led.count() == 2
    actions = sorted(a["action"] for a in led.audit_log())
    assert actions == ["removed", "restated"]
    assert ing.unchanged == 2 and ing.inserted == 0


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, *_: Any, **__: Any) -> Any:
        yield self._body


def _throttle(hook: Any, times: int, code: str = "ThrottlingException", status: int = 400) -> list[int]:
    """Make the next ``times`` GetCostAndUsage calls fail on the wire with a real AWS error response."""
    from botocore.awsrequest import AWSResponse

    calls: list[int] = []

    def handler(request: Any, **_: Any) -> Any:
        calls.append(1)
        if len(calls) <= times:
            body = f'{{"__type":"{code}","message":"Rate exceeded"}}'.encode()
            return AWSResponse(
                request.url,
                status,
                {"x-amzn-ErrorType": code, "Content-Type": "application/x-amz-json-1.1"},
                _Raw(body),
            )
        return None

    hook.conn.meta.events.register("before-send.ce.GetCostAndUsage", handler)
    return calls


@pytest.mark.parametrize(
    ("code", "status"),
    [
        pytest.param("ThrottlingException", 400, id="throttling"),
        pytest.param("LimitExceededException", 400, id="limit"),
        pytest.param("InternalServerError", 500, id="5xx"),
    ],
)
def test_throttling_is_retried_with_backoff(moto_ce, code: str, status: int) -> None:
    moto_ce([{"ResultsByTime": [ce_period("2026-10-01", "2026-10-02", [(["app$etl", "AWS Glue"], "3", "3")])]}])
    hook = _hook()
    calls = _throttle(hook, 2, code, status)
    res = hook.collect("2026-10-01", "2026-10-02", tag_key="app")
    assert len(calls) == 3 and res.requests == 3
    assert res.totals() == {"USD": "3"}


def test_throttling_gives_up_with_a_clear_error(moto_ce) -> None:
    hook = _hook()
    _throttle(hook, 100)
    with pytest.raises(RetryExhaustedError, match="Cost Explorer GetCostAndUsage: still failing after 4 attempts"):
        hook.collect("2026-10-01", "2026-10-02", tag_key="app")


def test_access_denied_is_not_retried(moto_ce) -> None:
    hook = _hook()
    calls = _throttle(hook, 100, "AccessDeniedException", 400)
    with pytest.raises(Exception, match="AccessDenied"):
        hook.collect("2026-10-01", "2026-10-02", tag_key="app")
    assert len(calls) == 1
