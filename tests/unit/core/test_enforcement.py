"""Budget enforcement planning: affected budgets, claims, escalation ladder, routes, recoveries."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal

import pytest

from finops_provider.core.config import parse_config
from finops_provider.core.enforcement import Subject, budget_applies, enforce, pause_target, route_for
from finops_provider.core.ledger import Ledger
from finops_provider.core.outbox import Outbox
from finops_provider.core.records import build_record

NOW = dt.datetime.now(dt.UTC).replace(hour=12, minute=0, second=0, microsecond=0)  # mid-day: rows 10 s before it
# are in the same UTC day even when the module is imported just after midnight

CONFIG = parse_config(
    {
        "teams": {"data": {"cost_center": "CC1", "slack_channel": "#data", "jira_project": "DE"}},
        "budgets": [
            {
                "name": "etl-day",
                "scope": {"dag": "etl"},
                "period": "day",
                "amount": "100",
                "thresholds": [
                    {"pct": 80, "actions": ["notify"]},
                    {"pct": 100, "actions": ["notify", "ticket"]},
                    {"pct": 120, "actions": ["incident", "pause_after_run"]},
                ],
            },
            {
                "name": "team-run",
                "scope": {"team": "data"},
                "period": "run",
                "amount": "10",
                "thresholds": [{"pct": 100, "actions": ["pause_now"]}],
            },
        ],
        "notifications": {"routes": [{"match": {"dag": "etl"}, "slack_conn_id": "slack_etl"}]},
    }
)


def spend(ledger: Ledger, amount: str, *, dag: str = "etl", run: str = "r1", task: str = "t", n: int = 0) -> None:
    ledger.ingest(
        [
            build_record(
                billed_cost=Decimal(amount),
                billing_currency="USD",
                charge_period_start=NOW - dt.timedelta(seconds=10),
                charge_period_end=NOW,
                x_dag_id=dag,
                x_run_id=run,
                x_task_id=task,
                x_team="data",
                x_line_item_id=f"{dag}/{run}/{task}/{n}",
                x_cost_kind="estimate",
                x_source="airflow-estimate",
            )
        ],
        source="airflow-estimate",
    )


@pytest.fixture
def ledger(ledger_url: str) -> Ledger:
    with Ledger(ledger_url) as led:
        yield led


def kinds(keys: list[str]) -> list[str]:
    return sorted(k.rsplit("|", 1)[1] + "@" + k.split("|")[3] for k in keys)


def test_escalation_ladder_and_exactly_once(ledger: Ledger) -> None:
    s = Subject(dag_id="etl", run_id="r1", task_id="t", team="data", base_url="http://af")
    spend(ledger, "85")
    res = enforce(ledger, CONFIG, s, outbox=Outbox(ledger), now=NOW, names=["etl-day"])
    assert kinds(res.enqueued) == ["slack@80"]
    assert (
        enforce(ledger, CONFIG, s, outbox=Outbox(ledger), now=NOW, names=["etl-day"]).enqueued == []
    )  # evaluated again: nothing
    spend(ledger, "40", task="u")
    res = enforce(ledger, CONFIG, s, outbox=Outbox(ledger), now=NOW, names=["etl-day"])
    assert kinds(res.enqueued) == ["jira@100", "pause_after_run@120", "servicenow@120", "slack@100"]
    items = {i["kind"]: i["payload"] for i in Outbox(ledger).items()}
    assert items["pause_after_run"]["pause_dag_id"] == "etl"
    assert items["jira"]["route"] == {
        "slack_conn_id": "slack_etl",
        "slack_channel": "#data",
        "jira_conn_id": "jira_default",
        "jira_project": "DE",
        "servicenow_conn_id": "servicenow_default",
    }
    assert items["jira"]["top_tasks"] == [
        {"task_id": "etl.t", "cost": "85", "currency": "USD"},
        {"task_id": "etl.u", "cost": "40", "currency": "USD"},
    ]
    assert items["jira"]["dag_url"] == "http://af/dags/etl"


def test_concurrent_evaluations_claim_once(ledger: Ledger) -> None:
    spend(ledger, "130")
    out: list[list[str]] = []
    s = Subject(dag_id="etl", run_id="r1", team="data")

    def run() -> None:
        out.append(enforce(ledger, CONFIG, s, outbox=Outbox(ledger), now=NOW).enqueued)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_keys = [k for keys in out for k in keys]
    assert len(all_keys) == len(set(all_keys)) == 6  # slack@80, slack@100, jira, servicenow, pause + team-run pause_now


def test_run_budget_pauses_the_dag_that_spent(ledger: Ledger) -> None:
    spend(ledger, "11", dag="other", run="r9")
    res = enforce(ledger, CONFIG, Subject(dag_id="other", run_id="r9", team="data"), outbox=Outbox(ledger), now=NOW)
    (item,) = Outbox(ledger).items()
    assert item["kind"] == "pause_now" and item["payload"]["pause_dag_id"] == "other"
    assert res.enqueued == [item["dedupe_key"]] and "|run:r9|" in item["dedupe_key"]


def test_recovery_notice_once_when_back_under(ledger: Ledger) -> None:
    spend(ledger, "90")
    s = Subject(dag_id="etl", team="other")
    enforce(ledger, CONFIG, s, outbox=Outbox(ledger), now=NOW)
    raised = parse_config({"budgets": [{**CONFIG.budgets[0].model_dump(mode="json"), "amount": "1000"}]})
    res = enforce(ledger, raised, s, outbox=Outbox(ledger), now=NOW)
    assert len(res.enqueued) == 1 and res.enqueued[0].endswith("|recovery")
    assert enforce(ledger, raised, s, outbox=Outbox(ledger), now=NOW).enqueued == []
    (rec,) = Outbox(ledger).items(kind="slack")[1:]
    assert rec["payload"]["kind"] == "recovery"


def test_scope_matching_and_targets() -> None:
    etl, team = CONFIG.budgets
    assert budget_applies(etl, Subject(dag_id="etl"))
    assert not budget_applies(etl, Subject(dag_id="etl_2"))  # exact ids only
    assert budget_applies(team, Subject(dag_id="x", team=None))
    assert not budget_applies(team, Subject(dag_id="x", team="other"))
    assert pause_target(etl, Subject(dag_id="whatever")) == "etl"
    assert route_for(CONFIG, Subject(dag_id="x", team="nope"), "b")["jira_project"] == "FINOPS"
