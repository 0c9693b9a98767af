"""Matching: combines signals per household into matches (single, multiple, consecutive)."""
