"""Operator tooling: the `vroeg` command line and the embedded stack."""
