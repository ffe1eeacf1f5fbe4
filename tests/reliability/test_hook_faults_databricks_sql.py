"""Fault matrix of the Databricks system-tables collector on its default path: the real databricks-sql-connector
speaking Thrift (TCLIService, binary protocol over HTTPS) to a local SQL-warehouse peer
(:mod:`tests.fixtures.databricks_thrift`) that runs the collector's SQL unchanged on a DuckDB copy of
``system.billing``, with faults injected per HTTP request and Thrift call.

The connector is configured as in production but scaled down (``FAST_CONNECTOR``): with its per-request duration
(1 s) shorter than its shortest 429 / 503 wait (``_retry_delay_max`` >= 5 s) and than its socket timeout (1.2 s),
it gives up at once and the statement retries of ``SqlSession`` (layer 2, injected ``sleep``) take over, so each
fault is seen by the statement layer exactly once. One test keeps the connector's own 429 retry (layer 1) on and
takes about 5 s of real waiting (its floor).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.ledger import Ledger
from finops_provider.core.retry import RetryExhaustedError, RetryPolicy
from tests.fixtures.databricks_thrift import CONN_ID, REASONS, TOKEN, ThriftWarehouse, serve_warehouse

UTC = dt.UTC
DAY = dt.datetime(2026, 3, 1, tzinfo=UTC)
NEXT = DAY + dt.timedelta(days=1)
FAST = RetryPolicy(max_attempts=4, base_s=0.001, cap_s=0.002, budget_s=30)
SOCKET_TIMEOUT_S, STALL_S = 1.2, 2.0
FAST_CONNECTOR = {
    "_socket_timeout": SOCKET_TIMEOUT_S,
    "_retry_stop_after_attempts_count": 1,
    "_retry_stop_after_attempts_duration": 1.0,
    "_retry_delay_min": 0.1,
    "_retry_delay_max": 5.0,
}

JOBS, SQL_PRO = "PREMIUM_JOBS_COMPUTE", "PREMIUM_SQL_PRO_COMPUTE"
TAGS = {"team": "data-eng", "airflow_dag_id": "sales_etl"}
#: (sku, DBUs, usage start, usage end, record type, job run, billed price in force at usage_end_time)
USAGE = [
    (JOBS, "10.25", "10:00", "10:30", "ORIGINAL", "9001", "0.15"),
    (JOBS, "3.5", "11:00", "11:45", "ORIGINAL", "9001", "0.15"),
    (JOBS, "-3.5", "11:00", "11:45", "RETRACTION", "9001", "0.15"),
    (JOBS, "4", "11:00", "11:45", "RESTATEMENT", "9001", "0.15"),
    (JOBS, "7.125", "12:00", "12:30", "ORIGINAL", "9002", "0.16"),  # after the noon price change (effective list)
    (JOBS, "0.000003", "13:00", "13:05", "ORIGINAL", "9003", "0.16"),
    (SQL_PRO, "2.000001", "09:00", "10:00", "ORIGINAL", None, "0.55"),
]
EXPECTED = sum((Decimal(q) * Decimal(p) for _, q, _, _, _, _, p in USAGE), Decimal(0))
RECORDS = 4  # runs 9001, 9002, 9003 and the warehouse usage


@pytest.fixture
def warehouse(databricks_system_tables: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    st = databricks_system_tables
    st.price(JOBS, "0.15", "2024-01-01 00:00:00", "2026-03-01 12:00:00")
    st.price(JOBS, "0.17", "2026-03-01 12:00:00", effective="0.16")
    st.price(SQL_PRO, "0.55", "2024-01-01 00:00:00")
    for sku, qty, start, end, kind, run, _ in USAGE:
        kw: dict[str, Any] = {"tags": TAGS, "job_id": "111", "job_run_id": run} if run else {"product": "SQL"}
        st.usage(sku, qty, f"2026-03-01 {start}:00", f"2026-03-01 {end}:00", record_type=kind, **kw)
    yield from serve_warehouse(st.conn, tmp_path, monkeypatch, stall_s=STALL_S)


@pytest.fixture
def make_hook(warehouse: ThriftWarehouse) -> Iterator[Callable[..., Any]]:
    """``make_hook(waits, **connector_settings)``: a DatabricksCostHook on the default path to ``warehouse``, its
    statement waits recorded in ``waits``; its open session is closed before the peer stops."""
    from finops_provider.hooks.databricks_costs import DatabricksCostHook

    hooks: list[DatabricksCostHook] = []

    def make(waits: list[float], **kw: Any) -> DatabricksCostHook:
        hooks.append(DatabricksCostHook(databricks_conn_id=CONN_ID, catalog_name="system_copy", retry_policy=FAST,
                                        sleep=waits.append, **{**FAST_CONNECTOR, **kw}))  # fmt: skip
        return hooks[-1]

    yield make
    for h in hooks:
        if h.sql_session.conn is not None:
            h.sql_session.conn.close()


def _collect(hook: Any, led: Ledger) -> tuple[Any, Any]:
    from finops_provider.hooks.databricks_costs import collect_databricks

    return collect_databricks(led, FinOpsConfig(), DAY, NEXT, hook=hook)


def _exact(led: Ledger, figures: Any) -> None:
    assert led.totals().get("USD").amount == EXPECTED  # every usage record x its list price, nothing twice
    figures.checked(valid=RECORDS, lost=RECORDS - led.count(), duplicates=led.count() - RECORDS)
    assert led.count() == RECORDS


def _served(w: ThriftWarehouse, method: str) -> int:
    return sum(1 for r in w.state.requests if r.method == method and r.fault is not None)


@pytest.mark.parametrize("direct", [pytest.param(False, id="queued-query"), pytest.param(True, id="direct-results")])
def test_the_peer_answers_the_real_connector(
    warehouse: ThriftWarehouse, make_hook: Callable[..., Any], sqlite_url: str, direct: bool, figures
) -> None:
    warehouse.direct_results = direct
    waits: list[float] = []
    with Ledger(sqlite_url) as led:
        res, ing = _collect(make_hook(waits), led)
        assert ing.inserted == RECORDS and res.requests == 1 and waits == []
        _exact(led, figures)
    calls = [r.method for r in warehouse.state.requests]
    if direct:  # status, metadata and the first page came with ExecuteStatement
        assert calls[:3] == ["OpenSession", "ExecuteStatement", "FetchResults"]
        assert calls.count("FetchResults") == 3
    else:  # the query was queued: polled until FINISHED, then metadata and 4 pages of 2 rows (7 usage records)
        assert calls[:5] == ["OpenSession", "ExecuteStatement", "GetOperationStatus", "GetOperationStatus",
                             "GetResultSetMetadata"]  # fmt: skip
        assert calls.count("FetchResults") == 4


RETRIED = [  # (Thrift call, its faults in order (None: answered), fault kind)
    pytest.param("OpenSession", [(429, {"Retry-After": "3"})] * 2, "429", id="open-session-429-retry-after"),
    pytest.param("ExecuteStatement", [(429, {"Retry-After": "30"})] * 2, "429", id="execute-429-retry-after"),
    pytest.param("ExecuteStatement", [(503, {"Retry-After": "1"})] * 2, "503", id="execute-503-retry-after"),
    pytest.param("ExecuteStatement", [(500, {})] * 2, "500", id="execute-500"),
    pytest.param("GetOperationStatus", [(502, {})], "502", id="poll-502"),
    pytest.param("FetchResults", [None, (500, {})], "500", id="fetch-page2-500"),
    pytest.param("FetchResults", [None, None, (503, {"Retry-After": "2"})], "503", id="fetch-page3-503"),
    pytest.param("ExecuteStatement", ["stall"], "stall", id="execute-stalls"),
    pytest.param("FetchResults", [None, "stall"], "stall", id="fetch-page2-stalls"),
    pytest.param("FetchResults", [None, "drop"], "dropped-mid-fetch", id="fetch-page2-dropped-mid-body"),
    pytest.param("ExecuteStatement", ["drop"], "dropped", id="execute-dropped-mid-body"),
    pytest.param("GetOperationStatus", ["drop"], "dropped", id="poll-dropped-mid-body"),
]


@pytest.mark.parametrize(("method", "faults", "kind"), RETRIED)
def test_faults_are_retried_and_the_totals_are_exact(
    warehouse: ThriftWarehouse,
    make_hook: Callable[..., Any],
    sqlite_url: str,
    method: str,
    faults: list[Any],
    kind: str,
    figures,
) -> None:
    warehouse.fail(method, *faults)
    n = sum(f is not None for f in faults)
    waits: list[float] = []
    hook = make_hook(waits)
    with Ledger(sqlite_url) as led:
        res, ing = _collect(hook, led)
        figures.fault(f"databricks-sql:{kind}", n)
        assert _served(warehouse, method) == n  # counted by the peer
        assert res.requests == n + 1 and len(waits) == n  # one new session and statement per fault
        assert all(w <= FAST.cap_s for w in waits)  # its own backoff: the connector drops Retry-After when it gives up
        assert warehouse.state.calls("OpenSession") == n + 1
        assert ing.inserted == RECORDS
        _exact(led, figures)


def test_the_connector_sleeps_out_a_retry_after_that_fits_its_own_budget(
    warehouse: ThriftWarehouse, make_hook: Callable[..., Any], sqlite_url: str, figures
) -> None:
    """Layer 1: a 429 whose wait fits ``_retry_stop_after_attempts_duration`` is retried by the connector on the
    same session; the statement layer never sees it. The connector waits max(Retry-After, ``_retry_delay_max``)."""
    warehouse.fail("ExecuteStatement", (429, {"Retry-After": "1"}))
    waits: list[float] = []
    hook = make_hook(waits, _retry_stop_after_attempts_count=2, _retry_stop_after_attempts_duration=10.0)
    t0 = time.monotonic()
    with Ledger(sqlite_url) as led:
        res, _ = _collect(hook, led)
        took = time.monotonic() - t0
        figures.fault("databricks-sql:429-connector-retry")
        assert res.requests == 1 and waits == []
        assert warehouse.state.calls("OpenSession") == 1 and warehouse.state.calls("ExecuteStatement") == 2
        assert 5.0 <= took < 10.0  # the connector's floor (_retry_delay_max), within its duration
        _exact(led, figures)


@pytest.mark.parametrize(
    ("method", "fault", "kind"),
    [
        pytest.param("FetchResults", [None, "drop"], "dropped-mid-fetch", id="every-page2-dropped"),
        pytest.param("ExecuteStatement", [(503, {"Retry-After": "5"})], "503", id="503-forever"),
    ],
)
def test_an_exhausted_budget_writes_nothing_then_a_rerun_is_exact(
    warehouse: ThriftWarehouse,
    make_hook: Callable[..., Any],
    sqlite_url: str,
    method: str,
    fault: list[Any],
    kind: str,
    figures,
) -> None:
    warehouse.fail(method, *fault * 10)
    waits: list[float] = []
    hook = make_hook(waits)
    with Ledger(sqlite_url) as led:
        with pytest.raises(RetryExhaustedError, match=r"Databricks system_copy\.billing query.*4 attempts"):
            _collect(hook, led)
        figures.fault(f"databricks-sql:{kind}", FAST.max_attempts)
        assert _served(warehouse, method) == FAST.max_attempts and len(waits) == FAST.max_attempts - 1
        assert led.count() == 0 and led.quarantined() == []  # the pages read before the fault never landed
        warehouse.faults.clear()
        res, _ = _collect(hook, led)  # the same hook: a new session after the failed ones
        assert res.requests == 1
        _exact(led, figures)


@pytest.mark.parametrize(
    ("status", "method"),
    [
        pytest.param(401, "OpenSession", id="401-token-revoked"),
        pytest.param(403, "ExecuteStatement", id="403-no-can-use-on-warehouse"),
    ],
)
def test_refused_credentials_name_the_connection_and_are_not_retried(
    warehouse: ThriftWarehouse, make_hook: Callable[..., Any], sqlite_url: str, status: int, method: str, figures
) -> None:
    from finops_provider.collect import CredentialsError

    if status == 401:
        warehouse.revoke()
    else:
        warehouse.fail(method, *[(status, {"x-databricks-reason-phrase": REASONS[status]})] * 5)
    waits: list[float] = []
    hook = make_hook(waits)
    with Ledger(sqlite_url) as led, pytest.raises(CredentialsError) as err:
        _collect(hook, led)
    figures.fault(f"databricks-sql:{status}")
    figures.secret_probes += 1
    msg = str(err.value)
    assert warehouse.state.calls(method) == 1 and hook.sql_session.attempts == 1 and waits == []  # not retried
    assert f"'{CONN_ID}'" in msg and "CAN USE" in msg and "system.billing" in msg
    assert TOKEN not in msg and TOKEN not in repr(err.value) and err.value.__cause__ is None
    with Ledger(sqlite_url) as led:
        assert led.count() == 0
