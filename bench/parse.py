"""DAG-parse overhead (issue 9, #2): what importing the provider's Airflow surface adds to ``import airflow.sdk``.

Each figure is the median of fresh interpreter processes (imports are cached per process, so only fresh
processes tell the truth). Baseline in the same run: ``import airflow.sdk`` alone. Also reports whether any
cloud SDK, pandas or duckdb was imported, and the parse time of every example DAG (DagBag of the folder).

Two conditions, each against its own baseline:

* ``.pyc cached``: the byte code of every module was written once (by an untimed warm-up process) to a temporary
  ``PYTHONPYCACHEPREFIX``, as in a deployment, where the installer or the first import writes ``.pyc`` files.
  This is what a dag-processor pays per DAG file; the target applies to it.
* ``compiled from source``: no byte code anywhere (``PYTHONDONTWRITEBYTECODE=1`` and no ``__pycache__`` in this
  checkout or its venv), so every import also compiles its source; the figure then grows with the size of the
  source files (docstrings and comments included), not with what importing them does.

Neither condition writes into the checkout or the venv.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

from _common import ROOT, emit  # type: ignore[import-not-found]

HEAVY = ("boto3", "botocore", "google.cloud.bigquery", "azure.mgmt", "databricks.sdk", "snowflake.connector",
         "kubernetes", "confluent_kafka", "pandas", "duckdb", "polars")  # fmt: skip
SURFACE = ("operators", "sensors", "callbacks", "notifications", "triggers")

PROBE = """
import importlib, json, pkgutil, sys, time
t0 = time.perf_counter()
import airflow.sdk
t1, c1 = time.perf_counter(), time.process_time()
if {surface!r}:
    import finops_provider
    for sub in {surface!r}:
        try:
            m = importlib.import_module("finops_provider." + sub)
        except ModuleNotFoundError:
            continue
        for info in pkgutil.iter_modules(getattr(m, "__path__", [])):
            importlib.import_module(f"finops_provider.{{sub}}.{{info.name}}")
t2, c2 = time.perf_counter(), time.process_time()
print(json.dumps({{"sdk": t1 - t0, "ours": t2 - t1, "ours_cpu": c2 - c1,
                  "heavy": [h for h in {heavy!r} if h in sys.modules]}}))
"""


def _run(code: str, pycache_prefix: str | None = None, *, write: bool = False) -> dict:
    """Run ``code`` in a fresh interpreter; with ``pycache_prefix``, byte code is read from (``write``: written to)
    that folder instead of ``__pycache__``; without it, nothing is cached and every import compiles its source."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    if pycache_prefix:
        env["PYTHONPYCACHEPREFIX"] = pycache_prefix
    if not write:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure(runs: int, pycache_prefix: str | None, label: str, *, target: bool) -> set[str]:
    base, ours, ours_cpu, heavy = [], [], [], set()
    for _ in range(runs):  # alternate baseline and ours, so load changes hit both alike
        b = _run(PROBE.format(surface=(), heavy=HEAVY), pycache_prefix)
        o = _run(PROBE.format(surface=SURFACE, heavy=HEAVY), pycache_prefix)
        base.append(b["sdk"])
        ours.append(o["ours"])
        ours_cpu.append(o["ours_cpu"])
        heavy.update(o["heavy"])
    added_ms = statistics.median(ours) * 1000
    sdk_ms = statistics.median(base) * 1000
    emit("parse", f"import airflow.sdk (median, fresh process, {label})", sdk_ms, "ms", higher_is_better=False)
    emit("parse", f"added by operators+sensors+callbacks+notifiers+triggers ({label})", added_ms, "ms",
         baseline="import airflow.sdk",
         baseline_value=sdk_ms, target="<= 50 ms, no cloud SDK" if target else None,
         met=(added_ms <= 50 and not heavy) if target else None, higher_is_better=False)  # fmt: skip
    # the process's own CPU time: on a shared machine, wall time also counts the waits for a free core
    emit("parse", f"  the same, CPU time of the importing process ({label})", statistics.median(ours_cpu) * 1000,
         "ms", higher_is_better=False)  # fmt: skip
    return heavy


def main(runs: int = 7) -> None:
    with tempfile.TemporaryDirectory(prefix="finops-bench-pyc-") as prefix:
        _run(PROBE.format(surface=SURFACE, heavy=HEAVY), prefix, write=True)  # warm-up: writes the byte code
        heavy = _measure(runs, prefix, ".pyc cached", target=True)
    heavy |= _measure(runs, None, "compiled from source", target=False)
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
