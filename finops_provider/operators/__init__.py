"""Operators. Importing them loads no cloud SDK: hooks are imported inside ``execute``."""
