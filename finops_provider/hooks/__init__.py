"""Hooks: one module per billing / warehouse API. Thin: fetch, translate to core records, nothing else."""
