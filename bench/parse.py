"""DAG-parse overhead (issue 9, #2): what importing the provider's Airflow surface adds to ``import airflow.sdk``.

Each figure is the median of fresh interpreter processes (imports are cached per process, so only fresh
processes tell the truth). Baseline in the same run: ``import airflow.sdk`` alone. Also reports whether any
cloud SDK, pandas or duckdb was imported, and the parse time of every example DAG (DagBag of the folder).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from _common import ROOT, emit  # type: ignore[import-not-found]

HEAVY = ("boto3", "botocore", "google.cloud.bigquery", "azure.mgmt", "databricks.sdk", "snowflake.connector",
         "kubernetes", "confluent_kafka", "pandas", "duckdb", "polars")  # fmt: skip
SURFACE = ("operators", "sensors", "callbacks", "notifications", "triggers")

PROBE = """
import importlib, json, pkgutil, sys, time
t0 = time.perf_counter()
import airflow.sdk
t1 = time.perf_counter()
if {surface!r}:
    import finops_provider
    for sub in {surface!r}:
        try:
            m = importlib.import_module("finops_provider." + sub)
        except ModuleNotFoundError:
            continue
        for info in pkgutil.iter_modules(getattr(m, "__path__", [])):
            importlib.import_module(f"finops_provider.{{sub}}.{{info.name}}")
t2 = time.perf_counter()
print(json.dumps({{"sdk": t1 - t0, "ours": t2 - t1, "heavy": [h for h in {heavy!r} if h in sys.modules]}}))
"""


def _run(code: str) -> dict:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(runs: int = 7) -> None:
    base, ours, heavy = [], [], set()
    for _ in range(runs):
        b = _run(PROBE.format(surface=(), heavy=HEAVY))
        o = _run(PROBE.format(surface=SURFACE, heavy=HEAVY))
        base.append(b["sdk"])
        ours.append(o["ours"])
        heavy.update(o["heavy"])
    added_ms = statistics.median(ours) * 1000
    sdk_ms = statistics.median(base) * 1000
    emit("parse", "import airflow.sdk (median, fresh process)", sdk_ms, "ms", higher_is_better=False)
    emit("parse", "added by operators+sensors+callbacks+notifiers+triggers", added_ms, "ms",
         baseline="import airflow.sdk",
         baseline_value=sdk_ms, target="<= 50 ms, no cloud SDK", met=added_ms <= 50 and not heavy,
         higher_is_better=False)  # fmt: skip
    emit("parse", "heavy modules imported", float(len(heavy)), "modules", target="0", met=not heavy)
    code = (
        "import json, time\nfrom airflow.dag_processing.dagbag import DagBag\n"
        f"t = time.perf_counter(); bag = DagBag(dag_folder={str(ROOT / 'example_dags')!r})\n"
        "print(json.dumps({'s': time.perf_counter() - t, 'dags': len(bag.dags), 'errors': len(bag.import_errors)}))\n"
    )
    times = [_run(code) for _ in range(3)]
    emit("parse", f"parse all example DAGs ({times[0]['dags']} DAGs, {times[0]['errors']} errors)",
         statistics.median(t["s"] for t in times) * 1000, "ms", higher_is_better=False)  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
