"""Azure Cost Management hook: the Query API (daily, grouped by a tag and ServiceName) and FOCUS cost exports.

Built on the microsoft-azure provider's :class:`AzureBaseHook` (connection type ``azure``): a service
principal is login = client id, password = secret, extra ``tenantId``; without them the provider's
``DefaultAzureCredential`` (managed / workload identity) is used. The SDK is
``azure.mgmt.costmanagement.CostManagementClient`` (``query.usage``), imported only when a client is built.

Query API: one query per cost type and window — ``ActualCost`` (-> BilledCost) and ``AmortizedCost``
(-> EffectiveCost), so **two queries per window** (the API returns one cost type per query), each
``timeframe=Custom``, ``granularity=Daily``, ``aggregation=Sum(Cost)`` (``PreTaxCost`` on legacy
accounts), grouped by ``TagKey`` and ``ServiceName`` (the API's maximum of two groupings), following
``nextLink``. Rows are read by column name, never by position; money comes from the response text as
exact decimals.

FOCUS exports (Cost Management "FOCUS cost" exports to a storage account) go through the core FOCUS
reader unchanged, downloaded with the provider's :class:`WasbHook` when they are not local.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.providers.microsoft.azure.hooks.base_azure import AzureBaseHook

from finops_provider.collect import CollectResult, CredentialsError, ingest_collected, tag_filter
from finops_provider.core.focus import BadRow, read_focus
from finops_provider.core.money import MONEY_CONTEXT, exact_sum, to_decimal
from finops_provider.core.records import MAX_SCALE, RecordError, build_record
from finops_provider.core.retry import RetryPolicy, call_with_retry, retry_after_seconds
from finops_provider.hooks._window import bounded_scope, day_window, utc_day

if TYPE_CHECKING:
    from finops_provider.core.config import FinOpsConfig
    from finops_provider.core.ledger import IngestResult, Ledger
    from finops_provider.core.records import CostRecord

PROVIDER = "Microsoft"
SOURCE = "azure-cm"
FOCUS_SOURCE = "azure-focus"
#: Query API cost type -> FOCUS cost column it fills
COST_TYPES = {"ActualCost": "billed_cost", "AmortizedCost": "effective_cost"}
#: money columns the Query API may return, in order of preference (billing currency before USD)
COST_COLUMNS = ("Cost", "PreTaxCost", "CostUSD", "PreTaxCostUSD")
#: Query API cost type -> the FOCUS column a bad amount is quarantined under
COST_FIELDS = {"ActualCost": "BilledCost", "AmortizedCost": "EffectiveCost"}
#: the columns :meth:`AzureCostManagementHook.collect` reads; any other column is schema drift (ignored, warned once)
QUERY_COLUMNS = frozenset({*COST_COLUMNS, "UsageDate", "TagKey", "TagValue", "ServiceName", "Currency"})
#: connection extra ``cloud_environment`` (the provider's names) -> (authority host, ``azure.core.AzureClouds`` name)
CLOUDS = {
    "AzurePublicCloud": ("login.microsoftonline.com", "AZURE_PUBLIC_CLOUD"),
    "AzureUSGovernment": ("login.microsoftonline.us", "AZURE_US_GOVERNMENT"),
    "AzureChinaCloud": ("login.chinacloudapi.cn", "AZURE_CHINA_CLOUD"),
}
FOCUS_SUFFIXES = (".csv", ".csv.gz", ".parquet")
_MAX_DAYS = 366
_QUANTUM = Decimal(1).scaleb(-MAX_SCALE)
_RATE_LIMIT_HEADERS = (
    "x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after",
    "x-ms-ratelimit-microsoft.costmanagement-entity-retry-after",
    "x-ms-ratelimit-microsoft.costmanagement-tenant-retry-after",
    "x-ms-ratelimit-microsoft.costmanagement-client-retry-after",
)


#: a Query API group: (usage day, tag key, tag value, service, currency)
_Group = tuple[dt.date, str, str, str, str]


class _Merged:
    """Query API rows summed per group; bad rows kept, and the groups they belong to withheld.

    A row with a bad value withholds its whole group on every cost basis (no record lands with one basis
    silently 0); the group's readable amounts are kept in that row's quarantine ``raw``.
    """

    def __init__(self) -> None:
        self.amounts: dict[Any, dict[str, Decimal]] = {}
        self.first_row: dict[Any, int] = {}
        self.bad: list[BadRow] = []
        self.withheld: dict[Any, int] = {}  # group -> index of its BadRow in ``bad``

    def add(self, n: int, group: Any, item: Mapping[str, Decimal] | BadRow) -> None:
        if isinstance(item, BadRow):
            if group is not None:
                self.withheld.setdefault(group, len(self.bad))
            self.bad.append(item)
            return
        self.first_row.setdefault(group, n)
        slot = self.amounts.setdefault(group, {})
        for k, v in item.items():
            slot[k] = exact_sum((slot.get(k, Decimal(0)), v))

    def build(
        self, record: Callable[[Any, dict[str, Decimal]], CostRecord | None]
    ) -> tuple[list[CostRecord], list[BadRow]]:
        """(records, bad rows): one record per intact group (``record`` may return None to skip a group)."""
        records: list[CostRecord] = []
        bad = list(self.bad)
        for group, amounts in sorted(self.amounts.items()):
            kept = {k: str(a) for k, a in amounts.items()}
            if group in self.withheld:
                i = self.withheld[group]
                reason = f"{bad[i].reason}; the group is withheld on every cost basis ({kept} kept in raw)"
                bad[i] = replace(bad[i], reason=reason, raw={**bad[i].raw, **kept})
                continue
            try:
                built = record(group, amounts)
            except RecordError as e:
                raw = {"group": [str(g) for g in group], **kept}
                bad.append(BadRow(self.first_row[group], e.field, e.message, raw))
                continue
            if built is not None:
                records.append(built)
        return records, sorted(bad, key=lambda b: b.row_number)


def _status(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)
    if code is None:
        code = getattr(getattr(exc, "response", None), "status_code", None)
    return code if isinstance(code, int) else None


class AnswerCutOffError(ValueError):
    """A 200 answer whose body is not complete JSON (cut off on the way); the request is made again."""


def _is_transient(exc: BaseException) -> bool:
    """HTTP 429 and 5xx answers, connection failures and timeouts before an answer, and cut-off answers."""
    import requests
    from azure.core.exceptions import DecodeError, ServiceRequestError, ServiceResponseError

    if isinstance(exc, (AnswerCutOffError, DecodeError)):  # the SDK's JSON decoding of a cut-off body
        return True
    status = _status(exc)
    if status is not None:
        return status == 429 or status >= 500

    return isinstance(exc, (ServiceRequestError, ServiceResponseError, requests.ConnectionError, requests.Timeout))


def _refusal(exc: BaseException) -> str | None:
    """Why the service or Microsoft Entra ID refused the credentials (401 / 403 / a token error), else None."""
    from azure.core.exceptions import ClientAuthenticationError

    status = _status(exc)
    if status not in (401, 403) and not isinstance(exc, ClientAuthenticationError):
        return None
    aadsts = re.search(r"AADSTS\d+", str(exc))
    code = getattr(getattr(exc, "error", None), "code", None)
    parts = [f"HTTP {status}" if status else "", str(code) if code else "", aadsts.group(0) if aadsts else ""]
    return " ".join(p for p in parts if p) or type(exc).__name__


def _wait_hint(exc: BaseException) -> float | None:
    """Seconds the service asked us to wait: the largest Cost Management rate-limit header, else Retry-After."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if not headers:
        return None
    waits = []
    for name in _RATE_LIMIT_HEADERS:
        value = headers.get(name)
        if value is not None:
            try:
                waits.append(float(value))
            except (TypeError, ValueError):
                continue
    return max(waits) if waits else retry_after_seconds(headers)


