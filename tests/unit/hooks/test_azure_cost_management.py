"""AzureCostManagementHook: the real CostManagementClient against a local Query API peer over TLS, and
FOCUS exports (the real FOCUS sample's Azure slice) from a local path and from a local Blob Storage peer."""

from __future__ import annotations

import csv
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from finops_provider.core.config import FinOpsConfig, parse_config
from finops_provider.core.ledger import Ledger
from finops_provider.core.retry import RetryExhaustedError, RetryPolicy
from tests.fixtures.azure import COLUMNS, SCOPE, TOKEN, FakeBlobStorage, FakeCostManagement, StaticTokenCredential

FAST = RetryPolicy(max_attempts=4, base_s=0.001, cap_s=0.002, budget_s=30)
AZURE_SAMPLE = Path(__file__).parents[2] / "data" / "focus-sample" / "focus1.0_azure_sample.csv"
CONFIG = parse_config(
    {
        "teams": {"data-eng": {"cost_center": "CC-100-DATA"}, "ml": {"cost_center": "CC-200-ML"}},
        "attribution": {"team": ["team"], "cost_center": ["CostCenter"]},
    }
)


def _hook(api: FakeCostManagement, **kw: Any) -> Any:
    from finops_provider.hooks.azure_cost_management import AzureCostManagementHook

    kw.setdefault("repull_days", 0)
    kw.setdefault("retry_policy", FAST)
    kw.setdefault("sleep", lambda s: None)
    kw.setdefault("credential", StaticTokenCredential())
    return AzureCostManagementHook(base_url=api.server.url_for("/"), **kw)


def _collect(api: FakeCostManagement, ledger: Ledger, start: str, end: str, **kw: Any) -> tuple[Any, Any]:
    from finops_provider.hooks.azure_cost_management import collect_azure

    tag_values = kw.pop("tag_values", None)
    overrides = kw.pop("overrides", None)
    return collect_azure(
        ledger,
        CONFIG,
        dt.datetime.fromisoformat(start),
        dt.datetime.fromisoformat(end),
        tag_key="team",
        tag_values=tag_values,
        overrides=overrides,
        hook=_hook(api, **kw),
    )


def _two_days(api: FakeCostManagement) -> None:
    # ActualCost: two pages; the second lists its columns in another order (rows are read by name)
    shuffled = [
        ("Currency", "String"),
        ("ServiceName", "String"),
        ("TagValue", "String"),
        ("TagKey", "String"),
        ("UsageDate", "Number"),
        ("Cost", "Number"),
    ]
    api.set_pages(
        "ActualCost",
        [
            (
                COLUMNS,
                [
                    [19.545363672276512, 20261001, "team", "data-eng", "Virtual Machines", "USD"],
                    [0.1, 20261001, "team", "ml", "Storage", "USD"],
                    [7.25, 20261001, "", "", "Bandwidth", "USD"],  # untagged: kept, unallocated
                ],
            ),
            (
                shuffled,
                [
                    ["USD", "Storage", "ml", "team", 20261002, 0.2],
                    ["USD", "Virtual Machines", "data-eng", "team", 20261002, 173.41979241290323],
                ],
            ),
        ],
    )
    api.set(
        "AmortizedCost",
        [
            [12.5, 20261001, "team", "data-eng", "Virtual Machines", "USD"],
            [0.1, 20261001, "team", "ml", "Storage", "USD"],
            [7.25, 20261001, "", "", "Bandwidth", "USD"],
            [0.2, 20261002, "team", "ml", "Storage", "USD"],
            [150, 20261002, "team", "data-eng", "Virtual Machines", "USD"],
        ],
    )


