"""Fault matrix of the BigQuery INFORMATION_SCHEMA.JOBS collector on its default path, the real BigQuery client.

The peer is the local BigQuery REST server of tests/fixtures/gcp.py (jobs.insert, jobs.get, jobs.getQueryResults
with ``pageToken``), serving a DuckDB copy of ``region-us.INFORMATION_SCHEMA.JOBS`` (the documented columns of
tests/fixtures/bigquery.py): the hook's SQL is transpiled and really runs. Like BigQuery, it refuses a second
``jobs.insert`` of a job id it has seen (409 ``duplicate``). The connection is ``google_cloud_default`` (or a
service-account connection), so the provider builds the ``google.cloud.bigquery.Client`` that runs.

Faults are injected on the wire: throttling with a ``Retry-After``, 403 ``rateLimitExceeded``, 5xx, a server that
does the work but answers after the client's timeout, a result page cut short, pages that never arrive, a job that
fails for a transient reason, and refused credentials (401, 403 ``accessDenied``, a revoked service-account key).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from decimal import Decimal
from typing import Any

import pytest

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.ledger import Ledger
from finops_provider.core.retry import RetryExhaustedError, RetryPolicy
from tests.fixtures.bigquery import JOBS_DDL
from tests.fixtures.gcp import ROW_BYTES, FakeBigQuery, bigquery_connection, service_account_connection

FAST = RetryPolicy(max_attempts=4, base_s=0.001, cap_s=0.002, budget_s=30)
STALL_S = 1.5  # the peer holds its answer this long; the hook is given a 0.6 s timeout (0.2 s was too tight for a
# cold first query on a busy runner: the peer transpiles and runs the SQL on DuckDB)
TIMEOUT_S = 0.6
PAGE = 2  # rows per getQueryResults page: the 6 result rows come in 3 pages (page tokens "2" and "4")
D1, D3 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC), dt.datetime(2026, 10, 3, tzinfo=dt.UTC)
TIB = 2**40
VIEW = '"region-us".main."INFORMATION_SCHEMA.JOBS"'  # where `region-us`.INFORMATION_SCHEMA.JOBS lands in DuckDB
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class JobsPeer(FakeBigQuery):
    """The BigQuery REST peer answering the JOBS view, plus job-id uniqueness, stalls and truncated pages."""

    def __init__(self, httpserver: Any) -> None:
        super().__init__(httpserver)
        self.db.execute("ATTACH ':memory:' AS \"region-us\"")
        self.db.execute(JOBS_DDL[1].replace("region_us.jobs", VIEW))
        self.stalls: dict[str, int] = {}  # endpoint -> the next N answers arrive after STALL_S (the work is done)
        self.truncations = 0  # the next N results answers keep 1 row and drop the pageToken
        self.cuts: dict[str, int] = {}  # endpoint -> the next N answers lose the second half of their body
        self._n = 0

    # ------------------------------------------------------------- test API
    def job(
        self,
        created: str,
        *,
        bytes_billed: int = 0,
        slot_ms: int = 0,
        reservation: str | None = None,
        labels: dict[str, str] | None = None,
        statement_type: str = "SELECT",
        job_type: str = "QUERY",
    ) -> None:
        """One row of the JOBS view (as tests/fixtures/bigquery.py ``JobsView.job`` writes it)."""
        self._n += 1
        with self._lock:
            self.db.execute(
                f"INSERT INTO {VIEW} VALUES (?, 'acme-analytics', 123, 'airflow@acme.iam', ?, ?, ?, 'INTERACTIVE', "
                "?, ?, 'select ...', 'DONE', ?, ?, ?, false, ?, NULL, ?)",
                [created, f"job_{self._n}", job_type, statement_type, created, created, reservation, bytes_billed,
                 slot_ms, bytes_billed, [{"key": k, "value": v} for k, v in (labels or {}).items()]],
            )  # fmt: skip

    def inserted_ids(self) -> list[str]:
        """The job id of every jobs.insert request, refused ones included."""
        return [c["json"]["jobReference"]["jobId"] for c in self.calls("insert")]

    # ------------------------------------------------------------- protocol
    def _insert(self, request: Any) -> Any:
        from werkzeug import Response

        ref = (request.get_json(silent=True) or {}).get("jobReference") or {}
        if ref.get("jobId") not in self.jobs or self.failures.get("insert"):
            return super()._insert(request)
        self.requests.append(
            {"endpoint": "insert", "path": request.path, "args": dict(request.args),
             "json": request.get_json(silent=True), "headers": dict(request.headers), "status": 409}
        )  # fmt: skip
        msg = f"Already Exists: Job {ref.get('projectId')}:{ref.get('location')}.{ref['jobId']}"
        body = {"error": {"code": 409, "message": msg, "status": "ALREADY_EXISTS",
                          "errors": [{"message": msg, "domain": "global", "reason": "duplicate"}]}}  # fmt: skip
        return Response(json.dumps(body), status=409, content_type="application/json")

    def _respond(self, endpoint: str, request: Any, body: Any) -> Any:
        if endpoint == "results" and self.truncations and callable(body):
            self.truncations -= 1
            full = body

            def body() -> dict[str, Any]:
                page = full()
                page["rows"] = page["rows"][:1]
                page.pop("pageToken", None)
                return page

        stall = self.stalls.get(endpoint, 0) > 0 and not self.failures.get(endpoint)
        if stall:
            self.stalls[endpoint] -= 1
            body = body() if callable(body) else body  # BigQuery does the work (creates the job, reads the page)...
        response = super()._respond(endpoint, request, body)
        if stall:
            time.sleep(STALL_S)  # ... and its answer comes after the client gave up
        if self.cuts.get(endpoint) and response.status_code == 200:
            self.cuts[endpoint] -= 1
            data = response.get_data()
            response.set_data(data[: len(data) // 2])  # a consistent Content-Length: only the JSON is broken
        return response

    def _execute(self, sql: str, qparams: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any], int]:
        import sqlglot

        duck = sqlglot.transpile(sql, read="bigquery", write="duckdb")[0]
        with self._lock:
            cur = self.db.execute(duck)
            fields = [_field(d[0], str(d[1])) for d in cur.description]
            data = cur.fetchall()
            (n,) = self.db.execute(f"SELECT COUNT(*) FROM {VIEW}").fetchall()[0]
        rows = [{"f": [_value(v, f) for v, f in zip(row, fields, strict=True)]} for row in data]
        return fields, rows, int(n) * ROW_BYTES  # bytes processed: the whole view, as BigQuery bills it


def _field(name: str, duck_type: str) -> dict[str, Any]:
    """The REST schema field of a DuckDB result column (JOBS: TIMESTAMP, INT64, BOOL, STRING, ARRAY<STRUCT>)."""
    t = duck_type.upper()
    if t.startswith("STRUCT(") and t.endswith("[]"):
        kv = [
            {"name": "key", "type": "STRING", "mode": "NULLABLE"},
            {"name": "value", "type": "STRING", "mode": "NULLABLE"},
        ]
        return {"name": name, "type": "RECORD", "mode": "REPEATED", "fields": kv}
    bq = "TIMESTAMP" if t.startswith("TIMESTAMP") else {"BIGINT": "INTEGER", "BOOLEAN": "BOOLEAN"}.get(t, "STRING")
    return {"name": name, "type": bq, "mode": "NULLABLE"}


def _value(v: Any, field: dict[str, Any]) -> dict[str, Any]:
    """A cell as getQueryResults writes it: strings, int64 microseconds for TIMESTAMP, nested ``f``/``v`` records."""
    if v is None:
        return {"v": None}
    if field["type"] == "RECORD":
        return {"v": [{"v": {"f": [{"v": item["key"]}, {"v": item["value"]}]}} for item in v]}
    if field["type"] == "TIMESTAMP":
        return {"v": str((v.astimezone(dt.UTC) - EPOCH) // dt.timedelta(microseconds=1))}
    if field["type"] == "BOOLEAN":
        return {"v": "true" if v else "false"}
    return {"v": str(v)}


ML = {"team": "ml", "airflow_dag_id": "train", "airflow_task_id": "fit"}


@pytest.fixture
def peer(httpserver: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    p = JobsPeer(httpserver)
    bigquery_connection(monkeypatch, httpserver)  # google_cloud_default: anonymous, api_endpoint = the peer
    # in the window: 3.75 TiB on demand ($23.4375) + 3 Enterprise slot-hours ($0.18) in 6 rows -> 5 records
    p.job("2026-10-01 09:00:00+00", bytes_billed=2 * TIB, labels=ML)
    p.job("2026-10-01 09:30:00+00", bytes_billed=TIB // 2, labels=ML)
    p.job("2026-10-01 10:00:00+00", bytes_billed=10 * TIB, labels=ML, statement_type="SCRIPT")  # parent: skipped
    p.job("2026-10-01 11:00:00+00", slot_ms=7_200_000, reservation="acme:US.etl", labels={"team": "data-eng"})
    p.job("2026-10-01 12:00:00+00", bytes_billed=TIB, job_type="LOAD")  # not a query: skipped
    p.job("2026-10-01 23:59:59+00", bytes_billed=TIB)
    p.job("2026-10-02 08:00:00+00", bytes_billed=TIB // 4, labels=ML)
    p.job("2026-10-02 09:00:00+00", slot_ms=3_600_000, reservation="acme:US.etl", labels=ML)
    p.job("2026-10-03 00:00:00+00", bytes_billed=TIB, labels=ML)  # after the window
    yield p
    p.db.close()
    httpserver.clear()


TOTAL = Decimal("23.4375") + Decimal("0.18")
RECORDS = 5


def _hook(**kw: Any) -> Any:
    from finops_provider.hooks.bigquery_costs import BigQueryCostHook

    kw.setdefault("retry_policy", FAST)
    kw.setdefault("sleep", lambda s: None)
    kw.setdefault("page_size", PAGE)
    return BigQueryCostHook(**kw)


def _collect(led: Ledger, **kw: Any) -> tuple[Any, Any]:
    from finops_provider.hooks.bigquery_costs import collect_bigquery

    return collect_bigquery(led, FinOpsConfig(), D1, D3, hook=_hook(**kw))


def _exact(led: Ledger, figures: Any) -> None:
    assert led.totals().get("USD").amount == TOTAL and led.count() == RECORDS
    figures.checked(valid=RECORDS, lost=RECORDS - led.count(), duplicates=led.count() - RECORDS)


def _stalled_sleep(waits: list[float]) -> Any:
    """The hook's ``sleep``: records the wait and outlasts a stalled answer (the peer answers one at a time)."""

    def sleep(s: float) -> None:
        waits.append(s)
        time.sleep(STALL_S)

    return sleep


