"""Callback overhead: median / p95 time the FinOps task callback adds per task, against a no-op callback run
in the same process, with the SQLite ledger (record + budget evaluation; no breach, so no network).

    .venv/bin/python -m bench.callback_overhead [--n 300]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any


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


def _time(fn: Any, n: int) -> list[float]:
    out = []
    for i in range(n):
        ctx = _context(i)
        t = time.perf_counter()
        fn(ctx)
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    n = ap.parse_args().n
    root = Path(tempfile.mkdtemp(prefix="finops-bench-"))
    os.environ["FINOPS_HOME"] = str(root)
    os.environ["FINOPS_LEDGER_URL"] = f"sqlite:///{root / 'ledger.db'}"
    cfg = root / "config.yaml"
    cfg.write_text(
        "budgets:\n"
        "  - {name: dag-month, scope: {dag: bench_dag}, period: month, amount: '1000000'}\n"
        "  - {name: team-day, scope: {team: data-eng}, period: day, amount: '1000000'}\n"
    )
    os.environ["FINOPS_CONFIG"] = str(cfg)
    import logging

    logging.disable(logging.INFO)
    from finops_provider.callbacks import FinOpsTaskCallback

    cb = FinOpsTaskCallback(platform="kubernetes", sku="cpu_core_hour", quantity_per_hour="2")
    cb(_context(0))  # warm-up: migrations, rate card, imports

    def noop(context: Any) -> None:
        return None

    base = _time(noop, n)
    fin = _time(cb, n)

    def q(v: list[float], p: float) -> float:
        return statistics.quantiles(v, n=100)[int(p) - 1]

    added = [f - b for f, b in zip(fin, base, strict=True)]
    print(f"callback overhead over {n} task tries (SQLite ledger, 2 budgets evaluated per try)")
    print(f"  no-op callback   median {statistics.median(base):8.3f} ms  p95 {q(base, 95):8.3f} ms")
    print(f"  FinOps callback  median {statistics.median(fin):8.3f} ms  p95 {q(fin, 95):8.3f} ms")
    print(f"  added            median {statistics.median(added):8.3f} ms  p95 {q(added, 95):8.3f} ms")
    from bench._common import emit

    emit("callback_overhead", "added_ms_median", statistics.median(added), "ms", baseline="no-op callback",
         higher_is_better=False)  # fmt: skip
    emit("callback_overhead", "added_ms_p95", q(added, 95), "ms", baseline="no-op callback", higher_is_better=False)


if __name__ == "__main__":
    main()