def test_actual_and_amortized_queries_paged_throttled_exact(
    azure_cost_api: FakeCostManagement, sqlite_url: str
) -> None:
    _two_days(azure_cost_api)
    azure_cost_api.throttle(1, retry_after="3")
    waits: list[float] = []
    credential = StaticTokenCredential()
    led = Ledger(sqlite_url)
    res, ing = _collect(azure_cost_api, led, "2026-10-01", "2026-10-03", sleep=waits.append, credential=credential)

    assert waits == [3.0]  # the qpu-retry-after header was honoured, once
    reqs = azure_cost_api.requests
    assert [(r["json"]["type"], r["args"].get("$skiptoken")) for r in reqs] == [
        ("ActualCost", None),  # 429
        ("ActualCost", None),
        ("ActualCost", "1"),  # nextLink
        ("AmortizedCost", None),
    ]
    assert res.requests == 4
    assert all(r["headers"]["Authorization"] == f"Bearer {TOKEN}" for r in reqs[1:])
    assert credential.scopes and credential.scopes[0] == ("https://management.azure.com/.default",)
    assert reqs[1]["path"] == f"/{SCOPE}/providers/Microsoft.CostManagement/query"
    assert reqs[1]["args"]["api-version"]
    body = reqs[1]["json"]
    assert body["timeframe"] == "Custom"
    assert body["timePeriod"] == {"from": "2026-10-01T00:00:00+00:00", "to": "2026-10-02T23:59:59+00:00"}
    assert body["dataset"]["granularity"] == "Daily"
    assert body["dataset"]["aggregation"] == {"totalCost": {"name": "Cost", "function": "Sum"}}
    assert body["dataset"]["grouping"] == [
        {"type": "TagKey", "name": "team"},
        {"type": "Dimension", "name": "ServiceName"},
    ]

    assert len(res.records) == 5 and ing.inserted == 5
    billed = (
        Decimal("19.545363672276512")
        + Decimal("0.1")
        + Decimal("7.25")
        + Decimal("0.2")
        + Decimal("173.41979241290323")
    )
    assert led.totals("billed").get("USD").amount == billed == Decimal("200.515156085179742")
    assert led.totals("effective").get("USD").amount == Decimal("170.05")
    vm = next(r for r in res.records if r.service_name == "Virtual Machines" and r.charge_period_start.day == 2)
    assert (vm.billed_cost, vm.effective_cost) == (Decimal("173.41979241290323"), Decimal("150"))
    assert (vm.provider_name, vm.x_source, vm.x_platform) == ("Microsoft", "azure-cm", "azure")
    assert vm.charge_period_start == dt.datetime(2026, 10, 2, tzinfo=dt.UTC)


def test_tag_maps_to_team_and_untagged_stays_unallocated(azure_cost_api: FakeCostManagement, sqlite_url: str) -> None:
    _two_days(azure_cost_api)
    led = Ledger(sqlite_url)
    _collect(azure_cost_api, led, "2026-10-01", "2026-10-03")
    assert led.totals(team="ml").get("USD").amount == Decimal("0.3")
    assert led.totals(cost_center="CC-100-DATA").get("USD").amount == Decimal("192.965156085179742")
    (untagged,) = [r for r in led.records() if r.x_team is None]
    assert (untagged.service_name, untagged.billed_cost, untagged.tags) == ("Bandwidth", Decimal("7.25"), {})
    assert untagged.x_cost_center is None


def test_three_recollections_are_idempotent(azure_cost_api: FakeCostManagement, sqlite_url: str) -> None:
    _two_days(azure_cost_api)
    led = Ledger(sqlite_url)
    seen = []
    for _ in range(3):
        _, ing = _collect(azure_cost_api, led, "2026-10-01", "2026-10-03")
        seen.append((led.totals("billed").to_json(), led.totals("effective").to_json(), led.count()))
    assert seen[0] == seen[1] == seen[2]
    assert seen[0][2] == 5
    assert (ing.inserted, ing.restated, ing.unchanged, ing.removed) == (0, 0, 5, 0)


def test_restated_and_vanished_rows(azure_cost_api: FakeCostManagement, sqlite_url: str) -> None:
    _two_days(azure_cost_api)
    led = Ledger(sqlite_url)
    _collect(azure_cost_api, led, "2026-10-01", "2026-10-03")
    # the costs settled: ml storage on day 1 restated, the untagged bandwidth row credited away
    azure_cost_api.set(
        "ActualCost",
        [
            [19.545363672276512, 20261001, "team", "data-eng", "Virtual Machines", "USD"],
            [0.15, 20261001, "team", "ml", "Storage", "USD"],
            [0.2, 20261002, "team", "ml", "Storage", "USD"],
            [173.41979241290323, 20261002, "team", "data-eng", "Virtual Machines", "USD"],
        ],
    )
    azure_cost_api.set(
        "AmortizedCost",
        [
            [12.5, 20261001, "team", "data-eng", "Virtual Machines", "USD"],
            [0.1, 20261001, "team", "ml", "Storage", "USD"],
            [0.2, 20261002, "team", "ml", "Storage", "USD"],
            [150, 20261002, "team", "data-eng", "Virtual Machines", "USD"],
        ],
    )
    _, ing = _collect(azure_cost_api, led, "2026-10-01", "2026-10-03")
    assert (ing.restated, ing.removed, ing.unchanged) == (1, 1, 3)
    assert led.count() == 4
    assert led.totals(team="ml").get("USD").amount == Decimal("0.35")
    assert sorted(a["action"] for a in led.audit_log()) == ["removed", "restated"]


