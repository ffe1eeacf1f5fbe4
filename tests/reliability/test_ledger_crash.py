"""Crash during a ledger write: a child process ingesting big batches is killed with SIGKILL mid-transaction.

After the restart the ledger holds whole batches only (each ``Ledger.ingest`` is one transaction: no partial
batch, no half-written batch record), and running the ingest again yields the exact totals, once.
Runs on a SQLite file (WAL) and on the session's real PostgreSQL.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from finops_provider.core.ledger import Ledger
from finops_provider.core.schema import cost_line, ingest_batch
from tests.reliability._ledger_writer import SOURCE, expected_total

ROOT = Path(__file__).resolve().parents[2]


def _writer(url: str, state: Path, batches: int, rows: int, *stall: int) -> subprocess.Popen[bytes]:
    state.mkdir(parents=True, exist_ok=True)
    for f in state.iterdir():
        f.unlink()
    args = [sys.executable, "-m", "tests.reliability._ledger_writer", url, str(batches), str(rows), str(state)]
    return subprocess.Popen(
        [*args, *map(str, stall)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_file(p: Path, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if p.exists():
            return
        if proc.poll() is not None:
            raise AssertionError(f"writer exited ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.01)
    raise AssertionError(f"{p.name} not reached in time")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


def _batch_sizes(url: str) -> tuple[Counter[int], list[dict]]:
    """Rows per writer batch in the ledger, and the ingest-batch records (reopened: what a restart sees)."""
    with Ledger(url) as led, led.engine.connect() as c:
        keys = c.execute(sa.select(cost_line.c.x_line_item_id).where(cost_line.c.x_source == SOURCE)).scalars()
        sizes = Counter(int(k.split("-")[0][1:]) for k in keys)
        batches = [
            dict(m) for m in c.execute(sa.select(ingest_batch).where(ingest_batch.c.source == SOURCE)).mappings()
        ]
    return sizes, batches


def _assert_whole_batches(url: str, rows: int) -> int:
    sizes, batches = _batch_sizes(url)
    partial = {b: n for b, n in sizes.items() if n != rows}
    assert partial == {}, f"partial batches after the crash: {partial}"
    assert all(b["finished_at"] is not None for b in batches), "a half-written ingest batch record survived"
    return len(sizes)


def _finish_and_check(url: str, state: Path, batches: int, rows: int, figures) -> None:
    """Re-run the whole ingest after the crash: exact totals, every row once."""
    proc = _writer(url, state, batches, rows)
    assert proc.wait(300) == 0, proc.stderr.read().decode()[-2000:]
    with Ledger(url) as led:
        n = led.count(source=SOURCE)
        total = led.totals(source=SOURCE).get("USD").amount
    expected = batches * rows
    figures.checked(valid=expected, lost=expected - n, duplicates=n - expected)
    assert n == expected
    assert total == expected_total(batches, rows)


@pytest.mark.parametrize("backend", [pytest.param("sqlite", id="sqlite"), pytest.param("postgres", id="postgres")])
def test_kill_inside_an_open_ingest_transaction(
    backend: str, request: pytest.FixtureRequest, tmp_path, figures
) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    batches, rows = 2, 5_000
    rng = random.Random(f"mid-{backend}")
    stall_row = rng.randrange(4_100, rows - 1)  # past two 2,000-row chunks: rows were sent inside the transaction
    state = tmp_path / "state"
    proc = _writer(url, state, batches, rows, 1, stall_row)
    _wait_file(state / "stalled", proc)
    _kill(proc)
    figures.fault(f"ledger:{backend}:sigkill-mid-transaction")
    figures.kill(f"ledger-writer:{backend}")
    assert _assert_whole_batches(url, rows) == 1  # batch 0 committed, batch 1 left no trace
    _finish_and_check(url, state, batches, rows, figures)


def _random_kills(url: str, backend: str, tmp_path: Path, figures, iterations: int) -> None:
    batches, rows = 4, 1_500
    rng = random.Random(f"random-{backend}-{iterations}")
    state = tmp_path / "state"
    kills = 0
    for _ in range(iterations):
        proc = _writer(url, state, batches, rows)
        after = rng.randrange(-1, batches - 1)  # start-up or after a random batch committed, then a random delay:
        _wait_file(state / ("started" if after < 0 else f"committed-{after}"), proc)
        time.sleep(rng.uniform(0.0, 0.3))  # inside the next batch, between chunks, or during its commit
        if proc.poll() is None:
            _kill(proc)
            kills += 1
            figures.kill(f"ledger-writer:{backend}")
            figures.fault(f"ledger:{backend}:sigkill-random")
        _assert_whole_batches(url, rows)
    assert kills >= max(1, 2 * iterations // 3), "the writer finished before most kills: too little was tested"
    _finish_and_check(url, state, batches, rows, figures)


def test_kill_at_random_points_then_rerun_is_exact(sqlite_url: str, tmp_path, figures) -> None:
    _random_kills(sqlite_url, "sqlite", tmp_path, figures, iterations=3)


@pytest.mark.long
@pytest.mark.parametrize("backend", [pytest.param("sqlite", id="sqlite"), pytest.param("postgres", id="postgres")])
def test_kill_at_random_points_soak(backend: str, request, tmp_path, figures) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    _random_kills(url, backend, tmp_path, figures, iterations=30)
