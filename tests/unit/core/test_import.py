"""The core is pure Python: importing it (in a fresh interpreter) loads no Airflow and no heavy SDK."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
FORBIDDEN = (
    "airflow",
    "boto3",
    "botocore",
    "pandas",
    "polars",
    "duckdb",
    "pyarrow",
    "confluent_kafka",
    "snowflake",
    "databricks",
    "kubernetes",
    "azure",
    "fastapi",
)

PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    before = set(sys.modules)  # .pth files pre-register namespace stubs such as "snowflake" and "google"
    import finops_provider.core as core
    imported = ["finops_provider.core"]
    if sys.argv[1] == "all":
        for m in pkgutil.iter_modules(core.__path__, "finops_provider.core."):
            if m.name != "finops_provider.core.migrations":  # Alembic scripts run only inside Ledger.migrate()
                importlib.import_module(m.name)
                imported.append(m.name)
    print(json.dumps({"imported": imported, "new": sorted(set(sys.modules) - before)}))
    """
)


@pytest.mark.parametrize("what", [pytest.param("package", id="package"), pytest.param("all", id="every-module")])
def test_core_import_loads_no_airflow_or_sdk(what: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, what], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    new = set(out["new"])
    offenders = sorted(m for m in new if m.split(".")[0] in FORBIDDEN)
    assert offenders == []
    assert "finops_provider.core" in new
    if what == "all":
        assert {"finops_provider.core.ledger", "finops_provider.core.summary", "finops_provider.core.focus"} <= set(
            out["imported"]
        )
        assert "sqlalchemy" in new  # the probe really imported the ledger
