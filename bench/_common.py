"""Shared bits of the benchmarks: result lines, timing, machine info.

Every benchmark prints one ``BENCH {json}`` line per figure; ``python -m bench`` collects them into one
table. Figures are compared with a baseline measured in the same process on the same data (these machines
are noisy); nothing here is a test, and no timing is ever asserted.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def emit(benchmark: str, metric: str, value: float, unit: str, *, baseline: str | None = None,
         baseline_value: float | None = None, target: str | None = None, met: bool | None = None,
         higher_is_better: bool = True) -> dict[str, Any]:  # fmt: skip
    """Print one result line. ``ratio`` is ours / baseline in the direction where > 1 means "slower / worse"."""
    ratio = None
    if baseline_value:
        ratio = (baseline_value / value) if higher_is_better else (value / baseline_value)
    row = {"benchmark": benchmark, "metric": metric, "value": round(value, 4), "unit": unit, "baseline": baseline,
           "baseline_value": None if baseline_value is None else round(baseline_value, 4),
           "ratio": None if ratio is None else round(ratio, 3), "target": target, "met": met}  # fmt: skip
    print("BENCH " + json.dumps(row), flush=True)
    return row


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, str]:
    import importlib.metadata as md

    def v(p: str) -> str:
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return "-"

    return {
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
        "platform": platform.platform(terse=True),
        "duckdb": v("duckdb"),
        "pyarrow": v("pyarrow"),
        "pandas": v("pandas"),
        "sqlalchemy": v("sqlalchemy"),
        "airflow": v("apache-airflow"),
    }
