"""Every SQL statement the hooks and the ledger build keeps user text out of the SQL: tag values, labels, query
tags and dag ids containing quotes, semicolons, comments, backslashes and unicode reach the database only as bound
parameters (or as data read back), and come back exactly.

A recording wrapper around the real peer connection (fakesnow, DuckDB copies of the system tables, SQLite and
PostgreSQL) captures every (statement, parameters) pair the code under test sends.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.ledger import Ledger
from finops_provider.core.records import build_record
from tests.fixtures.platforms import task_try

HOSTILE = [
    "x' OR '1'='1",
    "a\\' OR 1=1 --",
    "'; DROP TABLE finops_cost_line; --",
    "/* comment */ team",
    'ünï\'cødé ‮ "quoted"',
    "%(query_tag)s %s ?",
    "$1 ) UNION SELECT 1 --",
]
DAY = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


class Recording:
    """A DB-API connection that forwards to the real one and records what is executed."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.calls: list[tuple[str, Any]] = []

    def cursor(self) -> Any:
        rec, cur = self, self._conn.cursor()

        class _Cursor:
            def execute(self, sql: str, params: Any = None) -> Any:
                rec.calls.append((sql, params))
                return cur.execute(sql) if params is None else cur.execute(sql, params)

            def __getattr__(self, name: str) -> Any:
                return getattr(cur, name)

        return _Cursor()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _assert_not_in_sql(calls: list[tuple[str, Any]], values: list[str]) -> None:
    assert calls, "nothing was executed"
    for sql, _ in calls:
        for v in values:
            assert v not in sql, f"user text {v!r} was put into the SQL text: {sql[:300]}"


def test_snowflake_query_tag_is_a_bound_parameter(snowflake_account_usage, figures) -> None:
    from finops_provider.hooks.snowflake_costs import SnowflakeCostHook

    rows = []
    for i, tag in enumerate(HOSTILE):  # one Medium query of 15 min per hostile tag = 1 credit each
        rows.append(
            (
                f"q-{i}",
                "select 1",
                tag,
                1,
                "WH",
                "Medium",
                "STANDARD",
                "2026-03-01 10:00:00",
                "2026-03-01 10:15:00",
                900_000,
                0,
                900_000,
                0,
            )
        )
    rows.append(
        (
            "q-decoy",
            "select 1",
            "decoy",
            1,
            "WH",
            "X-Large",
            "STANDARD",
            "2026-03-01 10:00:00",
            "2026-03-01 10:15:00",
            900_000,
            0,
            900_000,
            0,
        )
    )
    snowflake_account_usage("QUERY_HISTORY", rows)
    hook = SnowflakeCostHook(snowflake_conn_id="snowflake_default")
    rec = Recording(hook.get_conn())
    hook._dbapi = rec  # the SQL seam (hooks/_sql.py): the same statements, observed
    for tag in HOSTILE:
        est = hook.estimate_run(task_try(), query_tag=tag)
        figures.injection_payloads += 1
        assert est.pricing_quantity == Decimal(1), tag  # exactly its own query: no injected OR, no other rows
    _assert_not_in_sql(rec.calls, HOSTILE)
    assert [p["query_tag"] for _, p in rec.calls] == HOSTILE


def test_databricks_custom_tags_and_job_run_ids(databricks_system_tables, platform_ledger, figures) -> None:
    from finops_provider.hooks.databricks_costs import DatabricksCostHook, collect_databricks

    st = databricks_system_tables
    st.price("JOBS_COMPUTE", "0.15", "2026-01-01T00:00:00")
    for i, v in enumerate(HOSTILE):
        st.usage(
            "JOBS_COMPUTE",
            f"{i + 1}",
            "2026-03-01T10:00:00",
            "2026-03-01T11:00:00",
            tags={"team": v, v: "x"},
            job_id="1",
            job_run_id=str(100 + i),
        )
    rec = Recording(st.conn)
    hook = DatabricksCostHook(catalog_name="system_copy", connection=rec)
    res, _ = collect_databricks(platform_ledger, FinOpsConfig(), DAY, DAY + dt.timedelta(days=1), hook=hook)
    figures.injection_payloads += len(HOSTILE)
    _assert_not_in_sql(rec.calls, HOSTILE)
    assert sorted(r.tags["team"] for r in res.records) == sorted(HOSTILE)
    for hostile_run in ("1 OR 1=1", "100'; --", "１００"):
        with pytest.raises(ValueError, match="job_run_id must be digits"):
            hook.usage_rows(DAY.date(), DAY.date() + dt.timedelta(days=1), job_run_id=hostile_run)
    for i, v in enumerate(HOSTILE):
        assert platform_ledger.totals(team=v).get("USD").amount == Decimal("0.15") * (i + 1)