def _amount(value: Any, column: str) -> Decimal:
    """An exact Decimal from the response text; the service's float noise past 16 decimals is rounded off.

    The Query API aggregates in binary floating point and writes values such as 0.000055222319999999996;
    the ledger keeps 16 decimals, so digits beyond that (which are float artefacts, not money) are
    rounded HALF_EVEN instead of rejecting the row.
    """
    d = to_decimal(value, field_name=column)
    exp = d.as_tuple().exponent
    if isinstance(exp, int) and exp < -MAX_SCALE:
        d = d.quantize(_QUANTUM, rounding=ROUND_HALF_EVEN, context=MONEY_CONTEXT)
    return d


def _usage_day(value: Any) -> dt.date:
    """``UsageDate`` (a number such as 20261001) or an ISO date / datetime string."""
    text = str(value).strip()
    if text.isdigit() and len(text) == 8:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    return utc_day(text)


def _raw_json(pipeline_response: Any, _deserialized: Any, _headers: Any) -> dict[str, Any]:
    """``cls=`` callback of ``query.usage``: the response body parsed with exact decimals (204 = no rows)."""
    return _parse_body(pipeline_response.http_response)


def _parse_body(response: Any) -> dict[str, Any]:
    text = response.text()
    if response.status_code == 204 or not text:
        return {"properties": {"columns": [], "rows": [], "nextLink": None}}
    try:
        return json.loads(text, parse_float=Decimal)  # type: ignore[no-any-return]
    except json.JSONDecodeError as e:
        raise AnswerCutOffError(
            f"the Query API answer is not complete JSON ({len(text)} characters, {e.msg} at {e.pos})"
        ) from None


