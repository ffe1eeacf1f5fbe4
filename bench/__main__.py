"""``python -m bench [name ...]``: run the benchmarks and print one table (``make bench``).

Each benchmark is a script in this folder printing ``BENCH {json}`` lines (see ``_common.emit``); they run as
separate processes, one after the other, so they do not disturb each other. The table is also written to
``bench/RESULTS.md`` for the README.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine  # type: ignore[import-not-found]  # noqa: E402

#: name -> (script, arguments); the order is the order of the table
BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "ingest": ("ingest.py", ["--sizes", "1000000,5000000,10000000", "--pandas-max", "5000000"]),
    "parse": ("parse.py", ["7"]),
    "callbacks": ("callback_overhead.py", []),
    "ledger": ("ledger_concurrency.py", []),
    "streaming": ("streaming.py", ["--also-rate", "2000", "--contended"]),
    "api": ("api_economy.py", []),
    "anomaly": ("anomaly_eval.py", []),
}


def main(argv: list[str]) -> int:
    names = argv or [n for n in BENCHMARKS if (HERE / BENCHMARKS[n][0]).exists()]
    rows: list[dict] = []
    failures: list[str] = []
    t0 = time.monotonic()
    for name in names:
        script, args = BENCHMARKS[name]
        print(f"\n=== {name}: {script} {' '.join(args)}", flush=True)
        t = time.monotonic()
        proc = subprocess.Popen([sys.executable, str(HERE / script), *args], cwd=HERE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1",
                                     "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])})  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("BENCH "):
                rows.append(json.loads(line[6:]))
        if proc.wait():
            failures.append(name)
        print(f"--- {name} done in {time.monotonic() - t:.0f}s (exit {proc.returncode})", flush=True)
    m = machine()
    lines = [
        f"Machine: {m['platform']}, {m['cpus']} CPUs, Python {m['python']}; duckdb {m['duckdb']}, pyarrow "
        f"{m['pyarrow']}, pandas {m['pandas']}, SQLAlchemy {m['sqlalchemy']}, Airflow {m['airflow']}. "
        f"Total {time.monotonic() - t0:.0f}s.",
        "",
        "| benchmark | figure | value | baseline | ratio | target | met |",
        "|---|---|---:|---|---:|---|:-:|",
    ]
    for r in rows:
        base = f"{r['baseline']}: {r['baseline_value']}" if r.get("baseline") else ""
        met = {True: "yes", False: "**no**", None: ""}[r.get("met")]
        lines.append(f"| {r['benchmark']} | {r['metric']} | {r['value']} {r['unit']} | {base} | "
                     f"{'' if r.get('ratio') is None else r['ratio']} | {r.get('target') or ''} | {met} |")  # fmt: skip
    table = "\n".join(lines)
    print("\n" + table)
    (HERE / "RESULTS.md").write_text(table + "\n", encoding="utf-8")
    if failures:
        print(f"\nbenchmarks that failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
