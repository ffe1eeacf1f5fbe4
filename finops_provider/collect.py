"""Collection runs shared by the operators, the CLI and the orchestrator: fetch -> attribute -> one ledger write.

Every source registers a *collector* in :data:`COLLECTORS` (``name -> "module:function"``, imported lazily
so nothing here loads a cloud SDK). A collector has the signature::

    def collect_x(ledger, config, start, end, *, conn_id=None, **options) -> tuple[CollectResult, IngestResult]

and ends with :func:`ingest_collected`, the one way collected records reach the ledger.
"""

from __future__ import annotations

import datetime as dt
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from finops_provider.core.allocation import Attributor
from finops_provider.core.config import FinOpsConfig
from finops_provider.core.focus import BadRow
from finops_provider.core.ledger import IngestResult, Ledger
from finops_provider.core.money import MoneyBag
from finops_provider.core.records import CostRecord

#: source name -> "module:function" (see the module docstring for the signature)
COLLECTORS: dict[str, str] = {
    "aws": "finops_provider.collect:collect_aws",
    "gcp": "finops_provider.hooks.gcp_billing:collect_gcp",
    "azure": "finops_provider.hooks.azure_cost_management:collect_azure",
    "aws-exports": "finops_provider.hooks.aws_data_exports:collect_aws_exports",
    "databricks": "finops_provider.hooks.databricks_costs:collect_databricks",
    "snowflake": "finops_provider.hooks.snowflake_costs:collect_snowflake",
    "bigquery": "finops_provider.hooks.bigquery_costs:collect_bigquery",
    "redshift": "finops_provider.hooks.redshift_costs:collect_redshift",
    "k8s": "finops_provider.hooks.kubernetes_costs:collect_k8s",
    "synapse": "finops_provider.hooks.synapse_costs:collect_synapse",
    "fabric": "finops_provider.hooks.fabric_costs:collect_fabric",
}


class CredentialsError(PermissionError):
    """A source refused a connection's credentials (expired, revoked, or lacking a role).

    The message names the Airflow connection id and what to fix, never the secret. Not retried: renewing the
    credentials is the fix.
    """


@dataclass
class CollectResult:
    """Records from one collection plus what it cost to get them.

    :param scope: the collection this result is complete for (rows of this scope inside ``window`` that are
        not in ``records`` are removed from the ledger: the source restated them away).
    :param requests: API requests (pages) made; :param bytes_scanned: bytes a warehouse query scanned.
    """

    records: list[CostRecord] = field(default_factory=list)
    requests: int = 0
    provisional: int = 0
    window: tuple[dt.datetime, dt.datetime] | None = None
    scope: str = ""
    source: str = ""
    bytes_scanned: int | None = None
    notes: list[str] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)  # quarantined in the same ledger batch

    def totals(self) -> dict[str, str]:
        bag = MoneyBag()
        for r in self.records:
            bag.add_raw(r.billed_cost, r.billing_currency)
        return bag.to_json()

    def to_json(self) -> dict[str, Any]:
        """XCom-safe summary (money as exact strings; no rows)."""
        return {
            "source": self.source,
            "scope": self.scope,
            "rows": len(self.records),
            "provisional_rows": self.provisional,
            "bad_rows": len(self.bad_rows),
            "requests": self.requests,
            "bytes_scanned": self.bytes_scanned,
            "totals": self.totals(),
            "window": [self.window[0].isoformat(), self.window[1].isoformat()] if self.window else None,
        }


def ingest_collected(
    ledger: Ledger,
    config: FinOpsConfig,
    res: CollectResult,
    *,
    overrides: dict[str, Any] | None = None,
    override_if: Callable[[CostRecord], bool] | None = None,
    replace_window: bool = True,
) -> IngestResult:
    """Attribute the records (overrides first, then tags and mappings) and write them in one ledger batch."""
    attr = Attributor(config)
    for r in res.records:
        if overrides and (override_if is None or override_if(r)):
            for k, v in overrides.items():
                if v is not None and not getattr(r, k):
                    setattr(r, k, v)
        attr.apply(r)
    return ledger.ingest(
        [*res.records, *res.bad_rows],
        source=res.source or "collector",
        scope=res.scope or None,
        window=res.window,
        replace_window=replace_window and res.window is not None,
    )


def tag_filter(tag_key: str, tag_values: Sequence[str] | None) -> Callable[[CostRecord], bool] | None:
    """The records a collection was asked for (``tag_key`` in ``tag_values``); None when it asked for all."""
    if not tag_values:
        return None
    wanted = set(tag_values)
    return lambda r: r.tags.get(tag_key) in wanted


def get_collector(name: str) -> Callable[..., tuple[CollectResult, IngestResult]]:
    try:
        target = COLLECTORS[name]
    except KeyError:
        raise ValueError(f"unknown source {name!r}; available: {', '.join(sorted(COLLECTORS))}") from None
    mod, _, fn = target.partition(":")
    return getattr(importlib.import_module(mod), fn)  # type: ignore[no-any-return]


def collect_aws(
    ledger: Ledger,
    config: FinOpsConfig,
    start: dt.datetime,
    end: dt.datetime,
    *,
    conn_id: str | None = None,
    tag_key: str = "airflow_dag_id",
    tag_values: Sequence[str] | None = None,
    dimension: str | None = "SERVICE",
    overrides: dict[str, Any] | None = None,
    hook: Any = None,
    aws_conn_id: str | None = None,
) -> tuple[CollectResult, IngestResult]:
    """Collect Cost Explorer costs for ``[start, end)`` and replace that window in the ledger.

    :param overrides: attribution set on the records of the requested ``tag_values`` (all records when
        no tag values are given), for example ``{"x_job_id": ...}``; explicit values are kept.
    """
    from finops_provider.hooks.aws_cost_explorer import AwsCostExplorerHook

    hook = hook or AwsCostExplorerHook(aws_conn_id=conn_id or aws_conn_id or "aws_default")
    res = hook.collect(start, end, tag_key=tag_key, tag_values=tag_values, dimension=dimension)
    ing = ingest_collected(ledger, config, res, overrides=overrides, override_if=tag_filter(tag_key, tag_values))
    return res, ing
