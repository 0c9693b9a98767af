"""Feedback: tells partners what happened to their signals."""
