"""Outreach: a case per match with the legal four-week clock, for the caseworker."""
