"""finops-provider: the FinOps control plane for data platforms, as an Apache Airflow 3 provider.

Importing this package is cheap: no submodule (and no cloud SDK) is imported eagerly.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "get_provider_info"]


def get_provider_info() -> dict[str, Any]:
    """Provider metadata for Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""
    return {
        "package-name": "finops-provider",
        "name": "FinOps",
        "description": "Cost attribution, budgets and enforcement for data platforms, inside Airflow.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "FinOps",
                "external-doc-url": "https://focus.finops.org/",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "FinOps",
                "python-modules": [
                    "finops_provider.hooks.aws_cost_explorer",
                    "finops_provider.hooks.aws_data_exports",
                    "finops_provider.hooks.gcp_billing",
                    "finops_provider.hooks.azure_cost_management",
                    "finops_provider.hooks.databricks_costs",
                    "finops_provider.hooks.snowflake_costs",
                    "finops_provider.hooks.bigquery_costs",
                    "finops_provider.hooks.redshift_costs",
                    "finops_provider.hooks.kubernetes_costs",
                    "finops_provider.hooks.ledger",
                ],
            }
        ],
        "triggers": [
            {"integration-name": "FinOps", "python-modules": ["finops_provider.triggers.stream"]},
        ],
        "connection-types": [
            {
                "connection-type": "finops_ledger",
                "hook-class-name": "finops_provider.hooks.ledger.FinOpsLedgerHook",
            },
        ],
        "config": {
            "finops": {
                "description": "finops-provider settings.",
                "options": {
                    "config_file": {
                        "description": "Path of the FinOps config.yaml (budgets, teams, rate-card overrides).",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/opt/airflow/finops/config.yaml",
                        "default": "",
                    },
                    "cluster_policy": {
                        "description": "Stamp dag/task/run/team/cost-center onto what operators send to data "
                        "platforms (finops_provider.policy.task_policy must be imported in airflow_local_settings).",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "True",
                        "default": "False",
                    },
                    "ledger_conn_id": {
                        "description": "Airflow connection holding the ledger database URL.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "finops_ledger_default",
                        "default": "finops_ledger_default",
                    },
                },
            }
        },
    }
