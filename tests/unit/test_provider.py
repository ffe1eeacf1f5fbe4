"""The package is a real Airflow provider, and importing it stays cheap."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

import finops_provider

# The SDKs themselves ("google" / "google.cloud" / "snowflake" alone are namespace stubs loaded by .pth files).
HEAVY = (
    "boto3",
    "botocore",
    "google.cloud.bigquery",
    "google.cloud.storage",
    "azure.mgmt",
    "azure.identity",
    "azure.storage",
    "databricks.sdk",
    "databricks.sql",
    "snowflake.connector",
    "pandas",
    "kubernetes",
    "confluent_kafka",
    "duckdb",
    "polars",
    "pyarrow",
    "sqlalchemy.dialects.postgresql",
)


def _loaded_after(code: str) -> list[str]:
    probe = (
        f"import sys\n{code}\n"
        "import json\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted({h for h in heavy for m in sys.modules if m == h or m.startswith(h + '.')})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=os.environ.copy()
    )
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("import finops_provider", id="package"),
        pytest.param("import finops_provider.core.ledger, finops_provider.core.summary", id="core"),
        pytest.param("import finops_provider.orchestrator, finops_provider.settings", id="orchestrator"),
        pytest.param("import finops_provider.cli", id="cli"),
    ],
)
def test_import_does_not_load_cloud_sdks(code: str) -> None:
    assert _loaded_after(code) == []


def test_provider_info_names_only_importable_classes() -> None:
    info = finops_provider.get_provider_info()
    assert info["package-name"] == "finops-provider"
    assert info["versions"][0] == finops_provider.__version__
    for h in info["hooks"]:
        for mod in h["python-modules"]:
            importlib.import_module(mod)
    for ct in info["connection-types"]:
        mod, _, cls = ct["hook-class-name"].rpartition(".")
        hook = getattr(importlib.import_module(mod), cls)
        assert hook.conn_type == ct["connection-type"]
    for key in ("triggers", "sensors", "operators"):
        for entry in info.get(key, []):
            for name in entry["python-modules"]:
                importlib.import_module(name)
    classes = list(info.get("notifications", [])) + [p["plugin-class"] for p in info.get("plugins", [])]
    assert classes, "notifiers and plugins are registered"
    for path in classes:
        mod, _, cls = path.rpartition(".")
        assert isinstance(getattr(importlib.import_module(mod), cls), type), path


def test_airflow_lists_the_provider() -> None:
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    out = subprocess.run(
        [airflow, "providers", "list", "--output", "json"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("[{"))
    listed = json.loads(line)
    mine = [p for p in listed if p["package_name"] == "finops-provider"]
    assert mine and mine[0]["version"] == finops_provider.__version__
