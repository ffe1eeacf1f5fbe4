"""A short, deterministic burst of cost events for ``finops demo``: a live breach and live anomalies.

The burst covers the first hours of the demo's "today" (``finops_provider.demo.DEMO_NOW``): steady
traffic from a few DAGs, then ``feature_store_backfill``'s ``backfill_embeddings`` task explodes. The
events go through the embedded JSONL source and the stream processor like any others, so the demo shows
the whole path: decode (usage priced through the rate card), duplicates ignored, a malformed message
dead-lettered, a late event sent to the ledger only, a credit, breaches claimed once, EWMA anomalies with
their root cause, and exact ledger totals.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from finops_provider.core.anomaly import Anomaly
from finops_provider.core.budgets import Breach
from finops_provider.core.config import FinOpsConfig
from finops_provider.core.ledger import Ledger
from finops_provider.core.money import MoneyBag
from finops_provider.streaming.events import cost_event
from finops_provider.streaming.runner import BatchResult, CallbackSink, StreamMetrics, StreamSink, build_processor
from finops_provider.streaming.sources import JsonlPublisher

DEMO_DAY = dt.datetime(2026, 10, 24, tzinfo=dt.UTC)
SPIKE_DAG = "feature_store_backfill"
SPIKE_TASK = "backfill_embeddings"
_BACKGROUND = (  # dag, platform, service, USD per hour
    ("ingest_orders", "databricks", "Databricks Jobs Compute", Decimal("24.50")),
    ("ml_train_recsys", "databricks", "Databricks Jobs Compute", Decimal("31.25")),
    ("bi_daily_revenue", "snowflake", "Snowflake Warehouse", Decimal("18.00")),
)
_TASKS = ("extract_features", SPIKE_TASK, "write_store", "validate")


@dataclass
class DemoStreamResult:
    """What the burst did. ``ledger_total`` equals ``expected`` exactly when the stream lost and doubled nothing."""

    events: int
    breaches: list[Breach]
    anomalies: list[Anomaly]
    metrics: StreamMetrics
    expected: MoneyBag
    ledger_total: MoneyBag
    source: str
    log: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return self.expected == self.ledger_total


def demo_events() -> tuple[list[dict[str, Any] | bytes], MoneyBag]:
    """The burst in publish order (a bytes item is a raw, malformed message) and the exact expected total."""
    out: list[dict[str, Any] | bytes] = []
    expected = MoneyBag()

    def add(ev: dict[str, Any], usd: Decimal) -> None:
        out.append(ev)
        expected.add_raw(usd, "USD")

    dbu_price = Decimal("0.13")  # the demo config's negotiated JOBS_COMPUTE price; the decoder looks it up
    for hour in range(9):
        t = DEMO_DAY + dt.timedelta(hours=hour)
        for dag, platform, service, usd in _BACKGROUND:
            add(
                cost_event(
                    event_id=f"demo:{dag}:{hour}",
                    event_time=t + dt.timedelta(minutes=7),
                    source="demo-listener",
                    amount=usd,
                    currency="USD",
                    platform=platform,
                    service=service,
                    dag_id=dag,
                    task_id="run",
                    run_id=f"scheduled__{t:%Y-%m-%dT%H}",
                ),
                usd,
            )
        for i, task in enumerate(_TASKS):
            spiking = hour == 8 and task == SPIKE_TASK
            for k in range(12 if spiking else 1):
                dbu = Decimal(300 if spiking else 40)
                add(
                    cost_event(
                        event_id=f"demo:{SPIKE_DAG}:{task}:{hour}:{k}",
                        event_time=t + dt.timedelta(minutes=5 * k + i),
                        source="demo-listener",
                        quantity=dbu,
                        unit="DBU",
                        sku="JOBS_COMPUTE",
                        platform="databricks",
                        service="Databricks Jobs Compute",
                        dag_id=SPIKE_DAG,
                        task_id=task,
                        run_id=f"scheduled__{t:%Y-%m-%dT%H}",
                    ),
                    dbu * dbu_price,
                )
        if hour == 4:
            out.append(out[-1])  # a duplicate delivery: no effect
            out.append(b'{"schema_version": 1, "event_id": "demo:broken", "cost": ')  # malformed: dead letter
            add(
                cost_event(
                    event_id="demo:credit:1",
                    event_time=t + dt.timedelta(minutes=30),
                    source="demo-billing",
                    amount="-12.40",
                    currency="USD",
                    platform="snowflake",
                    dag_id="bi_daily_revenue",
                    kind="billed",
                ),
                Decimal("-12.40"),
            )
        if hour == 7:  # 5 hours old: beyond the allowed lateness (1 h) -> ledger only
            add(
                cost_event(
                    event_id="demo:late:1",
                    event_time=DEMO_DAY + dt.timedelta(hours=2),
                    source="demo-listener",
                    amount="3.75",
                    currency="USD",
                    platform="snowflake",
                    dag_id="bi_daily_revenue",
                ),
                Decimal("3.75"),
            )
    return out, expected


def run_embedded_demo(
    ledger: Ledger,
    config: FinOpsConfig,
    *,
    path: str | Path | None = None,
    consumer: str = "finops-demo",
    pace: float = 0.0,
    sinks: tuple[StreamSink, ...] = (),
    on_batch: Callable[[BatchResult], None] | None = None,
    max_batch: int = 16,
) -> DemoStreamResult:
    """Replay the demo burst through the embedded source and return what the stream detected.

    :param ledger: where rows, state, feed and breach claims go (the demo's ledger).
    :param config: budgets, attribution and anomaly gates (the demo config has ``feature-backfill-daily``).
    :param path: the JSONL file to publish to (default: a new temporary file).
    :param pace: seconds between published events (0: publish the whole burst at once); the processor runs
        concurrently, so with a pace the breach appears while events are still arriving.
    :param sinks: extra sinks (for example one that prints); breaches and anomalies are also returned.
    :param max_batch: small micro-batches so detection is visibly incremental.

    Running it twice on the same ledger detects nothing new the second time: the events are duplicates.
    """
    path = Path(path) if path else Path(tempfile.mkdtemp(prefix="finops-stream-demo-")) / "events.jsonl"
    events, expected = demo_events()
    lines: list[str] = []
    sink = CallbackSink(
        lambda b: lines.append(f"breach {b.dedupe_key}"),
        lambda a: lines.append(f"anomaly {a.dedupe_key} root cause {a.root_cause[:2] if a.root_cause else None}"),
    )
    proc = build_processor(
        ledger,
        config,
        f"file://{path}",
        consumer=consumer,
        sinks=(sink, *sinks),
        max_batch=max_batch,
        poll_timeout=0.05,
        max_future=None,  # a replay of a recorded burst: event times are in the past or future of the wall clock
    )
    done = threading.Event()

    def publish() -> None:
        pub = JsonlPublisher(path)
        try:
            for ev in events:
                if isinstance(ev, bytes):
                    pub.publish_raw(ev)
                else:
                    pub.publish(ev)
                if pace:
                    time.sleep(pace)
            pub.flush()
        finally:
            pub.close()
            done.set()

    breaches: list[Breach] = []
    anomalies: list[Anomaly] = []

    def collect(res: BatchResult) -> None:
        breaches.extend(res.breaches)
        anomalies.extend(res.anomalies)
        if on_batch is not None:
            on_batch(res)

    publisher = threading.Thread(target=publish, name="finops-demo-publisher", daemon=True)
    publisher.start()
    stop = threading.Event()
    proc.start()
    try:
        while True:
            res = proc.run_once()
            collect(res)
            if done.is_set() and not res.messages and not any(proc.source.lag().values()):
                break
    finally:
        stop.set()
        proc.close()
        publisher.join()
    total = ledger.totals(scope=f"stream:{consumer}")
    return DemoStreamResult(
        events=len(events),
        breaches=breaches,
        anomalies=anomalies,
        metrics=proc.metrics,
        expected=expected,
        ledger_total=total,
        source=f"file://{path}",
        log=lines,
    )
