"""Task- and DAG-level callbacks that record run-time cost estimates and enforce budgets.

One line per DAG::

    from finops_provider.callbacks import FinOpsDagCallback, finops_default_args

    with DAG(..., default_args=finops_default_args(), on_success_callback=FinOpsDagCallback(),
             on_failure_callback=FinOpsDagCallback()):
        ...
"""

from __future__ import annotations

from finops_provider.callbacks.cost import FinOpsDagCallback, FinOpsTaskCallback, finops_default_args

__all__ = ["FinOpsDagCallback", "FinOpsTaskCallback", "finops_default_args"]
