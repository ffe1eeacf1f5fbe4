"""finops-provider: the FinOps control plane for data platforms, as an Airflow 3 provider."""

from __future__ import annotations

__version__ = "0.1.0"