def test_rows_of_one_cost_type_only_keep_each_basis_whole(azure_cost_api: FakeCostManagement) -> None:
    # a reservation bought on day 1: ActualCost shows the purchase, AmortizedCost spreads it over the VMs
    azure_cost_api.set(
        "ActualCost",
        [[300, 20261001, "", "", "Reservations", "USD"], [0, 20261001, "team", "ml", "Virtual Machines", "USD"]],
    )
    azure_cost_api.set("AmortizedCost", [[9.86, 20261001, "team", "ml", "Virtual Machines", "USD"]])
    res = _hook(azure_cost_api).collect("2026-10-01", "2026-10-02")
    got = {r.service_name: (r.billed_cost, r.effective_cost) for r in res.records}
    assert got == {"Reservations": (Decimal(300), Decimal(0)), "Virtual Machines": (Decimal(0), Decimal("9.86"))}


@pytest.mark.parametrize(
    ("header", "value", "expected"),
    [
        pytest.param("x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after", "7", 7.0, id="qpu"),
        pytest.param("x-ms-ratelimit-microsoft.costmanagement-entity-retry-after", "11", 11.0, id="entity"),
        pytest.param("Retry-After", "2", 2.0, id="retry-after"),
    ],
)
def test_throttling_waits_what_the_service_asks(
    azure_cost_api: FakeCostManagement, header: str, value: str, expected: float
) -> None:
    azure_cost_api.set("ActualCost", [[1, 20261001, "team", "ml", "Storage", "USD"]])
    azure_cost_api.throttle(2, retry_after=value, header=header)
    waits: list[float] = []
    res = _hook(azure_cost_api, sleep=waits.append, amortized=False).collect("2026-10-01", "2026-10-02")
    assert waits == [expected, expected]
    assert res.requests == 3 and res.totals() == {"USD": "1"}
    assert res.records[0].effective_cost is None  # no AmortizedCost query was made


def test_throttling_is_bounded(azure_cost_api: FakeCostManagement) -> None:
    azure_cost_api.throttle(50, retry_after="100")
    waits: list[float] = []
    hook = _hook(azure_cost_api, sleep=waits.append, retry_policy=RetryPolicy(max_attempts=3, budget_s=60))
    with pytest.raises(RetryExhaustedError, match="Cost Management query: still failing after 3 attempts"):
        hook.collect("2026-10-01", "2026-10-02")
    assert waits == [60.0, 60.0]  # the server's 100 s capped at the retry budget
    assert len(azure_cost_api.requests) == 3


def test_server_errors_are_retried_and_client_errors_are_not(azure_cost_api: FakeCostManagement) -> None:
    azure_cost_api.set("ActualCost", [[1, 20261001, "team", "ml", "Storage", "USD"]])
    azure_cost_api.fail(503, times=2)
    res = _hook(azure_cost_api, amortized=False).collect("2026-10-01", "2026-10-02")
    assert res.requests == 3 and res.totals() == {"USD": "1"}
    azure_cost_api.requests.clear()
    azure_cost_api.fail(400, times=5)
    with pytest.raises(Exception, match="400"):
        _hook(azure_cost_api, amortized=False).collect("2026-10-01", "2026-10-02")
    assert len(azure_cost_api.requests) == 1


def test_float_noise_beyond_the_ledger_scale_is_rounded_not_rejected(azure_cost_api: FakeCostManagement) -> None:
    # a value as the service writes it (examples in the REST specs): a float sum's last digits
    azure_cost_api.set("ActualCost", [[0.000055222319999999996, 20261001, "team", "ml", "Bandwidth", "CHF"]])
    res = _hook(azure_cost_api, amortized=False).collect("2026-10-01", "2026-10-02")
    (r,) = res.records
    assert r.billed_cost == Decimal("0.0000552223200000") and r.billing_currency == "CHF"


def test_currencies_stay_separate(azure_cost_api: FakeCostManagement, sqlite_url: str) -> None:
    azure_cost_api.set(
        "ActualCost",
        [[10.5, 20261001, "team", "ml", "Storage", "EUR"], [3.25, 20261001, "team", "ml", "Storage", "USD"]],
    )
    azure_cost_api.set(
        "AmortizedCost",
        [[10.5, 20261001, "team", "ml", "Storage", "EUR"], [3.25, 20261001, "team", "ml", "Storage", "USD"]],
    )
    led = Ledger(sqlite_url)
    res, _ = _collect(azure_cost_api, led, "2026-10-01", "2026-10-02")
    assert len(res.records) == 2
    assert led.totals().to_json() == {"EUR": "10.5", "USD": "3.25"}