class AzureCostManagementHook(AzureBaseHook):
    """Daily Azure costs from the Cost Management Query API, and FOCUS export files, as FOCUS records.

    Connection (``azure``, the provider's type): login = client id, password = client secret, extra
    ``tenantId``; extra ``subscriptionId`` gives the default scope ``subscriptions/<id>``; extra
    ``cloud_environment`` (``AzurePublicCloud`` | ``AzureUSGovernment`` | ``AzureChinaCloud``) picks the
    sovereign cloud; with no secret, ``managed_identity_client_id`` / ``workload_identity_tenant_id`` go to
    the provider's ``DefaultAzureCredential``.

    :param conn_id: the azure connection (default ``azure_default``).
    :param scope: Cost Management scope such as ``subscriptions/<id>``,
        ``providers/Microsoft.Billing/billingAccounts/<id>`` or
        ``providers/Microsoft.Management/managementGroups/<id>``.
    :param cost_column: the aggregated column, ``Cost`` (default) or ``PreTaxCost`` (legacy / pay-as-you-go).
    :param amortized: also query AmortizedCost for EffectiveCost (a second query per window).
    :param repull_days: re-read this many days before ``start`` (Azure cost data settles over ~72 h).
    :param credential: a ``TokenCredential`` to use instead of the connection's (built elsewhere, or a test's).
    :param base_url: the Resource Manager endpoint (default: the cloud's; extra ``base_url`` overrides too).
    :param retry_policy: backoff for 429 / 5xx / timeouts; the service's retry-after headers are honoured.
    :param sleep: the wait function between attempts (tests inject one).
    :param timeout: seconds to wait for a connection and for each answer before the attempt counts as failed
        (and is retried); default the SDK's 300 s.
    """

    conn_name_attr = "conn_id"
    default_conn_name = "azure_default"
    conn_type = "azure"
    hook_name = "Azure Cost Management (FinOps)"

    def __init__(
        self,
        *,
        conn_id: str = default_conn_name,
        scope: str | None = None,
        cost_column: str = "Cost",
        amortized: bool = True,
        repull_days: int = 3,
        credential: Any = None,
        base_url: str | None = None,
        api_version: str | None = None,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float | None = None,
    ) -> None:
        super().__init__(conn_id=conn_id)
        if cost_column not in COST_COLUMNS:
            raise ValueError(f"cost_column {cost_column!r} is not one of {COST_COLUMNS}")
        if repull_days < 0:
            raise ValueError(f"repull_days must be >= 0, got {repull_days}")
        self._scope = scope
        self.cost_column = cost_column
        self.amortized = amortized
        self.repull_days = repull_days
        self._credential = credential
        self._base_url = base_url
        self.api_version = api_version
        self.retry_policy = retry_policy or RetryPolicy()
        self.sleep = sleep
        self.timeout = timeout
        self.requests_made = 0

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The provider's azure form, with the Cost Management placeholders."""
        behaviour = super().get_ui_field_behaviour()
        behaviour["placeholders"] = {
            **behaviour.get("placeholders", {}),
            "extra": json.dumps({"tenantId": "<tenant id>", "subscriptionId": "<subscription id>"}),
        }
        return behaviour

    # ------------------------------------------------------------------ client
    @cached_property
    def _extra(self) -> dict[str, Any]:
        return dict(self.get_connection(self.conn_id).extra_dejson or {})

    @property
    def scope(self) -> str:
        """The Cost Management scope (argument, else ``subscriptions/<subscriptionId extra>``)."""
        if self._scope:
            return self._scope.strip("/")
        sub = self._extra.get("subscriptionId")
        if not sub:
            raise ValueError(
                "no Cost Management scope: pass scope='subscriptions/<id>' (or a billing account / management "
                "group scope) or set subscriptionId in the azure connection's extra"
            )
        return f"subscriptions/{sub}"

    def get_token_credential(self) -> Any:
        """An azure-identity ``TokenCredential``: the given one, a service principal, or DefaultAzureCredential."""
        if self._credential is not None:
            return self._credential
        conn = self.get_connection(self.conn_id)
        extra = self._extra
        tenant = extra.get("tenantId") or extra.get("tenant_id")
        if conn.login and conn.password and tenant:
            from azure.identity import ClientSecretCredential

            authority = CLOUDS.get(extra.get("cloud_environment") or "AzurePublicCloud", CLOUDS["AzurePublicCloud"])[0]
            return ClientSecretCredential(
                tenant_id=tenant, client_id=conn.login, client_secret=conn.password, authority=authority
            )
        from airflow.providers.microsoft.azure.utils import get_sync_default_azure_credential

        return get_sync_default_azure_credential(
            managed_identity_client_id=extra.get("managed_identity_client_id"),
            workload_identity_tenant_id=extra.get("workload_identity_tenant_id"),
        )

    @cached_property
    def resource_manager_url(self) -> str:
        """The Resource Manager endpoint requests go to (``base_url``, else the cloud's)."""
        base_url = self._base_url or self._extra.get("base_url")
        if base_url:
            return str(base_url)
        from azure.core.settings import settings
        from azure.mgmt.core.tools import get_arm_endpoints

        cloud = self._cloud() or settings.current.azure_cloud  # type: ignore[attr-defined]
        return str(get_arm_endpoints(cloud)["resource_manager"])

    def _cloud(self) -> Any:
        name = self._extra.get("cloud_environment")
        if name not in CLOUDS:
            return None
        from azure.core import AzureClouds

        return AzureClouds[CLOUDS[name][1]]

    @cached_property
    def client(self) -> Any:
        """The ``CostManagementClient``; its own retries are off (our backoff is the one retry policy)."""
        from azure.mgmt.costmanagement import CostManagementClient

        # the SDK logs every request and response at INFO; keep task logs to our summary (as WasbHook does)
        logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(
            os.environ.get("AZURE_HTTP_LOGGING_LEVEL", "WARNING")
        )
        kwargs: dict[str, Any] = {"retry_total": 0, "base_url": self.resource_manager_url}
        if self.timeout is not None:
            kwargs.update(connection_timeout=self.timeout, read_timeout=self.timeout)
        if self._cloud() is not None:
            kwargs["cloud_setting"] = self._cloud()
        if self.api_version:
            kwargs["api_version"] = self.api_version
        return CostManagementClient(credential=self.get_token_credential(), **kwargs)

    def get_conn(self) -> Any:
        return self.client

    # ------------------------------------------------------------------- query
    def _call(self, fn: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
        def once() -> dict[str, Any]:
            self.requests_made += 1
            return fn()

        try:
            return call_with_retry(  # type: ignore[no-any-return]
                once,
                what=what,
                is_retryable=_is_transient,
                policy=self.retry_policy,
                wait_hint=_wait_hint,
                sleep=self.sleep,
            )
        except Exception as e:
            refusal = _refusal(e)
            if refusal is None:
                raise
            scope = self._scope or self._extra.get("subscriptionId") or "the scope"
            raise CredentialsError(
                f"{what}: the credentials of connection {self.conn_id!r} were refused ({refusal}); renew the "
                "connection's client secret (its password) or federated credential if it expired, check tenantId, "
                f"and grant its service principal the Cost Management Reader role (Reader for resources) on {scope}"
            ) from e

    def _post_next(self, next_link: str, body: Mapping[str, Any]) -> dict[str, Any]:
        from azure.core.exceptions import HttpResponseError
        from azure.core.rest import HttpRequest

        response = self.client.send_request(HttpRequest("POST", next_link, json=dict(body)))
        if response.status_code not in (200, 204):
            raise HttpResponseError(response=response)
        return _parse_body(response)

    def _check_next_link(self, next_link: str) -> None:
        """The bearer token only ever goes to the Resource Manager host the client was built for."""
        expected = urlsplit(self.resource_manager_url)
        got = urlsplit(next_link)
        if (got.scheme, got.netloc) != (expected.scheme, expected.netloc):
            raise ValueError(f"nextLink host {got.netloc!r} is not the Resource Manager host {expected.netloc!r}")

    def query_pages(self, body: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """POST the query to ``{scope}/providers/Microsoft.CostManagement/query`` and follow ``nextLink``."""
        scope = self.scope
        page = self._call(lambda: self.client.query.usage(scope, dict(body), cls=_raw_json), "Cost Management query")
        while True:
            yield page
            next_link = (page.get("properties") or {}).get("nextLink")
            if not next_link:
                return
            self._check_next_link(next_link)
            page = self._call(partial(self._post_next, next_link, body), "Cost Management query nextLink")

    @staticmethod
    def query_body(
        cost_type: str,
        window: tuple[dt.datetime, dt.datetime],
        *,
        tag_key: str,
        cost_column: str = "Cost",
        tag_values: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """The Query API request body for one cost type over ``[start, end)`` (whole UTC days)."""
        start, end = window
        body: dict[str, Any] = {
            "type": cost_type,
            "timeframe": "Custom",
            "timePeriod": {
                "from": start.strftime("%Y-%m-%dT00:00:00+00:00"),
                "to": (end - dt.timedelta(days=1)).strftime("%Y-%m-%dT23:59:59+00:00"),
            },
            "dataset": {
                "granularity": "Daily",
                "aggregation": {"totalCost": {"name": cost_column, "function": "Sum"}},
                "grouping": [{"type": "TagKey", "name": tag_key}, {"type": "Dimension", "name": "ServiceName"}],
            },
        }
        if tag_values:
            body["dataset"]["filter"] = {"tags": {"name": tag_key, "operator": "In", "values": list(tag_values)}}
        return body

    def collect(
        self,
        start: dt.date | dt.datetime | str,
        end: dt.date | dt.datetime | str,
        *,
        tag_key: str = "team",
        tag_values: Sequence[str] | None = None,
    ) -> CollectResult:
        """Daily cost per tag value and service for ``[start, end)`` plus the re-pull days.

        ActualCost fills BilledCost, AmortizedCost fills EffectiveCost (rows only one query returns get 0 on
        the other basis, so each basis sums to its own total). Untagged cost is kept with empty tags (the
        explicit unallocated row).

        :return: :class:`CollectResult` (XCom-safe summary via ``to_json()``).
        """
        window = day_window(start, end, extend_back_days=self.repull_days)
        if (window[1] - window[0]).days > _MAX_DAYS:
            raise ValueError(f"window of {(window[1] - window[0]).days} days: the Query API takes at most a year")
        before = self.requests_made
        queries = [
            (t, self.query_body(t, window, tag_key=tag_key, cost_column=self.cost_column, tag_values=tag_values))
            for t in COST_TYPES
            if t == "ActualCost" or self.amortized
        ]
        merged = self._merge_queries(queries, partial(self._page_rows, tag_key=tag_key))
        res = CollectResult(source=SOURCE, window=window)
        res.records, res.bad_rows = merged.build(lambda g, amounts: self._record(g[0], g[1], g[2], g[3], g[4], amounts))
        res.requests = self.requests_made - before
        scope = f"{SOURCE}:{self.scope}:{tag_key}:{self.cost_column}" + (":amortized" if self.amortized else "")
        if tag_values:
            scope += f":{','.join(sorted(tag_values))}"
        res.scope = bounded_scope(scope)
        self.log.info(
            "Cost Management %s %s..%s by tag %s: %d records, %d bad rows quarantined, in %d request(s) (%d queries)",
            self.scope,
            window[0].date(),
            window[1].date(),
            tag_key,
            len(res.records),
            len(res.bad_rows),
            res.requests,
            2 if self.amortized else 1,
        )
        return res

    def _merge_queries(
        self,
        queries: Sequence[tuple[str, Mapping[str, Any]]],
        page_rows: Callable[..., Iterator[tuple[int, Any, Mapping[str, Decimal] | BadRow]]],
    ) -> _Merged:
        """Run each (cost type, body) query over all its pages and sum the amounts of every row per group.

        ``page_rows(page, cost_type=..., numbers=..., warned=...)`` yields (row number, group, amounts) per row, or a
        :class:`BadRow` (with its group when the group could be read) for a row with a bad value.
        """
        merged = _Merged()
        numbers, warned = itertools.count(1), set[str]()
        for cost_type, body in queries:
            for page in self.query_pages(body):
                for n, group, item in page_rows(page, cost_type=cost_type, numbers=numbers, warned=warned):
                    merged.add(n, group, item)
        return merged

    def _page_columns(
        self, page: Mapping[str, Any], known: frozenset[str], warned: set[str]
    ) -> tuple[list[str], dict[str, int], list[Any]]:
        """(column names, name -> index, rows) of a Query API page; unknown columns are logged once per collection."""
        props = page.get("properties") or {}
        names = [str(c.get("name")) for c in props.get("columns") or []]
        unknown = [n for n in names if n not in known and n not in warned]
        if unknown:
            warned.update(unknown)
            self.log.warning(
                "Query API answer has %d unknown column(s), ignored: %s", len(unknown), ", ".join(unknown[:20])
            )
        return names, {n: i for i, n in enumerate(names)}, list(props.get("rows") or [])

    def _page_rows(
        self,
        page: Mapping[str, Any],
        *,
        tag_key: str,
        cost_type: str,
        numbers: Iterator[int],
        warned: set[str],
    ) -> Iterator[tuple[int, _Group | None, Mapping[str, Decimal] | BadRow]]:
        """(row number, group, amount) per row; a row with a bad value is a :class:`BadRow` (with its group when
        the group could be read). A missing column is not a bad row but a wrong answer: it raises."""
        names, idx, rows = self._page_columns(page, QUERY_COLUMNS, warned)
        cost_col = next((c for c in (self.cost_column, *COST_COLUMNS) if c in idx), None)
        if rows and cost_col is None:
            raise RecordError(
                "BilledCost",
                f"the Query API answer has no cost column {self.cost_column} (columns: {names}); set cost_column "
                f"to the one the account reports ({', '.join(COST_COLUMNS)})",
            )
        if rows and "UsageDate" not in idx:
            raise RecordError("ChargePeriodStart", f"the Query API answer has no UsageDate column (columns: {names})")
        usd = bool(cost_col and cost_col.endswith("USD"))
        if rows and "Currency" not in idx and not usd:
            raise RecordError("BillingCurrency", f"the Query API answer has no Currency column (columns: {names})")
        for row in rows:
            n = next(numbers)

            def col(name: str, row: Sequence[Any] = row) -> Any:
                i = idx.get(name)
                return row[i] if i is not None and i < len(row) else None

            value = col("TagValue")
            key = (col("TagKey") or tag_key) if value else ""
            service = str(col("ServiceName") or "")
            raw = {name: col(name) for name in names}
            try:
                day = _usage_day(col("UsageDate"))
            except (ValueError, TypeError) as e:
                where = f"Query API {cost_type} row {n} ({key}={value or ''} {service})"
                yield n, None, BadRow(n, "ChargePeriodStart", f"{where}: UsageDate is not a date ({e})", raw)
                continue
            where = f"Query API {cost_type} row {n} ({day} {key}={value or ''} {service})"
            group = (day, str(key), str(value or ""), service, str(col("Currency") or ("USD" if usd else "")))
            try:
                amount = _amount(col(str(cost_col)), str(cost_col))
            except (ValueError, ArithmeticError) as e:
                yield n, group, BadRow(n, COST_FIELDS.get(cost_type, "BilledCost"), f"{where}: {e}", raw)
                continue
            yield n, group, {cost_type: amount}

    def _record(
        self, day: dt.date, key: str, value: str, service: str, currency: str, amounts: Mapping[str, Decimal]
    ) -> CostRecord:
        start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        zero = Decimal(0)
        try:
            return build_record(
                billed_cost=amounts.get("ActualCost", zero),
                effective_cost=amounts.get("AmortizedCost", zero) if self.amortized else None,
                billing_currency=currency,
                charge_period_start=start,
                charge_period_end=start + dt.timedelta(days=1),
                charge_category="Usage",
                charge_description=f"Cost Management daily {self.cost_column}",
                provider_name=PROVIDER,
                publisher_name=PROVIDER,
                invoice_issuer_name=PROVIDER,
                service_name=service or None,
                tags={key: value} if value else {},
                x_source=SOURCE,
                x_platform="azure",
                x_cost_kind="billed",
                x_line_item_id=f"{SOURCE}|{key}={value}|{service}|{currency}",
            )
        except RecordError as e:
            raise RecordError(e.field, f"Query API row {day} {key}={value} {service}: {e.message}") from None

    def test_connection(self) -> tuple[bool, str]:
        """One cheap call: an ungrouped ActualCost query over yesterday."""
        try:
            today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            body = self.query_body("ActualCost", (today - dt.timedelta(days=1), today), tag_key="-")
            body["dataset"] = {
                "granularity": "None",
                "aggregation": {"totalCost": {"name": self.cost_column, "function": "Sum"}},
            }
            next(self.query_pages(body))
            return True, f"Cost Management reachable for {self.scope}"
        except Exception as e:
            return False, f"{type(e).__name__}: {str(e)[:200]}"

    # ------------------------------------------------------------ FOCUS exports
    def read_focus_export(
        self,
        paths: Sequence[str | Path],
        *,
        name: str = "focus-export",
        billing_period: tuple[dt.datetime, dt.datetime] | None = None,
    ) -> CollectResult:
        """Read local FOCUS export files (CSV, CSV.gz or Parquet) through the core FOCUS reader.

        :param name: the export's name; with ``billing_period`` it makes the collection scope, and the
            ledger replaces that period (a re-delivered export restates, vanished rows are removed).
        :param billing_period: ``[start, end)`` the files are complete for; without it rows are upserted only.
        """
        res = CollectResult(source=FOCUS_SOURCE, scope=bounded_scope(f"{FOCUS_SOURCE}:{name}"), window=billing_period)
        defaults = {"x_source": FOCUS_SOURCE, "x_platform": "azure"}
        for path in paths:
            for item in read_focus(path, defaults=defaults):
                if isinstance(item, BadRow):
                    res.bad_rows.append(item)
                else:
                    res.records.append(item)
        self.log.info(
            "FOCUS export %s: %d file(s), %d records, %d bad rows",
            name,
            len(paths),
            len(res.records),
            len(res.bad_rows),
        )
        return res

    def download_focus_export(
        self, container: str, prefix: str, dest: str | Path, *, wasb_conn_id: str = "wasb_default"
    ) -> list[Path]:
        """Download every FOCUS data file under ``container/prefix`` with the provider's :class:`WasbHook`."""
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        wasb = WasbHook(wasb_conn_id=wasb_conn_id)
        names = sorted(n for n in wasb.get_blobs_list_recursive(container, prefix=prefix) if n.endswith(FOCUS_SUFFIXES))
        out: list[Path] = []
        for i, blob in enumerate(names):
            local = Path(dest) / f"{i:05d}-{Path(blob).name}"
            wasb.get_file(str(local), container, blob)
            out.append(local)
        self.requests_made += 1 + len(names)
        return out

    def collect_focus_export(
        self,
        *,
        path: str | Path | None = None,
        container: str | None = None,
        prefix: str | None = None,
        wasb_conn_id: str = "wasb_default",
        billing_period: tuple[dt.datetime, dt.datetime] | None = None,
    ) -> CollectResult:
        """A FOCUS export from a local ``path`` (file or folder) or from ``container``/``prefix`` in blob storage."""
        if path is not None:
            p = Path(path)
            files = sorted(f for f in p.rglob("*") if f.name.endswith(FOCUS_SUFFIXES)) if p.is_dir() else [p]
            return self.read_focus_export(files, name=str(p), billing_period=billing_period)
        if not container:
            raise ValueError("give path= (a downloaded export) or container= and prefix= (a storage account export)")
        before = self.requests_made
        with tempfile.TemporaryDirectory(prefix="finops-azure-focus-") as tmp:
            files = self.download_focus_export(container, prefix or "", tmp, wasb_conn_id=wasb_conn_id)
            res = self.read_focus_export(files, name=f"{container}/{prefix or ''}", billing_period=billing_period)
        res.requests = self.requests_made - before
        return res


def collect_azure(
    ledger: Ledger,
    config: FinOpsConfig,
    start: dt.datetime,
    end: dt.datetime,
    *,
    conn_id: str | None = None,
    scope: str | None = None,
    tag_key: str = "team",
    tag_values: Sequence[str] | None = None,
    overrides: dict[str, Any] | None = None,
    hook: AzureCostManagementHook | None = None,
    **hook_kwargs: Any,
) -> tuple[CollectResult, IngestResult]:
    """Collect Query API costs for ``[start, end)`` (plus the re-pull days) and replace that window in the ledger.

    :param tag_key: the tag grouped by (its value is the owner, mapped by the config's attribution keys).
    :param overrides: attribution set on the records of the requested ``tag_values`` (all records when none).
    :param hook_kwargs: further :class:`AzureCostManagementHook` options (``cost_column``, ``amortized``...).
    """
    hook = hook or AzureCostManagementHook(
        conn_id=conn_id or AzureCostManagementHook.default_conn_name, scope=scope, **hook_kwargs
    )
    res = hook.collect(start, end, tag_key=tag_key, tag_values=tag_values)
    ing = ingest_collected(ledger, config, res, overrides=overrides, override_if=tag_filter(tag_key, tag_values))
    return res, ing


def collect_azure_focus_export(
    ledger: Ledger,
    config: FinOpsConfig,
    *,
    conn_id: str | None = None,
    path: str | Path | None = None,
    container: str | None = None,
    prefix: str | None = None,
    wasb_conn_id: str = "wasb_default",
    billing_period: tuple[dt.datetime, dt.datetime] | None = None,
    hook: AzureCostManagementHook | None = None,
) -> tuple[CollectResult, IngestResult]:
    """Ingest an Azure FOCUS cost export (local, or in blob storage) into the ledger; bad rows are quarantined."""
    hook = hook or AzureCostManagementHook(conn_id=conn_id or AzureCostManagementHook.default_conn_name)
    res = hook.collect_focus_export(
        path=path, container=container, prefix=prefix, wasb_conn_id=wasb_conn_id, billing_period=billing_period
    )
    return res, ingest_collected(ledger, config, res)