def test_the_default_path_runs_one_labelled_googlesql_job_and_reads_every_page(peer: JobsPeer, sqlite_url: str):
    with Ledger(sqlite_url) as led:
        res, ing = _collect(led)
        assert ing.inserted == RECORDS and led.totals().get("USD").amount == TOTAL
    [job_id] = peer.inserted_ids()
    assert job_id.startswith("finops_") and list(peer.jobs) == [job_id]
    [insert] = peer.calls("insert")
    query = insert["json"]["configuration"]["query"]
    assert query["useLegacySql"] is False and "`region-us`.INFORMATION_SCHEMA.JOBS" in query["query"]
    assert insert["json"]["configuration"]["labels"] == {"finops_collector": "bigquery-jobs"}
    assert [c["args"].get("pageToken") for c in peer.calls("results")] == [None, "2", "4"]  # 6 rows, 3 pages
    assert res.requests == len(peer.requests) == 1 + 1 + 3  # insert, jobs.get, 3 pages: counted on the wire


@pytest.mark.parametrize(
    ("endpoint", "status", "reason", "headers"),
    [
        pytest.param("insert", 429, "rateLimitExceeded", {"Retry-After": "3"}, id="insert-429-retry-after"),
        pytest.param("insert", 403, "rateLimitExceeded", {}, id="insert-403-rate-limit"),
        pytest.param("insert", 500, "backendError", {}, id="insert-500"),
        pytest.param("insert", 503, "backendError", {}, id="insert-503"),
        pytest.param("get_job", 503, "backendError", {}, id="jobs-get-503"),
        pytest.param("get_job", 429, "rateLimitExceeded", {"Retry-After": "2"}, id="jobs-get-429-retry-after"),
        pytest.param("results", 429, "rateLimitExceeded", {"Retry-After": "5"}, id="results-429-retry-after"),
        pytest.param("results", 502, "backendError", {}, id="results-502"),
        pytest.param("results", 504, "backendError", {}, id="results-504"),
    ],
)
def test_throttling_and_5xx_are_retried_as_the_server_asks(
    peer: JobsPeer, sqlite_url: str, endpoint: str, status: int, reason: str, headers: dict[str, str], figures
) -> None:
    peer.fail(endpoint, status, times=2, reason=reason, headers=headers)
    waits: list[float] = []
    with Ledger(sqlite_url) as led:
        res, ing = _collect(led, sleep=waits.append)
        figures.fault(f"bq-jobs:{endpoint}-{status}", 2)
        assert not peer.failures[endpoint] and len(waits) == 2  # both refusals consumed, each followed by a wait
        if "Retry-After" in headers:
            assert waits == [float(headers["Retry-After"])] * 2
        ids = peer.inserted_ids()
        assert len(set(ids)) == 1 and len(peer.jobs) == 1  # one job id, one job: the query ran (and billed) once
        assert len(ids) == (3 if endpoint == "insert" else 1)  # once the job exists, a retry only reads it
        assert res.requests == len(peer.requests) and ing.inserted == RECORDS
        _exact(led, figures)


