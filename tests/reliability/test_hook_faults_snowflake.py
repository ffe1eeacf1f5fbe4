"""Network faults of the Snowflake collector on its default path, over the real protocol.

``SnowflakeCostHook`` -> ``SnowflakeHook.get_conn()`` (an Airflow connection from ``AIRFLOW_CONN_*``) ->
snowflake-connector-python -> HTTP -> :class:`tests.fixtures.snowflake_rest.SnowflakeRestPeer`, a local server
speaking Snowflake's REST protocol (login, query requests, JSON results, result polling, telemetry, logout)
whose SQL runs on seeded ``SNOWFLAKE.ACCOUNT_USAGE`` tables. Nothing of the hook or the connector is mocked;
faults are injected by the server, per request: throttling (429), 5xx (503 / 504), a stalled response, a JSON
body cut short, a connection closed half way through a body, a result with fewer rows than declared, refused
logins with Snowflake's codes (390100 password, 390144 key-pair JWT, 390318 OAuth).

Two layers retry (see the module docstring of ``finops_provider/hooks/snowflake_costs.py``): the connector
re-sends one request within ``network_timeout``, the hook logs in again and re-runs the statement. The peer's
request log shows which one handled a fault: a second login means the connector gave up and the hook took over.
The connection sets the connector's bounds small (``network_timeout`` 1 s, ``socket_timeout`` 2 s) and the
hook's policy sleeps nothing, so every fault costs at most the connector's own 1 s backoff or one socket timeout.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.ledger import Ledger
from finops_provider.core.retry import RetryExhaustedError, RetryPolicy
from tests.fixtures.snowflake_rest import PASSWORD, REFRESH_TOKEN, SnowflakeRestPeer

UTC = dt.UTC
DAY = dt.datetime(2026, 3, 1, tzinfo=UTC)
NEXT = DAY + dt.timedelta(days=1)
CONN_ID = "snowflake_finops"
PRICE = Decimal(3)  # the rate card's ENTERPRISE credit (AWS us-east list price)
FAST = RetryPolicy(max_attempts=3, base_s=0.001, cap_s=0.002, budget_s=60)
# the connector's bounds, small: a failed request is re-sent once after its 1 s backoff, a read waits 2 s
TIMEOUTS = {"login_timeout": 5, "network_timeout": 1, "socket_timeout": 2}
ATTRIBUTED, METERED = "QUERY_ATTRIBUTION_HISTORY", "WAREHOUSE_METERING_HISTORY"  # the collector's two statements

TAG = json.dumps({"airflow_dag_id": "sales_etl", "airflow_task_id": "load", "team": "data-eng"})
OTHER_TAG = "airflow_dag_id=ml_train;airflow_task_id=features"
QAH = [  # (query id, warehouse, tag, start, compute credits, query acceleration credits)
    ("q1", "TRANSFORM_WH", TAG, "2026-03-01 10:05:00", "0.8", None),
    ("q2", "TRANSFORM_WH", TAG, "2026-03-01 10:05:00", "0.9", "0.05"),
    ("q3", "TRANSFORM_WH", OTHER_TAG, "2026-03-01 10:05:00", "0.45", None),
    ("q4", "REPORTING_WH", '{"team": "bi"}', "2026-03-01 23:59:59.999999", "0.000000001", None),  # 1e-9 at the edge
    ("q5", "TRANSFORM_WH", TAG, "2026-03-02 01:00:00", "7", None),  # the next day: outside the window
]
WMH = [  # (start, warehouse, compute credits, credits attributed to queries)
    ("2026-03-01 10:00:00", "TRANSFORM_WH", "3.0", "2.2"),
    ("2026-03-01 11:00:00", "TRANSFORM_WH", "0.5", "0"),
    ("2026-03-01 23:00:00", "REPORTING_WH", "0.25", "0.000000001"),
]
# query-tag credits (2.200000001) + idle (TRANSFORM_WH 3.5 - 2.2, REPORTING_WH 0.25 - 1e-9) = 3.75 credits
CREDITS = sum(Decimal(c) + Decimal(a or 0) for *_, start, c, a in QAH if start < "2026-03-02") + sum(
    Decimal(c) - Decimal(q) for _, _, c, q in WMH
)
ROWS = 3 + 2  # (TRANSFORM_WH, TAG), (TRANSFORM_WH, OTHER_TAG), (REPORTING_WH, bi) + one idle row per warehouse


def _seed(peer: SnowflakeRestPeer) -> None:
    peer.seed(
        "QUERY_ATTRIBUTION_HISTORY",
        [(q, None, None, 1, wh, "h", "ph", tag, "AIRFLOW", start, start, Decimal(c), a and Decimal(a))
         for q, wh, tag, start, c, a in QAH],
    )  # fmt: skip
    peer.seed(
        "WAREHOUSE_METERING_HISTORY",
        [(start, start, 1, wh, Decimal(c), Decimal(c), Decimal(0), Decimal(q)) for start, wh, c, q in WMH],
    )


@pytest.fixture(scope="module")
def account() -> Iterator[SnowflakeRestPeer]:
    """The seeded account, shared by the module's tests (they only read it)."""
    p = SnowflakeRestPeer()
    try:
        _seed(p)
        yield p
    finally:
        p.close()


