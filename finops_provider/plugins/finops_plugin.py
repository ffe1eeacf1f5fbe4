"""The FinOps Airflow plugin (entry point group ``airflow.plugins``): registers the attribution listener."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from finops_provider.plugins import listener


class FinOpsListenerPlugin(AirflowPlugin):
    """Records a cost estimate for every task try when ``[finops] listener_enabled`` is true."""

    name = "finops_listener"
    listeners = [listener]  # noqa: RUF012 (AirflowPlugin declares these as class attributes)
