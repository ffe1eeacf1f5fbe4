"""Fault matrix of the GCP billing export and Azure Cost Management hooks, on their real protocol peers.

Peers: the local BigQuery REST server (tests/fixtures/gcp.py, the query really runs in DuckDB) and the Cost
Management Query API over TLS (tests/fixtures/azure.py), driven through the real SDK clients. Faults are injected
on the wire by small subclasses of those peers: throttling with the server's retry-after, 5xx, a server that
stalls past the client's timeout, truncated answers and pages that never arrive, refused credentials (the
service's 401 / 403 and the identity provider's token endpoint), schema drift, and bad values in single rows.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.ledger import Ledger
from finops_provider.core.retry import RetryExhaustedError, RetryPolicy
from tests.fixtures.azure import SUBSCRIPTION, TOKEN, FakeCostManagement, StaticTokenCredential
from tests.fixtures.gcp import FakeBigQuery, bigquery_connection, export_row, service_account_connection

FAST = RetryPolicy(max_attempts=4, base_s=0.001, cap_s=0.002, budget_s=30)
STALL_S = 1.5  # the peer holds a request this long; the hooks are given a 0.6 s timeout (a cold first query
# on the peer, which transpiles and runs the SQL on DuckDB, can take longer than 0.2 s on a busy runner)
TIMEOUT_S = 0.6
D1, D3 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC), dt.datetime(2026, 10, 3, tzinfo=dt.UTC)


@pytest.fixture
def logged_warnings(capfd: pytest.CaptureFixture[str]) -> Callable[[], list[str]]:
    """Reads the warning lines logged so far. Hooks log through ``self.log``, Airflow 3's structlog, which renders
    each event as one line on the process's output (caplog never sees it), so the output is read at fd level."""

    def read() -> list[str]:
        out, err = capfd.readouterr()
        return [line for line in (out + err).splitlines() if "[warning" in line]

    return read


def _stalled_sleep(waits: list[float]) -> Any:
    """The hooks' ``sleep``: records the wait and outlasts a stalled request (the peers answer one at a time)."""

    def sleep(s: float) -> None:
        waits.append(s)
        time.sleep(STALL_S)

    return sleep


# ================================================================================================== GCP
class FaultyBigQuery(FakeBigQuery):
    """The BigQuery peer, plus per-endpoint stalls and a results page cut short (no rows after ``keep``)."""

    def __init__(self, httpserver: Any) -> None:
        super().__init__(httpserver)
        self.stalls: dict[str, int] = {}
        self.truncations = 0  # the next N results answers drop their last rows and the pageToken
        self.schema_override: list[dict[str, Any]] | None = None

    def _respond(self, endpoint: str, request: Any, body: Any) -> Any:
        if self.stalls.get(endpoint):
            self.stalls[endpoint] -= 1
            time.sleep(STALL_S)
        if endpoint == "results" and self.truncations and callable(body):
            self.truncations -= 1
            full = body

            def body() -> dict[str, Any]:
                page = full()
                page["rows"] = page["rows"][:1]
                page.pop("pageToken", None)
                return page

        if endpoint == "table" and self.schema_override is not None:
            self.schema, saved = self.schema_override, self.schema
            try:
                return super()._respond(endpoint, request, body)
            finally:
                self.schema = saved
        return super()._respond(endpoint, request, body)


