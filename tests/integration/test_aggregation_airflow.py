"""The aggregation DAG once on the real scheduler: a present FOCUS source, a missing one (skipped), reconcile,
evaluate, publish; the published summary agrees with the ledger; a second run changes nothing."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from finops_provider.core.focus import write_focus
from finops_provider.core.ledger import Ledger
from finops_provider.core.records import build_record

from .conftest import AirflowServer

pytestmark = pytest.mark.integration

SRC_DAG = "finops_it_agg_src"


def test_aggregation_dag_on_the_scheduler(airflow: AirflowServer) -> None:
    now = dt.datetime.now(dt.UTC)
    day = dt.datetime(now.year, now.month, now.day, tzinfo=dt.UTC)
    recs = [
        build_record(
            billed_cost=Decimal(a),
            effective_cost=Decimal(a),
            billing_currency="USD",
            charge_period_start=day,
            charge_period_end=day + dt.timedelta(hours=1),
            provider_name="AWS",
            service_name="Amazon EC2",
            x_dag_id=SRC_DAG,
            x_task_id=f"t{i}",
            x_line_item_id=f"agg-{i}",
            tags={"airflow_dag_id": SRC_DAG},
        )
        for i, a in enumerate(("1.5", "2.25", "0.0000003"))
    ]
    write_focus(recs, airflow.home / "aggregation_focus.csv")
    led = Ledger(airflow.ledger_url)
    results = []
    for _ in range(2):  # twice: idempotent
        run_id = airflow.trigger("finops_it_aggregation")
        assert airflow.wait_run("finops_it_aggregation", run_id, timeout=240) == "success", airflow.logs()
        states = airflow.task_states("finops_it_aggregation", run_id)
        assert states == {
            "collect_focus": "success",
            "collect_gcp": "skipped",  # no google_cloud_default: skipped with a warning, not a failure
            "reconcile": "success",
            "evaluate_budgets_and_anomalies": "success",
            "publish_summary": "success",
        }
        results.append((led.count(dag_id=SRC_DAG), led.totals(dag_id=SRC_DAG).to_json()))
    assert results[0] == results[1] == (3, {"USD": "3.7500003"})
    start = day.replace(day=1)
    folder = airflow.home.parent / "finops" / "reports" / f"month-{start:%Y-%m-%d}"
    summary = json.loads((folder / "summary.json").read_text())
    dags = {r["key"]: r["amount"] for r in summary["breakdowns"]["dag"] if r["currency"] == "USD"}
    assert dags[SRC_DAG] == "3.7500003"
    assert (folder / "summary.md").read_text().startswith("# FinOps executive summary")
    html = (folder / "summary.html").read_text()
    assert "Plotly" in html and SRC_DAG in html
