"""``finops stream``: the engine as a long-lived service — signals, the rich live view, the JSONL sink.

SIGTERM / SIGINT set a stop flag: the batch in progress completes (ledger transaction, claims, sinks,
source commit), the consumer leaves its group, the process exits 0. Nothing is lost by stopping at any
other moment either (see :mod:`.runner`), the stop is just faster to resume from.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finops_provider.core.anomaly import Anomaly
from finops_provider.core.budgets import Breach
from finops_provider.core.config import FinOpsConfig
from finops_provider.core.ledger import Ledger
from finops_provider.streaming.runner import (
    BatchResult,
    StreamMetrics,
    StreamProcessor,
    StreamSink,
    build_processor,
    tune_gc,
)


class JsonlSink:
    """Appends each breach / anomaly as one JSON line (fsync'd) — an audit trail or a hand-off to other tools.

    Once per ``dedupe_key``: a breach delivered again after a crash (see ``StreamProcessor._act_breaches``) is
    not written twice (the keys already in the file are read on the first write).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._seen: set[str] | None = None

    def _written(self) -> set[str]:
        if self._seen is None:
            self._seen = set()
            if self.path.exists():
                for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                    try:
                        self._seen.add(str(json.loads(line)["dedupe_key"]))
                    except (ValueError, KeyError, TypeError):  # a line torn by a crash mid-write
                        continue
        return self._seen

    def _write(self, kind: str, data: dict[str, Any]) -> None:
        key = str(data.get("dedupe_key", ""))
        seen = self._written()
        if key and key in seen:
            return
        line = json.dumps({"kind": kind, **data}, default=str) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if key:
            seen.add(key)

    def on_breach(self, breach: Breach) -> None:
        self._write("breach", breach.to_json())

    def on_anomaly(self, anomaly: Anomaly) -> None:
        self._write("anomaly", anomaly.to_json())


def render(proc: StreamProcessor, source: str) -> Any:
    """The live view: throughput, lag, the busiest budgets, recent breaches and anomalies."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    m: StreamMetrics = proc.metrics
    head = Table.grid(padding=(0, 2))
    head.add_row(
        f"[bold]finops stream[/bold] {escape(source)}",
        f"events {m.messages:,} ({m.rate():,.0f}/s)",
        f"applied {m.applied:,}",
        f"dup {m.duplicates:,}",
        f"late {m.late:,}",
        f"dead {m.dead_letters:,}",
        f"lag {m.total_lag:,}",
        f"batch {m.last_batch_ms:.1f} ms",
    )
    states = sorted(proc.engine.budget_states(), key=lambda s: -(s.total / s.b.cfg.amount))[:10]
    bt = Table(title="Budgets (running, this period)", title_justify="left", expand=False)
    for c in ("Budget", "Period", "Spent", "Budget", "Used"):
        bt.add_column(c, justify="right" if c in ("Spent", "Used") else "left")
    for st in states:
        j = st.to_json()
        used = float(j["utilisation_pct"])
        style = "red" if used >= 100 else "yellow" if used >= 80 else "green"
        cur = j["amount"]["currency"]
        bt.add_row(
            escape(j["budget"]),
            j["run_id"] or j["period_start"][:10],
            f"{st.total:,.2f} {cur}",
            f"{st.b.cfg.amount:,.2f} {cur}",
            f"[{style}]{j['utilisation_pct']} %[/{style}]",
        )
    parts: list[Any] = [head, bt]
    if m.recent_breaches:
        tb = Table(title="Breaches", title_justify="left")
        for c in ("Budget", "Threshold", "Basis", "Actions"):
            tb.add_column(c)
        for b in m.recent_breaches:
            tb.add_row(escape(b["budget"]), f"{b['threshold_pct']} %", b["basis"], ", ".join(b["actions"]))
        parts.append(tb)
    if m.recent_anomalies:
        ta = Table(title="Anomalies", title_justify="left")
        for c in ("Scope", "Window", "Actual", "Expected", "Driver"):
            ta.add_column(c)
        for a in m.recent_anomalies:
            rc = a["root_cause"]
            ta.add_row(
                escape(", ".join(f"{k}={v}" for k, v in a["scope"].items())),
                a["window_start"][:16],
                f"{a['actual']['amount'][:12]} {a['actual']['currency']}",
                f"{a['expected']['amount'][:12]}",
                escape(f"{rc['dimension']} {rc['value']}") if rc else "—",
            )
        parts.append(ta)
    return Group(*parts)


def serve(
    ledger: Ledger,
    config: FinOpsConfig,
    source: str | None,
    *,
    consumer: str = "finops-stream",
    sinks: Sequence[StreamSink] = (),
    live: bool = True,
    idle_exit: float | None = None,
    max_batch: int = 2000,
    console: Any = None,
    **settings: Any,
) -> StreamMetrics:
    """Run until SIGTERM/SIGINT (or ``idle_exit`` seconds without messages); returns the final metrics."""
    proc = build_processor(ledger, config, source, consumer=consumer, sinks=sinks, max_batch=max_batch, **settings)
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        stop.set()

    old = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    name = proc.source.name
    started = proc.start()  # load state and replay first, then freeze what lives as long as the service
    tune_gc()
    try:
        if live:
            from rich.live import Live

            with Live(render(proc, name), console=console, refresh_per_second=4, transient=False) as view:
                last = [0.0]

                def refresh(_res: BatchResult) -> None:
                    now = time.monotonic()
                    if now - last[0] >= 0.25:
                        last[0] = now
                        view.update(render(proc, name))

                refresh(started)
                metrics = proc.run(stop, idle_exit=idle_exit, on_batch=refresh)
                view.update(render(proc, name))
        else:
            last_log = [time.monotonic()]

            def log_line(res: BatchResult) -> None:
                for b in res.breaches:
                    print(f"breach {b.dedupe_key} actual {b.actual} forecast {b.forecast}", flush=True)
                for a in res.anomalies:
                    rc = a.root_cause
                    print(f"anomaly {a.dedupe_key} impact {a.impact} driver {rc[:2] if rc else None}", flush=True)
                now = time.monotonic()
                if now - last_log[0] >= 5:
                    last_log[0] = now
                    print(f"stats {json.dumps(proc.metrics.to_json())}", flush=True)

            print(f"finops stream: consuming {name} as {consumer}", flush=True)
            log_line(started)
            metrics = proc.run(stop, idle_exit=idle_exit, on_batch=log_line)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return metrics