@pytest.fixture
def peer(account: SnowflakeRestPeer, monkeypatch: pytest.MonkeyPatch) -> SnowflakeRestPeer:
    """The account without faults, and the connection ``snowflake_finops`` (password login) pointing at it."""
    account.reset()
    monkeypatch.setenv("SNOWFLAKE_DISABLE_PLATFORM_DETECTION", "true")  # no cloud metadata probes from tests
    monkeypatch.setenv(*account.connection(CONN_ID, **TIMEOUTS))
    return account


def _collect(led: Ledger, waits: list[float] | None = None, **kw: Any) -> tuple[Any, Any]:
    from finops_provider.hooks.snowflake_costs import SnowflakeCostHook, collect_snowflake

    kw.setdefault("retry_policy", FAST)
    hook = SnowflakeCostHook(snowflake_conn_id=CONN_ID, sleep=(waits if waits is not None else []).append, **kw)
    return collect_snowflake(led, FinOpsConfig(), DAY, NEXT, hook=hook)


def _exact(led: Ledger, figures: Any) -> None:
    n = led.count()
    figures.checked(valid=ROWS, lost=ROWS - n, duplicates=n - ROWS)
    assert n == ROWS
    assert led.totals().get("USD").amount == CREDITS * PRICE == Decimal("11.25")  # every credit, exactly


def test_the_peer_answers_the_connector_like_snowflake(peer: SnowflakeRestPeer, sqlite_url: str, figures) -> None:
    """No fault: the baseline every fault test is compared with (one login, two statements, typed JSON rows)."""
    with Ledger(sqlite_url) as led:
        res, ing = _collect(led)
        _exact(led, figures)
    assert ing.inserted == ROWS and ing.quarantined == 0
    assert {r.charge_period_start for r in res.records} == {DAY}  # TIMESTAMP_LTZ rows cut into UTC days
    tiny = next(r for r in res.records if r.tags.get("team") == "bi")
    assert tiny.pricing_quantity == Decimal("0.000000001")  # NUMBER(38, 9) arrived as an exact decimal
    assert (peer.count("login", "ok"), peer.count("query", "ok"), peer.count("unknown")) == (1, 2, 0)


RETRIED = [  # (endpoint, fault, times, login requests the peer sees, statements the hook ran again)
    pytest.param("query", 429, 1, 1, 0, id="query-429-once-connector-resends"),
    pytest.param("query", 429, 2, 2, 1, id="query-429-twice-hook-relogs"),
    pytest.param("query", 503, 2, 2, 1, id="query-503"),
    pytest.param("query", 504, 2, 2, 1, id="query-504"),
    pytest.param("query", "stall", 1, 2, 1, id="query-stalled-past-socket-timeout"),
    pytest.param("query", "truncated", 2, 2, 1, id="query-json-body-cut-short"),
    pytest.param("query", "cut", 2, 3, 2, id="query-connection-closed-mid-body"),  # the connector never retries it
    pytest.param("query", "short-rowset", 1, 1, 0, id="query-fewer-rows-than-declared-refetched"),
    pytest.param("login", 503, 2, 3, 1, id="login-503"),
    pytest.param("login", 429, 1, 2, 0, id="login-429-once-connector-resends"),
    pytest.param("login", "stall", 1, 2, 0, id="login-stalled-past-socket-timeout"),
]