@pytest.mark.parametrize(
    ("cost_column", "columns", "currency"),
    [
        pytest.param("PreTaxCost", [("PreTaxCost", "Number"), *COLUMNS[1:]], "GBP", id="legacy-pretax"),
        pytest.param("Cost", [("CostUSD", "Number"), *COLUMNS[1:5]], "USD", id="usd-only-no-currency-column"),
    ],
)
def test_cost_column_is_found_by_name(
    azure_cost_api: FakeCostManagement, cost_column: str, columns: list[tuple[str, str]], currency: str
) -> None:
    row: list[Any] = [4.5, 20261001, "team", "ml", "Storage", "GBP"][: len(columns)]
    azure_cost_api.set("ActualCost", [row], columns=columns)
    res = _hook(azure_cost_api, amortized=False, cost_column=cost_column).collect("2026-10-01", "2026-10-02")
    assert azure_cost_api.requests[0]["json"]["dataset"]["aggregation"]["totalCost"]["name"] == cost_column
    assert [(r.billed_cost, r.billing_currency) for r in res.records] == [(Decimal("4.5"), currency)]


def test_tag_values_filter_and_overrides(azure_cost_api: FakeCostManagement, sqlite_url: str) -> None:
    azure_cost_api.set("ActualCost", [[2, 20261001, "team", "ml", "Storage", "USD"]])
    azure_cost_api.set("AmortizedCost", [[2, 20261001, "team", "ml", "Storage", "USD"]])
    led = Ledger(sqlite_url)
    _collect(azure_cost_api, led, "2026-10-01", "2026-10-02", tag_values=["ml"], overrides={"x_job_id": "ml-train"})
    flt = azure_cost_api.requests[0]["json"]["dataset"]["filter"]
    assert flt == {"tags": {"name": "team", "operator": "In", "values": ["ml"]}}
    (r,) = list(led.records())
    assert (r.x_team, r.x_job_id) == ("ml", "ml-train")


def test_next_link_to_another_host_is_refused(azure_cost_api: FakeCostManagement) -> None:
    azure_cost_api.set(
        "ActualCost", [[1, 20261001, "team", "ml", "Storage", "USD"]], [[2, 20261002, "", "", "VM", "USD"]]
    )
    azure_cost_api.next_link_base = "https://attacker.example"
    with pytest.raises(ValueError, match="not the Resource Manager host"):
        _hook(azure_cost_api, amortized=False).collect("2026-10-01", "2026-10-03")
    assert len(azure_cost_api.requests) == 1  # the token never left for the other host


def test_repull_days_widen_the_time_period(azure_cost_api: FakeCostManagement) -> None:
    azure_cost_api.set("ActualCost", [])
    res = _hook(azure_cost_api, amortized=False, repull_days=3).collect("2026-10-05", "2026-10-06")
    assert azure_cost_api.requests[0]["json"]["timePeriod"] == {
        "from": "2026-10-02T00:00:00+00:00",
        "to": "2026-10-05T23:59:59+00:00",
    }
    assert res.window == (dt.datetime(2026, 10, 2, tzinfo=dt.UTC), dt.datetime(2026, 10, 6, tzinfo=dt.UTC))
    assert res.records == []  # 204 No Content = no cost rows


def test_test_connection_makes_one_small_query(azure_cost_api: FakeCostManagement) -> None:
    azure_cost_api.set("ActualCost", [[1.0, "USD"]], columns=[("Cost", "Number"), ("Currency", "String")])
    ok, msg = _hook(azure_cost_api).test_connection()
    assert ok and SCOPE in msg
    (req,) = azure_cost_api.requests
    assert req["json"]["dataset"]["granularity"] == "None" and "grouping" not in req["json"]["dataset"]


def test_connection_builds_a_service_principal_credential(azure_cost_api: FakeCostManagement) -> None:
    from azure.identity import ClientSecretCredential

    from finops_provider.hooks.azure_cost_management import AzureCostManagementHook

    hook = AzureCostManagementHook()
    assert isinstance(hook.get_token_credential(), ClientSecretCredential)
    assert hook.scope == SCOPE
    assert hook.resource_manager_url == "https://management.azure.com/"


