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
import re
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


# ------------------------------------------------------------------------------------ reports and the dashboard
SLACK_TOKEN = "xoxb-4242-slack-api-token-Rt7"
API_JWT = "eyJhbGciOi.finops-api-jwt-Wq5"
LEDGER_PASSWORD = "l3dger/p@ss:w0rd+%=Zk"  # URL-special characters: it appears percent-encoded in the URL
OUTPUT_SECRETS = [*SECRETS, SLACK_TOKEN, API_JWT, LEDGER_PASSWORD]
BASIC_AUTH = [("bot", JIRA_TOKEN), ("sn", SN_PASSWORD)]  # what an HTTP client puts in Authorization: Basic


def secret_forms(secret: str) -> set[str]:
    """How a secret can show up in text: as is, percent-encoded the ways URL builders do (SQLAlchemy keeps ``+``),
    form-encoded, JSON- and HTML-escaped."""
    import html
    from urllib.parse import quote, quote_plus

    forms = {secret, quote_plus(secret), json.dumps(secret)[1:-1], html.escape(secret)}
    return forms | {quote(secret, safe=safe) for safe in ("", "/", "+", " +", "/+", ":@/+")}


def _assert_no_secret(text: str, figures: Any, where: str) -> None:
    """No planted secret in ``text``, in any of its encodings (basic-auth pairs base64-encoded included)."""
    import base64

    figures.secret_probes += len(OUTPUT_SECRETS) + len(BASIC_AUTH)
    leaked = sorted({s for s in OUTPUT_SECRETS for f in secret_forms(s) if f in text})
    leaked += [u for u, p in BASIC_AUTH if base64.b64encode(f"{u}:{p}".encode()).decode() in text]
    assert not leaked, f"{where}: secrets leaked: {leaked}"


