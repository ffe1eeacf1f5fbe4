"""The self-contained HTML report: offline (plotly.js inlined once), charts for the data, exact money, escaped
names; ``finops report --format html``; ``write_demo_html``."""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import markupsafe
import pytest
from typer.testing import CliRunner

from finops_provider.cli import app
from finops_provider.core.config import parse_config
from finops_provider.core.ledger import Ledger
from finops_provider.core.records import build_record
from finops_provider.core.summary import build_summary
from finops_provider.reports.html import build_charts, plotly_js, render_html, script_json, write_demo_html
from tests.fixtures.reports import EVIL

NOW = dt.datetime(2024, 9, 30, 23, 30, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def demo_summary(demo_ledger: dict[str, Any]) -> dict[str, Any]:
    return build_summary(demo_ledger["ledger"], demo_ledger["config"], now=demo_ledger["now"])


@pytest.fixture(scope="module")
def demo_html(demo_summary: dict[str, Any]) -> str:
    return render_html(demo_summary)


def _scripts(page: str) -> list[str]:
    return re.findall(r"<script\b[^>]*>", page)


def test_self_contained_and_offline(demo_html: str) -> None:
    assert _scripts(demo_html) == ["<script>", "<script>"]  # plotly.js once, then the charts; no src=
    assert demo_html.count(plotly_js()) == 1
    assert "<link" not in demo_html and "cdn.plot.ly" not in demo_html.replace(plotly_js(), "")


def test_one_chart_per_series_and_exact_totals(demo_summary: dict, demo_html: str) -> None:
    charts = build_charts(demo_summary)
    ids = [c["id"] for c in charts]
    assert {"chart-daily-USD", "chart-daily-EUR", "chart-team-USD", "chart-platform-USD"} <= set(ids)
    assert sum(i.startswith("chart-burndown-") for i in ids) == len(demo_summary["budget_burndown"]) > 0
    for i in ids:
        assert f'id="{i}"' in demo_html
    for cur, amount in demo_summary["totals"]["billed"].items():
        assert f'data-testid="total-billed-{cur}" data-amount="{amount}"' in demo_html
    # drawing uses floats, tables keep the exact strings
    daily = next(c for c in charts if c["id"] == "chart-daily-USD")["figure"]["data"]
    drawn = sum(sum(t["y"]) for t in daily)
    assert drawn == pytest.approx(float(Decimal(demo_summary["totals"]["billed"]["USD"])), rel=1e-9)


def _rec(cost: str, team: str, hour: int) -> Any:
    start = dt.datetime(2024, 9, 10, hour, tzinfo=dt.UTC)
    return build_record(
        billed_cost=Decimal(cost),
        billing_currency="USD",
        charge_period_start=start,
        charge_period_end=start + dt.timedelta(hours=1),
        provider_name="AWS",
        service_name="Amazon S3",
        x_team=team,
    )


def test_hostile_names_are_escaped(ledger_url: str) -> None:
    cfg = parse_config({"budgets": [{"name": f"{EVIL}-b", "scope": {"team": EVIL}, "amount": "1"}]})
    with Ledger(ledger_url) as led:
        led.ingest([_rec("100", EVIL, 0), _rec("2.5", "data", 1)], source="m")
        s = build_summary(led, cfg, now=NOW, anomalies=[])
    page = render_html(s)
    assert len(_scripts(page)) == 2
    assert EVIL not in page and "<script>alert" not in page
    assert str(markupsafe.escape(EVIL)) in page  # shown as text in the tables (Jinja2 autoescape)
    # inside the chart JSON, "<" cannot close the script element
    charts_js = page.split("var charts = ", 1)[1].split(";\n", 1)[0]
    assert "</" not in charts_js and "\\u003cscript" in charts_js
    team_chart = next(c for c in json.loads(charts_js) if c["id"] == "chart-team-USD")
    assert html.escape(EVIL, quote=False) in team_chart["figure"]["data"][0]["y"]  # plotly shows it literally


def test_script_json_cannot_break_out() -> None:
    out = script_json({"k": "</script><!-- & \u2028"})
    assert "<" not in out and ">" not in out and "&" not in out and "\u2028" not in out
    assert json.loads(out) == {"k": "</script><!-- & \u2028"}


def test_write_demo_html(demo_summary: dict, tmp_path: Path) -> None:
    p = write_demo_html(demo_summary, tmp_path / "out")
    assert p == tmp_path / "out" / "summary.html" and p.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("fmt", "check"),
    [
        pytest.param(
            "html", lambda t: t.startswith("<!DOCTYPE html>") and 'data-amount="20.52022672899"' in t, id="html"
        ),
        pytest.param("json", lambda t: json.loads(t)["totals"]["billed"] == {"USD": "20.52022672899"}, id="json"),
        pytest.param("md", lambda t: "| USD | 20.52 USD |" in t, id="md"),
    ],
)
def test_cli_report_formats(tmp_path: Path, focus_sample_path: Path, fmt: str, check: Any) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", str(focus_sample_path), "--ledger", url]).exit_code == 0
    out = tmp_path / f"summary.{fmt}"
    res = runner.invoke(app, ["report", "--format", fmt, "--at", "2024-09-15", "--ledger", url, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert check(out.read_text())


def test_cli_report_rejects_unknown_format() -> None:
    res = CliRunner().invoke(app, ["report", "--format", "pdf"])
    assert res.exit_code == 2 and "use md, json or html" in res.output