def test_bigquery_job_labels(bigquery_jobs, platform_ledger, figures) -> None:
    from finops_provider.hooks.bigquery_costs import BigQueryCostHook, collect_bigquery

    for v in HOSTILE:
        bigquery_jobs.job("2026-03-01 10:00:00", bytes_billed=2**40, labels={"team": v, "airflow_dag_id": v})
    rec = Recording(bigquery_jobs.conn)
    hook = BigQueryCostHook(jobs_view="region_us.jobs", connection=rec)
    res, _ = collect_bigquery(platform_ledger, FinOpsConfig(), DAY, DAY + dt.timedelta(days=1), hook=hook)
    figures.injection_payloads += len(HOSTILE)
    _assert_not_in_sql(rec.calls, HOSTILE)
    assert sorted(r.tags["team"] for r in res.records) == sorted(HOSTILE)
    assert all(platform_ledger.totals(dag_id=v).get("USD").amount == Decimal("6.25") for v in HOSTILE)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("jobs; DROP TABLE x", id="semicolon"),
        pytest.param("a b", id="space"),
        pytest.param("t' --", id="quote"),
    ],
)
def test_table_names_are_validated_identifiers(bad: str, bigquery_jobs, figures) -> None:
    from finops_provider.hooks.bigquery_costs import BigQueryCostHook
    from finops_provider.hooks.databricks_costs import DatabricksCostHook

    figures.injection_payloads += 2
    with pytest.raises(ValueError, match="not a table name"):
        BigQueryCostHook(jobs_view=bad, connection=object())
    with pytest.raises(ValueError, match="not a table name"):
        DatabricksCostHook(catalog_name=bad, connection=object())


def test_ledger_binds_every_value(ledger_url: str, figures) -> None:
    statements: list[str] = []
    with Ledger(ledger_url) as led:
        sa.event.listen(led.engine, "before_cursor_execute", lambda c, cur, stmt, *a: statements.append(stmt))
        recs = [
            build_record(
                billed_cost=Decimal(f"{i}.0000000000000001"),
                billing_currency="USD",
                charge_period_start=DAY,
                charge_period_end=DAY + dt.timedelta(hours=1),
                x_dag_id=v,
                x_task_id=v,
                x_run_id=v,
                x_team=v,
                x_cost_center=v,
                service_name=v,
                tags={v: v, "team": v},
                x_line_item_id=v,
                x_source="sql-injection",
            )
            for i, v in enumerate(HOSTILE, start=1)
        ]
        led.ingest(
            recs,
            source="sql-injection",
            scope=HOSTILE[0],
            window=(DAY, DAY + dt.timedelta(days=1)),
            replace_window=True,
        )
        for i, v in enumerate(HOSTILE, start=1):
            assert led.totals(dag_id=v, team=v, service=v, run_id=v).get("USD").amount == Decimal(
                f"{i}.0000000000000001"
            )
        assert led.count() == len(HOSTILE)
        back = {r.x_dag_id: r for r in led.records()}
        figures.injection_payloads += len(HOSTILE)
    assert set(back) == set(HOSTILE) and all(back[v].tags == {v: v, "team": v} for v in HOSTILE)
    _assert_not_in_sql([(s, None) for s in statements], HOSTILE)
