"""Collection runs shared by the operators, the CLI and the orchestrator: fetch -> attribute -> one ledger write."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from finops_provider.core.allocation import Attributor
from finops_provider.core.config import FinOpsConfig
from finops_provider.core.ledger import IngestResult, Ledger


def collect_aws(
    ledger: Ledger,
    config: FinOpsConfig,
    start: dt.datetime,
    end: dt.datetime,
    *,
    tag_key: str,
    tag_values: Sequence[str] | None = None,
    aws_conn_id: str = "aws_default",
    dimension: str | None = "SERVICE",
    overrides: dict[str, Any] | None = None,
    hook: Any = None,
) -> tuple[Any, IngestResult]:
    """Collect Cost Explorer costs for ``[start, end)`` and replace that window in the ledger.

    :param overrides: attribution set on the records of the requested ``tag_values`` (all records when
        no tag values are given), for example ``{"x_job_id": ...}``; explicit values are kept.
    :return: the hook's CollectResult and the ledger's IngestResult.
    """
    from finops_provider.hooks.aws_cost_explorer import AwsCostExplorerHook

    hook = hook or AwsCostExplorerHook(aws_conn_id=aws_conn_id)
    res = hook.collect(start, end, tag_key=tag_key, tag_values=tag_values, dimension=dimension)
    attr = Attributor(config)
    wanted = set(tag_values) if tag_values else None
    for r in res.records:
        if wanted is None or r.tags.get(tag_key) in wanted:
            for k, v in (overrides or {}).items():
                if v is not None and not getattr(r, k):
                    setattr(r, k, v)
        attr.apply(r)
    ing = ledger.ingest(res.records, source="aws-ce", scope=res.scope, window=res.window, replace_window=True)
    return res, ing
