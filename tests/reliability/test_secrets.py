"""Secrets never leak: connection passwords, API tokens and webhook URLs (whose path is the secret) do not appear
in logs, stdout/stderr, exceptions, outbox rows, XCom return values or report files — on failing paths above all.

Every test plants distinctive secret strings, drives a representative path against a real peer that fails or
refuses, captures everything (caplog at DEBUG, the process's stdout/stderr, raised exceptions, what was stored)
and searches it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from integration.peers import Peers  # tests/integration (a site-packages "tests" package shadows tests.integration)
from pytest_httpserver import HTTPServer

from finops_provider.callbacks import FinOpsTaskCallback
from finops_provider.callbacks.runtime import make_deliverer
from finops_provider.core.ledger import Ledger
from finops_provider.core.outbox import Outbox, OutboxPolicy

WEBHOOK_TOKEN = "whsec-7Hq2-webhook-token-Zx9"
JIRA_TOKEN = "jira-api-token-Q81k"
SN_PASSWORD = "sn-password-M4rq"
PG_PASSWORD = "pg-S3cret-Pw-77"
API_PASSWORD = "airflow-api-pw-Kd02"
AWS_SECRET = "aws-secret-key-Vn8u4"
SECRETS = [WEBHOOK_TOKEN, JIRA_TOKEN, SN_PASSWORD, PG_PASSWORD, API_PASSWORD, AWS_SECRET]


@pytest.fixture
def capture(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Any:
    caplog.set_level(logging.DEBUG)

    def everything(*extra: Any) -> str:
        out, err = capfd.readouterr()
        return "\n".join(
            [caplog.text, out, err, *(json.dumps(x, default=str) if not isinstance(x, str) else x for x in extra)]
        )

    return everything


def _assert_clean(text: str, figures: Any, where: str) -> None:
    figures.secret_probes += len(SECRETS)
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{where}: secrets leaked: {leaked}"


def test_notifier_failures_keep_tokens_out_of_logs_errors_and_outbox(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str, capture, figures
) -> None:
    peers = Peers()
    try:
        base = peers.url
        monkeypatch.setenv(
            "AIRFLOW_CONN_SLACK_DEFAULT",
            json.dumps({"conn_type": "slackwebhook", "password": f"{base}/services/T1/B1/{WEBHOOK_TOKEN}"}),
        )
        monkeypatch.setenv(
            "AIRFLOW_CONN_JIRA_DEFAULT",
            json.dumps({"conn_type": "jira", "host": base + "/", "login": "bot", "password": JIRA_TOKEN}),
        )
        monkeypatch.setenv(
            "AIRFLOW_CONN_SERVICENOW_DEFAULT",
            json.dumps({"conn_type": "http", "host": base, "login": "sn", "password": SN_PASSWORD}),
        )
        peers.state.fail_paths.update({"/services/", "/rest/api/", "/api/now/"})
        breach = {
            "dedupe_key": "b|day|actual|100",
            "budget": "b",
            "threshold_pct": "100",
            "basis": "actual",
            "budget_amount": {"amount": "1", "currency": "USD"},
            "actual": {"amount": "2", "currency": "USD"},
            "utilisation_pct": "200.00",
            "period": "day",
            "period_start": "2026-01-01T00:00:00+00:00",
        }
        with Ledger(sqlite_url) as led:
            ob = Outbox(led, OutboxPolicy(backoff_base_s=0))
            for kind in ("slack", "jira", "servicenow"):
                ob.enqueue(kind, f"k-{kind}", {"kind": "breach", "breach": breach, "dag_id": "etl", "route": {}})
            errors = []
            for _ in range(2):
                res = ob.drain(make_deliverer(led))
                errors += res.failed
            items = ob.items()
        figures.fault("notify:5xx-with-secret-urls", sum(i["attempts"] for i in items))
        assert sorted(set(errors)) == ["k-jira", "k-servicenow", "k-slack"]
        assert all(i["last_error"] for i in items)
        assert any(WEBHOOK_TOKEN in r.path for r in peers.state.requests)  # the secret was really used on the wire
        _assert_clean(capture(items), figures, "notifier failures")
    finally:
        peers.close()


def test_unreachable_ledger_password_stays_out_of_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capture, figures
) -> None:
    monkeypatch.setenv("FINOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(
        "FINOPS_LEDGER_URL", f"postgresql+psycopg://finops:{PG_PASSWORD}@127.0.0.1:1/ledger?connect_timeout=1"
    )
    monkeypatch.delenv("FINOPS_CONFIG", raising=False)
    ti = SimpleNamespace(
        dag_id="etl",
        task_id="t",
        run_id="r",
        map_index=-1,
        try_number=1,
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        end_date=dt.datetime(2026, 1, 1, 1, tzinfo=dt.UTC),
    )
    FinOpsTaskCallback(cost="1")({"ti": ti, "dag": SimpleNamespace(dag_id="etl", tags=[]), "params": {}})
    figures.fault("ledger:unreachable-with-password")
    with pytest.raises(Exception) as err:
        Ledger(f"postgresql+psycopg://finops:{PG_PASSWORD}@127.0.0.1:1/ledger?connect_timeout=1")
    assert len(list((tmp_path / "home").glob("spool.db"))) == 1  # the path under test ran: the try was spooled
    _assert_clean(capture(str(err.value), repr(err.value)), figures, "unreachable ledger")


def test_airflow_api_refusal_keeps_the_password_out(
    httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, capture, figures
) -> None:
    from finops_provider.core.retry import RetryPolicy
    from finops_provider.hooks.airflow_api import AirflowApiError, AirflowApiHook

    conn = {
        "conn_type": "finops_airflow_api",
        "host": httpserver.url_for("/"),
        "login": "bot",
        "password": API_PASSWORD,
    }
    monkeypatch.setenv("AIRFLOW_CONN_FINOPS_AIRFLOW_API_DEFAULT", json.dumps(conn))
    httpserver.expect_request("/auth/token", method="POST").respond_with_json(
        {"detail": "Invalid credentials"}, status=401
    )
    hook = AirflowApiHook(retry_policy=RetryPolicy(max_attempts=2, base_s=0.001, cap_s=0.002, budget_s=1))
    with pytest.raises(AirflowApiError) as err:
        hook.set_paused("etl")
    ok, msg = hook.test_connection()
    figures.fault("airflow-api:401")
    assert not ok and "401" in msg
    _assert_clean(capture(str(err.value), msg), figures, "Airflow API refusal")


def test_cost_explorer_refusal_and_xcom_keep_aws_keys_out(
    moto_ce, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capture, figures
) -> None:
    from finops_provider.hooks.aws_cost_explorer import CredentialsError
    from finops_provider.operators.collect import CollectCostsOperator
    from tests.fixtures.aws import ce_period

    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "AKIAFINOPSTEST",
                "password": AWS_SECRET,
                "extra": {"region_name": "us-east-1"},
            }
        ),
    )
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    moto_ce(
        [{"ResultsByTime": [ce_period("2026-10-01", "2026-10-02", [(["airflow_dag_id$etl", "AWS Glue"], "2", "2")])]}]
    )
    op = CollectCostsOperator(
        task_id="c",
        source="aws",
        start="2026-10-01",
        end="2026-10-02",
        trailing_days=0,
        ledger_url=sqlite_url,
        options={"tag_key": "airflow_dag_id"},
    )
    xcom = op.execute({})
    assert Decimal(xcom["totals"]["USD"]) == Decimal(2)
    from finops_provider.hooks.aws_cost_explorer import AwsCostExplorerHook

    hook = AwsCostExplorerHook(aws_conn_id="aws_default")
    hook.conn.meta.events.register(
        "before-send.ce.GetCostAndUsage",
        lambda request, **_: __import__("botocore.awsrequest").awsrequest.AWSResponse(
            request.url,
            400,
            {"x-amzn-ErrorType": "ExpiredTokenException"},
            type(
                "R",
                (),
                {"stream": lambda self, *a, **k: iter([b'{"__type":"ExpiredTokenException","message":"expired"}'])},
            )(),
        ),
    )
    with pytest.raises(CredentialsError) as err:
        hook.collect("2026-10-01", "2026-10-02", tag_key="app")
    figures.fault("aws-ce:expired-token-with-secret")
    assert "'aws_default'" in str(err.value)
    _assert_clean(capture(xcom, str(err.value), repr(err.value.__cause__)), figures, "Cost Explorer + XCom")