@pytest.fixture
def bq(httpserver: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    peer = FaultyBigQuery(httpserver)
    bigquery_connection(monkeypatch, httpserver)
    # 2 days x 3 owners, 3 SKUs of one owner: 5 groups per day -> 10 records; billed total 30.75
    for day in ("2026-10-01", "2026-10-02"):
        peer.add(
            export_row(day, "1.25", labels={"team": "ml"}),
            export_row(day, "2.50", labels={"team": "data-eng"}, credits=["-0.5"]),
            export_row(day, "0.125", sku_id="SKU-B"),
            export_row(day, "0.5", sku_id="SKU-C"),
            export_row(day, "11", sku_id="SKU-D", labels={"team": "ml"}),
        )
    yield peer
    peer.db.close()
    httpserver.clear()


GCP_TOTAL = Decimal("30.75")


def _gcp_hook(**kw: Any) -> Any:
    from finops_provider.hooks.gcp_billing import GcpBillingExportHook

    kw.setdefault("repull_days", 0)
    kw.setdefault("retry_policy", FAST)
    kw.setdefault("sleep", lambda s: None)
    return GcpBillingExportHook(**kw)


def _gcp_collect(led: Ledger, **kw: Any) -> tuple[Any, Any]:
    from finops_provider.hooks.gcp_billing import collect_gcp

    return collect_gcp(led, FinOpsConfig(), D1, D3, hook=_gcp_hook(**kw))


@pytest.mark.parametrize(
    ("endpoint", "status", "reason", "headers"),
    [
        pytest.param("insert", 429, "rateLimitExceeded", {"Retry-After": "3"}, id="insert-429-retry-after"),
        pytest.param("results", 429, "rateLimitExceeded", {"Retry-After": "5"}, id="results-429-retry-after"),
        pytest.param("insert", 403, "rateLimitExceeded", {}, id="insert-403-rate-limit"),
        pytest.param("table", 500, "backendError", {}, id="tables-get-500"),
        pytest.param("get_job", 503, "backendError", {}, id="jobs-get-503"),
        pytest.param("results", 502, "backendError", {}, id="results-502"),
        pytest.param("results", 504, "backendError", {}, id="results-504"),
    ],
)
def test_gcp_throttling_and_5xx_are_retried_as_the_server_asks(
    bq: FaultyBigQuery, sqlite_url: str, endpoint: str, status: int, reason: str, headers: dict[str, str], figures
) -> None:
    bq.fail(endpoint, status, times=2, reason=reason, headers=headers)
    waits: list[float] = []
    with Ledger(sqlite_url) as led:
        res, ing = _gcp_collect(led, sleep=waits.append)
        figures.fault(f"gcp-bq:{endpoint}-{status}", 2)
        assert len(bq.calls(endpoint)) == 3  # counted by the server: two refused, the third answered
        if "Retry-After" in headers:
            assert waits == [float(headers["Retry-After"])] * 2
        assert res.requests == len(bq.requests) and ing.inserted == 10
        assert led.totals().get("USD").amount == GCP_TOTAL
        figures.checked(valid=10, lost=10 - led.count(), duplicates=led.count() - 10)


@pytest.mark.parametrize("endpoint", ["insert", "results", "table"])
def test_gcp_a_stalled_server_times_out_and_is_retried(bq: FaultyBigQuery, sqlite_url: str, endpoint: str, figures):
    bq.stalls[endpoint] = 1
    waits: list[float] = []
    with Ledger(sqlite_url) as led:
        t0 = time.monotonic()
        _res, _ = _gcp_collect(led, sleep=_stalled_sleep(waits), timeout=TIMEOUT_S)
        figures.fault(f"gcp-bq:{endpoint}-stall")
        assert len(bq.calls(endpoint)) == 2 and len(waits) == 1  # the stalled request timed out, once
        assert time.monotonic() - t0 < 10
        assert led.totals().get("USD").amount == GCP_TOTAL and led.count() == 10


def test_gcp_a_truncated_result_page_is_reread_never_written_short(bq: FaultyBigQuery, sqlite_url: str, figures):
    bq.truncations = 1  # the first results answer has 1 of 10 rows and no pageToken
    with Ledger(sqlite_url) as led:
        _res, ing = _gcp_collect(led, list_cost=False)
        figures.fault("gcp-bq:truncated-page")
        assert len(bq.calls("insert")) == 1 and len(bq.calls("results")) == 2  # re-read, not re-run
        assert ing.inserted == 10 and led.totals().get("USD").amount == GCP_TOTAL


def test_gcp_pages_that_never_arrive_write_nothing_then_rerun_is_exact(bq: FaultyBigQuery, sqlite_url: str, figures):
    with Ledger(sqlite_url) as led:
        bq.fail("results", 503, times=50, page_token="4")  # pages 1-2 arrive, page 3 never does
        with pytest.raises(RetryExhaustedError):
            _gcp_collect(led, list_cost=False, page_size=4)
        figures.fault(
            "gcp-bq:truncated-pagination", sum(c["args"].get("pageToken") == "4" for c in bq.calls("results"))
        )
        bq.truncations = 50
        with pytest.raises(RetryExhaustedError, match=r"truncated|of 10"):
            _gcp_collect(led, list_cost=False)
        figures.fault("gcp-bq:truncated-page", 4)
        assert led.count() == 0  # a partial window never reaches the ledger
        bq.failures.clear()
        bq.truncations = 0
        _res, ing = _gcp_collect(led, list_cost=False, page_size=4)
        assert ing.inserted == 10 and led.totals().get("USD").amount == GCP_TOTAL
        figures.checked(valid=10, lost=10 - led.count(), duplicates=led.count() - 10)


def _service_account(httpserver: Any, monkeypatch: pytest.MonkeyPatch, grant: bool) -> tuple[str, list[str]]:
    """Connection ``gcp_billing``: a real service-account key whose token endpoint is the local server; the endpoint
    grants tokens (``grant``) or answers ``invalid_grant`` (a deleted / revoked key). Returns the key's PEM and the
    grant types the endpoint was asked for."""
    table = "gcp_billing_export_v1_0A1B2C_3D4E5F_6A7B8C"
    return service_account_connection(
        httpserver, monkeypatch, "gcp_billing", grant, billing_dataset="billing", billing_table=table
    )


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        pytest.param(401, "unauthorized", id="401-expired-token"),
        pytest.param(403, "accessDenied", id="403-access-denied"),
    ],
)
def test_gcp_refused_credentials_name_the_connection(
    bq: FaultyBigQuery, httpserver: Any, monkeypatch: pytest.MonkeyPatch, status: int, reason: str, figures
) -> None:
    from finops_provider.collect import CredentialsError

    pem, grants = _service_account(httpserver, monkeypatch, grant=True)
    bq.fail("insert", status, reason=reason, times=5)
    with pytest.raises(CredentialsError) as err:
        _gcp_hook(gcp_conn_id="gcp_billing", list_cost=False).collect("2026-10-01", "2026-10-02")
    figures.fault(f"gcp-bq:{status}")
    figures.secret_probes += 1
    # not retried by the hook: google-auth alone re-sends a 401 once per fresh token, nothing else repeats
    assert len(bq.calls("insert")) == (len(grants) if status == 401 else 1)
    msg = str(err.value)
    assert "'gcp_billing'" in msg and f"HTTP {status} {reason}" in msg and "bigquery.jobUser" in msg
    assert "PRIVATE KEY" not in msg and pem.splitlines()[1][:20] not in msg and "ya29" not in msg


