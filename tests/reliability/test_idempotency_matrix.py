"""Idempotency matrix: operators and callbacks run three times, retried, and backfilled over overlapping windows
give identical totals and never a duplicate alert.

Cells already proven elsewhere (not repeated here): ledger re-ingest (tests/unit/core/test_ledger.py), GCP and
Azure re-collection (tests/unit/hooks/), embedded and Kafka stream redelivery (tests/unit/streaming/,
tests/integration/test_kafka_stream.py), single-window CollectCostsOperator re-runs (tests/unit/operators/).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pendulum
import pytest
from integration.peers import Peers  # tests/integration (a site-packages "tests" package shadows tests.integration)

from finops_provider.callbacks import FinOpsDagCallback, FinOpsTaskCallback
from finops_provider.core.focus import read_focus, write_focus_csv
from finops_provider.core.ledger import Ledger
from finops_provider.core.money import exact_sum
from finops_provider.operators.collect import CollectCostsOperator
from finops_provider.operators.focus_ingest import IngestFocusFileOperator
from tests.fixtures.aws import ce_period

UTC = dt.UTC
#: the "true" bill: day -> [(keys, unblended, amortized)]
BILL = {
    f"2026-10-0{d}": [
        ([f"airflow_dag_id$dag_{j}", "AWS Glue"], f"{d}.{j:02d}00000001", f"{d}.{j:02d}") for j in range(4)
    ]
    + [(["airflow_dag_id$", "Amazon S3"], f"0.0{d}", f"0.0{d}")]
    for d in range(1, 7)
}


def _answer(start: str, end: str) -> dict[str, Any]:
    days = [d for d in sorted(BILL) if start <= d < end]
    return {
        "ResultsByTime": [
            ce_period(d, (dt.date.fromisoformat(d) + dt.timedelta(days=1)).isoformat(), BILL[d]) for d in days
        ]
    }


def _truth(start: str, end: str) -> Decimal:
    return exact_sum(Decimal(u) for d, groups in BILL.items() if start <= d < end for _, u, _ in groups)


def test_collect_operator_backfills_over_overlapping_windows(moto_ce, sqlite_url: str, figures) -> None:
    windows = [
        ("2026-10-01", "2026-10-04"),
        ("2026-10-03", "2026-10-06"),
        ("2026-10-02", "2026-10-07"),
        ("2026-10-01", "2026-10-07"),
    ]
    moto_ce([_answer(s, e) for s, e in windows])  # one queued answer per distinct request, in request order
    totals = []
    for s, e in windows:
        op = CollectCostsOperator(
            task_id="collect",
            source="aws",
            trailing_days=0,
            ledger_url=sqlite_url,
            options={"tag_key": "airflow_dag_id"},
        )
        op.render_template_fields({"data_interval_start": pendulum.parse(s), "data_interval_end": pendulum.parse(e)})
        outs = [op.execute({}) for _ in range(3)]  # run, re-run, retry
        assert outs[1]["ledger"]["inserted"] == outs[2]["ledger"]["inserted"] == 0
        assert outs[0]["totals"] == outs[1]["totals"] == outs[2]["totals"]
        assert Decimal(outs[0]["totals"]["USD"]) == _truth(s, e)
        with Ledger(sqlite_url) as led:
            totals.append(led.totals().get("USD").amount)
    rows = sum(len(g) for g in BILL.values())
    with Ledger(sqlite_url) as led:
        n = led.count()
        assert led.totals(dag_id="dag_2").get("USD").amount == exact_sum(
            Decimal(u) for groups in BILL.values() for k, u, _ in groups if k[0] == "airflow_dag_id$dag_2"
        )
    figures.checked(valid=rows, lost=rows - n, duplicates=n - rows)
    assert n == rows
    # the ledger only ever grows by the days a window adds; overlaps never count twice
    assert totals == [_truth("2026-10-01", e) for _, e in windows[:3]] + [_truth("2026-10-01", "2026-10-07")]


def test_focus_ingest_operator_three_times_keeps_identical_rows_apart(
    focus_sample_path: Path, tmp_path, figures
) -> None:
    rows = [r for r in read_focus(focus_sample_path) if not hasattr(r, "field")][:200]
    export = tmp_path / "export.csv"
    write_focus_csv(rows + rows[:25], export)  # 25 identical duplicate lines: separate charges
    url = f"sqlite:///{tmp_path / 'l.db'}"
    outs = [IngestFocusFileOperator(task_id=f"i{k}", path=str(export), ledger_url=url).execute({}) for k in range(3)]
    truth = exact_sum([r.billed_cost for r in rows] + [r.billed_cost for r in rows[:25]])
    assert outs[0]["inserted"] == 225 and outs[1]["unchanged"] == outs[2]["unchanged"] == 225
    with Ledger(url) as led:
        n = led.count()
        assert led.totals().get("USD").amount == truth
    figures.checked(valid=225, lost=225 - n, duplicates=n - 225)
    assert n == 225


# ----------------------------------------------------------------------------------------------- callbacks
@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Peers]:
    peers = Peers()
    monkeypatch.setenv(
        "AIRFLOW_CONN_SLACK_DEFAULT",
        json.dumps({"conn_type": "slackwebhook", "password": peers.url + "/services/T/B/X"}),
    )
    monkeypatch.setenv("FINOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FINOPS_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        json.dumps(
            {
                "budgets": [
                    {
                        "name": "etl-run",
                        "scope": {"dag": "etl"},
                        "period": "run",
                        "amount": "10",
                        "thresholds": [{"pct": 50, "actions": ["notify"]}, {"pct": 100, "actions": ["notify"]}],
                    }
                ]
            }
        )
    )
    monkeypatch.setenv("FINOPS_CONFIG", str(cfg))
    yield peers
    peers.close()


RUN_START = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(minutes=30)


def _ctx(task: str, try_number: int) -> dict[str, Any]:
    start = RUN_START + dt.timedelta(minutes=try_number)  # a try's start is fixed: every delivery sees the same
    ti = SimpleNamespace(
        dag_id="etl",
        task_id=task,
        run_id="r1",
        map_index=-1,
        try_number=try_number,
        start_date=start,
        end_date=start + dt.timedelta(minutes=5),
    )
    dag = SimpleNamespace(dag_id="etl", tags=["team:data"])
    return {"ti": ti, "dag": dag, "params": {}, "dag_run": SimpleNamespace(dag_id="etl", run_id="r1", start_date=start)}


def test_task_and_dag_callbacks_three_times_with_retries_alert_once(slack: Peers, tmp_path, figures) -> None:
    cb = FinOpsTaskCallback(cost="3.0000000000000001")
    tries = [("a", 1), ("b", 1), ("b", 2), ("c", 1)]  # b failed once and was retried: two tries, both cost money
    for task, n in tries:
        for _ in range(3):  # the same callback delivered three times (retried callback, listener + callback, ...)
            cb(_ctx(task, n))
    for _ in range(3):
        FinOpsDagCallback()(
            {"dag_run": SimpleNamespace(dag_id="etl", run_id="r1"), "dag": SimpleNamespace(dag_id="etl")}
        )
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as led:
        n = led.count()
        assert led.totals(run_id="r1").get("USD").amount == 4 * Decimal("3.0000000000000001")
    posts = slack.state.find("POST", "/services/")
    texts = sorted(p.body["text"] for p in posts)
    figures.checked(
        valid=4 + 2, lost=max(0, 4 - n) + max(0, 2 - len(posts)), duplicates=max(0, n - 4) + max(0, len(posts) - 2)
    )
    assert n == 4
    assert len(posts) == 2, texts
    assert [t.split(" (")[0] for t in texts] == [
        "FinOps: budget etl-run crossed 100 %",
        "FinOps: budget etl-run crossed 50 %",
    ]
