"""The Kafka consumer (``finops stream`` over the real Kafka wire protocol, librdkafka's mock cluster) killed with
SIGKILL at random points, iteration after iteration: 0 events lost, 0 counted twice, every breach alerted once.

Reuses the mock cluster, producer and service launcher of tests/integration/test_kafka_stream.py.
"""

from __future__ import annotations

import json
import random
import signal
import time
import uuid

import pytest
import sqlalchemy as sa
import yaml
from integration.test_kafka_stream import CONFIG, _offsets, _produce, _service, kafka  # noqa: F401 (fixture)

from finops_provider.core.ledger import Ledger
from finops_provider.core.schema import breach as breach_table
from finops_provider.streaming.feed import stream_events

pytestmark = pytest.mark.integration


def _kill_loop(bootstrap: str, tmp_path, figures, *, iterations: int, n: int, seed: str) -> None:
    rng = random.Random(seed)
    topic = f"rel-kill-{uuid.uuid4().hex[:8]}"
    truth = _produce(bootstrap, topic, n)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    alerts = tmp_path / "alerts.jsonl"
    with Ledger(url) as led:
        kills = 0
        for _ in range(iterations):
            proc = _service(bootstrap, topic, cfg, url, alerts)
            deadline = time.monotonic() + rng.uniform(1.0, 6.0)  # start-up, group join, mid-batch, between batches
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
                kills += 1
                figures.kill("kafka-consumer")
                figures.fault("kafka:sigkill")
            assert stream_events(led)["events"] <= n
        assert kills >= max(1, 2 * iterations // 3), "the consumer finished before most kills"
        proc = _service(bootstrap, topic, cfg, url, alerts, "--idle-exit", "4")
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
        events = stream_events(led)
        stored = events["events"]
        total = led.totals(scope="stream:finops-stream").get("USD").amount
        with led.engine.connect() as c:
            claimed = sorted(c.execute(sa.select(breach_table.c.dedupe_key)).scalars())
    figures.checked(valid=n, lost=n - stored, duplicates=stored - n)
    assert stored == n and total == truth and events["unfolded"] == 0
    alerted = sorted(r["dedupe_key"] for r in map(json.loads, alerts.read_text().splitlines()) if r["kind"] == "breach")
    figures.checked(
        valid=len(claimed), lost=len(set(claimed) - set(alerted)), duplicates=len(alerted) - len(set(alerted))
    )
    assert alerted == claimed
    committed, high = _offsets(bootstrap, topic, f"kill-{topic}")
    assert committed == high


def test_consumer_killed_at_random_points(kafka, tmp_path, figures) -> None:  # noqa: F811
    _kill_loop(kafka, tmp_path, figures, iterations=3, n=5_000, seed="default")


@pytest.mark.long
def test_consumer_killed_at_random_points_soak(kafka, tmp_path, figures) -> None:  # noqa: F811
    _kill_loop(kafka, tmp_path, figures, iterations=25, n=20_000, seed="soak")
