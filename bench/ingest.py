"""Ingest + normalize + aggregate FOCUS Parquet: our bulk path vs raw DuckDB SQL vs pandas (issue 9, #1).

Generates FOCUS 1.2 Parquet files with realistic cardinalities (thousands of resources, hundreds of jobs and
tags, several services/accounts/regions, USD and EUR) and an exact Decimal truth computed from the integer
micro-units it generated. Then, on the same files and in the same process:

* ours: ``finops_provider.core.bulk.ingest_focus_bulk`` — DuckDB aggregation with attribution from tags and
  config mappings, exact row-path fallback, and the ledger write of the day-grain groups (SQLite);
* baseline "duckdb": a raw ``SELECT ... GROUP BY`` over the same Parquet (the practical limit);
* baseline "pandas": a straightforward ``groupby`` on integer micro-units (exact; pandas has no decimal sum).

Timed runs of ours and of raw DuckDB alternate (best of ``--repeat`` kept: the machine is shared); our run is
repeated once more in a fresh interpreter, whose peak RSS is the ingest's own (generation and pandas excluded).
After the timed run the same file is ingested again into the same ledger: nothing may be added.

Run: ``python bench/ingest.py [--sizes 1000000,5000000,10000000] [--pandas-max 5000000] [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from _common import emit, peak_rss_mb, timed  # type: ignore[import-not-found]

DAYS = 30
TEAMS = [f"team-{i:02d}" for i in range(24)]
DAGS = [f"dag_{i:03d}" for i in range(400)]
SERVICES = ["Amazon EC2", "Amazon S3", "Amazon RDS", "AWS Glue", "Amazon EMR", "Databricks", "Snowflake", "BigQuery",
            "Virtual Machines", "Storage"]  # fmt: skip
MICRO = Decimal("0.000001")


def generate(path: Path, rows: int, seed: int = 7, row_group: int = 1_000_000) -> dict[str, Decimal]:
    """Write ``rows`` FOCUS rows; return the exact Σ BilledCost per currency."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    random.seed(seed)
    tags_pool = np.array(
        [json.dumps({"team": TEAMS[i % len(TEAMS)], "airflow_dag_id": DAGS[i], "env": "prod" if i % 3 else "dev"})
         for i in range(len(DAGS))] + ["{}"] * 40,
        dtype=object,
    )  # fmt: skip
    resources = 5000
    # a resource belongs to one job (tag); a job runs in one account and region and uses one or two services,
    # as real workloads do (independent random keys would make every resource its own group)
    res_tag = rng.integers(0, len(tags_pool), resources)
    res_service = (res_tag + rng.integers(0, 2, resources)) % len(SERVICES)
    res_account = res_tag % 12
    res_region = res_tag % 6
    regions = np.array(["us-east-1", "us-west-2", "eu-west-1", "westeurope", "us-central1", "ap-south-1"], dtype=object)
    truth: dict[str, int] = {"USD": 0, "EUR": 0}
    base = np.datetime64("2026-10-01T00:00:00", "us")
    schema = pa.schema([
        ("BilledCost", pa.decimal128(38, 16)), ("EffectiveCost", pa.decimal128(38, 16)),
        ("ListCost", pa.decimal128(38, 16)), ("ContractedCost", pa.decimal128(38, 16)),
        ("BillingCurrency", pa.string()), ("ChargePeriodStart", pa.timestamp("us", tz="UTC")),
        ("ChargePeriodEnd", pa.timestamp("us", tz="UTC")), ("ProviderName", pa.string()),
        ("PublisherName", pa.string()), ("InvoiceIssuerName", pa.string()), ("ServiceName", pa.string()),
        ("ServiceCategory", pa.string()), ("BillingAccountId", pa.string()), ("BillingAccountName", pa.string()),
        ("SubAccountId", pa.string()), ("RegionId", pa.string()), ("ChargeCategory", pa.string()),
        ("ResourceId", pa.string()), ("Tags", pa.string()),
    ])  # fmt: skip
    with pq.ParquetWriter(str(path), schema) as w:
        done = 0
        while done < rows:
            n = min(row_group, rows - done)
            res = rng.integers(0, resources, n)
            micros = rng.integers(-2_000, 3_000_000, n)  # credits (negative) included
            eur = res_region[res] == 3
            truth["USD"] += int(micros[~eur].sum())
            truth["EUR"] += int(micros[eur].sum())
            hours = rng.integers(0, DAYS * 24, n)
            start = base + hours.astype("timedelta64[h]").astype("timedelta64[us]")
            dec = pc.multiply(
                pa.array(micros, pa.int64()).cast(pa.decimal128(19, 0)), pa.scalar(MICRO, pa.decimal128(7, 6))
            )
            dec = dec.cast(pa.decimal128(38, 16))
            svc = np.array(SERVICES, dtype=object)[res_service[res]]
            acct = np.char.add("acct-", res_account[res].astype(str)).astype(object)
            cols = [
                dec, dec, dec, dec, pa.array(np.where(eur, "EUR", "USD")),
                pa.array(start, pa.timestamp("us", tz="UTC")),
                pa.array(start + np.timedelta64(1, "h").astype("timedelta64[us]"), pa.timestamp("us", tz="UTC")),
                pa.array(np.where(eur, "Microsoft", "AWS")), pa.array(np.where(eur, "Microsoft", "AWS")),
                pa.array(np.where(eur, "Microsoft", "AWS")), pa.array(svc),
                pa.array(np.full(n, "Compute", dtype=object)),
                pa.array(np.where(eur, "ms-1", "aws-1")), pa.array(np.where(eur, "Contoso EU", "Acme")), pa.array(acct),
                pa.array(regions[res_region[res]]), pa.array(np.where(micros < 0, "Credit", "Usage")),
                pa.array(np.char.add("r-", res.astype(str)).astype(object)), pa.array(tags_pool[res_tag[res]]),
            ]  # fmt: skip
            w.write_table(pa.Table.from_arrays(cols, schema=schema))
            done += n
    return {c: Decimal(v) * MICRO for c, v in truth.items()}


