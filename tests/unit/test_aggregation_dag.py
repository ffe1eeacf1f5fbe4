"""The aggregation DAG under Airflow's test harness (``dag.test()``, SQLite metadata DB): a real FOCUS file,
moto's Cost Explorer, a missing source (skipped), reconcile, evaluate, publish; twice, with the same result."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from finops_provider.aggregation_dag import build_aggregation_dag
from finops_provider.core.ledger import Ledger
from tests.fixtures.aws import ce_period

LOGICAL = dt.datetime(2024, 9, 20, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def airflow_db() -> None:
    """The session's Airflow metadata DB (SQLite under the test AIRFLOW_HOME), created once."""
    from airflow.utils.db import resetdb

    resetdb(skip_init=False)


DAG_FILE = """
import json, os
from finops_provider.aggregation_dag import build_aggregation_dag  # an Airflow DAG file

dag = build_aggregation_dag("finops_agg_test", **json.loads(os.environ["FINOPS_AGG_TEST_KWARGS"]))
"""


def _dag_in_dags_folder(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> Any:
    """``dag.test()`` re-parses the dags-folder bundle, so the DAG must live in a file there."""
    import importlib.util

    from airflow.configuration import conf

    folder = Path(conf.get("core", "dags_folder"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "finops_agg_test.py"
    path.write_text(DAG_FILE)
    monkeypatch.setenv("FINOPS_AGG_TEST_KWARGS", json.dumps(kwargs))
    spec = importlib.util.spec_from_file_location("finops_agg_test_dag", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.dag


def _states(run: Any) -> dict[str, str]:
    import sqlalchemy as sa
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        q = sa.select(TaskInstance.task_id, TaskInstance.state).where(
            TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id
        )
        return {t: str(s) for t, s in session.execute(q)}


def test_dag_structure_and_validation() -> None:
    dag = build_aggregation_dag("agg_shape", sources={"aws": {}, "focus": {"path": "/x.csv"}}, schedule="@hourly")
    assert sorted(dag.task_ids) == [
        "collect_aws",
        "collect_focus",
        "evaluate_budgets_and_anomalies",
        "publish_summary",
        "reconcile",
    ]
    assert dag.get_task("reconcile").trigger_rule == "none_failed"
    assert dag.get_task("reconcile").upstream_task_ids == {"collect_aws", "collect_focus"}
    with pytest.raises(ValueError, match="at least one source"):
        build_aggregation_dag("x", sources={})
    with pytest.raises(ValueError, match="use day, week or month"):
        build_aggregation_dag("x", sources={"aws": {}}, period="year")


def test_dag_runs_end_to_end_and_is_idempotent(
    airflow_db: None,
    moto_ce: Callable[..., Any],
    focus_sample_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    moto_ce(
        [
            {
                "ResultsByTime": [
                    ce_period("2024-09-17", "2024-09-18", [(["airflow_dag_id$etl", "AWS Glue"], "2.50", "2.00")]),
                    ce_period("2024-09-20", "2024-09-21", [(["airflow_dag_id$", "Amazon S3"], "0.0100001", "0.01")]),
                ]
            }
        ]
    )
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    out = tmp_path / "reports"
    dag = _dag_in_dags_folder(
        monkeypatch,
        sources={
            "aws": {"options": {"tag_key": "airflow_dag_id"}},
            "focus": {"path": str(focus_sample_path)},
            "gcp": {"conn_id": "no_such_gcp_connection"},
        },
        trailing_days=3,
        start_date="2024-01-01",
        ledger_url=url,
        out_dir=str(out),
        default_args={"retries": 0},
    )
    seen = []
    for _ in range(2):
        run = dag.test(logical_date=LOGICAL)
        states = _states(run)
        assert states == {
            "collect_aws": "success",
            "collect_focus": "success",
            "collect_gcp": "skipped",
            "reconcile": "success",
            "evaluate_budgets_and_anomalies": "success",
            "publish_summary": "success",
        }, states
        with Ledger(url) as led:
            seen.append((led.count(), led.totals().to_json()))
        summary = json.loads((out / "month-2024-09-01" / "summary.json").read_text())
        with Ledger(url) as led:
            month = led.totals(
                start=dt.datetime(2024, 9, 1, tzinfo=dt.UTC), end=dt.datetime(2024, 10, 1, tzinfo=dt.UTC)
            )
        assert summary["totals"]["billed"] == month.to_json()
    assert seen[0] == seen[1]
    count, totals = seen[0]
    assert count == 1000 + 2
    assert Decimal(totals["USD"]) == Decimal("20.52022672899") + Decimal("2.50") + Decimal("0.0100001")
    assert (out / "month-2024-09-01" / "summary.html").read_text().startswith("<!DOCTYPE html>")