@pytest.mark.parametrize("endpoint", ["get_job", "results"])
def test_a_stalled_answer_times_out_and_the_same_job_is_read_again(
    peer: JobsPeer, sqlite_url: str, endpoint: str, figures
) -> None:
    peer.stalls[endpoint] = 1
    waits: list[float] = []
    with Ledger(sqlite_url) as led:
        t0 = time.monotonic()
        _collect(led, sleep=_stalled_sleep(waits), timeout=TIMEOUT_S)
        figures.fault(f"bq-jobs:{endpoint}-stall")
        assert len(waits) == 1 and time.monotonic() - t0 < 10  # the stalled request timed out, once
        assert len(peer.inserted_ids()) == 1 and len(peer.jobs) == 1  # re-read through jobs.get, never re-run
        _exact(led, figures)


@pytest.mark.parametrize("endpoint", ["insert", "get_job", "results"])
def test_an_answer_cut_short_is_retried_without_running_the_job_again(
    peer: JobsPeer, sqlite_url: str, endpoint: str, figures
) -> None:
    peer.cuts[endpoint] = 1  # for jobs.insert: the job was created, its answer is unreadable
    with Ledger(sqlite_url) as led:
        _collect(led)
        figures.fault(f"bq-jobs:{endpoint}-cut-body")
        assert not peer.cuts[endpoint] and len(set(peer.inserted_ids())) == 1 and len(peer.jobs) == 1
        _exact(led, figures)