DUCK_SQL = """
SELECT date_trunc('day', ChargePeriodStart) AS day, BillingCurrency, ProviderName, ServiceName, SubAccountId,
       RegionId, ChargeCategory, json_extract_string(Tags, '$.team') AS team,
       json_extract_string(Tags, '$.airflow_dag_id') AS dag, sum(BilledCost), sum(EffectiveCost), count(*)
FROM read_parquet(?) GROUP BY ALL
"""


def run_duckdb(path: Path) -> dict[str, Decimal]:
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    out: dict[str, Decimal] = {}
    for row in con.execute(DUCK_SQL, [str(path)]).fetchall():
        out[row[1]] = out.get(row[1], Decimal(0)) + row[9]
    return out


def run_pandas(path: Path) -> dict[str, Decimal]:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    micros = pc.cast(pc.multiply(t["BilledCost"].cast(pa.decimal128(24, 6)), pa_scalar_million()), "int64")
    df = pd.DataFrame({
        "day": t["ChargePeriodStart"].to_pandas().dt.floor("D"), "cur": t["BillingCurrency"].to_pandas(),
        "svc": t["ServiceName"].to_pandas(), "acct": t["SubAccountId"].to_pandas(), "region": t["RegionId"].to_pandas(),
        "tags": t["Tags"].to_pandas(), "m": micros.to_pandas(),
    })  # fmt: skip
    g = df.groupby(["day", "cur", "svc", "acct", "region", "tags"], sort=False)["m"].sum().reset_index()
    return {c: Decimal(int(v)) * MICRO for c, v in g.groupby("cur")["m"].sum().items()}


