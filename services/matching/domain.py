"""Matching's pure rules: which match a signal joins, and what kind of match it is.

Sources: policy plan Midden-Drenthe 2021, 'Matchen van signalen' and annex 1; national
monitor definitions of enkelvoudig / meervoudig / opeenvolgend (handbook domain.md).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from shared.events import MatchKind

# A match stays open for new signals for the four weeks of its help-offer term
# (Wgs: an offer within four weeks of the signal; policy plan annex 1: close within 28 days).
MATCH_WINDOW = dt.timedelta(days=28)


@dataclass(frozen=True)
class SignalFact:
    """What matching knows of one signal: no names, no readable address."""

    signal_id: uuid.UUID
    creditor_id: uuid.UUID
    signaaldatum: dt.date
    achterstand_bedrag: Decimal
    ontvangen_op: dt.datetime


@dataclass(frozen=True)
class MatchVerdict:
    soort: MatchKind
    aantal_schuldeisers: int
    totaal_achterstand: Decimal
    regel: str


def joins_open_match(signal_received: dt.datetime, match_forwarded: dt.datetime) -> bool:
    """A signal joins a household's match while that match's 28-day window is open.

    Signals may be processed in another order than they were received (concurrent
    deliveries commit out of order), so one received shortly before the match was
    forwarded joins it too, rather than opening a second case for the same household.
    """
    return match_forwarded - MATCH_WINDOW < signal_received < match_forwarded + MATCH_WINDOW


def latest_per_creditor(signals: Iterable[SignalFact]) -> dict[uuid.UUID, SignalFact]:
    """The newest signal of each creditor (by signal date, then arrival)."""
    latest: dict[uuid.UUID, SignalFact] = {}
    for signal in signals:
        current = latest.get(signal.creditor_id)
        if current is None or (signal.signaaldatum, signal.ontvangen_op, str(signal.signal_id)) > (
            current.signaaldatum,
            current.ontvangen_op,
            str(current.signal_id),
        ):
            latest[signal.creditor_id] = signal
    return latest


def _months_back(month: dt.date, months: int) -> dt.date:
    index = month.year * 12 + month.month - 1 - months
    return dt.date(index // 12, index % 12 + 1, 1)


def classify(
    match_signals: Sequence[SignalFact],
    earlier_signals: Sequence[SignalFact],
    consecutive_window_months: int,
) -> MatchVerdict:
    """Kind, creditor count and total arrears of a match.

    - meervoudig: two or more different creditors with a signal in the same month;
    - opeenvolgend: the household had a signal in the months before (window per setting:
      3 in the policy plan, 6 in the national monitor);
    - enkelvoudig: otherwise.
    Totals count the latest signal per creditor, so a repeated signal is not added twice.
    """
    latest = latest_per_creditor(match_signals)
    total = sum((s.achterstand_bedrag for s in latest.values()), Decimal("0.00"))
    creditors_by_month: dict[tuple[int, int], set[uuid.UUID]] = {}
    for signal in match_signals:
        month = (signal.signaaldatum.year, signal.signaaldatum.month)
        creditors_by_month.setdefault(month, set()).add(signal.creditor_id)
    most_in_one_month = max(len(c) for c in creditors_by_month.values())
    if most_in_one_month >= 2:
        return MatchVerdict(
            "meervoudig",
            len(latest),
            total,
            f"Meervoudig: {most_in_one_month} verschillende schuldeisers in dezelfde maand.",
        )
    first_month = min(s.signaaldatum for s in match_signals).replace(day=1)
    window_start = _months_back(first_month, consecutive_window_months)
    earlier = [s for s in earlier_signals if window_start <= s.signaaldatum < first_month]
    if earlier:
        return MatchVerdict(
            "opeenvolgend",
            len(latest),
            total,
            f"Opeenvolgend: dit adres had ook een signaal in de {consecutive_window_months} "
            "maanden ervoor.",
        )
    return MatchVerdict(
        "enkelvoudig", len(latest), total, "Enkelvoudig: één signaal voor dit adres."
    )