@pytest.fixture(scope="module")
def secret_world(tmp_path_factory: pytest.TempPathFactory, postgres_databases: Any) -> Any:
    """A PostgreSQL ledger whose URL holds a password, and every connection holding a distinctive secret, after a
    real enforcement run used all of them: Slack webhook (token in the path) and Slack API (bearer token) alerts,
    a Jira ticket and a ServiceNow incident (basic auth), a pause through the Airflow API (password -> JWT), and a
    Cost Explorer collection (AWS secret key). Yields what the output tests need, and ``enforce(run_id)`` to drive
    one more such run inside a test (where its logs and output are captured)."""
    import sqlalchemy as sa
    from moto import mock_aws
    from pytest_httpserver import HTTPServer

    from tests.fixtures.aws import MOTO_CE_RESULTS, ce_period

    tmp = tmp_path_factory.mktemp("secrets")
    url = sa.make_url(postgres_databases.create()).set(password=LEDGER_PASSWORD).render_as_string(hide_password=False)
    assert LEDGER_PASSWORD not in url and any(f in url for f in secret_forms(LEDGER_PASSWORD))  # encoded in the URL
    peers, api = Peers(), HTTPServer(host="127.0.0.1")
    api.expect_request("/auth/token", method="POST").respond_with_json({"access_token": API_JWT}, status=201)
    api.expect_request(re.compile(r"^/api/v2/dags/etl/dagRuns/r\d/taskInstances$")).respond_with_json(
        {"task_instances": [{"task_id": t, "state": "success", "map_index": -1} for t in ("a", "b")]}
    )
    api.expect_request("/api/v2/dags/etl", method="PATCH").respond_with_json({"dag_id": "etl", "is_paused": True})
    api.expect_request("/api/v2/eventLogs").respond_with_json({"event_logs": []})
    api.expect_request("/slack/chat.postMessage", method="POST").respond_with_json(
        {"ok": True, "channel": "C1", "ts": "1700000000.000100"}
    )
    api.start()
    cfg = tmp / "config.yaml"
    cfg.write_text(
        json.dumps(
            {
                "ledger": {"url": url},
                "teams": {"data": {"jira_project": "DE", "slack_channel": "#data-costs"}},
                "budgets": [
                    {
                        "name": "etl-run",
                        "scope": {"dag": "etl"},
                        "period": "run",
                        "amount": "10",
                        "thresholds": [
                            {"pct": 50, "actions": ["notify"]},
                            {"pct": 100, "actions": ["notify", "ticket", "incident", "pause_after_run"]},
                        ],
                    },
                    {"name": "data-month", "scope": {"team": "data"}, "period": "month", "amount": "1000"},
                    {
                        "name": "etl-api",
                        "scope": {"dag": "etl"},
                        "period": "run",
                        "amount": "10",
                        "thresholds": [{"pct": 100, "actions": ["notify"]}],
                    },
                ],
                "notifications": {"routes": [{"match": {"budget": "etl-api"}, "slack_conn_id": "slack_api"}]},
            }
        )
    )
    webhook = f"{peers.url}/services/T1/B1/{WEBHOOK_TOKEN}"
    conns = {
        "AIRFLOW_CONN_SLACK_DEFAULT": {"conn_type": "slackwebhook", "password": webhook},
        "AIRFLOW_CONN_SLACK_API": {
            "conn_type": "slack",
            "password": SLACK_TOKEN,
            "extra": {"base_url": api.url_for("/slack/")},
        },
        "AIRFLOW_CONN_JIRA_DEFAULT": {
            "conn_type": "jira",
            "host": peers.url + "/",
            "login": "bot",
            "password": JIRA_TOKEN,
        },
        "AIRFLOW_CONN_SERVICENOW_DEFAULT": {
            "conn_type": "http",
            "host": peers.url,
            "login": "sn",
            "password": SN_PASSWORD,
        },
        "AIRFLOW_CONN_FINOPS_AIRFLOW_API_DEFAULT": {
            "conn_type": "finops_airflow_api",
            "host": api.url_for("/"),
            "login": "bot",
            "password": API_PASSWORD,
        },
        "AIRFLOW_CONN_AWS_DEFAULT": {
            "conn_type": "aws",
            "login": "AKIAFINOPSTEST",
            "password": AWS_SECRET,
            "extra": {"region_name": "us-east-1"},
        },
    }
    with pytest.MonkeyPatch.context() as mp, mock_aws():
        for k, v in conns.items():
            mp.setenv(k, json.dumps(v))
        mp.setenv("AWS_ACCESS_KEY_ID", "AKIAFINOPSTEST")
        mp.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        mp.setenv("FINOPS_HOME", str(tmp / "home"))
        mp.setenv("FINOPS_CONFIG", str(cfg))
        mp.delenv("FINOPS_LEDGER_URL", raising=False)
        try:
            import requests

            from finops_provider.operators.collect import CollectCostsOperator

            today = dt.date.today()
            day = (today - dt.timedelta(days=1)).isoformat()
            answer = {
                "ResultsByTime": [ce_period(day, today.isoformat(), [(["airflow_dag_id$etl", "AWS Glue"], "2", "2")])]
            }
            requests.post(MOTO_CE_RESULTS, json={"results": [answer]}, timeout=5).raise_for_status()
            collected = CollectCostsOperator(
                task_id="c", source="aws", start=day, end=today.isoformat(), trailing_days=0, ledger_url=url,
                options={"tag_key": "airflow_dag_id"},
            ).execute({})  # fmt: skip

            def enforce(run_id: str) -> None:
                start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=20)
                cb = FinOpsTaskCallback(cost="6")
                for i, task in enumerate(("a", "b")):  # 6 of 10 (50 %: Slack), then 12 (100 %: everything)
                    t0 = start + dt.timedelta(minutes=5 * i)
                    ti = SimpleNamespace(
                        dag_id="etl", task_id=task, run_id=run_id, map_index=-1, try_number=1,
                        start_date=t0, end_date=t0 + dt.timedelta(minutes=4),
                    )  # fmt: skip
                    dag = SimpleNamespace(dag_id="etl", tags=["team:data"])
                    cb({"ti": ti, "dag": dag, "params": {}, "dag_run": SimpleNamespace(dag_id="etl", run_id=run_id)})

            enforce("r1")
            yield {
                "url": url,
                "config": cfg,
                "tmp": tmp,
                "peers": peers,
                "api": api,
                "collected": collected,
                "enforce": enforce,
            }
        finally:
            api.clear()
            api.stop()
            peers.close()
            postgres_databases.drop(url)