def test_gcp_a_revoked_service_account_key_names_the_connection(
    bq: FaultyBigQuery, httpserver: Any, monkeypatch: pytest.MonkeyPatch, figures
) -> None:
    """The real OAuth exchange: the key signs a JWT, the token endpoint answers invalid_grant (key deleted)."""
    from finops_provider.collect import CredentialsError

    pem, grants = _service_account(httpserver, monkeypatch, grant=False)
    with pytest.raises(CredentialsError) as err:
        _gcp_hook(gcp_conn_id="gcp_billing", list_cost=False).collect("2026-10-01", "2026-10-02")
    figures.fault("gcp-auth:invalid_grant")
    figures.secret_probes += 1
    msg = str(err.value)
    assert grants and grants[0] == "urn:ietf:params:oauth:grant-type:jwt-bearer"  # the real exchange happened
    assert "'gcp_billing'" in msg and "invalid_grant" in msg and "key" in msg
    assert "PRIVATE KEY" not in msg and pem.splitlines()[1][:20] not in msg
    assert bq.requests == []  # no BigQuery call went out without a token


BAD_GCP = [  # (export row override, FOCUS field the quarantine must name)
    pytest.param({"currency": ""}, "BillingCurrency", id="empty-currency"),
    pytest.param({"currency": "ZZZ"}, "BillingCurrency", id="unknown-currency"),
    pytest.param({"currency": None}, "BillingCurrency", id="null-currency"),
]


@pytest.mark.parametrize(("override", "field"), BAD_GCP)
def test_gcp_bad_groups_are_quarantined_and_the_valid_ones_land(
    bq: FaultyBigQuery, sqlite_url: str, override: dict[str, Any], field: str, figures
) -> None:
    row = export_row("2026-10-01", "7", sku_id="SKU-BAD", labels={"team": "bad"})
    row.update(override)
    bq.add(row)
    figures.bad_input(f"gcp-bq-row:{field}")
    with Ledger(sqlite_url) as led:
        res, ing = _gcp_collect(led)
        (q,) = led.quarantined()
        assert q["field"] == field and "SKU-BAD" in q["reason"]
        assert ing.inserted == 10 and ing.quarantined == 1 and len(res.bad_rows) == 1
        assert led.totals().get("USD").amount == GCP_TOTAL
        figures.checked(valid=10, lost=10 - led.count(), duplicates=led.count() - 10)