def test_collect_azure_is_the_registered_azure_collector(azure_cost_api: FakeCostManagement, sqlite_url: str) -> None:
    from finops_provider.collect import get_collector

    azure_cost_api.set("ActualCost", [[5, 20261001, "team", "ml", "Storage", "USD"]])
    res, ing = get_collector("azure")(
        Ledger(sqlite_url),
        FinOpsConfig(),
        dt.datetime(2026, 10, 1, tzinfo=dt.UTC),
        dt.datetime(2026, 10, 2, tzinfo=dt.UTC),
        hook=_hook(azure_cost_api),
    )
    assert ing.inserted == 1 and res.source == "azure-cm"


# ------------------------------------------------------------------------------------ FOCUS exports
def _sample_truth() -> tuple[int, Decimal, Decimal]:
    with AZURE_SAMPLE.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return (
        len(rows),
        sum((Decimal(r["BilledCost"]) for r in rows), Decimal(0)),
        sum((Decimal(r["EffectiveCost"]) for r in rows), Decimal(0)),
    )


def test_focus_sample_azure_slice_ingests_exactly(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from finops_provider.hooks.azure_cost_management import AzureCostManagementHook, collect_azure_focus_export

    monkeypatch.setenv("AIRFLOW_CONN_AZURE_DEFAULT", json.dumps({"conn_type": "azure"}))
    n, billed, effective = _sample_truth()
    assert (n, billed) == (51, Decimal("1.97651418586"))
    led = Ledger(sqlite_url)
    period = (dt.datetime(2024, 9, 1, tzinfo=dt.UTC), dt.datetime(2024, 10, 1, tzinfo=dt.UTC))
    for i in range(2):  # the same delivery twice: nothing doubles
        res, ing = collect_azure_focus_export(
            led, FinOpsConfig(), path=AZURE_SAMPLE, billing_period=period, hook=AzureCostManagementHook()
        )
        assert (len(res.records), len(res.bad_rows)) == (51, 0)
        assert (ing.inserted, ing.unchanged) == ((51, 0) if i == 0 else (0, 51))
    assert led.count(source="azure-focus") == 51
    assert led.totals("billed").get("USD").amount == billed
    assert led.totals("effective").get("USD").amount == effective
    assert led.totals(cost_center="1234").get("USD").amount > 0  # the CostCenter tag attributes the rows
    assert {r.provider_name for r in led.records()} == {"Microsoft"}


def test_focus_export_bad_rows_are_quarantined(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finops_provider.hooks.azure_cost_management import AzureCostManagementHook, collect_azure_focus_export

    monkeypatch.setenv("AIRFLOW_CONN_AZURE_DEFAULT", json.dumps({"conn_type": "azure"}))
    lines = AZURE_SAMPLE.read_text(encoding="utf-8").splitlines()
    broken = lines[1].replace("0.00001500000", "abc", 1)
    export = tmp_path / "export" / "part_0_0001.csv"
    export.parent.mkdir()
    export.write_text("\n".join([lines[0], broken, *lines[2:]]) + "\n", encoding="utf-8")
    led = Ledger(sqlite_url)
    res, ing = collect_azure_focus_export(led, FinOpsConfig(), path=export.parent, hook=AzureCostManagementHook())
    assert (len(res.records), ing.quarantined) == (50, 1)
    (q,) = led.quarantined()
    assert q["field"] == "BilledCost" and q["row_number"] == 1


def test_focus_export_downloads_through_wasb(
    blob_storage: FakeBlobStorage, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finops_provider.hooks.azure_cost_management import AzureCostManagementHook, collect_azure_focus_export

    monkeypatch.setenv("AIRFLOW_CONN_AZURE_DEFAULT", json.dumps({"conn_type": "azure"}))
    prefix = "focus/finops-focus/20240901-20240930/run-1"
    blob_storage.put("exports", f"{prefix}/part_0_0001.csv", AZURE_SAMPLE.read_bytes())
    blob_storage.put("exports", f"{prefix}/manifest.json", b'{"manifestVersion": "2024-04-01"}')
    blob_storage.put("exports", "other/part_0_0001.csv", b"not ours")
    led = Ledger(sqlite_url)
    res, ing = collect_azure_focus_export(
        led,
        FinOpsConfig(),
        container="exports",
        prefix=prefix,
        wasb_conn_id="wasb_focus",
        hook=AzureCostManagementHook(),
    )
    n, billed, _ = _sample_truth()
    assert ing.inserted == n and led.totals().get("USD").amount == billed
    paths = [r["path"] for r in blob_storage.requests]
    assert paths == ["/finopsexports/exports", f"/finopsexports/exports/{prefix}/part_0_0001.csv"]
    assert res.requests == 2
    assert blob_storage.requests[1]["headers"]["Authorization"].startswith("SharedKey finopsexports:")
