"""Billing hook faults not covered in tests/unit/hooks/: expired credentials (a clear error naming the connection,
not retried, no secret in it), network timeouts (retried), and a collection that fails on a later page (nothing
partial reaches the ledger; the re-run is exact). Peer: moto's Cost Explorer, faults injected on the wire.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from finops_provider.collect import collect_aws
from finops_provider.core.config import FinOpsConfig
from finops_provider.core.ledger import Ledger
from finops_provider.core.retry import RetryExhaustedError, RetryPolicy
from tests.fixtures.aws import ce_period

FAST = RetryPolicy(max_attempts=4, base_s=0.001, cap_s=0.002, budget_s=5)


def _hook() -> Any:
    from finops_provider.hooks.aws_cost_explorer import AwsCostExplorerHook

    return AwsCostExplorerHook(aws_conn_id="aws_default", retry_policy=FAST)


def _inject(hook: Any, plan: list[Any]) -> list[int]:
    """Answer the next GetCostAndUsage calls from ``plan``: an error code, an exception, or None (the real peer)."""
    from botocore.awsrequest import AWSResponse

    class _Raw:
        def __init__(self, body: bytes) -> None:
            self._body = body

        def stream(self, *_: Any, **__: Any) -> Any:
            yield self._body

    calls: list[int] = []

    def handler(request: Any, **_: Any) -> Any:
        calls.append(1)
        step = plan[len(calls) - 1] if len(calls) <= len(plan) else None
        if step is None:
            return None
        if isinstance(step, Exception):
            raise step
        code, status = step
        body = f'{{"__type":"{code}","message":"injected"}}'.encode()
        headers = {"x-amzn-ErrorType": code, "Content-Type": "application/x-amz-json-1.1"}
        return AWSResponse(request.url, status, headers, _Raw(body))

    hook.conn.meta.events.register("before-send.ce.GetCostAndUsage", handler)
    return calls


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("ExpiredTokenException", id="expired-token"),
        pytest.param("UnrecognizedClientException", id="bad-key"),
        pytest.param("InvalidSignatureException", id="bad-secret"),
    ],
)
def test_refused_credentials_name_the_connection(moto_ce, code: str, figures) -> None:
    from finops_provider.hooks.aws_cost_explorer import CredentialsError

    hook = _hook()
    calls = _inject(hook, [(code, 400)] * 5)
    with pytest.raises(CredentialsError) as err:
        hook.collect("2026-10-01", "2026-10-02", tag_key="app")
    figures.fault(f"aws-ce:{code}")
    assert len(calls) == 1  # not retried: renewing the credentials is the fix
    assert "'aws_default'" in str(err.value) and code in str(err.value)
    assert "testing" not in str(err.value)  # the connection's key / secret (aws_env sets them to "testing")


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param("read-timeout", id="read-timeout"),
        pytest.param("connect-timeout", id="connect-timeout"),
        pytest.param("503", id="503"),
    ],
)
def test_timeouts_are_retried(moto_ce, fault: str, figures) -> None:
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

    moto_ce([{"ResultsByTime": [ce_period("2026-10-01", "2026-10-02", [(["app$etl", "AWS Glue"], "3.5", "3")])]}])
    hook = _hook()
    err = {
        "read-timeout": ReadTimeoutError(endpoint_url="https://ce.us-east-1.amazonaws.com"),
        "connect-timeout": ConnectTimeoutError(endpoint_url="https://ce.us-east-1.amazonaws.com"),
        "503": ("ServiceUnavailableException", 503),
    }[fault]
    calls = _inject(hook, [err, err])
    res = hook.collect("2026-10-01", "2026-10-02", tag_key="app")
    figures.fault(f"aws-ce:{fault}", 2)
    assert len(calls) == 3 and res.totals() == {"USD": "3.5"}


def test_failure_on_a_later_page_writes_nothing_then_rerun_is_exact(moto_ce, sqlite_url: str, figures) -> None:
    page1 = {
        "ResultsByTime": [ce_period("2026-10-01", "2026-10-02", [(["app$etl", "AWS Glue"], "1.25", "1")])],
        "NextPageToken": "p2",
    }
    page2 = {"ResultsByTime": [ce_period("2026-10-02", "2026-10-03", [(["app$ml", "Amazon SageMaker"], "2.5", "2")])]}
    moto_ce([page1, page2])
    with Ledger(sqlite_url) as led:
        hook = _hook()
        _inject(hook, [None, *[("ThrottlingException", 400)] * 10])  # page 1 arrives, page 2 never does
        with pytest.raises(RetryExhaustedError):
            collect_aws(
                led, FinOpsConfig(), dt.datetime(2026, 10, 1), dt.datetime(2026, 10, 3), tag_key="app", hook=hook
            )
        figures.fault("aws-ce:truncated-pagination", 4)
        assert led.count() == 0  # a truncated collection never reaches the ledger (no half window)
        res, ing = collect_aws(
            led, FinOpsConfig(), dt.datetime(2026, 10, 1), dt.datetime(2026, 10, 3), tag_key="app", hook=_hook()
        )
        assert res.requests == 2 and ing.inserted == 2
        assert led.totals().get("USD").amount == Decimal("3.75")
        figures.checked(valid=2, lost=2 - led.count(), duplicates=led.count() - 2)


BAD_GROUPS = [  # (name, UnblendedCost metric, field the quarantine must name)
    pytest.param({"Amount": "NaN", "Unit": "USD"}, "BilledCost", id="nan"),
    pytest.param({"Amount": "", "Unit": "USD"}, "BilledCost", id="empty"),
    pytest.param({"Amount": "9" * 30, "Unit": "USD"}, "BilledCost", id="30-digit"),
    pytest.param({"Amount": "1e999", "Unit": "USD"}, "BilledCost", id="exponent"),
    pytest.param({"Amount": [1], "Unit": "USD"}, "BilledCost", id="wrong-type"),
    pytest.param({"Unit": "USD"}, "BilledCost", id="missing-amount"),
    pytest.param({"Amount": "1.5", "Unit": ""}, "BillingCurrency", id="empty-currency"),
    pytest.param({"Amount": "1.5", "Unit": "ZZZ"}, "BillingCurrency", id="unknown-currency"),
]


@pytest.mark.parametrize(("metric", "field"), BAD_GROUPS)
def test_bad_groups_are_quarantined_and_the_valid_ones_land(moto_ce, sqlite_url: str, metric, field, figures) -> None:
    good = ce_period(
        "2026-10-01",
        "2026-10-02",
        [(["app$etl", "AWS Glue"], "1.0000000000000001", "1"), (["app$ml", "Amazon SageMaker"], "2.5", "2")],
    )
    good["Groups"][0]["Unknown"] = {"new": "field"}  # schema drift: an unknown key is ignored
    good["Groups"][0]["Metrics"]["NetUnblendedCost"] = {"Amount": "0.9", "Unit": "USD"}
    good["Groups"].insert(
        1, {"Keys": ["app$bad", "AWS Glue"], "Metrics": {"UnblendedCost": metric, "AmortizedCost": metric}}
    )
    moto_ce([{"ResultsByTime": [good]}])
    figures.bad_input(f"aws-ce-response:{field}")
    with Ledger(sqlite_url) as led:
        _res, ing = collect_aws(
            led, FinOpsConfig(), dt.datetime(2026, 10, 1), dt.datetime(2026, 10, 2), tag_key="app", hook=_hook()
        )
        (q,) = led.quarantined()
        assert q["field"] == field and "app$bad" in q["reason"] and q["row_number"] == 2
        assert ing.inserted == 2 and ing.quarantined == 1
        assert led.totals().get("USD").amount == Decimal("3.5000000000000001")
        figures.checked(valid=2, lost=2 - led.count(), duplicates=led.count() - 2)
