"""Matching's pure rules: which match a signal joins, when a match is forwarded, and what
kind of match it is.

Sources:
- [PLAN] policy plan vroegsignalering Midden-Drenthe 2021 (seed 000_389ad25a4c2dbeee),
  section 'Matchen van signalen': two or more signals of arrears in the same month make a
  match, and so can two signals in consecutive months; section 'Fase 2': the four-week
  term starts when a signal is forwarded from matching to case handling; the municipality
  sets how it treats two signals of one creditor "binnen een periode van 2 of 3 maanden".
- [MONITOR] national monitor vroegsignalering, the definitions of enkelvoudig, meervoudig
  (different creditors in the same month) and opeenvolgend (a signal in the preceding
  months; the monitor counts six), as summarised in the handbook's domain.md.
- [WGS] Wet gemeentelijke schuldhulpverlening art. 3 lid 3: the municipality offers help
  within four weeks of the signal.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo

from shared.events import MatchKind

# [WGS] and [PLAN] 'Fase 2': four weeks (28 days) from forwarding to the offer of help; the
# match stays open for new signals during that term.
MATCH_WINDOW = dt.timedelta(days=28)
# [PLAN] 2 or 3 months (3 by default); [MONITOR] up to six.
DEFAULT_CONSECUTIVE_MONTHS = 3
MAX_CONSECUTIVE_MONTHS = 6
# Months of a household's history that matching keeps, counted back from its latest signal
# date: the longest consecutive window with room for signals reported late (a signal
# dated two years before the household's latest one is classified without what lies
# before that). A bounded list: the cost of a signal does not grow with history.
MONTHS_KEPT = 24

# What one match event carries at most (signals, and ids in its explanation): a few thousand
# signals at one address would otherwise pass Kafka's default 1 MiB message limit and stop
# the relay (issue 9). 200 signals of the largest form stay well under 256 KiB
# (tests/integration/test_matching_handler.py, the event-size test).
MAX_EVENT_SIGNALS = 200

LOCAL_TIME = ZoneInfo("Europe/Amsterdam")
MATCH_ID_NAMESPACE = uuid.UUID("0d7a4c1e-56b1-4a55-9a43-6c1f3f0e1b27")

Bundling = Literal["geen", "einde-maand", "dagen"]


@dataclass(frozen=True)
class MunicipalityRules:
    """A municipality's matching settings (its policy choices, within the sources' bounds)."""

    opeenvolgend_maanden: int = DEFAULT_CONSECUTIVE_MONTHS
    bundeling: Bundling = "geen"
    bundeling_dagen: int = 0

    def __post_init__(self) -> None:
        if self.bundeling not in get_args(Bundling):
            *others, last = get_args(Bundling)
            raise ValueError(f"bundeling moet {', '.join(others)} of {last} zijn")
        if not 1 <= self.opeenvolgend_maanden <= MAX_CONSECUTIVE_MONTHS:
            raise ValueError(
                f"opeenvolgend_maanden moet tussen 1 en {MAX_CONSECUTIVE_MONTHS} liggen "
                "(beleidsplan: 3, landelijke monitor: tot 6)"
            )
        if self.bundeling == "dagen" and not 1 <= self.bundeling_dagen <= 31:
            raise ValueError("bundeling_dagen moet tussen 1 en 31 liggen")


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
    uitleg: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass
class MatchState:
    """A household's match as the rules see it."""

    id: uuid.UUID
    geopend_op: dt.datetime  # received time of the signal that opened it
    doorsturen_op: dt.datetime  # when it is (or was) forwarded: end of the bundling period
    signals: list[SignalFact]
    version: int = 0
    forwarded: bool = False


def month_index(day: dt.date) -> int:
    return day.year * 12 + day.month - 1


def match_id_for(household_key: str, opening_signal: uuid.UUID) -> uuid.UUID:
    """A match is named by its household and the signal that opened it, so every replica
    (and every rerun) gives a match the same id."""
    return uuid.uuid5(MATCH_ID_NAMESPACE, f"{household_key}|{opening_signal}")


