"""Airflow plugins of finops-provider: the attribution listener."""