def pa_scalar_million():  # type: ignore[no-untyped-def]
    import pyarrow as pa

    return pa.scalar(Decimal(1_000_000), pa.decimal128(8, 0))


CONFIG = {"dags": {"dag_0*": {"team": "team-00"}}, "teams": {t: {"cost_center": f"CC-{t}"} for t in TEAMS}}


def run_ours(path: Path, db: Path, *, reingest: bool = False) -> dict:
    """Our real path into a fresh SQLite ledger at ``db`` (a new file name each run: ledger engines are shared per
    URL within a process); with ``reingest`` the same file goes in a second time."""
    from finops_provider.core.bulk import ingest_focus_bulk
    from finops_provider.core.config import parse_config
    from finops_provider.core.ledger import Ledger

    cfg = parse_config(CONFIG)
    led = Ledger(f"sqlite:///{db}")
    t, cpu = time.perf_counter(), time.process_time()
    res, _ = ingest_focus_bulk(led, [path], cfg)
    out = {"seconds": time.perf_counter() - t, "cpu": time.process_time() - cpu, "phases": res.phases,
           "groups": len(res.rows),
           "totals": {m.currency: str(m.amount) for m in led.totals().items()}}  # fmt: skip
    if reingest:  # the same export again: nothing may be added, restated or removed
        _, again = ingest_focus_bulk(led, [path], cfg)
        out["reingest_adds_nothing"] = (again.inserted, again.restated, again.removed) == (0, 0, 0) and {
            m.currency: str(m.amount) for m in led.totals().items()
        } == out["totals"]
    led.close()
    for f in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        f.unlink(missing_ok=True)
    return out


def own_peak_rss_mb() -> float:
    """This interpreter's peak RSS. ``ru_maxrss`` would also count the parent's pages at fork (Linux keeps the
    high-water mark across exec), so read the current image's own ``VmHWM`` where there is one."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            return next(int(x.split()[1]) for x in fh if x.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return peak_rss_mb()


def ingest_in_fresh_process(path: Path, db: Path) -> dict:
    """Run :func:`run_ours` in a new interpreter: its peak RSS is the ingest's, not generation's or pandas'."""
    proc = subprocess.run([sys.executable, __file__, "--child", str(path), str(db)], capture_output=True, text=True,
                          check=True)  # fmt: skip
    line = next(x for x in proc.stdout.splitlines() if x.startswith("CHILD "))
    return json.loads(line[6:])