def test_gcp_schema_drift_unknown_columns_warn_once(
    bq: FaultyBigQuery, sqlite_url: str, logged_warnings: Callable[[], list[str]], figures
) -> None:
    extra = [{"name": "carbon_footprint_kgCO2e", "type": "FLOAT"}, {"name": "x_new_field", "type": "STRING"}]
    bq.schema_override = [*bq.schema, *extra]
    with Ledger(sqlite_url) as led:
        _gcp_collect(led)
        figures.bad_input("gcp-bq-schema:extra-column")
        drift = [m for m in logged_warnings() if "carbon_footprint_kgCO2e" in m]
        assert len(drift) == 1 and "x_new_field" in drift[0]
        assert led.totals().get("USD").amount == GCP_TOTAL and led.count() == 10


@pytest.mark.parametrize("column", ["credits", "currency", "cost"])
def test_gcp_schema_drift_missing_required_column_is_a_clear_error(
    bq: FaultyBigQuery, sqlite_url: str, column: str, figures
) -> None:
    from finops_provider.hooks.gcp_billing import BillingExportConfigError

    bq.schema_override = [f for f in bq.schema if f["name"] != column]
    with Ledger(sqlite_url) as led:
        with pytest.raises(BillingExportConfigError, match=rf"\b{column}\b") as err:
            _gcp_collect(led)
        figures.bad_input("gcp-bq-schema:missing-column")
        assert "gcp_billing_export_v1_0A1B2C_3D4E5F_6A7B8C" in str(err.value)
        assert bq.calls("insert") == [] and led.count() == 0


