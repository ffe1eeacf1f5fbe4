"""Budget enforcement on a real Airflow 3 (scheduler, dag-processor, triggerer, API server; LocalExecutor).

All scenario runs are triggered together (the machine has 2 cores) by the ``runs`` fixture; each test then
waits for and asserts its own scenario.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from decimal import Decimal
from typing import Any

import pytest

from finops_provider.core.ledger import Ledger
from finops_provider.core.outbox import Outbox, events
from finops_provider.core.records import build_record

from .conftest import AirflowServer

pytestmark = pytest.mark.integration


def slack_posts(server: AirflowServer, budget: str, prefix: str = "/services/", status: int | None = 200) -> list[Any]:
    return [r for r in server.peers.state.find("POST", prefix, status) if f"budget {budget} " in r.body["text"]]


@pytest.fixture(scope="module")
def ledger(airflow: AirflowServer) -> Any:
    led = Ledger(airflow.ledger_url)  # created (migrated) once, before any task writes to it
    yield led
    led.close()


@pytest.fixture(scope="module")
def runs(airflow: AirflowServer, ledger: Ledger) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    ledger.ingest(  # earlier spend today of the gated DAG: 8 of 10 USD
        [
            build_record(
                billed_cost=Decimal("8"),
                billing_currency="USD",
                charge_period_start=now - dt.timedelta(minutes=5),
                charge_period_end=now,
                x_dag_id="finops_it_gate",
                x_task_id="earlier",
                x_run_id="earlier",
                x_line_item_id="gate-seed",
                x_cost_kind="estimate",
                x_source="it-seed",
            )
        ],
        source="it-seed",
    )
    airflow.peers.state.fail_paths.add("/outage/")  # Slack outage for the outage scenario's route
    out = {
        "spender": airflow.trigger("finops_it_spender"),
        "spender_2": airflow.trigger("finops_it_spender_2"),
        "pause_now": airflow.trigger("finops_it_pause_now"),
        "twice_a": airflow.trigger("finops_it_twice"),
        "twice_b": airflow.trigger("finops_it_twice"),
        "outage": airflow.trigger("finops_it_outage"),
        "plain": airflow.trigger("finops_it_plain"),
        "gate": airflow.trigger("finops_it_gate"),
    }
    return out


def test_pause_after_run_pauses_exactly_that_dag(airflow: AirflowServer, ledger: Ledger, runs: dict) -> None:
    assert airflow.wait_run("finops_it_spender", runs["spender"]) == "success"
    assert airflow.wait_run("finops_it_spender_2", runs["spender_2"]) == "success"
    # the current run finished (its second task ran after the pause) ...
    assert airflow.task_states("finops_it_spender", runs["spender"]) == {"expensive": "success", "after": "success"}
    # ... and no new run starts: the DAG is paused through the REST API (by the run's last task callback or
    # the DAG-level callback, once no task is left to schedule); the similar id is not
    airflow.wait("finops_it_spender to be paused", lambda: airflow.is_paused("finops_it_spender"), 60)
    assert airflow.is_paused("finops_it_spender_2") is False
    pauses = events(ledger, dag_id="finops_it_spender", kinds=["pause"])
    assert len(pauses) == 1
    p = pauses[0]
    assert p["actor"] == "finops:budget=spender-run"
    assert p["run_id"] == runs["spender"] and p["task_id"] == "expensive"
    assert p["detail"]["mode"] == "pause_after_run" and p["detail"]["is_paused"] is True
    assert p["detail"]["breach"]["actual"]["currency"] == "USD"
    assert Decimal(p["detail"]["breach"]["actual"]["amount"]) == Decimal("12.50")
    assert events(ledger, dag_id="finops_it_spender_2", kinds=["pause"]) == []
    # estimates of both tasks, attributed from the DAG tag and the team mapping
    recs = list(ledger.records(dag_id="finops_it_spender", run_id=runs["spender"]))
    assert sorted((r.x_task_id, r.billed_cost, r.x_cost_kind, r.x_team, r.x_cost_center) for r in recs) == [
        ("after", Decimal("12.50"), "estimate", "data-eng", "CC-100-DATA"),
        ("expensive", Decimal("12.50"), "estimate", "data-eng", "CC-100-DATA"),
    ]
    # one Slack alert, escaped Block Kit, with the exact DAG link
    posts = slack_posts(airflow, "spender-run")
    assert len(posts) == 1, [p.body for p in posts]
    body = posts[0].body
    assert body["unfurl_links"] is False
    assert f"<{airflow.base}/dags/finops_it_spender|Open the DAG>" in json.dumps(body["blocks"])


def test_pause_now_stops_the_remaining_tasks(airflow: AirflowServer, ledger: Ledger, runs: dict) -> None:
    airflow.wait_run("finops_it_pause_now", runs["pause_now"])
    states = airflow.task_states("finops_it_pause_now", runs["pause_now"])
    assert states["t1"] == "success"
    assert states["t2"] in ("skipped", "failed") and states["t3"] in ("skipped", "failed"), states
    assert airflow.is_paused("finops_it_pause_now") is True
    (p,) = events(ledger, dag_id="finops_it_pause_now", kinds=["pause"])
    assert p["detail"]["mode"] == "pause_now"
    stopped = p["detail"]["stopped"]
    assert sorted(stopped["skipped"] + stopped["failed"]) == ["t2", "t3"]


def test_alert_and_ticket_exactly_once(airflow: AirflowServer, ledger: Ledger, runs: dict) -> None:
    """Two runs breach the same day budget at the same time, and each runs the callback twice."""
    for r in ("twice_a", "twice_b"):
        assert airflow.wait_run("finops_it_twice", runs[r]) == "success"
    posts = slack_posts(airflow, "twice-day")
    issues = airflow.peers.state.find("POST", "/rest/api/2/issue", 201)
    twice_issues = [i for i in issues if "twice" in i.body["fields"]["summary"]]
    assert len(posts) == 1, [p.body for p in posts]
    assert len(twice_issues) == 1
    fields = twice_issues[0].body["fields"]
    assert fields["project"] == {"key": "FINOPS"}
    assert fields["summary"].startswith("FinOps: budget twice-day crossed 100 %")
    assert "*Budget amount:* 10.00 USD" in fields["description"]
    # top tasks of the day, escaped; the spend shown is what the ledger held when the breach was claimed: one
    # run's 12 USD or both runs' 24 USD, depending on which callback claimed first
    assert re.search(r"finops\\_it\\_twice\.spend: (12|24)\.00 USD", fields["description"]), fields["description"]
    assert twice_issues[0].headers["Authorization"].startswith("Basic ")
    keys = [b for b in ledger.breaches() if b["budget"] == "twice-day"]
    assert len(keys) == 1
    done = [i for i in Outbox(ledger).items(status="done") if i["dedupe_key"].startswith(keys[0]["dedupe_key"])]
    assert sorted(i["kind"] for i in done) == ["jira", "slack"]
    # the callback ran twice per try, the record is still counted once per try
    assert ledger.totals(dag_id="finops_it_twice").to_json() == {"USD": "24"}


def test_slack_outage_still_pauses_then_delivers(airflow: AirflowServer, ledger: Ledger, runs: dict) -> None:
    airflow.wait_run("finops_it_outage", runs["outage"])
    assert airflow.is_paused("finops_it_outage") is True  # the pause did not wait for Slack
    failed = slack_posts(airflow, "outage-run", "/outage/", status=500)
    assert failed, "the outage route was never tried"
    (item,) = [i for i in Outbox(ledger).items(kind="slack") if i["payload"]["dag_id"] == "finops_it_outage"]
    assert item["status"] in ("pending", "sending") and item["attempts"] >= 1 and "500" in (item["last_error"] or "")
    assert slack_posts(airflow, "outage-run", "/outage/", status=200) == []
    # Slack is back: the next callback anywhere drains the outbox, once the item's backoff has elapsed (on a
    # busy machine several callbacks may already have retried it, so its next attempt can be a minute away)
    airflow.peers.state.fail_paths.discard("/outage/")
    (item,) = [i for i in Outbox(ledger).items(kind="slack") if i["payload"]["dag_id"] == "finops_it_outage"]
    due = item["next_attempt_at"]
    wait_s = (due - dt.datetime.now(dt.UTC)).total_seconds() if due is not None else 0
    assert wait_s < 600, f"backoff grew to {wait_s:.0f}s"
    time.sleep(max(0.0, wait_s) + 1)
    flush = airflow.trigger("finops_it_flush")
    assert airflow.wait_run("finops_it_flush", flush) == "success"
    airflow.wait(
        "the queued Slack alert to be delivered",
        lambda: len(slack_posts(airflow, "outage-run", "/outage/", status=200)) == 1,
        60,
    )
    airflow.wait(
        "the outbox item to be done",
        lambda: (
            [i["status"] for i in Outbox(ledger).items(kind="slack") if i["payload"]["dag_id"] == "finops_it_outage"]
            == ["done"]
        ),
        30,
    )


def test_listener_attributes_a_dag_without_finops_code(airflow: AirflowServer, ledger: Ledger, runs: dict) -> None:
    assert airflow.wait_run("finops_it_plain", runs["plain"]) == "success"
    (rec,) = list(ledger.records(dag_id="finops_it_plain"))
    assert rec.x_task_id == "plain" and rec.x_cost_kind == "estimate" and rec.x_platform == "kubernetes"
    assert rec.x_line_item_id == f"finops_it_plain/{runs['plain']}/plain/-1/1"


def test_approval_gate_waits_then_continues_after_rest_approval(
    airflow: AirflowServer, ledger: Ledger, runs: dict
) -> None:
    run_id = runs["gate"]
    path = f"/api/v2/dags/finops_it_gate/dagRuns/{run_id}/taskInstances/gate/-1/hitlDetails"
    airflow.wait("the gate to ask for approval", lambda: airflow.api("GET", path).status_code == 200, 180)
    assert airflow.task_states("finops_it_gate", run_id)["expensive"] in (None, "none")
    # the Slack message links to the Required Actions page
    asks = [r for r in airflow.peers.state.find("POST", "/services/") if "approval needed" in r.body["text"]]
    assert len(asks) == 1
    assert f"{airflow.base}/dags/finops_it_gate/runs/{run_id}/tasks/gate/required_actions" in json.dumps(asks[0].body)
    r = airflow.api("PATCH", path, json={"chosen_options": ["Approve"], "params_input": {}})
    assert r.status_code == 200, r.text
    assert airflow.wait_run("finops_it_gate", run_id) == "success"
    assert airflow.task_states("finops_it_gate", run_id) == {"gate": "success", "expensive": "success"}
    kinds = [(e["kind"], e["actor"]) for e in events(ledger, dag_id="finops_it_gate")]
    assert ("approval_requested", "finops") in kinds
    assert ("approved", "admin") in kinds