@pytest.mark.parametrize(("endpoint", "kind", "times", "logins", "reruns"), RETRIED)
def test_retried_faults_end_with_exact_totals(
    peer: SnowflakeRestPeer,
    sqlite_url: str,
    endpoint: str,
    kind: int | str,
    times: int,
    logins: int,
    reruns: int,
    figures,
) -> None:
    peer.fail(endpoint, kind, times=times, sql=METERED if endpoint == "query" else None)
    waits: list[float] = []
    with Ledger(sqlite_url) as led:
        _collect(led, waits)
        figures.fault(f"snowflake:{endpoint}-{kind}", peer.served[str(kind)])
        assert peer.served[str(kind)] == times  # every fault was answered to the connector
        _exact(led, figures)
    assert peer.count("login") == logins  # counted by the server: one login per connection, plus refused ones
    assert peer.count("login", "ok") == (1 + reruns if endpoint == "query" else 1)
    assert len(waits) == reruns  # the hook's policy ran the statement again only when the connector gave up
    assert peer.count("query", "ok", sql=ATTRIBUTED) == 1  # the statement before the fault ran once
    if endpoint == "query":
        assert peer.count("logout") >= reruns  # each failed connection was closed before the next login


def test_a_result_short_again_after_the_refetch_is_run_again(peer: SnowflakeRestPeer, sqlite_url: str, figures) -> None:
    """The connector re-fetches a result whose rows fall short of ``total`` once, then raises
    ``OperationalError`` 252013 (incomplete result): the hook runs the statement again, nothing goes missing."""
    peer.fail("query", "short-rowset", sql=METERED)
    peer.fail("result", "short-rowset", sql=METERED)
    waits: list[float] = []
    with Ledger(sqlite_url) as led:
        _collect(led, waits)
        figures.fault("snowflake:result-short-rowset", peer.served["short-rowset"])
        _exact(led, figures)
    assert peer.served["short-rowset"] == 2 and peer.count("result") == 1 and len(waits) == 1
    assert peer.count("login", "ok") == 2


def test_a_statement_still_running_is_polled_not_retried(peer: SnowflakeRestPeer, sqlite_url: str, figures) -> None:
    """Snowflake answers a query request that takes long with 333333 (in progress) and a result URL to poll."""
    peer.fail("query", "running", sql=METERED)
    with Ledger(sqlite_url) as led:
        _collect(led)
        _exact(led, figures)
    assert (peer.count("query", "running"), peer.count("result", "ok"), peer.count("login")) == (1, 1, 1)


def test_an_outage_past_the_budget_writes_nothing_then_a_rerun_is_exact(
    peer: SnowflakeRestPeer, sqlite_url: str, figures
) -> None:
    peer.fail("query", 503, times=100, sql=METERED)
    with Ledger(sqlite_url) as led:
        with pytest.raises(RetryExhaustedError, match=r"^Snowflake: still failing after 2 attempts"):
            _collect(led, retry_policy=RetryPolicy(max_attempts=2, base_s=0.001, cap_s=0.002, budget_s=60))
        figures.fault("snowflake:query-503-outage", peer.served["503"])
        assert peer.served["503"] == 4  # the connector sent each of the 2 attempts twice
        assert peer.count("query", "ok", sql=ATTRIBUTED) == 1  # the first statement had returned its rows ...
        assert led.count() == 0  # ... and none of them reached the ledger on their own
        peer.clear_faults()
        _collect(led)
        _exact(led, figures)