# ================================================================================================ Azure
class FaultyCostManagement(FakeCostManagement):
    """The Query API peer, plus faults on a given page (``$skiptoken``): ``"stall"``, ``"truncate"`` (the body is
    cut in half) or ``(status, headers)``."""

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.page_faults: dict[int, list[Any]] = {}

    def _query(self, request: Any) -> Any:
        queue = self.page_faults.get(int(request.args.get("$skiptoken") or 0))
        fault = queue.pop(0) if queue else None
        if fault == "stall":
            time.sleep(STALL_S)
        elif isinstance(fault, tuple):
            self.failures.insert(0, fault)
        response = super()._query(request)
        if fault == "truncate":
            data = response.get_data()
            response.set_data(data[: len(data) // 2])
        return response


@pytest.fixture
def azure_api(azure_tls_server: Any, monkeypatch: pytest.MonkeyPatch) -> FaultyCostManagement:
    monkeypatch.setenv(
        "AIRFLOW_CONN_AZURE_DEFAULT",
        json.dumps(
            {
                "conn_type": "azure",
                "login": "11111111-2222-3333-4444-555555555555",
                "password": "not-a-real-secret",
                "extra": {"tenantId": "66666666-7777-8888-9999-000000000000", "subscriptionId": SUBSCRIPTION},
            }
        ),
    )
    api = FaultyCostManagement(azure_tls_server)
    # ActualCost in two pages, AmortizedCost in one; billed 12.375, effective 10.125
    api.set(
        "ActualCost",
        [[1.25, 20261001, "team", "ml", "Storage", "USD"], [8.5, 20261001, "team", "data-eng", "VM", "USD"]],
        [[0.125, 20261002, "", "", "Bandwidth", "USD"], [2.5, 20261002, "team", "ml", "Storage", "USD"]],
    )
    api.set(
        "AmortizedCost",
        [
            [1.25, 20261001, "team", "ml", "Storage", "USD"],
            [6.25, 20261001, "team", "data-eng", "VM", "USD"],
            [0.125, 20261002, "", "", "Bandwidth", "USD"],
            [2.5, 20261002, "team", "ml", "Storage", "USD"],
        ],
    )
    return api


BILLED, EFFECTIVE = Decimal("12.375"), Decimal("10.125")


def _azure_hook(api: FakeCostManagement, **kw: Any) -> Any:
    from finops_provider.hooks.azure_cost_management import AzureCostManagementHook

    kw.setdefault("repull_days", 0)
    kw.setdefault("retry_policy", FAST)
    kw.setdefault("sleep", lambda s: None)
    kw.setdefault("credential", StaticTokenCredential())
    return AzureCostManagementHook(base_url=api.server.url_for("/"), **kw)


def _azure_collect(api: FakeCostManagement, led: Ledger, **kw: Any) -> tuple[Any, Any]:
    from finops_provider.hooks.azure_cost_management import collect_azure

    return collect_azure(led, FinOpsConfig(), D1, D3, tag_key="team", hook=_azure_hook(api, **kw))


def _azure_exact(led: Ledger) -> None:
    assert led.totals("billed").get("USD").amount == BILLED
    assert led.totals("effective").get("USD").amount == EFFECTIVE


@pytest.mark.parametrize(
    ("page", "status", "headers"),
    [
        pytest.param(0, 429, {"x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after": "7"}, id="429-qpu-first"),
        pytest.param(1, 429, {"Retry-After": "4"}, id="429-retry-after-nextlink"),
        pytest.param(0, 500, {}, id="500-first"),
        pytest.param(1, 502, {}, id="502-nextlink"),
        pytest.param(1, 503, {}, id="503-nextlink"),
        pytest.param(0, 504, {}, id="504-first"),
    ],
)
def test_azure_throttling_and_5xx_are_retried_as_the_server_asks(
    azure_api: FaultyCostManagement, sqlite_url: str, page: int, status: int, headers: dict[str, str], figures
) -> None:
    azure_api.page_faults[page] = [(status, headers)] * 2
    waits: list[float] = []
    with Ledger(sqlite_url) as led:
        res, ing = _azure_collect(azure_api, led, sleep=waits.append)
        figures.fault(f"azure:{status}", 2)
        assert len(azure_api.requests) == 3 + 2  # 2 + 1 pages and 2 refusals, counted by the server
        assert res.requests == 5 and len(waits) == 2
        if headers:
            assert waits == [float(next(iter(headers.values())))] * 2
        assert ing.inserted == 4
        _azure_exact(led)
        figures.checked(valid=4, lost=4 - led.count(), duplicates=led.count() - 4)


def test_azure_a_stalled_server_times_out_and_is_retried(azure_api: FaultyCostManagement, sqlite_url: str, figures):
    azure_api.page_faults = {0: ["stall"], 1: ["stall"]}
    waits: list[float] = []
    with Ledger(sqlite_url) as led:
        _res, ing = _azure_collect(azure_api, led, sleep=_stalled_sleep(waits), timeout=TIMEOUT_S)
        figures.fault("azure:stall", 2)
        assert len(waits) == 2 and len(azure_api.requests) == 5
        assert ing.inserted == 4
        _azure_exact(led)


def test_azure_a_cut_off_answer_is_retried(azure_api: FaultyCostManagement, sqlite_url: str, figures) -> None:
    azure_api.page_faults = {1: ["truncate"]}
    with Ledger(sqlite_url) as led:
        _res, ing = _azure_collect(azure_api, led)
        figures.fault("azure:truncated-body")
        assert len(azure_api.requests) == 4 and ing.inserted == 4
        _azure_exact(led)


@pytest.mark.parametrize("fault", ["503", "truncate"])
def test_azure_a_nextlink_page_that_never_arrives_writes_nothing_then_rerun_is_exact(
    azure_api: FaultyCostManagement, sqlite_url: str, fault: str, figures
) -> None:
    with Ledger(sqlite_url) as led:
        azure_api.page_faults = {1: [(503, {}) if fault == "503" else fault] * 10}
        with pytest.raises(RetryExhaustedError, match="nextLink"):
            _azure_collect(azure_api, led)
        figures.fault(f"azure:truncated-pagination-{fault}", 4)
        assert led.count() == 0 and led.quarantined() == []  # page 1 never reached the ledger on its own
        azure_api.page_faults = {}
        _res, ing = _azure_collect(azure_api, led)
        assert ing.inserted == 4
        _azure_exact(led)
        figures.checked(valid=4, lost=4 - led.count(), duplicates=led.count() - 4)


class _OtherToken(StaticTokenCredential):
    """A credential whose token the service no longer accepts (expired / from a deleted app registration)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken("expired-" + TOKEN, int(time.time()) + 3600)


@pytest.mark.parametrize(
    "fault",
    [pytest.param("401", id="401-expired-token"), pytest.param("403", id="403-no-cost-management-reader")],
)
def test_azure_refused_credentials_name_the_connection(azure_api: FaultyCostManagement, fault: str, figures) -> None:
    from finops_provider.collect import CredentialsError

    if fault == "403":
        azure_api.page_faults = {0: [(403, {})] * 5}
        hook = _azure_hook(azure_api)
    else:
        hook = _azure_hook(azure_api, credential=_OtherToken())
    with pytest.raises(CredentialsError) as err:
        hook.collect("2026-10-01", "2026-10-02")
    figures.fault(f"azure:{fault}")
    figures.secret_probes += 1
    msg = str(err.value)
    assert len(azure_api.requests) == 1  # not retried
    assert "'azure_default'" in msg and fault in msg and "Cost Management Reader" in msg
    assert "not-a-real-secret" not in msg and TOKEN not in msg


def test_azure_an_expired_client_secret_names_the_connection(
    azure_api: FaultyCostManagement, azure_tls_server: Any, figures
) -> None:
    """The real token exchange (azure-identity / MSAL) with a local authority answering AADSTS7000222."""
    from azure.identity import ClientSecretCredential

    from finops_provider.collect import CredentialsError

    tenant, secret = "66666666-7777-8888-9999-000000000000", "not-a-real-secret"
    base = azure_tls_server.url_for("").rstrip("/")
    azure_tls_server.expect_request(f"/{tenant}/v2.0/.well-known/openid-configuration").respond_with_json(
        {
            "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
            "issuer": f"{base}/{tenant}/v2.0",
            "device_authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/devicecode",
        }
    )
    posted: list[dict[str, str]] = []

    def token(request: Any) -> Any:
        from werkzeug import Response

        posted.append(dict(request.form))
        body = {
            "error": "invalid_client",
            "error_description": "AADSTS7000222: The provided client secret keys for app "
            "'11111111-2222-3333-4444-555555555555' are expired. Visit the Azure portal to create new keys for "
            "your app. Trace ID: 0c1f Correlation ID: 5d2e Timestamp: 2026-10-03 06:00:00Z",
            "error_codes": [7000222],
        }
        return Response(json.dumps(body), status=401, content_type="application/json")

    azure_tls_server.expect_request(f"/{tenant}/oauth2/v2.0/token", method="POST").respond_with_handler(token)
    credential = ClientSecretCredential(
        tenant_id=tenant,
        client_id="11111111-2222-3333-4444-555555555555",
        client_secret=secret,
        authority=base,
        disable_instance_discovery=True,
    )
    with pytest.raises(CredentialsError) as err:
        _azure_hook(azure_api, credential=credential).collect("2026-10-01", "2026-10-02")
    figures.fault("azure-auth:AADSTS7000222")
    figures.secret_probes += 1
    msg = str(err.value)
    assert posted and posted[0].get("client_secret") == secret  # the real exchange happened
    assert "'azure_default'" in msg and "AADSTS7000222" in msg and "secret" in msg
    assert secret not in msg
    assert azure_api.requests == []  # no query went out without a token


BAD_AZURE = [  # (ActualCost row 2 of page 1, FOCUS field the quarantine must name)
    pytest.param([None, 20261001, "team", "bad", "Storage", "USD"], "BilledCost", id="null-cost"),
    pytest.param(["NaN", 20261001, "team", "bad", "Storage", "USD"], "BilledCost", id="nan"),
    pytest.param(["", 20261001, "team", "bad", "Storage", "USD"], "BilledCost", id="empty"),
    pytest.param([[1], 20261001, "team", "bad", "Storage", "USD"], "BilledCost", id="wrong-type"),
    pytest.param(["9" * 30, 20261001, "team", "bad", "Storage", "USD"], "BilledCost", id="30-digit"),
    pytest.param(["1e999", 20261001, "team", "bad", "Storage", "USD"], "BilledCost", id="exponent"),
    pytest.param([4, 20261001, "team", "bad", "Storage", ""], "BillingCurrency", id="empty-currency"),
    pytest.param([4, 20261001, "team", "bad", "Storage", "ZZZ"], "BillingCurrency", id="unknown-currency"),
    pytest.param([4, "yesterday", "team", "bad", "Storage", "USD"], "ChargePeriodStart", id="bad-usage-date"),
]


@pytest.mark.parametrize(("row", "field"), BAD_AZURE)
def test_azure_bad_rows_are_quarantined_and_the_valid_ones_land(
    azure_api: FaultyCostManagement, sqlite_url: str, row: list[Any], field: str, figures
) -> None:
    pages = [(cols, list(rows)) for cols, rows in azure_api.pages["ActualCost"]]
    pages[0][1].insert(1, row)
    azure_api.set_pages("ActualCost", pages)
    figures.bad_input(f"azure-query-row:{field}")
    with Ledger(sqlite_url) as led:
        _res, ing = _azure_collect(azure_api, led)
        (q,) = led.quarantined()
        assert q["field"] == field and "bad" in q["reason"] and q["row_number"] == 2
        assert ing.inserted == 4 and ing.quarantined == 1
        _azure_exact(led)
        figures.checked(valid=4, lost=4 - led.count(), duplicates=led.count() - 4)


def test_azure_a_bad_row_withholds_its_group_on_both_bases(
    azure_api: FaultyCostManagement, sqlite_url: str, figures
) -> None:
    """The ml/Storage day-2 ActualCost is unreadable: its AmortizedCost must not land as if billed were 0."""
    pages = [(cols, [list(r) for r in rows]) for cols, rows in azure_api.pages["ActualCost"]]
    pages[1][1][1][0] = "n/a"
    azure_api.set_pages("ActualCost", pages)
    figures.bad_input("azure-query-row:BilledCost")
    with Ledger(sqlite_url) as led:
        _, ing = _azure_collect(azure_api, led)
        (q,) = led.quarantined()
        assert q["field"] == "BilledCost" and "ml" in q["reason"] and "2026-10-02" in q["reason"]
        assert ing.inserted == 3
        assert led.totals("billed").get("USD").amount == BILLED - Decimal("2.5")
        assert led.totals("effective").get("USD").amount == EFFECTIVE - Decimal("2.5")
        assert json.loads(q["raw"])["AmortizedCost"] == "2.5"  # the withheld basis is kept with the row


def test_azure_schema_drift_unknown_columns_warn_once(
    azure_api: FaultyCostManagement, sqlite_url: str, logged_warnings: Callable[[], list[str]], figures
) -> None:
    from tests.fixtures.azure import COLUMNS

    cols = [*COLUMNS, ("ResourceLocation", "String"), ("BenefitName", "String")]
    for cost_type, pages in list(azure_api.pages.items()):
        azure_api.set_pages(cost_type, [(cols, [[*r, "westeurope", None] for r in rows]) for _, rows in pages])
    with Ledger(sqlite_url) as led:
        _azure_collect(azure_api, led)
        figures.bad_input("azure-query-schema:extra-column")
        drift = [m for m in logged_warnings() if "ResourceLocation" in m]
        assert len(drift) == 1 and "BenefitName" in drift[0]  # one warning for 3 pages, 8 rows
        _azure_exact(led)


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        pytest.param("Cost", "Cost", id="no-cost"),
        pytest.param("UsageDate", "UsageDate", id="no-usage-date"),
        pytest.param("Currency", "Currency", id="no-currency"),
    ],
)
def test_azure_schema_drift_missing_required_column_is_a_clear_error(
    azure_api: FaultyCostManagement, sqlite_url: str, drop: str, named: str, figures
) -> None:
    from finops_provider.core.records import RecordError
    from tests.fixtures.azure import COLUMNS

    i = [n for n, _ in COLUMNS].index(drop)
    cols = [c for c in COLUMNS if c[0] != drop]
    for cost_type, pages in list(azure_api.pages.items()):
        azure_api.set_pages(cost_type, [(cols, [r[:i] + r[i + 1 :] for r in rows]) for _, rows in pages])
    with Ledger(sqlite_url) as led:
        with pytest.raises(RecordError, match=rf"\b{named}\b"):
            _azure_collect(azure_api, led)
        figures.bad_input("azure-query-schema:missing-column")
        assert led.count() == 0 and led.quarantined() == []
