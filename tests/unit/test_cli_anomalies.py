"""`finops anomalies list|label`: feedback end to end through the command line and the ledger."""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import Decimal
from pathlib import Path

from typer.testing import CliRunner

from finops_provider.cli import app
from finops_provider.core.ledger import Ledger
from finops_provider.core.records import build_record

runner = CliRunner()
T0 = dt.datetime(2024, 9, 1, tzinfo=dt.UTC)


def _ledger(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    rng = random.Random(1)
    rows = []
    for day in range(30):
        start = T0 + dt.timedelta(days=day)
        cost = Decimal("120") if day == 29 else Decimal(repr(round(20 * rng.lognormvariate(0, 0.03), 2)))
        rows.append(
            build_record(
                billed_cost=cost,
                billing_currency="USD",
                charge_period_start=start,
                charge_period_end=start + dt.timedelta(hours=1),
                provider_name="AWS",
                service_name="Amazon EMR",
                x_dag_id="etl",
                x_task_id="load",
                x_team="data",
            )
        )
    with Ledger(url) as led:
        led.ingest(rows, source="t")
    return url


def _list(url: str) -> list[dict]:
    r = runner.invoke(app, ["anomalies", "list", "--at", "2024-09-30", "--days", "3", "--dims", "dag", "--json",
                            "--ledger", url])  # fmt: skip
    assert r.exit_code == 0, r.output
    out = r.stdout  # Airflow may print its configuration line first, when the ledger lookup imports it
    return json.loads(out[0 if out.startswith("[") else out.index("\n[") + 1 :])


def test_list_then_label_planned_suppresses(tmp_path: Path) -> None:
    url = _ledger(tmp_path)
    (a,) = _list(url)
    assert a["scope"] == {"dag": "etl"} and a["dedupe_key"] == "anomaly|dag=etl|2024-09-30T00"
    assert a["root_cause"]["value"] == "etl.load" and a["label"] is None
    table = runner.invoke(app, ["anomalies", "list", "--at", "2024-09-30", "--ledger", url])
    assert table.exit_code == 0 and "Anomalies 2024-09-24 .. 2024-09-30" in table.output
    assert "high" in table.output and "120.00 USD" in table.output  # the severity band and the actual cost
    r = runner.invoke(app, ["anomalies", "label", a["dedupe_key"], "--as", "false", "--who", "ana", "--ledger", url])
    assert r.exit_code == 0, r.output
    assert _list(url)[0]["label"] == "false"
    r = runner.invoke(
        app,
        ["anomalies", "label", a["dedupe_key"], "--as", "planned", "--until", "2024-10-05", "--note", "backfill",
         "--ledger", url],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout[r.stdout.index("{") :])["until"] == "2024-10-05T00:00:00+00:00"
    assert _list(url) == []  # planned: the scope is quiet until 5 October


def test_label_errors_exit_2(tmp_path: Path) -> None:
    url = _ledger(tmp_path)
    r = runner.invoke(app, ["anomalies", "label", "nope", "--as", "true", "--ledger", url])
    assert r.exit_code == 2 and "not an anomaly key" in r.output
    r = runner.invoke(app, ["anomalies", "label", "anomaly|dag=etl|2024-09-30T00", "--as", "maybe", "--ledger", url])
    assert r.exit_code == 2 and "label 'maybe'" in r.output
