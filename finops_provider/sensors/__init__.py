"""Sensors: budget headroom and billing-data freshness (deferrable)."""