def _decimals(totals: dict[str, str]) -> dict[str, Decimal]:
    return {c: Decimal(v) for c, v in totals.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000000,5000000,10000000")
    ap.add_argument("--pandas-max", type=int, default=5_000_000)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs of ours and raw DuckDB, alternated; best kept")
    ap.add_argument("--child", nargs=2, metavar=("PARQUET", "DB"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        out = run_ours(Path(args.child[0]), Path(args.child[1]))
        print("CHILD " + json.dumps({**out, "peak_rss_mb": own_peak_rss_mb()}), flush=True)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="finops-bench-ingest-") as tmp:
        work = Path(tmp)
        curve: list[tuple[int, float, float]] = []
        for n in sizes:
            label = f"{n / 1e6:g}M rows"
            path = work / f"focus_{n}.parquet"
            gen_s, truth = timed(lambda: generate(path, n))  # noqa: B023
            print(f"generated {n:,} rows in {gen_s:.1f}s ({path.stat().st_size / 1e6:.0f} MB)", flush=True)
            gc.collect()
            duck_s = ours_s = duck_cpu = ours_cpu = float("inf")
            duck: dict[str, Decimal] = {}
            for rep in range(args.repeat):  # alternated, so machine noise hits both the same way
                cpu = time.process_time()
                s, duck = timed(lambda: run_duckdb(path))  # noqa: B023
                cpu = time.process_time() - cpu
                duck_s, duck_cpu = min(duck_s, s), min(duck_cpu, cpu)
                ours = run_ours(path, work / f"ledger-{n}-{rep}.db", reingest=rep == args.repeat - 1)
                ours_cpu = min(ours_cpu, ours["cpu"])
                if ours["seconds"] < ours_s:
                    ours_s, phases = ours["seconds"], ours["phases"]
                print(f"  run {rep + 1}: duckdb {s:.2f}s (cpu {cpu:.2f}s), "
                      f"ours {ours['seconds']:.2f}s (cpu {ours['cpu']:.2f}s)", flush=True)  # fmt: skip
            print("  phases of the best run (s): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()), flush=True)
            child = ingest_in_fresh_process(path, work / f"ledger-{n}-child.db")
            exact = _decimals(ours["totals"]) == truth and _decimals(child["totals"]) == truth and duck == truth
            rate = n / ours_s / 1e6
            curve.append((n, ours_s, duck_s))
            emit("ingest", f"{label}: ours rows/s (end to end, into the ledger)", rate, "M rows/s",
                 baseline="duckdb raw SQL", baseline_value=n / duck_s / 1e6, target=">= 2 M rows/s",
                 met=rate >= 2)  # fmt: skip
            emit("ingest", f"{label}: ours time vs raw DuckDB GROUP BY", ours_s, "s", baseline="duckdb raw SQL",
                 baseline_value=duck_s, target="<= 1.5x", met=ours_s <= 1.5 * duck_s,
                 higher_is_better=False)  # fmt: skip
            emit("ingest", f"{label}: ours CPU time vs raw DuckDB (all threads; steadier on a shared machine)",
                 ours_cpu, "s", baseline="duckdb raw SQL", baseline_value=duck_cpu, higher_is_better=False)  # fmt: skip
            emit("ingest", f"{label}: groups written to ledger", ours["groups"], "rows")
            emit("ingest", f"{label}: exact totals (ours, fresh process, duckdb == generator's Decimal sums)",
                 float(exact), "bool", target="1", met=exact)  # fmt: skip
            emit("ingest", f"{label}: re-ingest adds nothing", float(ours["reingest_adds_nothing"]), "bool",
                 target="1", met=ours["reingest_adds_nothing"])  # fmt: skip
            emit("ingest", f"{label}: ingest peak RSS (fresh process)", child["peak_rss_mb"], "MB",
                 target="<= 2048 MB", met=child["peak_rss_mb"] <= 2048, higher_is_better=False)  # fmt: skip
            if n <= args.pandas_max:
                pd_s, pd_tot = timed(lambda: run_pandas(path))  # noqa: B023
                emit("ingest", f"{label}: ours vs pandas (time ratio)", ours_s, "s", baseline="pandas groupby",
                     baseline_value=pd_s, higher_is_better=False)  # fmt: skip
                assert pd_tot == truth, "pandas baseline lost exactness"
            path.unlink()
        print("  curve (rows, ours s, duckdb s): " + "; ".join(f"{n:,} {o:.2f} {d:.2f}" for n, o, d in curve))
        emit("ingest", "bench process peak RSS (generation, pandas and every run)", peak_rss_mb(), "MB",
             higher_is_better=False)  # fmt: skip
        if len(curve) >= 2:
            (n0, t0, d0), (n1, t1, d1) = curve[0], curve[-1]
            emit("ingest", f"scaling {n0 / 1e6:g}M->{n1 / 1e6:g}M (time ratio / size ratio)", (t1 / t0) / (n1 / n0),
                 "x", baseline="duckdb raw SQL", baseline_value=(d1 / d0) / (n1 / n0), target="~1 (linear)",
                 higher_is_better=False)  # fmt: skip
            (na, ta, _), (nb, tb, _) = curve[-2], curve[-1]
            if tb > ta:
                emit("ingest", f"marginal rate {na / 1e6:g}M->{nb / 1e6:g}M", (nb - na) / (tb - ta) / 1e6, "M rows/s")


if __name__ == "__main__":
    main()
