"""A ledger writer run as a child process by ``test_ledger_crash.py`` (and killed with SIGKILL there).

``python -m tests.reliability._ledger_writer URL BATCHES ROWS STATE_DIR [STALL_BATCH STALL_ROW]``

Ingests ``BATCHES`` batches of ``ROWS`` records each (one ``Ledger.ingest`` call, i.e. one transaction, per
batch), touching ``STATE_DIR/started`` first and ``STATE_DIR/committed-<b>`` after each batch. With a stall
point it touches ``STATE_DIR/stalled`` after yielding row ``STALL_ROW`` of batch ``STALL_BATCH`` (several
chunks of that batch are already written inside the open transaction) and sleeps until it is killed.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

T0 = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
SOURCE = "crash-test"


def amount(batch: int, i: int) -> Decimal:
    """Exact, varied amounts: large and tiny digits, a few credits."""
    sign = "-" if i % 97 == 0 else ""
    return Decimal(f"{sign}{(i * 7919 + batch) % 100_003}.{(i * 31) % 1000:03d}0000000{i % 10}01")


def expected_total(batches: int, rows: int) -> Decimal:
    from finops_provider.core.money import exact_sum

    return exact_sum(amount(b, i) for b in range(batches) for i in range(rows))


def records(batch: int, rows: int, stall_at: int | None, state: Path) -> Iterator[object]:
    from finops_provider.core.records import build_record

    start = T0 + dt.timedelta(days=batch)
    for i in range(rows):
        yield build_record(
            billed_cost=amount(batch, i),
            billing_currency="USD",
            charge_period_start=start,
            charge_period_end=start + dt.timedelta(hours=1),
            x_line_item_id=f"b{batch}-{i}",
            x_source=SOURCE,
            x_dag_id=f"dag_{i % 13}",
            tags={"team": f"t{i % 5}", "quote": "it's; -- /* x */"},
        )
        if stall_at is not None and i == stall_at:
            (state / "stalled").touch()
            time.sleep(600)  # the parent kills us here, mid-transaction


def main(argv: list[str]) -> None:
    from finops_provider.core.ledger import Ledger

    url, batches, rows, state_dir = argv[0], int(argv[1]), int(argv[2]), Path(argv[3])
    stall_batch = int(argv[4]) if len(argv) > 4 else -1
    stall_row = int(argv[5]) if len(argv) > 5 else -1
    with Ledger(url) as led:
        (state_dir / "started").touch()
        for b in range(batches):
            led.ingest(
                records(b, rows, stall_row if b == stall_batch else None, state_dir),
                source=SOURCE,
                batch_id=f"crash-b{b}-{time.time_ns()}",
            )
            (state_dir / f"committed-{b}").touch()


if __name__ == "__main__":
    main(sys.argv[1:])