def test_an_enforcement_run_uses_every_secret_and_logs_none(secret_world: dict, capture, figures) -> None:
    """The scenario is live: every secret goes over the wire; the run's logs, stdout / stderr and outbox keep them
    out."""
    import base64

    peers, api = secret_world["peers"], secret_world["api"]
    assert Decimal(secret_world["collected"]["totals"]["USD"]) == Decimal(2)
    n_requests, n_api = len(peers.state.requests), len(api.log)
    secret_world["enforce"]("r2")  # a second run, inside the capture: the same seven actions
    new, new_api = peers.state.requests[n_requests:], [r for r, _ in api.log[n_api:]]
    hooks = [r for r in new if r.path.startswith("/services/")]
    assert len(hooks) == 2 and all(WEBHOOK_TOKEN in r.path for r in hooks)
    auth = {r.headers.get("Authorization") for r in new if r.path.startswith(("/rest/", "/api/now"))}
    assert auth == {f"Basic {base64.b64encode(f'{u}:{p}'.encode()).decode()}" for u, p in BASIC_AUTH}
    calls = {(r.method, r.path): r for r in new_api}
    assert json.loads(calls[("POST", "/auth/token")].data)["password"] == API_PASSWORD
    assert calls[("PATCH", "/api/v2/dags/etl")].headers["Authorization"] == f"Bearer {API_JWT}"
    assert calls[("POST", "/slack/chat.postMessage")].headers["Authorization"] == f"Bearer {SLACK_TOKEN}"
    with Ledger(secret_world["url"]) as led:
        items = Outbox(led).items()
    kinds = sorted(i["kind"] for i in items if "|r2|" in i["dedupe_key"] or i["payload"].get("run_id") == "r2")
    assert kinds == ["jira", "pause_after_run", "servicenow", "slack", "slack", "slack"]
    assert {i["status"] for i in items} == {"done"}
    _assert_no_secret(capture(items), figures, "an enforcement run's logs, stdout / stderr and outbox")


def test_the_leak_detector_sees_every_encoding() -> None:
    """The probe itself can fail: each planted secret, in each of its encodings, is caught (not counted as probes)."""
    import base64

    tally = SimpleNamespace(secret_probes=0)
    for s in OUTPUT_SECRETS:
        for form in secret_forms(s):
            with pytest.raises(AssertionError, match="secrets leaked"):
                _assert_no_secret(f"<p>{form}</p>", tally, "self-test")
    for u, p in BASIC_AUTH:
        with pytest.raises(AssertionError, match="secrets leaked"):
            _assert_no_secret(base64.b64encode(f"{u}:{p}".encode()).decode(), tally, "self-test")
    _assert_no_secret("nothing secret here", tally, "self-test")


def _report_inputs(world: dict) -> tuple[Any, Any]:
    from finops_provider.settings import get_config, get_ledger

    cfg = get_config(str(world["config"]))
    assert cfg.ledger.url == world["url"]  # the ledger (and its password) come from the config file
    return cfg, get_ledger(config=cfg)


def test_every_report_format_keeps_secrets_out(secret_world: dict, capture, figures, tmp_path: Path) -> None:
    import pendulum

    from finops_provider.aggregation_dag import PublishSummaryOperator
    from finops_provider.core.summary import build_summary, render_json, render_markdown
    from finops_provider.reports.digest import build_digest, digest_lines
    from finops_provider.reports.html import render_html

    cfg, led = _report_inputs(secret_world)
    with led:
        summary = build_summary(led, cfg, now=dt.datetime.now(dt.UTC), period="month")
    refs = {a["kind"]: a["reference"] for a in summary["actions"] if a["source"] == "outbox"}
    assert refs["jira"].startswith("DE-") and refs["servicenow"].startswith("INC") and refs["slack"]  # real data
    assert [p["dag_id"] for p in summary["paused_dags"]] == ["etl"]
    outputs = {
        "markdown": render_markdown(summary),
        "json": render_json(summary),
        "html": render_html(summary),
        "digest": json.dumps(build_digest(summary, link="https://airflow.example/finops/")),
        "digest-lines": "\n".join(digest_lines(summary)),
    }
    peers = secret_world["peers"]
    before = len(peers.state.requests)
    end = pendulum.now("UTC")
    xcom = PublishSummaryOperator(
        task_id="publish_summary",
        out_dir=str(tmp_path / "reports"),
        slack_conn_id="slack_default",
        config_path=str(secret_world["config"]),
    ).execute({"data_interval_start": end.subtract(days=1), "data_interval_end": end})
    (digest,) = peers.state.requests[before:]
    assert WEBHOOK_TOKEN in digest.path and xcom["slack_digest"] is True
    outputs["publish: xcom"] = json.dumps(xcom)
    outputs.update({f"publish: {k}": Path(f).read_text(encoding="utf-8") for k, f in xcom["files"].items()})
    outputs["publish: digest body and headers"] = json.dumps([digest.body, digest.headers])
    assert Decimal(json.loads(outputs["json"])["totals"]["billed"]["USD"]) >= Decimal(14)  # 2 collected, 12 run
    for where, text in outputs.items():
        _assert_no_secret(text, figures, where)
    _assert_no_secret(capture(), figures, "logs and stdout / stderr of the report builders")