def _rsa_pem() -> tuple[str, bytes]:
    """A new RSA key pair: the private key (unencrypted PKCS8 PEM) and the public key (PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def _login_as(peer: SnowflakeRestPeer, monkeypatch: pytest.MonkeyPatch, how: str, *, valid: bool) -> list[str]:
    """Points the connection at ``how`` (password, key pair, OAuth); returns the secrets it holds."""
    if how == "password":
        password = PASSWORD if valid else "Summer2025!"  # the password before the last rotation
        monkeypatch.setenv(*peer.connection(CONN_ID, password=password, **TIMEOUTS))
        return [password]
    if how == "key-pair":
        private, public = _rsa_pem()
        registered = public if valid else _rsa_pem()[1]  # the user's key was rotated to another pair
        peer.register_public_key(registered)
        monkeypatch.setenv(*peer.connection(CONN_ID, password="", private_key_content=private, **TIMEOUTS))
        return [private.splitlines()[1], private.splitlines()[-2]]
    peer.oauth_lifetime_s = 600 if valid else 0  # the token expired before the login used it
    endpoint = f"http://127.0.0.1:{peer.port}/oauth/token-request"
    monkeypatch.setenv(
        *peer.connection(CONN_ID, password="client-secret-xyz", refresh_token=REFRESH_TOKEN, token_endpoint=endpoint,
                         **TIMEOUTS)
    )  # fmt: skip
    return ["client-secret-xyz", REFRESH_TOKEN]


LOGINS = [
    pytest.param("password", "390100", id="password"),
    pytest.param("key-pair", "390144", id="key-pair-jwt"),
    pytest.param("oauth", "390318", id="oauth"),
]


@pytest.mark.parametrize(("how", "code"), LOGINS)
def test_each_login_method_reaches_the_data(
    peer: SnowflakeRestPeer, monkeypatch: pytest.MonkeyPatch, sqlite_url: str, how: str, code: str, figures
) -> None:
    """The control for the refusals below: the same methods with valid credentials collect exactly."""
    _login_as(peer, monkeypatch, how, valid=True)
    with Ledger(sqlite_url) as led:
        _collect(led)
        _exact(led, figures)
    assert peer.count("login", "ok") == 1


@pytest.mark.parametrize(("how", "code"), LOGINS)
def test_refused_credentials_name_the_connection_and_are_not_retried(
    peer: SnowflakeRestPeer,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    sqlite_url: str,
    how: str,
    code: str,
    figures,
) -> None:
    from finops_provider.collect import CredentialsError

    secrets = _login_as(peer, monkeypatch, how, valid=False)
    with Ledger(sqlite_url) as led:
        with pytest.raises(CredentialsError) as err:
            _collect(led)
        assert led.count() == 0
    figures.fault(f"snowflake:login-{code}")
    figures.secret_probes += 2
    assert (peer.count("login"), peer.count("login", f"refused:{code}"), peer.count("query")) == (1, 1, 0)
    msg = str(err.value)
    assert f"'{CONN_ID}'" in msg and "IMPORTED PRIVILEGES" in msg
    assert f"errno {code}" in msg  # Snowflake's login code, so the user knows which refusal it was
    assert err.value.__cause__ is None  # the connector's error (host, user, server message) is not chained
    logged = "".join(capfd.readouterr())
    for secret in [*secrets, *peer.oauth_tokens]:
        assert secret not in msg and secret not in logged


def test_the_connector_bounds_reach_the_login_and_extras_override_them(
    peer: SnowflakeRestPeer, monkeypatch: pytest.MonkeyPatch, sqlite_url: str, figures
) -> None:
    """The connector reports its timeouts in the login request: the hook's defaults, or the connection's extras."""
    from finops_provider.hooks.snowflake_costs import CONNECTOR_TIMEOUTS

    monkeypatch.setenv(*peer.connection(CONN_ID))  # no timeouts in the extras
    with Ledger(sqlite_url) as led:
        _collect(led)
        _exact(led, figures)
    env = peer.client_environment
    assert (env["LOGIN_TIMEOUT"], env["NETWORK_TIMEOUT"], env["SOCKET_TIMEOUT"]) == tuple(CONNECTOR_TIMEOUTS.values())
    assert env["NETWORK_TIMEOUT"] is not None  # the connector's own default: retry a request forever

    monkeypatch.setenv(*peer.connection(CONN_ID, network_timeout="900", socket_timeout=90))
    with Ledger(sqlite_url) as led:
        _collect(led)
    env = peer.client_environment
    assert (env["LOGIN_TIMEOUT"], env["NETWORK_TIMEOUT"], env["SOCKET_TIMEOUT"]) == (60, 900, 90)

    for bad in (0, "1.5", "soon", True):
        monkeypatch.setenv(*peer.connection(CONN_ID, network_timeout=bad))
        with Ledger(sqlite_url) as led, pytest.raises(ValueError, match=rf"'{CONN_ID}'.*network_timeout"):
            _collect(led)
        figures.bad_input("snowflake-extra:network_timeout")
