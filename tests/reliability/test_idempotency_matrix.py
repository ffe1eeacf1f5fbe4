"""Idempotency matrix: operators, sensors and callbacks run three times, retried, and backfilled over overlapping
windows give identical totals, identical decisions and never a duplicate alert.

Here: CollectCostsOperator backfills, IngestFocusFileOperator, task / DAG callbacks, BudgetGateOperator (pass /
skip / fail / approval, Slack down and back), BudgetHeadroomSensor and BillingDataFreshnessSensor (poke,
deferrable and trigger paths agree), PublishSummaryOperator (files byte-identical, one Slack digest per interval);
on SQLite and PostgreSQL where the ledger is the state.

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


# ----------------------------------------------------------------------------------------------- budget gate
GATE_CONFIG: dict[str, Any] = {
    "budgets": [
        {
            "name": "etl-run",
            "scope": {"dag": "etl"},
            "period": "run",
            "amount": "10",
            "thresholds": [{"pct": 100, "actions": ["notify"]}],
        },
        {"name": "etl-day", "scope": {"dag": "etl"}, "period": "day", "amount": "10"},
    ]
}


class SupervisorComms:
    """The task supervisor's side of the HITL request (what the task runner would forward to the API server)."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, msg: Any) -> None:
        self.sent.append(msg)


