"""The reliability suite's figures: what the tests injected and what they found, written at session end.

Tests take the ``figures`` fixture and count what they actually did (faults injected, kill/restart iterations,
bad inputs tried, rows checked, rows lost, duplicates). At the end of a session that ran any of them, the counts
go to ``tests/output/reliability.json`` (and a Markdown table beside it) for the README's Reliability section.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

OUTPUT = Path(__file__).resolve().parents[1] / "output"


class Figures:
    """Counters shared by the reliability tests of one session."""

    def __init__(self) -> None:
        self.faults: Counter[str] = Counter()
        self.kills: Counter[str] = Counter()
        self.bad_inputs: Counter[str] = Counter()
        self.valid_rows = 0
        self.rows_lost = 0
        self.duplicates = 0
        self.injection_payloads = 0
        self.secret_probes = 0
        self.amounts_summed = 0
        self.tests: set[str] = set()
        self.outcomes: Counter[str] = Counter()

    def fault(self, kind: str, n: int = 1) -> None:
        """``n`` faults of ``kind`` were injected (e.g. ``azure:429``, ``ledger:postgres-stopped``)."""
        self.faults[kind] += n

    def kill(self, where: str, n: int = 1) -> None:
        """``n`` hard kills (SIGKILL) followed by a restart, at ``where``."""
        self.kills[where] += n

    def bad_input(self, kind: str, n: int = 1) -> None:
        self.bad_inputs[kind] += n

    def checked(self, *, valid: int, lost: int, duplicates: int) -> None:
        """A consistency check: ``valid`` rows expected, ``lost`` missing, ``duplicates`` extra.

        Recorded for the figures, then asserted: a row lost or doubled fails the test that found it (the figures
        must never report a loss that no test failed on).
        """
        self.valid_rows += valid
        self.rows_lost += max(0, lost)
        self.duplicates += max(0, duplicates)
        assert lost == 0 and duplicates == 0, f"{valid} rows expected: {lost} lost, {duplicates} duplicated"

    def to_json(self) -> dict[str, Any]:
        return {
            "faults_injected": sum(self.faults.values()),
            "faults_by_kind": dict(sorted(self.faults.items())),
            "kill_restart_iterations": sum(self.kills.values()),
            "kills_by_target": dict(sorted(self.kills.items())),
            "bad_inputs_tried": sum(self.bad_inputs.values()),
            "bad_inputs_by_kind": dict(sorted(self.bad_inputs.items())),
            "valid_rows_checked": self.valid_rows,
            "rows_lost": self.rows_lost,
            "duplicates": self.duplicates,
            "sql_injection_payloads": self.injection_payloads,
            "secret_leak_probes": self.secret_probes,
            "tiny_amounts_summed_exactly": self.amounts_summed,
        }


FIGURES = Figures()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    FIGURES.tests.add(request.node.nodeid)
    return FIGURES


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/reliability/" not in report.nodeid.replace("\\", "/"):
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        FIGURES.outcomes[report.outcome] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not FIGURES.tests:
        return
    data = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "markers": session.config.option.markexpr or "(all)",
        "reliability_tests": dict(FIGURES.outcomes),
        "pytest_exit_status": int(exitstatus),
        **FIGURES.to_json(),
    }
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "reliability.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    rows = [
        ("faults injected and survived", data["faults_injected"]),
        ("kill -9 and restart iterations", data["kill_restart_iterations"]),
        ("bad inputs tried", data["bad_inputs_tried"]),
        ("valid rows checked", data["valid_rows_checked"]),
        ("SQL injection payloads", data["sql_injection_payloads"]),
        ("secret leak probes", data["secret_leak_probes"]),
        ("tiny amounts summed exactly", data["tiny_amounts_summed_exactly"]),
        ("rows lost", data["rows_lost"]),
        ("duplicates", data["duplicates"]),
    ]
    md = ["| figure | value |", "|---|---:|", *[f"| {k} | {v:,} |" for k, v in rows]]
    md.append(f"\nRun {data['generated_at']} (`-m {data['markers']}`), tests: {data['reliability_tests']}.")
    (OUTPUT / "reliability.md").write_text("\n".join(md) + "\n", encoding="utf-8")
