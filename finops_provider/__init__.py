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
                    "finops_provider.hooks.synapse_costs",
                    "finops_provider.hooks.fabric_costs",
                    "finops_provider.hooks.ledger",
                    "finops_provider.hooks.airflow_api",
                ],
            }
        ],
        "operators": [
            {
                "integration-name": "FinOps",
                "python-modules": [
                    "finops_provider.operators.collect",
                    "finops_provider.operators.focus_ingest",
                    "finops_provider.operators.budget_gate",
                ],
            }
        ],
        "sensors": [{"integration-name": "FinOps", "python-modules": ["finops_provider.sensors.budget"]}],
        "triggers": [
            {
                "integration-name": "FinOps",
                "python-modules": ["finops_provider.triggers.budget", "finops_provider.triggers.stream"],
            },
        ],
        "notifications": [
            "finops_provider.notifications.slack.FinOpsSlackNotifier",
            "finops_provider.notifications.jira.FinOpsJiraNotifier",
            "finops_provider.notifications.servicenow.FinOpsServiceNowNotifier",
        ],
        "plugins": [
            {"name": "finops_listener", "plugin-class": "finops_provider.plugins.finops_plugin.FinOpsListenerPlugin"},
            {"name": "finops_dashboard", "plugin-class": "finops_provider.plugins.finops_plugin.FinOpsDashboardPlugin"},
        ],
        "connection-types": [
            {
                "connection-type": "finops_ledger",
                "hook-class-name": "finops_provider.hooks.ledger.FinOpsLedgerHook",
            },
            {
                "connection-type": "finops_airflow_api",
                "hook-class-name": "finops_provider.hooks.airflow_api.AirflowApiHook",
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
                    "api_conn_id": {
                        "description": "Airflow REST API connection used to pause DAGs and answer approvals.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "finops_airflow_api_default",
                        "default": "finops_airflow_api_default",
                    },
                    "listener_enabled": {
                        "description": "Record each task try's estimate from the listener plugin (no DAG changes).",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "True",
                        "default": "False",
                    },
                    "listener_enforce": {
                        "description": "Let the listener also evaluate budgets and trigger actions.",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "True",
                        "default": "False",
                    },
                    "outbox_backoff_base_s": {
                        "description": "First retry delay of an undelivered alert / pause, doubled per attempt.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "30",
                        "default": "30",
                    },
                    "outbox_max_attempts": {
                        "description": "Delivery attempts before an outbox item is marked dead.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "25",
                        "default": "25",
                    },
                    "callback_time_budget_s": {
                        "description": "Wall-clock budget of one FinOps callback; the rest waits in the outbox.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "20",
                        "default": "20",
                    },
                    "default_deferrable": {
                        "description": "FinOps sensors defer to the triggerer unless told otherwise.",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "True",
                        "default": "True",
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