def forwarding_time(opened: dt.datetime, rules: MunicipalityRules) -> dt.datetime:
    """When a match opened at `opened` is forwarded to case handling.

    Without bundling at once; with 'einde-maand' at the start of the next month (local
    time), as the monthly matching rounds of today's tools do; with 'dagen' after N days.
    """
    if rules.bundeling == "geen":
        return opened
    if rules.bundeling == "dagen":
        return opened + dt.timedelta(days=rules.bundeling_dagen)
    local = opened.astimezone(LOCAL_TIME)
    first_next = (local.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
    return dt.datetime.combine(first_next.date(), dt.time(), LOCAL_TIME).astimezone(dt.UTC)


def joins_open_match(received: dt.datetime, match: MatchState) -> bool:
    """A signal joins a household's match while that match's four weeks have not ended.

    The window runs from the match's forwarding (or the end of its bundling period) for
    MATCH_WINDOW. Signals may also be processed in another order than they were received
    (concurrent deliveries commit out of order), so one received up to MATCH_WINDOW before
    the match opened joins it too, rather than opening a second case for the household.
    """
    return match.geopend_op - MATCH_WINDOW < received < match.doorsturen_op + MATCH_WINDOW


def latest_per_creditor(signals: Iterable[SignalFact]) -> dict[uuid.UUID, SignalFact]:
    """The newest signal of each creditor (by signal date, then arrival, then id)."""
    latest: dict[uuid.UUID, SignalFact] = {}
    for signal in signals:
        current = latest.get(signal.creditor_id)
        if current is None or _order(signal) > _order(current):
            latest[signal.creditor_id] = signal
    return latest


def _order(signal: SignalFact) -> tuple[dt.date, dt.datetime, str]:
    return signal.signaaldatum, signal.ontvangen_op, str(signal.signal_id)


def carried_signals(
    signals: Sequence[SignalFact], limit: int = MAX_EVENT_SIGNALS
) -> list[SignalFact]:
    """The signals a match event carries, at most `limit`: first the ones the totals count
    (the latest per creditor, highest arrears first), then the newest others."""
    counted = sorted(
        latest_per_creditor(signals).values(),
        key=lambda s: (-s.achterstand_bedrag, str(s.creditor_id)),
    )
    counted_ids = {s.signal_id for s in counted}
    others = sorted(
        (s for s in signals if s.signal_id not in counted_ids), key=_order, reverse=True
    )
    return sorted((counted + others)[:limit], key=_order)


def preceding_months(
    match_months: Collection[int], household_months: Collection[int], window: int
) -> list[int]:
    """The months, of the match's own signals or the household's others, that lie within
    `window` months before a month of the match: what makes a match opeenvolgend. By the
    signals' own dates (signaaldatum), so a partner that delivers two months late in one go
    makes the same case as one that delivered each month."""
    every = set(match_months) | set(household_months)
    return sorted({earlier for m in match_months for earlier in every if m - window <= earlier < m})


def classify(
    match_signals: Sequence[SignalFact],
    earlier_months: Collection[int],
    consecutive_window_months: int,
) -> MatchVerdict:
    """Kind, creditor count and total arrears of a match, and why.

    - meervoudig [MONITOR]: two or more different creditors (organisations: electricity
      and gas of one supplier are one creditor) with a signal in the same month;
    - opeenvolgend [PLAN] [MONITOR]: the household had a signal in the months before a
      month of the match (window: a municipal setting, 3 in the plan, up to 6), by the
      signals' own dates: also two signals of one creditor inside the match;
    - enkelvoudig: otherwise. Meervoudig wins over opeenvolgend.
    Totals count the latest signal per creditor, so a repeated signal is not added twice.
    `earlier_months` are month indexes (month_index) of the household's other signals.
    A match whose every signal was withdrawn counts no creditor and no arrears.
    """
    if not match_signals:
        return MatchVerdict(
            "enkelvoudig",
            0,
            Decimal("0.00"),
            "Ingetrokken: de partners hebben elk signaal van deze match ingetrokken.",
            {"regel": "ingetrokken", "signalen": [], "aantal_signalen": 0, "schuldeisers": 0},
        )
    latest = latest_per_creditor(match_signals)
    total = sum((s.achterstand_bedrag for s in latest.values()), Decimal("0.00"))
    creditors_by_month: dict[int, set[uuid.UUID]] = {}
    for signal in match_signals:
        creditors_by_month.setdefault(month_index(signal.signaaldatum), set()).add(
            signal.creditor_id
        )
    busiest_month, busiest = max(
        creditors_by_month.items(), key=lambda item: (len(item[1]), -item[0])
    )
    earlier = preceding_months(creditors_by_month, earlier_months, consecutive_window_months)
    carried = carried_signals(match_signals)
    counted = {s.signal_id for s in carried}
    explanation: dict[str, Any] = {
        "signalen": [str(s.signal_id) for s in carried],
        "aantal_signalen": len(match_signals),
        "schuldeisers": len(latest),
        "telt_per_schuldeiser": {
            str(c): str(s.signal_id) for c, s in sorted(latest.items()) if s.signal_id in counted
        },
        "opeenvolgend_venster_maanden": consecutive_window_months,
    }
    if len(busiest) >= 2:
        return MatchVerdict(
            "meervoudig",
            len(latest),
            total,
            f"Meervoudig: {len(busiest)} verschillende schuldeisers in dezelfde maand "
            f"({_month_text(busiest_month)}).",
            explanation
            | {
                "regel": "meervoudig",
                "maand": _month_text(busiest_month),
                "bron": "Landelijke monitor vroegsignalering: meerdere schuldeisers in één maand",
            },
        )
    if earlier:
        return MatchVerdict(
            "opeenvolgend",
            len(latest),
            total,
            f"Opeenvolgend: dit adres had ook een signaal in de {consecutive_window_months} "
            f"maanden ervoor ({', '.join(_month_text(m) for m in earlier)}).",
            explanation
            | {
                "regel": "opeenvolgend",
                "eerdere_maanden": [_month_text(m) for m in earlier],
                "bron": "Beleidsplan vroegsignalering 2021 (3 maanden); landelijke monitor "
                "(tot 6 maanden)",
            },
        )
    return MatchVerdict(
        "enkelvoudig",
        len(latest),
        total,
        "Enkelvoudig: één schuldeiser, en geen eerder signaal voor dit adres in de "
        f"{consecutive_window_months} maanden ervoor.",
        explanation | {"regel": "enkelvoudig", "bron": "Landelijke monitor vroegsignalering"},
    )


def _month_text(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def remembered_months(months: Iterable[int], latest: int) -> list[int]:
    """The months of a household's history worth keeping: recent enough for any rule."""
    return sorted({m for m in months if m >= latest - MONTHS_KEPT})


@dataclass
class HouseholdStep:
    """What happened to one household's matches when new signals arrived."""

    matches: list[MatchState]  # created or changed, in the order they were first touched
    assignments: dict[uuid.UUID, uuid.UUID]  # signal id -> match id


def place_signals(
    household_key: str,
    recent_matches: Sequence[MatchState],
    new_signals: Sequence[SignalFact],
    rules: MunicipalityRules,
) -> HouseholdStep:
    """Put a household's new signals into the match whose window covers each one (the
    most recently opened, should two), or open a new match. `recent_matches` must hold
    every match of the household whose window can still cover these signals."""
    candidates = list(recent_matches)
    touched: dict[uuid.UUID, MatchState] = {}
    assignments: dict[uuid.UUID, uuid.UUID] = {}
    for signal in new_signals:
        covering = [m for m in candidates if joins_open_match(signal.ontvangen_op, m)]
        if covering:
            match = max(covering, key=lambda m: (m.geopend_op, str(m.id)))
        else:
            match = MatchState(
                id=match_id_for(household_key, signal.signal_id),
                geopend_op=signal.ontvangen_op,
                doorsturen_op=forwarding_time(signal.ontvangen_op, rules),
                signals=[],
            )
            candidates.append(match)
        match.signals.append(signal)
        touched[match.id] = match
        assignments[signal.signal_id] = match.id
    return HouseholdStep(list(touched.values()), assignments)


@dataclass
class HouseholdResult:
    """A household after its new signals: the matches they touched, each with its verdict
    after the last of them, where each signal went, and the months to remember."""

    matches: list[tuple[MatchState, MatchVerdict]]
    assignments: dict[uuid.UUID, uuid.UUID]
    months: list[int]


def match_household(
    household_key: str,
    recent_matches: Sequence[MatchState],
    months: Iterable[int],
    new_signals: Sequence[SignalFact],
    rules: MunicipalityRules,
) -> HouseholdResult:
    """Place a household's new signals one at a time, in the order they were published,
    and classify the match each joined against the months known at that moment. So the
    outcome is the same however the stream is cut into batches: a batch of n signals
    gives what n batches of one give (each signal also counts once in `version`)."""
    known = set(months)
    candidates = list(recent_matches)
    # a match's verdict is the one after its last signal: the months known at that moment
    months_then: dict[uuid.UUID, tuple[MatchState, frozenset[int]]] = {}
    assignments: dict[uuid.UUID, uuid.UUID] = {}
    for signal in new_signals:
        [match] = place_signals(household_key, candidates, [signal], rules).matches
        if all(candidate.id != match.id for candidate in candidates):
            candidates.append(match)
        known.add(month_index(signal.signaaldatum))
        known = set(remembered_months(known, max(known)))  # per signal, as a batch of one
        match.version += 1
        months_then[match.id] = (match, frozenset(known))
        assignments[signal.signal_id] = match.id
    return HouseholdResult(
        [
            (match, classify(match.signals, then, rules.opeenvolgend_maanden))
            for match, then in months_then.values()
        ],
        assignments,
        remembered_months(known, max(known)),
    )


def earliest_window_start(received: Iterable[dt.datetime]) -> dt.datetime:
    """Matches forwarded before this moment can cover none of these signals: only later
    ones need to be read (what keeps the cost of a signal independent of history)."""
    return min(received) - MATCH_WINDOW


def forwarded_at(match: MatchState, now: dt.datetime) -> dt.datetime:
    """When a match that is due counts as forwarded, which starts the four weeks [PLAN]
    'Fase 2'. Without bundling: when its first signal was received (the signal reached the
    municipality then; every replica gives the same time). After a bundling period: the
    moment it is actually forwarded, never earlier than the end of the period, so a late
    forwarding round does not shorten the term."""
    if match.doorsturen_op == match.geopend_op:
        return match.geopend_op
    return max(match.doorsturen_op, now)


def is_due(match: MatchState, now: dt.datetime) -> bool:
    """A match is forwarded once its bundling period has ended; without bundling at once
    (also when the sender's clock runs a little ahead of ours)."""
    return not match.forwarded and match.doorsturen_op <= max(now, match.geopend_op)
