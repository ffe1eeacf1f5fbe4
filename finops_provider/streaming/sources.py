"""Stream sources: the interface, the embedded append-only JSONL source, and ``--source`` URL parsing.

A source hands out messages with a *partition* (a checkpoint key) and the *next position* to read after
each one. The runner stores those positions in the ledger in the same transaction as the rows they
produced (:class:`~finops_provider.streaming.runner.StreamProcessor`), and calls :meth:`Source.commit`
only after that transaction is durable. A restarted source resumes from the ledger's checkpoint.

The embedded source needs no broker: producers append one JSON event per line to a file
(:class:`JsonlPublisher`, ``flock``-serialised appends); the consumer reads complete lines from its
checkpointed byte offset. Its only commit is the ledger checkpoint, so it is exactly-once by construction.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from finops_provider.streaming.events import encode


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~1.2 us more to build, once per message
class Message:
    """One raw message (read-only). ``next_position`` is where to resume after it (Kafka: offset + 1; file: byte
    offset)."""

    value: bytes
    partition: str
    offset: int
    next_position: int
    timestamp_ms: int | None = None

    @property
    def position_key(self) -> str:
        return f"{self.partition}:{self.offset}"


class Source(Protocol):
    """What the runner needs from a source."""

    name: str

    def start(self, checkpoints: Mapping[str, int]) -> None:
        """Connect and resume from the ledger's checkpoints (partition -> next position)."""

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to ``max_messages`` messages; waits at most ``timeout`` seconds for the first one."""
        ...

    def commit(self, positions: Mapping[str, int]) -> None:
        """Acknowledge positions whose effects are durable in the ledger."""

    def lag(self) -> dict[str, int]:
        """Messages (Kafka) or bytes (file) not yet read, per partition."""
        ...

    def partitions(self) -> list[str]:
        """The partitions currently assigned to this consumer."""
        ...

    def close(self) -> None: ...


class Publisher(Protocol):
    def publish(self, event: Mapping[str, Any]) -> None: ...

    def flush(self, timeout: float = 10.0) -> None: ...

    def close(self) -> None: ...


class JsonlSource:
    """The embedded source: complete lines of an append-only JSONL file, from a checkpointed byte offset.

    :param path: the file producers append to (created if missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = f"file://{self.path}"
        self._pos = 0
        self._fh: Any = None

    @property
    def partition(self) -> str:
        return str(self.path)

    def start(self, checkpoints: Mapping[str, int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)
        self._pos = int(checkpoints.get(self.partition, 0))
        self._fh = open(self.path, "rb")

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        deadline = time.monotonic() + timeout
        while True:
            out = self._read(max_messages)
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(min(0.005, max(0.0, deadline - time.monotonic())))

    def _read(self, max_messages: int) -> list[Message]:
        fh = self._fh
        fh.seek(self._pos)
        out: list[Message] = []
        pos = self._pos
        while len(out) < max_messages:
            line = fh.readline()
            if not line or not line.endswith(b"\n"):  # nothing more, or a line still being written
                break
            start, pos = pos, pos + len(line)
            body = line.rstrip(b"\r\n")
            if body.strip():
                out.append(Message(body, self.partition, start, pos))
            else:
                self._pos = pos  # blank line: skip it
        if out:
            self._pos = out[-1].next_position
        return out

    def partitions(self) -> list[str]:
        return [self.partition]

    def commit(self, positions: Mapping[str, int]) -> None:
        pass  # the ledger checkpoint, written with the rows, is this source's commit

    def lag(self) -> dict[str, int]:
        try:
            return {self.partition: max(0, self.path.stat().st_size - self._pos)}
        except OSError:
            return {}

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class JsonlPublisher:
    """Append events to the embedded source's file (one JSON line each; concurrent writers are serialised).

    :param fsync: fsync after every :meth:`publish` (durable against power loss, slower).
    """

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._fsync = fsync

    def publish(self, event: Mapping[str, Any]) -> None:
        self.publish_raw(encode(event))

    def publish_raw(self, value: bytes) -> None:
        """Append raw bytes as one line (tests use it to write malformed messages)."""
        data = value.replace(b"\n", b" ") + b"\n"
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            os.write(self._fd, data)
            if self._fsync:
                os.fsync(self._fd)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def flush(self, timeout: float = 10.0) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``--source``: ``kafka://HOST:PORT[,HOST:PORT]/TOPIC[?group=G]`` or ``file:///PATH.jsonl``."""

    kind: str  # kafka | file
    target: str  # bootstrap servers, or the file path
    topic: str | None = None
    group: str | None = None
    options: tuple[tuple[str, str], ...] = ()


def default_embedded_path() -> Path:
    from finops_provider.core.ledger import finops_home

    return finops_home() / "stream" / "events.jsonl"


def parse_source(url: str | None) -> SourceSpec:
    """Parse a source URL; ``None``, ``embedded`` or ``embedded://`` is the default embedded file."""
    if not url or url in ("embedded", "embedded://"):
        return SourceSpec("file", str(default_embedded_path()))
    u = urlparse(url)
    if u.scheme == "kafka":
        topic = u.path.lstrip("/")
        if not u.netloc or not topic:
            raise ValueError(
                f"{url!r}: write kafka://HOST:PORT/TOPIC (for example kafka://localhost:9092/finops.costs)"
            )
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        group = q.pop("group", None)
        return SourceSpec("kafka", u.netloc, topic, group, tuple(sorted(q.items())))
    if u.scheme in ("file", "embedded"):
        path = (u.netloc + u.path) if u.scheme == "embedded" else u.path
        if not path:
            raise ValueError(f"{url!r}: give a file path, for example file:///var/lib/finops/events.jsonl")
        return SourceSpec("file", path)
    if u.scheme == "":
        return SourceSpec("file", url)
    raise ValueError(f"{url!r}: unknown source; use kafka://HOST:PORT/TOPIC or file:///PATH.jsonl")


def open_source(spec: SourceSpec, *, consumer: str) -> Source:
    """The consumer side of a source spec (Kafka consumer group = ``spec.group`` or ``consumer``)."""
    if spec.kind == "kafka":
        from finops_provider.streaming.kafka import KafkaSource

        assert spec.topic is not None
        return KafkaSource(spec.target, spec.topic, group_id=spec.group or consumer, options=dict(spec.options))
    return JsonlSource(spec.target)


def open_publisher(spec: SourceSpec) -> Publisher:
    """The producer side of a source spec (what services and callbacks publish to)."""
    if spec.kind == "kafka":
        from finops_provider.streaming.kafka import KafkaPublisher

        assert spec.topic is not None
        return KafkaPublisher(spec.target, spec.topic, options=dict(spec.options))
    return JsonlPublisher(spec.target)


def publish_event(event: Mapping[str, Any], target: str | None = None) -> None:
    """Publish one cost event to ``target`` (a source URL; default ``$FINOPS_STREAM_TARGET`` or embedded).

    The small helper for any service; long-lived producers should keep a publisher from
    :func:`open_publisher` instead of reconnecting per event.
    """
    pub = open_publisher(parse_source(target or os.environ.get("FINOPS_STREAM_TARGET")))
    try:
        pub.publish(event)
        pub.flush()
    finally:
        pub.close()
