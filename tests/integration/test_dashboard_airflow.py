"""The FinOps dashboard plugin on the real Airflow 3 api-server: auth through Airflow's auth manager
(401 / 403 / 200), the JSON API against the ledger, the nav entry, and the page in headless chromium."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import httpx
import pytest

from finops_provider.core.ledger import Ledger
from finops_provider.core.money import Money
from finops_provider.core.outbox import record_event
from finops_provider.core.records import build_record
from finops_provider.core.schema import stream_feed

from .conftest import AirflowServer

pytestmark = pytest.mark.integration

EVIL_TEAM = '<img src=x onerror="window.__xss=1">'
PAUSED_DAG = "finops_it_dash_paused"
DASH_DAG = "finops_it_dash"
ENDPOINTS = [
    "/finops/",
    "/finops/api/summary",
    "/finops/api/budgets",
    "/finops/api/feed",
    "/finops/api/paused",
    f"/finops/api/dags/{DASH_DAG}/tasks",
    "/finops/openapi.json",
    "/finops/docs",
    "/finops/static/plotly.min.js",
]


@pytest.fixture(scope="module")
def seeded(airflow: AirflowServer) -> dict[str, Any]:
    """Spend of this month for two teams (one with a hostile name), a FinOps pause, and a live-feed breach."""
    now = dt.datetime.now(dt.UTC)
    led = Ledger(airflow.ledger_url)
    recs = [
        build_record(
            billed_cost=Decimal(amount),
            billing_currency="USD",
            charge_period_start=now - dt.timedelta(minutes=30),
            charge_period_end=now - dt.timedelta(minutes=20),
            x_dag_id=DASH_DAG,
            x_task_id=task,
            x_run_id="dash-run",
            x_team=team,
            x_line_item_id=f"dash-{task}",
            x_cost_kind="billed",
            x_source="it-dashboard",
        )
        for task, team, amount in (("extract", "data-eng", "3.125"), ("load", EVIL_TEAM, "1.0000001"))
    ]
    led.ingest(recs, source="it-dashboard")
    record_event(
        led,
        kind="pause",
        dag_id=PAUSED_DAG,
        actor="finops:budget=dash-run",
        reason="budget dash-run crossed 100 % <script>alert(1)</script>",
        detail={"mode": "pause_after_run", "breach": {"budget": "dash-run", "utilisation_pct": "125.00"}},
    )
    with led.engine.begin() as conn:
        conn.execute(
            stream_feed.insert().values(
                kind="breach",
                dedupe_key=f"it-dash-{now.timestamp()}",
                consumer="it",
                at=now,
                event_time=now,
                payload=json.dumps(
                    {
                        "budget": "dash-<b>budget</b>",
                        "threshold_pct": "100",
                        "basis": "actual",
                        "utilisation_pct": "101.00",
                        "budget_amount": {"amount": "10", "currency": "USD"},
                    }
                ),
            )
        )
    return {"ledger": led, "now": now}


def _get(airflow: AirflowServer, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{airflow.base}{path}", headers=headers, timeout=60, **kw)


@pytest.mark.parametrize("path", [pytest.param(p, id=p.strip("/").replace("/", "-") or "root") for p in ENDPOINTS])
def test_every_route_needs_an_airflow_identity(airflow: AirflowServer, seeded: dict, path: str) -> None:
    assert _get(airflow, path).status_code == 401  # the plugin mount is open by default: we close it
    assert _get(airflow, path, "not-a-jwt").status_code == 403  # Airflow's own verdict on a bad token
    assert _get(airflow, path, airflow.token_for("norole")).status_code == 403  # not authorized to read DAGs
    assert _get(airflow, path, airflow.token_for("viewer")).status_code == 200
    assert _get(airflow, path, airflow.token()).status_code == 200
    # the Airflow UI's session cookie works like the bearer token (what the page's fetches use)
    assert _get(airflow, path, cookies={"_token": airflow.token_for("viewer")}).status_code == 200


def test_summary_api_totals_equal_the_ledger(airflow: AirflowServer, seeded: dict) -> None:
    led: Ledger = seeded["ledger"]
    s = _get(airflow, "/finops/api/summary", airflow.token()).json()
    start, end = dt.datetime.fromisoformat(s["period"]["start"]), dt.datetime.fromisoformat(s["period"]["end"])
    assert s["totals"]["billed"] == led.totals(start=start, end=end).to_json()
    teams = {r["key"]: Decimal(r["amount"]) for r in s["breakdowns"]["team"]}
    assert teams[EVIL_TEAM] == Decimal("1.0000001")
    tasks = _get(airflow, f"/finops/api/dags/{DASH_DAG}/tasks", airflow.token()).json()
    assert {t["task"]: t["amount"] for t in tasks["tasks"]} == {
        f"{DASH_DAG}.extract": "3.125",
        f"{DASH_DAG}.load": "1.0000001",
    }
    assert tasks["totals"] == {"USD": "4.1250001"}


def test_paused_feed_and_drill_down(airflow: AirflowServer, seeded: dict) -> None:
    paused = _get(airflow, "/finops/api/paused", airflow.token()).json()["paused"]
    mine = [p for p in paused if p["dag_id"] == PAUSED_DAG]
    assert len(mine) == 1 and mine[0]["budget"] == "dash-run" and "<script>" in mine[0]["reason"]
    feed = _get(airflow, "/finops/api/feed", airflow.token()).json()
    assert any(i["payload"]["budget"] == "dash-<b>budget</b>" and "crossed 100 %" in i["text"] for i in feed["items"])
    assert _get(airflow, f"/finops/api/feed?after_id={feed['last_id']}", airflow.token()).json()["items"] == []
    assert _get(airflow, "/finops/api/budgets/no-such-budget/tasks", airflow.token()).status_code == 404
    drill = _get(airflow, "/finops/api/budgets/twice-day/tasks", airflow.token())
    assert drill.status_code == 200, drill.text
    body = drill.json()
    assert all(t["task_id"].startswith("finops_it_twice.") for t in body["tasks"])
    assert sum((Decimal(t["cost"]) for t in body["tasks"]), Decimal(0)) == Decimal(body["actual"]["amount"])


def test_openapi_documents_the_api_and_nav_entry_is_registered(airflow: AirflowServer, seeded: dict) -> None:
    spec = _get(airflow, "/finops/openapi.json", airflow.token()).json()
    assert {"/api/summary", "/api/budgets", "/api/budgets/{name}/tasks", "/api/feed", "/api/paused"} <= set(
        spec["paths"]
    )
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    plugins = airflow.api("GET", "/api/v2/plugins").json()["plugins"]
    dash = next(p for p in plugins if p["name"] == "finops_dashboard")
    assert dash["fastapi_apps"][0]["url_prefix"] == "/finops"
    assert dash["external_views"][0]["href"] == "/finops/" and dash["external_views"][0]["url_route"] == "finops"


def test_page_in_headless_chromium(
    airflow: AirflowServer,
    seeded: dict,
    chromium: Any,
    browser_output_dir: Any,
) -> None:
    api = _get(airflow, "/finops/api/summary", airflow.token()).json()
    ctx = chromium.new_context(viewport={"width": 1400, "height": 1000})
    ctx.add_cookies([{"name": "_token", "value": airflow.token_for("viewer"), "url": airflow.base}])
    page = ctx.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        resp = page.goto(f"{airflow.base}/finops/", wait_until="load", timeout=90_000)
        assert resp is not None and resp.status == 200
        page.wait_for_function(
            "window.finopsCharts && window.finopsCharts.total > 0 "
            "&& window.finopsCharts.rendered === window.finopsCharts.total",
            timeout=60_000,
        )
        n_charts = page.locator("[data-testid=chart] svg.main-svg").count()
        assert n_charts >= 2, n_charts
        assert page.locator("[data-testid=chart] .bars, [data-testid=chart] .scatterlayer .trace").count() > 0
        # the numbers on the page are the API's, exactly
        usd = page.locator("[data-testid=total-billed-USD]")
        assert usd.get_attribute("data-amount") == api["totals"]["billed"]["USD"]
        assert usd.inner_text() == Money.of(api["totals"]["billed"]["USD"], "USD").format()
        team_cells = page.locator("[data-testid=breakdown-team] td[data-amount]")
        page_rows = [(c.get_attribute("data-amount"), c.get_attribute("data-currency")) for c in team_cells.all()]
        assert page_rows == [(r["amount"], r["currency"]) for r in api["breakdowns"]["team"]]
        # hostile names are shown as text, never run
        assert page.get_by_text(EVIL_TEAM, exact=True).first.is_visible()
        assert page.locator("[data-testid=paused]").get_by_text(PAUSED_DAG).count() == 1
        assert page.locator("#feed-body").get_by_text("dash-<b>budget</b>", exact=False).count() >= 1
        assert page.evaluate("window.__xss") is None and dialogs == [] and errors == []
        page.screenshot(path=str(browser_output_dir / "finops_dashboard.png"), full_page=True)
        # the nav entry inside the Airflow UI embeds the same page
        page.goto(f"{airflow.base}/plugin/finops", wait_until="load", timeout=90_000)
        frame = page.frame_locator('iframe[src*="/finops/"]')
        frame.locator("[data-testid=total-billed-USD]").wait_for(timeout=90_000)
        assert (
            frame.locator("[data-testid=total-billed-USD]").get_attribute("data-amount")
            == (_get(airflow, "/finops/api/summary", airflow.token()).json()["totals"]["billed"]["USD"])
        )
        frame.locator("[data-testid=chart] svg.main-svg").first.wait_for(timeout=60_000)
        page.screenshot(path=str(browser_output_dir / "finops_dashboard_in_airflow_ui.png"))
    finally:
        ctx.close()
