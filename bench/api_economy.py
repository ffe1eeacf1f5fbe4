"""API economy (issue 9, #6 and #7): what collecting costs from billing APIs costs, and what it pulls.

* Cost Explorer: requests (and dollars at the rate card's per-request price) to collect one day of 500 tagged
  jobs with our grouped query, against the naive one-request-per-job approach. Requests are counted on the
  wire against moto's Cost Explorer (results queued in the real response shape, 2 pages).
* Azure Cost Management: Query API calls per scope for a day of 500 tagged jobs, counted on the wire by the
  local HTTPS peer that replays the Query API's response shape (tests/fixtures/azure.py), against one query per
  job and cost basis.
* BigQuery billing export: bytes the collection query scans for one day of 500 jobs in a 60-day export, against
  the whole table, on the local BigQuery peer (tests/fixtures/gcp.py) that runs our SQL on a DuckDB copy and bills
  1,000 bytes per raw row inside the partitions the query touches (a model of the bytes; the pruning is real).
* Push-down: line items billed vs rows returned to the worker, for the bulk FOCUS path (DuckDB GROUP BY at the
  ledger's grain) on a generated 1 M-row export.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path

from _common import emit  # type: ignore[import-not-found]


def cost_explorer() -> None:
    os.environ.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1")
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(
        {"conn_type": "aws", "login": "x", "password": "x", "extra": {"region_name": "us-east-1"}}
    )
    import requests
    from moto import mock_aws

    from finops_provider.core.pricing import RateCard
    from finops_provider.hooks.aws_cost_explorer import AwsCostExplorerHook

    def group(j: int) -> dict:
        m = {"Amount": f"{j}.25", "Unit": "USD"}
        return {
            "Keys": [f"airflow_dag_id$job-{j:03d}", "Amazon EC2"],
            "Metrics": {"UnblendedCost": m, "AmortizedCost": m},
        }

    period = {"TimePeriod": {"Start": "2026-10-01", "End": "2026-10-02"}, "Total": {}, "Estimated": False}
    pages = [
        {"ResultsByTime": [dict(period, Groups=[group(j) for j in range(250)])], "NextPageToken": "p2"},
        {"ResultsByTime": [dict(period, Groups=[group(j) for j in range(250, 500)])]},
    ]
    with mock_aws():
        requests.post("http://motoapi.amazonaws.com/moto-api/static/ce/cost-and-usage-results",
                      json={"results": pages}, timeout=5).raise_for_status()  # fmt: skip
        hook = AwsCostExplorerHook(aws_conn_id="aws_default")
        res = hook.collect(dt.date(2026, 10, 1), dt.date(2026, 10, 2), tag_key="airflow_dag_id")
    price = RateCard.load().price("aws", "COST_EXPLORER_API_REQUEST").amount.amount
    naive = 500
    emit("api", "Cost Explorer requests for a day of 500 tagged jobs", res.requests, "requests",
         baseline="one request per job", baseline_value=naive, target="<= 3", met=res.requests <= 3,
         higher_is_better=False)  # fmt: skip
    emit("api", "Cost Explorer cost of that collection", float(res.requests * price), "USD",
         baseline="one request per job", baseline_value=float(naive * price), higher_is_better=False)  # fmt: skip
    emit("api", "jobs collected", float(len({r.tags.get("airflow_dag_id") for r in res.records})), "jobs")


def azure() -> None:
    import ssl
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pytest_httpserver import HTTPServer

    from finops_provider.hooks.azure_cost_management import AzureCostManagementHook
    from tests.fixtures.azure import SUBSCRIPTION, FakeCostManagement, StaticTokenCredential, _self_signed

    os.environ["AIRFLOW_CONN_AZURE_DEFAULT"] = json.dumps(
        {"conn_type": "azure", "login": "bench", "password": "bench",
         "extra": {"tenantId": "66666666-7777-8888-9999-000000000000", "subscriptionId": SUBSCRIPTION}}
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = _self_signed(Path(tmp))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        server = HTTPServer(host="127.0.0.1", port=0, ssl_context=ctx)
        server.start()
        os.environ["REQUESTS_CA_BUNDLE"] = str(cert)
        try:
            api = FakeCostManagement(server)
            day = 20261001  # UsageDate as the service sends it
            rows = [[f"{j}.25", day, "airflow_dag_id", f"job-{j:03d}", "Virtual Machines", "USD"] for j in range(500)]
            for basis in ("ActualCost", "AmortizedCost"):
                api.set(basis, rows)
            hook = AzureCostManagementHook(
                base_url=server.url_for("/"), repull_days=0, credential=StaticTokenCredential()
            )
            res = hook.collect("2026-10-01", "2026-10-02", tag_key="airflow_dag_id")
        finally:
            server.clear()
            server.stop()
    jobs = len({r.tags.get("airflow_dag_id") for r in res.records})
    emit("api", "Azure Query API calls per scope for a day of 500 tagged jobs", len(api.requests), "calls",
         baseline="one query per job and cost basis", baseline_value=2 * 500, target="<= 3",
         met=len(api.requests) <= 3 and jobs == 500, higher_is_better=False)  # fmt: skip


def gcp(days: int = 60, jobs: int = 500) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pytest_httpserver import HTTPServer

    from finops_provider.hooks.gcp_billing import GcpBillingExportHook
    from tests.fixtures.gcp import DATASET, PROJECT, TABLE, FakeBigQuery, export_row

    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    os.environ["AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT"] = json.dumps(
        {"conn_type": "google_cloud_platform",
         "extra": {"project": PROJECT, "is_anonymous": True, "api_endpoint": server.url_for("").rstrip("/"),
                   "billing_dataset": DATASET, "billing_table": TABLE, "location": "US"}}
    )  # fmt: skip
    try:
        peer = FakeBigQuery(server)
        first = dt.date(2026, 8, 3)
        for d in range(days):
            day = (first + dt.timedelta(days=d)).isoformat()
            peer.add(*[export_row(day, "1.5", labels={"airflow_dag_id": f"job-{j:03d}"}) for j in range(jobs)])
        last = first + dt.timedelta(days=days - 1)
        res = GcpBillingExportHook().collect(last, last + dt.timedelta(days=1), label_key="airflow_dag_id")
        table_bytes = peer.raw_rows() * 1_000
    finally:
        peer.db.close()
        server.clear()
        server.stop()
    emit("api", f"BigQuery bytes scanned: a day of {jobs} jobs (+3 re-pull days) in a {days}-day export",
         res.bytes_scanned, "bytes", baseline="the whole export table", baseline_value=table_bytes,
         target="partition filter", met=0 < res.bytes_scanned < table_bytes, higher_is_better=False)  # fmt: skip


def push_down(rows: int = 1_000_000) -> None:
    from ingest import generate  # type: ignore[import-not-found]

    from finops_provider.core.bulk import aggregate_focus_files

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "focus.parquet"
        generate(path, rows)
        res = aggregate_focus_files([path])
    emit("api", f"bulk FOCUS push-down: rows returned for {rows:,} line items", len(res.records), "rows",
         baseline="line items billed", baseline_value=rows, higher_is_better=False)  # fmt: skip


if __name__ == "__main__":
    cost_explorer()
    azure()
    gcp()
    push_down()
