"""The task callback's record, idempotency, spool fallback and its never-raise guarantee."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest

from finops_provider.callbacks import FinOpsTaskCallback, finops_default_args
from finops_provider.core.ledger import Ledger
from finops_provider.core.outbox import LocalSpool

T0 = dt.datetime(2026, 1, 5, 10, tzinfo=dt.UTC)


def context(*, try_number: int = 1, params: dict | None = None, exception: Exception | None = None) -> dict:
    ti = SimpleNamespace(
        dag_id="etl",
        task_id="load",
        run_id="r1",
        map_index=-1,
        try_number=try_number,
        start_date=T0,
        end_date=T0 + dt.timedelta(minutes=30),
        state="success",
    )
    return {
        "ti": ti,
        "task": SimpleNamespace(job_id="bq_job_123"),  # what a BigQueryInsertJobOperator exposes after execute
        "dag": SimpleNamespace(dag_id="etl", tags=["team:data", "cost_center:CC9"]),
        "params": params or {},
        "dag_run": SimpleNamespace(start_date=T0, run_id="r1"),
        "exception": exception,
    }


@pytest.fixture
def ledger_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("FINOPS_LEDGER_URL", url)
    monkeypatch.setenv("FINOPS_HOME", str(tmp_path / "home"))
    cfg = tmp_path / "config.yaml"
    cfg.write_text("budgets: []\n")
    monkeypatch.setenv("FINOPS_CONFIG", str(cfg))
    return url


def test_records_one_estimate_per_try(ledger_url: str) -> None:
    cb = FinOpsTaskCallback(quantity_per_hour="4")
    cb(context())
    cb(context())  # the same try again: replaced, not added
    cb(context(try_number=2, exception=RuntimeError("boom")))  # failed work costs money too
    with Ledger(ledger_url) as led:
        recs = sorted(led.records(), key=lambda r: r.x_line_item_id or "")
    assert [r.x_line_item_id for r in recs] == ["etl/r1/load/-1/1", "etl/r1/load/-1/2"]
    assert recs[0].billed_cost == Decimal("0.031611") * 2  # 4 cores x 0.5 h
    assert (recs[0].x_team, recs[0].x_cost_center, recs[0].resource_id) == ("data", "CC9", "bq_job_123")
    assert recs[0].tags["bigquery_job_id"] == "bq_job_123" and recs[1].tags["airflow_state"] == "failed"


def test_per_task_params_beat_defaults(ledger_url: str) -> None:
    FinOpsTaskCallback(cost="1")(context(params={"finops": {"cost": "7.25", "team": "ml"}}))
    with Ledger(ledger_url) as led:
        (r,) = list(led.records())
    assert (r.billed_cost, r.x_team) == (Decimal("7.25"), "ml")


def test_unreachable_ledger_spools_and_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FINOPS_LEDGER_URL", "postgresql+psycopg://nobody:x@127.0.0.1:1/none?connect_timeout=1")
    monkeypatch.delenv("FINOPS_CONFIG", raising=False)
    FinOpsTaskCallback(cost="3")(context())  # must not raise
    spool = LocalSpool(tmp_path / "home" / "spool.db")
    assert len(spool) == 1
    # the ledger is back: the next callback flushes the spool first
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("FINOPS_LEDGER_URL", url)
    FinOpsTaskCallback(cost="3")(context(try_number=2))
    assert len(spool) == 0
    with Ledger(url) as led:
        assert led.count() == 2


def test_bad_declarations_fail_at_parse_time() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        finops_default_args(costt="1")
    args = finops_default_args(cost="1")
    assert args["on_success_callback"] == args["on_failure_callback"]


def test_cost_is_attributed_to_the_tables_a_task_writes(ledger_url: str) -> None:
    from airflow.sdk import Asset

    ctx = context()
    ctx["task"] = SimpleNamespace(outlets=[Asset("s3://lake/orders"), Asset("s3://lake/customers"), "bq://p.d.t"])
    FinOpsTaskCallback(cost="10")(ctx)
    FinOpsTaskCallback(cost="10")(ctx)  # the same try again: replaced, not added
    with Ledger(ledger_url) as led:
        by_asset = {r.x_asset: r.billed_cost for r in led.records()}
        assert led.totals().get("USD").amount == Decimal("10")  # the parts add up to the task's cost exactly
    assert set(by_asset) == {"s3://lake/orders", "s3://lake/customers", "bq://p.d.t"}
    assert sum(by_asset.values()) == Decimal("10") and max(by_asset.values()) - min(by_asset.values()) < Decimal("1e-9")