def test_a_timed_out_insert_is_retried_with_the_same_job_id_and_runs_once(peer: JobsPeer, sqlite_url: str, figures):
    """BigQuery starts the job but its jobs.insert answer arrives after the client's timeout. The retry sends the
    same job id, gets 409 duplicate and reads the running job: one job, billed once (a fresh id would run two)."""
    peer.stalls["insert"] = 1
    waits: list[float] = []
    with Ledger(sqlite_url) as led:
        _collect(led, sleep=_stalled_sleep(waits), timeout=TIMEOUT_S)
        figures.fault("bq-jobs:insert-stall")
        first, second = peer.inserted_ids()
        assert first == second and first.startswith("finops_")
        assert [c.get("status") for c in peer.calls("insert")] == [None, 409]  # the retry was refused as duplicate
        assert list(peer.jobs) == [first]  # exactly one job executed in the peer
        assert len(peer.calls("get_job")) >= 1 and len(waits) == 1
        _exact(led, figures)


def test_each_collection_uses_its_own_job_id(peer: JobsPeer, sqlite_url: str, figures) -> None:
    with Ledger(sqlite_url) as led:
        _collect(led)
        _collect(led)  # a rerun is a new statement: a new job (the 409 must never return another run's rows)
        assert len(set(peer.inserted_ids())) == 2 == len(peer.jobs)
        _exact(led, figures)


