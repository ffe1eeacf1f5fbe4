"""Streaming over the real Kafka wire protocol: confluent-kafka's bundled librdkafka mock cluster (3 brokers).

Producers, the consumer group, offset commits and watermark queries all go over TCP to the mock brokers.
The kill test hard-kills (SIGKILL) the ``finops stream`` service while it is consuming, restarts it, and
checks that the ledger equals the produced events to the last digit and that each breach is alerted once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from finops_provider.core.config import parse_config
from finops_provider.core.ledger import Ledger
from finops_provider.core.schema import breach as breach_table
from finops_provider.streaming.events import cost_event
from finops_provider.streaming.feed import consumer_status, stream_events
from finops_provider.streaming.kafka import KafkaPublisher
from finops_provider.streaming.runner import CallbackSink, build_processor

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 10, 10, tzinfo=dt.UTC)
CONFIG: dict[str, Any] = {
    "dags": {"ingest_*": {"team": "data-eng"}},
    "budgets": [
        {
            "name": "data-eng-month",
            "scope": {"team": "data-eng"},
            "period": "month",
            "amount": "500",
            "thresholds": [{"pct": 50}, {"pct": 100}, {"pct": 150}],
        },
        {
            "name": "orders-day",
            "scope": {"dag": "ingest_orders"},
            "period": "day",
            "amount": "100",
            "thresholds": [{"pct": 80}, {"pct": 100}],
        },
    ],
}


def start_mock_cluster(brokers: int = 3) -> tuple[Any, str]:
    """A mock cluster owned by a producer (it lives as long as that producer) and its bootstrap address.

    The brokers' addresses come from the cluster's own metadata. (Reading them from the ``debug: mock`` log
    works too, but then every request of the brokers is formatted as a debug line: a p99 of ~500 ms where
    the quiet mock cluster delivers in ~13 ms.)
    """
    from confluent_kafka import Producer

    owner = Producer({"test.mock.num.brokers": brokers})
    md = owner.list_topics(timeout=15)
    if not md.brokers:
        raise RuntimeError("the librdkafka mock cluster reported no brokers")
    return owner, ",".join(f"{b.host}:{b.port}" for b in sorted(md.brokers.values(), key=lambda b: b.id))


@pytest.fixture(scope="module")
def kafka() -> Iterator[str]:
    owner, bootstrap = start_mock_cluster()
    yield bootstrap
    owner.flush(5)
    del owner


def _offsets(bootstrap: str, topic: str, group: str) -> tuple[dict[int, int], dict[int, int]]:
    """(committed offset, high watermark) per partition, read over the wire."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        committed = {
            tp.partition: tp.offset for tp in c.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        }
        high = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    finally:
        c.close()
    return committed, high


def _produce(bootstrap: str, topic: str, n: int, *, dup_every: int = 1000, poison: int = 3) -> Decimal:
    pub = KafkaPublisher(bootstrap, topic)
    truth = Decimal(0)
    for i in range(n):
        ev = cost_event(
            event_id=f"{topic}-{i}",
            event_time=T0 + dt.timedelta(seconds=15 * i),
            source="it",
            amount=f"{(i % 89) / 100:.2f}" if i % 41 else "-0.37",  # credits too
            currency="USD",
            dag_id="ingest_orders" if i % 4 else "ingest_crm",
            task_id=f"t{i % 5}",
        )
        pub.publish(ev)
        truth += Decimal(ev["cost"]["amount"])
        if i % dup_every == 0:
            pub.publish(ev)  # at-least-once producers redeliver
    for k in range(poison):
        pub.publish_raw(b'{"schema_version": 1, "event_id": "poison-%d", "cost": {"amount": "1e99"}}' % k, key="p")
    pub.flush(30)
    pub.close()
    return truth


def test_produce_consume_commit_over_the_wire(kafka, tmp_path) -> None:
    topic = f"costs-{uuid.uuid4().hex[:8]}"
    truth = _produce(kafka, topic, 2000)
    cfg = parse_config(CONFIG)
    alerts: list[str] = []
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as led:
        proc = build_processor(
            led,
            cfg,
            f"kafka://{kafka}/{topic}?group=g-{topic}",
            consumer="it",
            sinks=[CallbackSink(lambda b: alerts.append(b.dedupe_key))],
            max_future=None,
            max_batch=300,
        )
        m = proc.run(idle_exit=3.0)
        assert (m.applied, m.duplicates, m.dead_letters) == (2000, 2, 3)
        assert led.totals(scope="stream:it").get("USD").amount == truth
        assert stream_events(led, "it") == {"events": 2000, "unfolded": 0}
        assert len(alerts) == len(set(alerts)) >= 4
        # offsets were committed (manually) up to the end of every partition, after the ledger writes
        committed, high = _offsets(kafka, topic, f"g-{topic}")
        assert committed == high and sum(high.values()) == 2000 + 2 + 3
        # consumer lag is exposed (metric + checkpoint table) and reads zero once caught up
        status = {s["partition"]: s for s in consumer_status(led)}
        assert {int(p.rpartition(":")[2]): s["position"] for p, s in status.items()} == high
        assert set(m.lag) == set(status) and all(v == 0 for v in m.lag.values())


def _service(bootstrap: str, topic: str, cfg: Path, url: str, alerts: Path, *extra: str) -> subprocess.Popen[str]:
    source = f"kafka://{bootstrap}/{topic}?group=kill-{topic}&group.instance.id=kill-{topic}&session.timeout.ms=6000"
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "finops_provider.cli",
            "stream",
            "--no-live",
            "--source",
            source,
            "--ledger",
            url,
            "--config",
            str(cfg),
            "--sink-jsonl",
            str(alerts),
            "--max-batch",
            "100",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "FINOPS_LEDGER_URL": url},
    )


def _wait(pred: Any, timeout: float, proc: subprocess.Popen[str]) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        if proc.poll() is not None:
            raise AssertionError(f"service exited early: {proc.communicate()[0][-2000:]}")
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def test_kill_9_mid_batch_then_restart_is_exactly_once(kafka, tmp_path) -> None:
    topic = f"kill-{uuid.uuid4().hex[:8]}"
    n = 12_000
    truth = _produce(kafka, topic, n)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    alerts = tmp_path / "alerts.jsonl"
    with Ledger(url) as led:
        kills = 0
        for target in (2_000, 6_500):  # SIGKILL as soon as the service is past these row counts
            proc = _service(kafka, topic, cfg, url, alerts)
            _wait(lambda t=target: stream_events(led)["events"] > t, 90, proc)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            assert proc.returncode == -signal.SIGKILL
            kills += 1
        assert stream_events(led)["events"] < n, "the kills came after the stream had finished"
        proc = _service(kafka, topic, cfg, url, alerts, "--idle-exit", "4")
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out[-3000:]
        # exactly the produced events, to the last digit
        assert stream_events(led) == {"events": n, "unfolded": 0}
        assert led.totals(scope="stream:finops-stream").get("USD").amount == truth
        with led.engine.connect() as c:
            claimed = sorted(c.execute(sa.select(breach_table.c.dedupe_key)).scalars())
    alerted = sorted(
        rec["dedupe_key"] for rec in map(json.loads, alerts.read_text().splitlines()) if rec["kind"] == "breach"
    )
    # 2 days of orders-day thresholds + the month's: each alerted once across three processes
    assert len(claimed) >= 6
    assert alerted == claimed
    committed, high = _offsets(kafka, topic, f"kill-{topic}")
    assert committed == high
    assert kills == 2
