"""Intake: the partner gateway. Takes signals, validates, routes, forwards."""
