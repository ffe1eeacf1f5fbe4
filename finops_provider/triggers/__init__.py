"""Deferrable triggers (run in the triggerer): budget headroom, billing-data freshness."""