def test_a_truncated_result_page_is_reread_never_written_short(peer: JobsPeer, sqlite_url: str, figures) -> None:
    peer.truncations = 1  # the first page has 1 of 6 rows and no pageToken
    with Ledger(sqlite_url) as led:
        _collect(led)
        figures.fault("bq-jobs:truncated-page")
        assert len(peer.calls("insert")) == 1 and len(peer.jobs) == 1  # re-read, not re-run
        assert len(peer.calls("results")) == 1 + 3
        _exact(led, figures)


def test_a_job_that_failed_transiently_runs_again_under_a_new_id(peer: JobsPeer, sqlite_url: str, figures) -> None:
    """A job id can run only once: a job that itself failed (backendError) is re-run as ``<id>_1``."""
    peer.fail_job("backendError")
    with Ledger(sqlite_url) as led:
        _collect(led)
        figures.fault("bq-jobs:job-backendError")
        first, second = peer.inserted_ids()
        assert second == f"{first}_1" and len(peer.jobs) == 2
        _exact(led, figures)


def test_an_exhausted_budget_writes_nothing_then_rerun_is_exact(peer: JobsPeer, sqlite_url: str, figures) -> None:
    with Ledger(sqlite_url) as led:
        peer.fail("results", 503, times=50, page_token="4")  # pages 1-2 arrive, page 3 never does
        with pytest.raises(RetryExhaustedError, match="still failing after 4 attempts"):
            _collect(led)
        figures.fault(
            "bq-jobs:truncated-pagination", sum(c["args"].get("pageToken") == "4" for c in peer.calls("results"))
        )
        assert len(peer.jobs) == 1  # 4 attempts, one job: each retry re-read it
        peer.failures.clear()
        peer.truncations = 50
        with pytest.raises(RetryExhaustedError, match="truncated"):
            _collect(led)
        figures.fault("bq-jobs:truncated-page", 4)
        peer.truncations = 0
        peer.fail("insert", 429, times=50, reason="rateLimitExceeded")
        with pytest.raises(RetryExhaustedError, match="TooManyRequests"):
            _collect(led)
        figures.fault("bq-jobs:insert-429", 4)
        assert led.count() == 0 and led.quarantined() == []  # a partial window never reaches the ledger
        peer.failures.clear()
        _res, ing = _collect(led)
        assert ing.inserted == RECORDS
        _exact(led, figures)
        peer.fail("get_job", 500, times=50)
        with pytest.raises(RetryExhaustedError):
            _collect(led)
        figures.fault("bq-jobs:get_job-500", 4)
        _exact(led, figures)  # a failed re-collection leaves the window as it was


def _service_account(httpserver: Any, monkeypatch: pytest.MonkeyPatch, grant: bool) -> tuple[str, list[str]]:
    """Connection ``gcp_jobs``: a real service-account key whose token endpoint is the local server, which grants
    tokens (``grant``) or answers ``invalid_grant`` (a deleted / revoked key). Returns the key's PEM and the grant
    types the endpoint was asked for."""
    return service_account_connection(httpserver, monkeypatch, "gcp_jobs", grant)


def _no_secret(msg: str, pem: str) -> None:
    assert "PRIVATE KEY" not in msg and pem.splitlines()[1][:20] not in msg and "ya29" not in msg