@pytest.fixture
def gate_env(ledger_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Run and day budgets of 10 USD for DAG ``etl``, the ledger (SQLite / PostgreSQL), the local Slack peer and
    a stand-in for the task supervisor (it receives the HITL request the approval gate writes)."""
    peers = Peers()
    monkeypatch.setenv(
        "AIRFLOW_CONN_SLACK_DEFAULT",
        json.dumps({"conn_type": "slackwebhook", "password": peers.url + "/services/T/B/GATE"}),
    )
    monkeypatch.setenv("FINOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FINOPS_LEDGER_URL", ledger_url)
    cfg = tmp_path / "gate.yaml"
    cfg.write_text(json.dumps(GATE_CONFIG))
    monkeypatch.setenv("FINOPS_CONFIG", str(cfg))
    from airflow.sdk.execution_time import task_runner

    comms = SupervisorComms()
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    yield {"peers": peers, "url": ledger_url, "comms": comms, "config": cfg}
    peers.close()


def _spend(url: str, run_id: str, amount: str, n: int = 0) -> None:
    from finops_provider.core.records import build_record

    now = dt.datetime.now(UTC)
    start = max(now - dt.timedelta(seconds=30), now.replace(hour=0, minute=0, second=0, microsecond=0))  # today
    with Ledger(url) as led:
        led.ingest(
            [
                build_record(
                    billed_cost=Decimal(amount),
                    billing_currency="USD",
                    charge_period_start=start,
                    charge_period_end=now,
                    x_dag_id="etl",
                    x_task_id=f"extract{n}",
                    x_run_id=run_id,
                    x_line_item_id=f"{run_id}-{n}",
                    x_cost_kind="billed",
                    x_source="seed",
                )
            ],
            source="seed",
            scope=f"seed:{run_id}:{n}",
        )


def _gate_ctx(run_id: str) -> dict[str, Any]:
    import uuid

    ti = SimpleNamespace(dag_id="etl", task_id="gate", run_id=run_id, map_index=-1, try_number=1, id=uuid.uuid4())
    return {"ti": ti, "task_instance": ti}


def _gate_events(url: str) -> list[tuple[str, str | None]]:
    from finops_provider.core.outbox import events

    with Ledger(url) as led:
        return [(e["kind"], e["run_id"]) for e in events(led, dag_id="etl")]


@pytest.mark.parametrize("on_breach", ["pass", "skip", "fail"])
def test_budget_gate_three_times_same_decision_one_record(gate_env: dict, on_breach: str, figures) -> None:
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from finops_provider.operators.budget_gate import BudgetGateOperator

    url = gate_env["url"]
    _spend(url, "r-ok", "4")
    _spend(url, "r-over", "8.0000000000000001")
    outcomes: dict[str, list[Any]] = {}
    for run_id in ("r-ok", "r-over", "r-ok", "r-over", "r-ok", "r-over"):  # each run's gate 3 times, interleaved
        gate = BudgetGateOperator(
            task_id="gate", budgets=["etl-run"], estimate="2", on_breach=on_breach, use_forecast=False
        )
        try:
            out: Any = gate.execute(_gate_ctx(run_id))
        except (AirflowSkipException, AirflowFailException) as e:
            out = (type(e).__name__, str(e))
        outcomes.setdefault(run_id, []).append(out)
    ok, over = outcomes["r-ok"], outcomes["r-over"]
    assert ok[0] == ok[1] == ok[2] and ok[0]["decision"] == "pass"
    assert ok[0]["checks"] == [
        {
            "budget": "etl-run",
            "currency": "USD",
            "limit": "10",
            "actual": "4",
            "estimate": "2",
            "forecast": "4",
            "over": False,
        }
    ]
    assert over[0] == over[1] == over[2]
    if on_breach == "pass":
        assert over[0]["decision"] == "pass" and over[0]["checks"][0]["over"] is True
        assert over[0]["checks"][0]["actual"] == "8.0000000000000001"  # the same text on SQLite and PostgreSQL
    else:
        kind = {"skip": "AirflowSkipException", "fail": "AirflowFailException"}[on_breach]
        assert over[0][0] == kind and "etl-run: actual 8.0000000000000001" in over[0][1]
    kinds = sorted(_gate_events(url))
    decided = {"pass": "gate_pass_over", "skip": "gate_skip", "fail": "gate_fail"}[on_breach]
    expected = sorted([("gate_pass", "r-ok"), (decided, "r-over")])
    figures.checked(valid=2, lost=len(set(expected) - set(kinds)), duplicates=len(kinds) - len(set(kinds)))
    assert kinds == expected  # one record per run and decision, however often the gate ran
    assert gate_env["peers"].state.find("POST", "/services/") == []  # pass / skip / fail never message Slack


def test_budget_gate_approval_asks_on_slack_once_per_run(gate_env: dict, figures) -> None:
    from airflow.sdk.exceptions import TaskAwaitingInput

    from finops_provider.operators.budget_gate import BudgetGateOperator

    url, peers, comms = gate_env["url"], gate_env["peers"], gate_env["comms"]
    _spend(url, "r1", "9")
    _spend(url, "r2", "11")
    for run_id in ("r1", "r2"):
        for _ in range(3):  # first try, retry, cleared and re-run
            gate = BudgetGateOperator(
                task_id="gate", budgets=["etl-run"], estimate="1", slack_conn_id="slack_default", use_forecast=False
            )
            with pytest.raises(TaskAwaitingInput):
                gate.execute(_gate_ctx(run_id))
    posts = peers.state.find("POST", "/services/")
    texts = [p.body["text"] for p in posts]
    figures.checked(valid=2, lost=max(0, 2 - len(posts)), duplicates=max(0, len(posts) - 2))
    assert len(posts) == 2, texts  # one approval request per gated run, not one per try
    hitl = [m for m in comms.sent if type(m).__name__ == "CreateHITLDetailPayload"]
    assert len(hitl) == 6  # Airflow's HITL request itself is written on every try (an upsert)
    assert sorted(_gate_events(url)) == [("approval_requested", "r1"), ("approval_requested", "r2")]


def test_budget_gate_approval_during_a_slack_outage_is_sent_once_on_recovery(
    gate_env: dict, monkeypatch: pytest.MonkeyPatch, figures
) -> None:
    from airflow.sdk.exceptions import TaskAwaitingInput

    from finops_provider.operators.budget_gate import BudgetGateOperator

    monkeypatch.setenv("AIRFLOW__FINOPS__OUTBOX_BACKOFF_BASE_S", "0")
    url, peers = gate_env["url"], gate_env["peers"]
    _spend(url, "r3", "12")
    peers.state.fail_paths.add("/services/")
    gate = BudgetGateOperator(task_id="gate", budgets=["etl-run"], slack_conn_id="slack_default", use_forecast=False)
    for _ in range(3):  # Slack is down for the first try and two retries
        with pytest.raises(TaskAwaitingInput):
            gate.execute(_gate_ctx("r3"))
    failed = peers.state.find("POST", "/services/", status=500)
    figures.fault("slack:5xx-during-approval", len(failed))
    assert len(failed) == 3 and peers.state.find("POST", "/services/") == []
    peers.state.fail_paths.clear()
    for _ in range(2):  # Slack is back: the next try delivers the queued request; the one after adds nothing
        with pytest.raises(TaskAwaitingInput):
            gate.execute(_gate_ctx("r3"))
    posts = peers.state.find("POST", "/services/")
    figures.checked(valid=1, lost=max(0, 1 - len(posts)), duplicates=max(0, len(posts) - 1))
    assert len(posts) == 1


# ----------------------------------------------------------------------------------------------- sensors
def _first_event(trigger: Any, timeout: float = 20) -> dict[str, Any]:
    import asyncio

    async def go() -> dict[str, Any]:
        async for ev in trigger.run():
            return dict(ev.payload)
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(asyncio.wait_for(go(), timeout))


def _sensor_paths(make: Any) -> dict[str, Any]:
    """The same sensor asked again and again: poke (x3) and deferrable execute (x3: it returns the poke's XCom at
    once when the condition holds, else defers with the same trigger every time)."""
    from airflow.sdk.exceptions import TaskDeferred

    pokes = [make(deferrable=False).poke({}) for _ in range(3)]
    assert len({json.dumps(p.xcom_value, sort_keys=True) for p in pokes}) == 1, pokes
    assert len({p.is_done for p in pokes}) == 1
    deferred, returned = [], []
    for _ in range(3):
        sensor = make(deferrable=True)
        try:
            returned.append(sensor.execute({}))
        except TaskDeferred as d:
            deferred.append(d.trigger.serialize())
    assert len(deferred) in (0, 3) and len({json.dumps(d, sort_keys=True) for d in deferred}) <= 1
    return {"done": pokes[0].is_done, "state": pokes[0].xcom_value, "returned": returned, "deferred": deferred}


def test_budget_headroom_sensor_decides_the_same_every_way_and_every_time(gate_env: dict) -> None:
    from finops_provider.sensors.budget import BudgetHeadroomSensor
    from finops_provider.triggers.budget import BudgetHeadroomTrigger

    url, cfg = gate_env["url"], gate_env["config"]

    def make(**kw: Any) -> BudgetHeadroomSensor:
        return BudgetHeadroomSensor(task_id="wait", budget="etl-day", below_pct="100", poke_interval=0.05, **kw)

    _spend(url, "d1", "6.5")
    _spend(url, "d2", "5")  # 11.5 of 10 today: no headroom
    full = _sensor_paths(make)
    assert not full["done"] and full["returned"] == [] and len(full["deferred"]) == 3
    assert full["state"]["actual"] == "11.5" and full["state"]["limit"] == "10"
    assert full["state"]["utilisation_pct"] == "115.00"
    raised = {**GATE_CONFIG, "budgets": [GATE_CONFIG["budgets"][0], {**GATE_CONFIG["budgets"][1], "amount": "20"}]}
    cfg.write_text(json.dumps(raised))  # the budget is raised: headroom, seen without any restart
    free = _sensor_paths(make)
    assert free["done"] and free["deferred"] == []
    assert free["returned"] == [free["state"]] * 3  # deferrable execute returns at once, same XCom as the poke
    assert make(deferrable=False).execute({}) == free["state"]  # poke mode: the same XCom
    _, kwargs = full["deferred"][0]
    event = _first_event(BudgetHeadroomTrigger(**{**kwargs, "poll_interval": 0.05}))
    assert make(deferrable=True).execute_complete({}, event) == free["state"]  # the trigger's path: the same
    assert free["state"]["actual"] == "11.5" and free["state"]["utilisation_pct"] == "57.50"


FRESH_BILL = {
    f"2026-10-0{d}": [([f"airflow_dag_id$dag_{j}", "AWS Glue"], f"{d}.{j}", f"{d}.{j}") for j in range(3)]
    for d in range(1, 7)
}
ESTIMATED = {"2026-10-05", "2026-10-06"}  # the last two days are still Estimated at first


def _fresh_answer(start: str, end: str, *, final: bool) -> dict[str, Any]:
    days = [d for d in sorted(FRESH_BILL) if start <= d < end]
    return {
        "ResultsByTime": [
            ce_period(
                d,
                (dt.date.fromisoformat(d) + dt.timedelta(days=1)).isoformat(),
                FRESH_BILL[d],
                estimated=not final and d in ESTIMATED,
            )
            for d in days
        ]
    }


def test_billing_freshness_sensor_over_overlapping_backfills(
    moto_ce, ledger_url: str, monkeypatch: pytest.MonkeyPatch, figures
) -> None:
    from finops_provider.sensors.budget import BillingDataFreshnessSensor

    monkeypatch.setenv("FINOPS_LEDGER_URL", ledger_url)
    collect = [("2026-10-01", "2026-10-04"), ("2026-10-03", "2026-10-06"), ("2026-10-02", "2026-10-07")]
    probes = [("2026-10-01", "2026-10-03"), ("2026-10-03", "2026-10-05"), ("2026-10-04", "2026-10-07"),
              ("2026-10-06", "2026-10-07"), ("2026-10-07", "2026-10-09")]  # fmt: skip

    def collect_all(final: bool) -> None:
        moto_ce([_fresh_answer(s, e, final=final) for s, e in collect], reset=final)
        for s, e in collect:
            op = CollectCostsOperator(
                task_id="collect",
                source="aws",
                start=s,
                end=e,
                trailing_days=0,
                ledger_url=ledger_url,
                options={"tag_key": "airflow_dag_id"},
            )
            outs = [op.execute({}) for _ in range(3)]  # run, re-run, retry
            assert outs[0]["totals"] == outs[1]["totals"] == outs[2]["totals"]

    def decisions() -> list[dict[str, Any]]:
        out = []
        for s, e in probes:

            def make(s: str = s, e: str = e, **kw: Any) -> BillingDataFreshnessSensor:
                return BillingDataFreshnessSensor(
                    task_id="fresh", source="aws-ce", start=s, end=e, poke_interval=0.05, **kw
                )

            got = _sensor_paths(make)
            if got["deferred"]:  # not final: the trigger keeps waiting (checked by polling once more)
                assert not got["done"]
            else:
                assert got["done"] and got["returned"] == [got["state"]] * 3
            out.append(got["state"])
        return out

    collect_all(final=False)
    first = decisions()
    want = {
        ("2026-10-01", "2026-10-03"): (6, 0),
        ("2026-10-03", "2026-10-05"): (6, 0),
        ("2026-10-04", "2026-10-07"): (9, 6),
        ("2026-10-06", "2026-10-07"): (3, 3),
        ("2026-10-07", "2026-10-09"): (0, 0),
    }
    assert [(d["rows"], d["provisional"]) for d in first] == list(want.values())
    assert [d["ok"] for d in first] == [True, True, False, False, False]
    collect_all(final=True)  # the bill is final: the Estimated days are restated, never duplicated
    final = decisions()
    assert [(d["rows"], d["provisional"], d["ok"]) for d in final] == [
        (6, 0, True),
        (6, 0, True),
        (9, 0, True),
        (3, 0, True),
        (0, 0, False),
    ]
    from finops_provider.triggers.budget import BillingFreshnessTrigger

    event = _first_event(BillingFreshnessTrigger("aws-ce", "2026-10-04", "2026-10-07", poll_interval=0.05))
    assert (
        BillingDataFreshnessSensor(task_id="f", source="aws-ce", start="x", end="y").execute_complete({}, event)
        == final[2]
    )  # the deferred path gives the poke's XCom
    with Ledger(ledger_url) as led:
        n = led.count(source="aws-ce")
        total = led.totals(source="aws-ce").get("USD").amount
    rows = sum(len(g) for g in FRESH_BILL.values())
    figures.checked(valid=rows, lost=rows - n, duplicates=n - rows)
    assert n == rows and total == exact_sum(Decimal(u) for g in FRESH_BILL.values() for _, u, _ in g)


# ----------------------------------------------------------------------------------------------- publish summary
def test_publish_summary_three_times_and_backfilled_sends_one_digest_per_interval(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, figures
) -> None:
    from finops_provider.aggregation_dag import PublishSummaryOperator

    peers = Peers()
    try:
        monkeypatch.setenv(
            "AIRFLOW_CONN_SLACK_DEFAULT",
            json.dumps({"conn_type": "slackwebhook", "password": peers.url + "/services/T/B/DIGEST"}),
        )
        monkeypatch.setenv("FINOPS_HOME", str(tmp_path / "home"))
        # this month (the outbox rows the digests add are then inside the reported period)
        month = dt.datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        for d in range(1, 7):  # six days of spend
            with Ledger(ledger_url) as led:
                from finops_provider.core.records import build_record

                start = month + dt.timedelta(days=d - 1, hours=12)
                led.ingest(
                    [
                        build_record(
                            billed_cost=Decimal(f"{d}.25"),
                            billing_currency="USD",
                            charge_period_start=start,
                            charge_period_end=start + dt.timedelta(hours=1),
                            x_dag_id="etl",
                            x_team="data",
                            x_line_item_id=f"day-{d}",
                            x_cost_kind="billed",
                            x_source="seed",
                        )
                    ],
                    source="seed",
                    scope=f"seed:{d}",
                )
        cfg = tmp_path / "config.yaml"
        cfg.write_text(json.dumps({"budgets": [{"name": "data", "scope": {"team": "data"}, "amount": "100"}]}))
        out_dir = tmp_path / "reports"

        def publish(end_day: int) -> tuple[dict[str, Any], dict[str, bytes]]:
            op = PublishSummaryOperator(
                task_id="publish_summary",
                period="month",
                out_dir=str(out_dir),
                slack_conn_id="slack_default",
                report_url="https://airflow.example/finops/",
                ledger_url=ledger_url,
                config_path=str(cfg),
            )
            end = pendulum.instance(month).add(days=end_day - 1)
            xcom = op.execute({"data_interval_start": end.subtract(days=1), "data_interval_end": end})
            return xcom, {k: Path(v).read_bytes() for k, v in xcom["files"].items()}

        runs = {day: [publish(day) for _ in range(3)] for day in (4, 5)}  # each interval: run, re-run, retry
        runs[4].append(publish(4))  # a backfill over the first interval again, after the second
        for day, outs in runs.items():
            xcoms, files = [x for x, _ in outs], [f for _, f in outs]
            assert all(x == xcoms[0] for x in xcoms), day
            assert all(f == files[0] for f in files), day  # the report files are byte-identical
        nxt = (month + dt.timedelta(days=32)).replace(day=1)
        # the month's report holds every cost of the month the ledger knows (all six days were there before the
        # first run)
        assert runs[4][0][0]["totals"] == runs[5][0][0]["totals"] == {"USD": "22.5"}
        posts = peers.state.find("POST", "/services/")
        figures.checked(valid=2, lost=max(0, 2 - len(posts)), duplicates=max(0, len(posts) - 2))
        assert len(posts) == 2, [p.body["text"] for p in posts]  # one digest per interval, not one per run
        assert {p.body["text"] for p in posts} == {f"FinOps summary: month from {month:%Y-%m-%d} to {nxt:%Y-%m-%d}"}
        # Slack is down for the next interval: the task fails (Airflow retries it), the digest waits in the outbox
        monkeypatch.setenv("AIRFLOW__FINOPS__OUTBOX_BACKOFF_BASE_S", "0")
        peers.state.fail_paths.add("/services/")
        for _ in range(2):
            with pytest.raises(RuntimeError, match="digest was not delivered"):
                publish(6)
        figures.fault("slack:5xx-during-digest", 2)
        peers.state.fail_paths.clear()
        assert [publish(6)[0]["slack_digest"] for _ in range(2)] == [True, True]
        assert len(peers.state.find("POST", "/services/")) == 3  # the retried digest went out once
    finally:
        peers.close()
