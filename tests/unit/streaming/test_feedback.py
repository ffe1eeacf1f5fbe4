"""A 'planned' label stored through the feedback API suppresses the streaming detector's alerts for that scope."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from finops_provider import demo
from finops_provider.core.anomaly import label_anomaly
from finops_provider.core.config import load_config
from finops_provider.core.ledger import Ledger
from finops_provider.streaming.demo import run_embedded_demo


def _scopes(res) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    return sorted((dict(a.scope) for a in res.anomalies), key=lambda s: sorted(s.items()))


def test_planned_label_suppresses_stream_anomalies(tmp_path: Path) -> None:
    cfg = load_config(demo.demo_config_path())
    plain = run_embedded_demo(Ledger(f"sqlite:///{tmp_path / 'a.db'}"), cfg, path=tmp_path / "a.jsonl")
    assert {"dag": demo.SPIKE_DAG} in _scopes(plain)  # without a label the incident is reported

    led = Ledger(f"sqlite:///{tmp_path / 'b.db'}")
    label_anomaly(led, f"anomaly|dag={demo.SPIKE_DAG}|2026-10-24T00", "planned", who="alice",
                  until=dt.datetime(2026, 10, 26, tzinfo=dt.UTC))  # fmt: skip
    res = run_embedded_demo(led, cfg, path=tmp_path / "b.jsonl")
    assert {"dag": demo.SPIKE_DAG} not in _scopes(res)
    assert _scopes(res) == [s for s in _scopes(plain) if s != {"dag": demo.SPIKE_DAG}]  # other scopes still alert
    assert res.exact and res.breaches  # costs and budget breaches are not suppressed, only the anomaly alert