def test_finops_report_cli_keeps_secrets_out(secret_world: dict, capture, figures, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import traceback
    from urllib.parse import quote

    from typer.testing import CliRunner

    from finops_provider.cli import app

    assert app.pretty_exceptions_show_locals is False  # typer < 0.16 printed locals (ledger URLs) by default
    runner = CliRunner()
    outputs: dict[str, str] = {}
    for fmt in ("md", "json", "html"):
        out = tmp_path / f"report.{fmt}"
        for args in ([], ["--out", str(out)]):
            res = runner.invoke(app, ["report", "--format", fmt, "--config", str(secret_world["config"]), *args])
            assert res.exit_code == 0, res.output
            outputs[f"finops report --format {fmt} {' '.join(args)}"] = res.output
        outputs[f"{out.name}"] = out.read_text(encoding="utf-8")
    assert "etl-run" in outputs["finops report --format md "]
    # the failing path, as a real process: a ledger that refuses, its password in --ledger and in the config
    down = f"postgresql+psycopg://finops:{quote(LEDGER_PASSWORD, safe='')}@127.0.0.1:1/ledger?connect_timeout=1"
    bad_cfg = tmp_path / "down.yaml"
    bad_cfg.write_text(json.dumps({"ledger": {"url": down}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINOPS_")}
    env["FINOPS_HOME"] = str(tmp_path / "home")
    res = runner.invoke(app, ["report", "--format", "json", "--ledger", down])
    assert res.exit_code != 0 and res.exception is not None
    outputs["finops report --ledger (ledger down, in-process)"] = res.output + "".join(
        traceback.format_exception(res.exception)
    )
    proc = subprocess.run(  # a real process: what typer prints for the uncaught error
        [sys.executable, "-m", "finops_provider.cli", "report", "--format", "json", "--config", str(bad_cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    figures.fault("cli:ledger-refused-with-password", 2)
    assert proc.returncode != 0 and "OperationalError" in proc.stderr, proc.stderr[-2000:]
    outputs["finops report --config (ledger down, a real process)"] = proc.stdout + proc.stderr
    for where, text in outputs.items():
        _assert_no_secret(text, figures, where)
    _assert_no_secret(capture(), figures, "logs and stdout / stderr of the CLI")


DASHBOARD_ROUTES = [
    "/",
    "/?period=day",
    "/api/summary",
    "/api/summary?period=week",
    "/api/budgets",
    "/api/budgets/data-month/tasks",
    "/api/dags/etl/tasks",
    "/api/feed",
    "/api/paused",
    "/openapi.json",
    "/docs",
    "/static/plotly.min.js",
]


def test_dashboard_keeps_secrets_out(secret_world: dict, capture, figures) -> None:
    """Every dashboard route, with the read permission granted (Airflow's own auth is proven on the real
    api-server in tests/integration/test_dashboard_airflow.py): bodies and headers hold no secret."""
    from fastapi.testclient import TestClient

    from finops_provider.plugins.dashboard import create_app, require_reader

    app = create_app(config_path=str(secret_world["config"]))
    app.dependency_overrides[require_reader] = lambda: SimpleNamespace(get_name=lambda: "viewer")
    with TestClient(app) as client:
        for route in DASHBOARD_ROUTES:
            r = client.get(route)
            assert r.status_code == 200, (route, r.text[:500])
            _assert_no_secret(r.text + json.dumps(dict(r.headers)), figures, f"dashboard GET {route}")
        assert any(p["dag_id"] == "etl" for p in client.get("/api/paused").json()["paused"])  # the real data
        assert client.get("/api/dags/etl/tasks").json()["tasks"]
    _assert_no_secret(capture(), figures, "logs and stdout / stderr of the dashboard")


def test_dashboard_on_a_refusing_ledger_keeps_the_password_out(capture, figures) -> None:
    """The ledger refuses: the 500, and the traceback the api-server would log, keep the password out."""
    import traceback
    from urllib.parse import quote

    from fastapi.testclient import TestClient

    from finops_provider.plugins.dashboard import create_app, require_reader

    down = f"postgresql+psycopg://finops:{quote(LEDGER_PASSWORD, safe='')}@127.0.0.1:1/ledger?connect_timeout=1"
    app = create_app(ledger_url=down)
    app.dependency_overrides[require_reader] = lambda: SimpleNamespace(get_name=lambda: "viewer")
    texts = []
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/api/summary")
        assert r.status_code == 500
        texts.append(r.text + json.dumps(dict(r.headers)))
    with TestClient(app) as client, pytest.raises(Exception) as err:
        client.get("/api/paused")
    figures.fault("dashboard:ledger-refused-with-password", 2)
    texts.append("".join(traceback.format_exception(err.value)))
    assert "OperationalError" in texts[-1]
    _assert_no_secret("\n".join(texts) + capture(), figures, "dashboard error, traceback and logs")