@pytest.mark.parametrize(
    ("endpoint", "status", "reason"),
    [
        pytest.param("insert", 401, "unauthorized", id="insert-401-expired-token"),
        pytest.param("insert", 403, "accessDenied", id="insert-403-access-denied"),
        pytest.param("get_job", 403, "accessDenied", id="jobs-get-403-access-denied"),
    ],
)
def test_refused_credentials_name_the_connection(
    peer: JobsPeer, sqlite_url: str, httpserver: Any, monkeypatch: pytest.MonkeyPatch, endpoint: str, status: int,
    reason: str, figures,
) -> None:  # fmt: skip
    from finops_provider.collect import CredentialsError

    pem, grants = _service_account(httpserver, monkeypatch, grant=True)
    peer.fail(endpoint, status, reason=reason, times=5)
    with Ledger(sqlite_url) as led:
        with pytest.raises(CredentialsError) as err:
            _collect(led, gcp_conn_id="gcp_jobs")
        figures.fault(f"bq-jobs:{endpoint}-{status}")
        figures.secret_probes += 1
        # not retried by the hook: google-auth alone re-sends a 401 once per fresh token, nothing else repeats
        assert len(peer.calls(endpoint)) == (len(grants) if status == 401 else 1) and len(peer.jobs) <= 1
        assert led.count() == 0
    msg = str(err.value)
    assert "'gcp_jobs'" in msg and "bigquery.resourceViewer" in msg and "INFORMATION_SCHEMA.JOBS" in msg
    _no_secret(msg, pem)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # the client's text is not chained


def test_a_revoked_service_account_key_names_the_connection(
    peer: JobsPeer, httpserver: Any, monkeypatch: pytest.MonkeyPatch, figures
) -> None:
    """The real OAuth exchange: the key signs a JWT, the token endpoint answers invalid_grant (key deleted)."""
    from finops_provider.collect import CredentialsError

    pem, grants = _service_account(httpserver, monkeypatch, grant=False)
    with pytest.raises(CredentialsError) as err:
        _hook(gcp_conn_id="gcp_jobs").collect(D1, D3)
    figures.fault("bq-jobs-auth:invalid_grant")
    figures.secret_probes += 1
    assert grants and grants[0] == "urn:ietf:params:oauth:grant-type:jwt-bearer"  # the real exchange happened
    assert len(grants) == 1  # refused credentials are not retried
    msg = str(err.value)
    assert "'gcp_jobs'" in msg and "RefreshError" in msg
    _no_secret(msg, pem)
    assert peer.requests == []  # no BigQuery call went out without a token


def _api_error(cls_name: str, reason: str | None) -> BaseException:
    from google.api_core import exceptions as gexc

    errors = [{"reason": reason, "message": "m", "domain": "global"}] if reason else []
    return getattr(gexc, cls_name)("m", errors=errors)


@pytest.mark.parametrize(
    ("make", "fault"),
    [
        pytest.param(lambda: _api_error("Forbidden", "quotaExceeded"), None, id="403-quotaExceeded-not-ours"),
        pytest.param(lambda: _api_error("Forbidden", "billingNotEnabled"), None, id="403-billingNotEnabled-not-ours"),
        pytest.param(lambda: _api_error("Forbidden", None), "CREDENTIALS", id="403-without-reason"),
        pytest.param(lambda: _api_error("BadRequest", "invalidQuery"), None, id="400-invalidQuery-not-ours"),
        pytest.param(lambda: _api_error("NotFound", "notFound"), None, id="404-not-ours"),
        pytest.param(lambda: _api_error("BadRequest", "jobRateLimitExceeded"), "RETRY", id="job-rate-limited"),
        pytest.param(lambda: _dbapi_wrapped(_api_error("Forbidden", "accessDenied")), "CREDENTIALS", id="dbapi-403"),
        pytest.param(lambda: _dbapi_wrapped(_api_error("ServiceUnavailable", None)), "RETRY", id="dbapi-503"),
        pytest.param(lambda: ValueError("no such column"), None, id="other-errors-not-ours"),
    ],
)
def test_the_classifier_leaves_what_a_retry_cannot_fix_to_the_caller(make: Any, fault: str | None) -> None:
    """Faults the peer does not inject: a retry would not help these, and only refused credentials are renamed."""
    from finops_provider.hooks._sql import Fault
    from finops_provider.hooks.bigquery_costs import classify_bigquery_error

    assert classify_bigquery_error(make()) is (Fault[fault] if fault else None)


def _dbapi_wrapped(exc: BaseException) -> BaseException:
    """What ``google.cloud.bigquery.dbapi`` raises (a ``connection=`` handed in): the client's error in args[0]."""
    from google.cloud.bigquery.dbapi import DatabaseError

    return DatabaseError(exc)
