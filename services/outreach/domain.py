"""Outreach's pure rules."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

MUNICIPAL_TIMEZONE = ZoneInfo("Europe/Amsterdam")

# The municipality offers help within four weeks of the signal being forwarded to case
# handling (Wgs art. 3a; Landelijk Convenant Vroegsignalering §3.13; policy plan annex 1).
HELP_OFFER_TERM = dt.timedelta(weeks=4)


def help_offer_deadline(forwarded_at: dt.datetime) -> dt.date:
    """The last day on which the help offer must have been made (local calendar day)."""
    return (forwarded_at.astimezone(MUNICIPAL_TIMEZONE) + HELP_OFFER_TERM).date()


def is_newer_version(incoming: int, stored: int | None) -> bool:
    """Match events carry the whole state; only a newer version replaces what we have."""
    return stored is None or incoming > stored
