"""Kafka source and publisher (confluent-kafka, imported only inside these classes' methods).

The source is a consumer-group member with **manual commits only**: ``enable.auto.commit`` and
``enable.auto.offset.store`` are off, and :meth:`KafkaSource.commit` runs after the runner's ledger
transaction (rows + event ids + engine state + checkpoint) is durable. On (re)assignment the consumer
seeks to the ledger's checkpoint when it has one, so the ledger — not the broker — decides where to
resume; the broker commit is for tooling (lag dashboards, ``kafka-consumer-groups``). A crash between the
ledger commit and the broker commit replays messages whose event ids are already recorded: they change
nothing. At-least-once delivery + idempotent effects = exactly-once results.

One engine per consumer group: budget totals are global, so run one active member (others wait as
standbys; a rebalance hands the partitions over and the new member loads the state from the ledger).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from finops_provider.streaming.events import encode
from finops_provider.streaming.sources import Message

log = logging.getLogger(__name__)


class KafkaSource:
    """Consume cost events from ``topic`` as member of ``group_id``.

    :param bootstrap: ``host:port[,host:port]``.
    :param options: extra librdkafka consumer settings (for example ``security.protocol``).
    """

    def __init__(self, bootstrap: str, topic: str, *, group_id: str, options: Mapping[str, str] | None = None) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.name = f"kafka://{bootstrap}/{topic}"
        self.options = dict(options or {})
        self._consumer: Any = None
        self._checkpoints: dict[str, int] = {}
        self._lag: dict[str, int] = {}
        self._lag_at = 0.0
        self._assigned = False
        self._partitions: list[str] = []  # assigned to this member (kept by the rebalance callbacks)
        self.commit_interval = 1.0  # seconds between asynchronous group commits (the ledger is the resume point)
        self._committed_at = 0.0
        self._uncommitted: set[str] = set()

    def ready(self) -> bool:
        """True once the group has assigned partitions to this member."""
        return self._assigned

    def start(self, checkpoints: Mapping[str, int]) -> None:
        from confluent_kafka import Consumer

        self._checkpoints = dict(checkpoints)
        conf = {
            "bootstrap.servers": self.bootstrap,
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "session.timeout.ms": 10_000,
            "fetch.wait.max.ms": 10,
            "logger": log,
            **self.options,
        }
        self._consumer = Consumer(conf)
        self._consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            pos = self._checkpoints.get(f"{tp.topic}:{tp.partition}")
            if pos is not None:
                tp.offset = pos  # the ledger's checkpoint wins over the broker's committed offset
        self._assigned = True
        self._partitions = [f"{tp.topic}:{tp.partition}" for tp in partitions]
        log.info("assigned %s", ", ".join(f"{tp.topic}:{tp.partition}@{tp.offset}" for tp in partitions))
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        revoked = {f"{tp.topic}:{tp.partition}" for tp in partitions}
        self._uncommitted -= revoked  # no longer ours to commit
        self._partitions = [p for p in self._partitions if p not in revoked]
        log.info("revoked %s", ", ".join(f"{tp.topic}:{tp.partition}" for tp in partitions))

    def partitions(self) -> list[str]:
        """The partitions assigned (as the rebalance callbacks left them: no librdkafka call per batch)."""
        return list(self._partitions) if self._consumer is not None else []

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        c = self._consumer
        first = c.consume(1, timeout)
        if not first:
            return []
        msgs = first + c.consume(max_messages - 1, 0) if max_messages > 1 else first
        out: list[Message] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise RuntimeError(f"kafka consumer failed: {err}")
                log.warning("kafka: %s", err)
                continue
            _ts_type, ts = m.timestamp()
            offset = m.offset()
            out.append(Message(m.value() or b"", f"{m.topic()}:{m.partition()}", offset, offset + 1, ts or None))
        return out

    def commit(self, positions: Mapping[str, int], *, wait: bool = False) -> None:
        """Commit offsets to the group. Asynchronous by default: the ledger checkpoint (written before this,
        and sought to on assignment) is what resumes the stream; group offsets serve lag monitoring, so a
        micro-batch does not wait a broker round trip for them, and they are sent at most once per
        ``commit_interval``. ``wait=True`` (:meth:`close`) commits ``positions`` synchronously."""
        from confluent_kafka import KafkaException, TopicPartition

        for key, pos in positions.items():
            self._checkpoints[key] = int(pos)
        if wait:
            keys = set(positions)
        else:  # at most one asynchronous group commit per interval: one per micro-batch loads the brokers
            self._uncommitted.update(positions)
            now = time.monotonic()
            if now - self._committed_at < self.commit_interval:
                return
            self._committed_at = now
            keys = set(self._uncommitted)
        self._uncommitted -= keys
        if not keys:
            return
        tps = []
        for key in sorted(keys):
            topic, _, part = key.rpartition(":")
            tps.append(TopicPartition(topic, int(part), self._checkpoints[key]))
        try:
            self._consumer.commit(offsets=tps, asynchronous=not wait)
        except KafkaException as e:  # the ledger checkpoint already holds these positions
            log.warning("kafka commit failed (%s); the ledger checkpoint keeps the position", e)

    def lag(self) -> dict[str, int]:
        """Messages behind the partition's high watermark (refreshed at most once a second)."""
        from confluent_kafka import TopicPartition

        now = time.monotonic()
        if now - self._lag_at < 1.0 or self._consumer is None:
            return dict(self._lag)
        self._lag_at = now
        out: dict[str, int] = {}
        try:
            for tp in self._consumer.position(self._consumer.assignment()):
                _low, high = self._consumer.get_watermark_offsets(  # from the last fetch: no broker round trip
                    TopicPartition(tp.topic, tp.partition), cached=True
                )
                pos = tp.offset if tp.offset >= 0 else self._checkpoints.get(f"{tp.topic}:{tp.partition}", 0)
                out[f"{tp.topic}:{tp.partition}"] = max(0, high - pos)
        except Exception as e:  # lag is a metric: never stop the stream for it
            log.debug("lag unavailable: %s", e)
            return dict(self._lag)
        self._lag = out
        return dict(out)

    def close(self) -> None:
        if self._consumer is not None:
            try:  # the assigned partitions' positions, once more, waiting for the broker
                mine = {f"{tp.topic}:{tp.partition}" for tp in self._consumer.assignment()}
                self.commit({k: v for k, v in self._checkpoints.items() if k in mine}, wait=True)
            except Exception as e:  # monitoring only: the ledger checkpoint is the resume point
                log.warning("kafka: final offset commit failed (%s)", e)
            self._consumer.close()
            self._consumer = None


class KafkaPublisher:
    """Publish cost events to ``topic`` (idempotent producer, ``acks=all``, key = event id)."""

    def __init__(self, bootstrap: str, topic: str, *, options: Mapping[str, str] | None = None) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 1,
                "logger": log,
                **(options or {}),
            }
        )

    def publish(self, event: Mapping[str, Any]) -> None:
        self.publish_raw(encode(event), key=str(event.get("event_id", "")))

    def publish_raw(self, value: bytes, *, key: str | None = None) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key)
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                self._producer.poll(0.05)
        self._producer.poll(0)

    def flush(self, timeout: float = 10.0) -> None:
        left = self._producer.flush(timeout)
        if left:
            raise TimeoutError(f"{left} event(s) not delivered to {self.topic} within {timeout}s")

    def close(self) -> None:
        self._producer.flush(10)
