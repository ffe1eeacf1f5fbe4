"""The `finops` command: demo (figures, not just the exit code), ingest, export, report, validate-config."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finops_provider.cli import app
from finops_provider.core.focus import read_focus, sum_column
from finops_provider.core.ledger import Ledger

runner = CliRunner()


def sum_column_json(records: list) -> dict[str, str]:
    from finops_provider.core.money import MoneyBag

    bag = MoneyBag()
    for cur, amt in sum_column(records).items():
        bag.add_raw(amt, cur)
    return bag.to_json()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    out = tmp_path_factory.mktemp("demo-out")
    url = f"sqlite:///{tmp_path_factory.mktemp('demo-ledger') / 'ledger.db'}"
    res = runner.invoke(app, ["demo", "--out", str(out), "--ledger", url, "--resources", "14"])
    assert res.exit_code == 0, res.output
    return out, url, res.output


def test_demo_figures(demo_run: tuple[Path, str, str]) -> None:
    from finops_provider import demo

    out, url, output = demo_run
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "summary.md").read_text().startswith("# FinOps executive summary")
    assert summary["demo"]["ledger_exact"] is True
    # every generated row and every sample row is in the ledger, to the last digit
    from finops_provider.core.config import load_config
    from finops_provider.core.pricing import RateCard

    cfg = load_config(demo.demo_config_path())
    data = demo.generate(infra_resources=14, rate_card=RateCard.load(cfg.rate_cards["overrides"]))
    led = Ledger(url)
    assert summary["demo"]["rows_generated"] == len(data.records)
    assert summary["demo"]["ledger_exact"] and summary["demo"]["reconciled_exact"]
    # every estimate was superseded by its billed truth; what stays is the billed rows, to the last digit
    assert data.estimates and summary["demo"]["estimates_superseded"] == len(data.estimates)
    assert led.count(source="demo") == len(data.records) - len(data.estimates)
    assert led.totals(source="demo") == data.expected_after_reconcile
    sample = list(read_focus(demo.sample_path()))
    assert led.totals(source="focus").to_json() == sum_column_json(sample)
    # the live stream burst landed exactly once, and found the injected incident as it happened
    stream = summary["demo"]["stream"]
    assert stream["exact"] and led.totals(source="stream").to_json() == stream["ledger_total"]
    assert any(k.startswith("feature-backfill-daily|day:") for k in stream["breaches"])
    assert led.count() == led.count(source="demo") + 1000 + led.count(source="stream")
    # the month's report totals equal the ledger's for the same period
    start, end = summary["period"]["start"], summary["period"]["end"]

    month = led.totals(start=dt.datetime.fromisoformat(start), end=dt.datetime.fromisoformat(end))
    assert summary["totals"]["billed"] == month.to_json()
    for dim, rows in summary["breakdowns"].items():  # top-N + "(other)" sum to the total exactly
        for cur in month.currencies:
            assert sum(Decimal(r["amount"]) for r in rows if r["currency"] == cur) == month.get(cur).amount, dim
    # the injected incident is found, with the exploding task as its root cause
    spike = [a for a in summary["anomalies"] if a["scope"] == {"dag": demo.SPIKE_DAG}]
    assert spike and spike[0]["root_cause"]["value"] == f"{demo.SPIKE_DAG}.{demo.SPIKE_TASK}"
    assert Decimal(spike[0]["actual"]["amount"]) > 3 * Decimal(spike[0]["expected"]["amount"])
    # budgets: each budget's spend equals an independent sum over the generated rows, and exactly the
    # actual-basis thresholds at or under that spend are reported as breached
    from finops_provider.core.allocation import Attributor

    attr = Attributor(cfg)
    recs = [attr.apply(r) for r in data.records if r.x_cost_kind == "billed"]  # estimates were superseded
    keys = {(b["budget"], b["threshold_pct"], b["basis"]) for b in summary["breaches"]}
    assert ("feature-backfill-daily", "100", "actual") in keys
    scope_attr = {"team": "x_team", "dag": "x_dag_id", "platform": "x_platform"}
    for b in summary["budgets"]:
        bcfg = next(x for x in cfg.budgets if x.name == b["budget"])
        ((k, v),) = bcfg.scope.items()
        lo, hi = dt.datetime.fromisoformat(b["period_start"]), dt.datetime.fromisoformat(b["period_end"])
        spend = sum(
            (
                r.billed_cost
                for r in recs
                if getattr(r, scope_attr[k]) == v
                and lo <= r.charge_period_start < hi
                and r.billing_currency == bcfg.currency
            ),
            Decimal(0),
        )
        assert Decimal(b["actual"]["amount"]) == spend, b["budget"]
        for t in bcfg.thresholds:
            if t.basis == "actual":
                hit = spend >= bcfg.amount * t.pct / 100
                assert ((b["budget"], str(t.pct), "actual") in keys) == hit, (b["budget"], t.pct)
    assert "equal to the inputs, to the last digit" in output
    # EUR spend is reported on its own, never added to USD
    assert set(summary["totals"]["billed"]) == {"EUR", "USD"}


def test_ingest_export_report_roundtrip(tmp_path: Path, focus_sample_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    bad = tmp_path / "bad.csv"
    text = focus_sample_path.read_text().splitlines()
    rows = text[:6]
    rows[3] = rows[3].replace('"USD"', '"XYZ"', 1)
    bad.write_text("\n".join(rows) + "\n")
    r = runner.invoke(app, ["ingest", str(bad), "--ledger", url])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout[r.stdout.index("{") :])
    assert res["inserted"] == 4 and res["quarantined"] == 1
    q = runner.invoke(app, ["quarantine", "--ledger", url])
    assert "BillingCurrency" in q.output and "ISO-4217" in q.output
    r = runner.invoke(app, ["ingest", str(focus_sample_path), "--ledger", url])
    assert r.exit_code == 0
    exp = tmp_path / "export.parquet"
    r = runner.invoke(app, ["export", "--format", "focus", "--out", str(exp), "--ledger", url])
    assert r.exit_code == 0, r.output
    back = [x for x in read_focus(exp)]
    assert len(back) == Ledger(url).count()
    assert sum_column(back) == {"USD": Ledger(url).totals().get("USD").amount}
    r = runner.invoke(app, ["report", "--format", "json", "--at", "2024-09-15", "--ledger", url])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert Decimal(summary["totals"]["billed"]["USD"]) == Decimal("20.52022672899")


def test_validate_config(tmp_path: Path) -> None:
    from finops_provider import demo

    ok = runner.invoke(app, ["validate-config", str(demo.demo_config_path())])
    assert ok.exit_code == 0 and "6 budget(s)" in ok.output
    bad = tmp_path / "config.yaml"
    bad.write_text("budgets:\n  - name: b\n    scope: {team: x}\n    amount: -5\n    periodd: month\n")
    r = runner.invoke(app, ["validate-config", str(bad)])
    assert r.exit_code == 2
    assert f"{bad}: budgets.0.amount: amount must be > 0" in r.output
    assert "budgets.0.periodd" in r.output and "remove the key or check its spelling" in r.output


def test_collect_aws_prints_requests_and_totals(moto_ce, tmp_path: Path) -> None:
    from tests.fixtures.aws import ce_period

    moto_ce(
        [
            {
                "ResultsByTime": [
                    ce_period(
                        "2026-10-01",
                        "2026-10-02",
                        [
                            (["airflow_dag_id$etl", "AWS Glue"], "1.5", "1.5"),
                            (["airflow_dag_id$", "AWS Glue"], "0.25", "0.25"),
                        ],
                    )
                ]
            }
        ]
    )
    url = f"sqlite:///{tmp_path / 'l.db'}"
    r = runner.invoke(app, ["collect", "aws", "--start", "2026-10-01", "--end", "2026-10-02", "--ledger", url])
    assert r.exit_code == 0, r.output
    assert "1.75 USD" in r.output and "2 new" in r.output
    assert Ledger(url).totals(dag_id="etl").get("USD").amount == Decimal("1.5")
