"""Every example DAG loads in a DagBag with no import errors, and parsing stays free of cloud SDKs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "example_dags"
DAG_FILES = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


def test_there_are_example_dags() -> None:
    assert DAG_FILES, "example_dags/ is empty"


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in DAG_FILES])
def test_example_dag_loads(path: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(path), safe_mode=False)
    assert bag.import_errors == {}, bag.import_errors
    assert bag.dags, f"{path.name} defines no DAG"
    for dag in bag.dags.values():
        assert dag.tags and "finops" in dag.tags, f"{dag.dag_id}: tag example DAGs with 'finops'"


def test_parsing_examples_imports_no_cloud_sdk() -> None:
    code = (
        "import sys, json, runpy\n"
        f"for p in {[str(p) for p in DAG_FILES]!r}:\n"
        "    runpy.run_path(p)\n"
        "heavy = ('boto3', 'botocore', 'google.cloud.bigquery', 'azure.mgmt', 'databricks.sdk', 'snowflake.connector',"
        " 'kubernetes', 'confluent_kafka', 'pandas', 'duckdb', 'polars')\n"
        "print(json.dumps(sorted(h for h in heavy if h in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(), timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_enforcement_example_uses_every_piece() -> None:
    from airflow.dag_processing.dagbag import DagBag

    from finops_provider.callbacks import FinOpsDagCallback, FinOpsTaskCallback

    bag = DagBag(dag_folder=str(EXAMPLES / "example_finops_enforcement.py"), safe_mode=False)
    dag = bag.dags["example_finops_enforcement"]
    cbs = dag.on_success_callback if isinstance(dag.on_success_callback, list) else [dag.on_success_callback]
    assert any(isinstance(cb, FinOpsDagCallback) for cb in cbs)
    types = {type(t).__name__ for t in dag.tasks}
    assert {"BudgetGateOperator", "BudgetHeadroomSensor", "BillingDataFreshnessSensor"} <= types
    for t in dag.tasks:
        assert any(isinstance(cb, FinOpsTaskCallback) for cb in t.on_success_callback), t.task_id
