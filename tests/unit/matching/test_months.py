"""A case's kind follows from its signals' own months (signaaldatum), not from when they
arrived (issue 9, item 15): late deliveries make the same cases as timely ones."""

import dataclasses
import datetime as dt
import random
import uuid
from collections.abc import Iterable
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from services.matching.domain import (
    MAX_EVENT_SIGNALS,
    MatchState,
    MunicipalityRules,
    SignalFact,
    carried_signals,
    classify,
    latest_per_creditor,
    match_household,
    month_index,
)

T0 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
A, B, C = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def fact(creditor: uuid.UUID, day: dt.date, amount: str, received: dt.datetime = T0) -> SignalFact:
    return SignalFact(uuid.uuid4(), creditor, day, Decimal(amount), received)


def kinds(signals: list[SignalFact], rules: MunicipalityRules) -> list[str]:
    result = match_household("h", [], [], signals, rules)
    return [verdict.soort for _, verdict in result.matches]


def test_one_creditor_in_two_months_delivered_late_in_one_go_is_consecutive() -> None:
    october = fact(A, dt.date(2026, 10, 5), "300.00")
    november = fact(A, dt.date(2026, 11, 5), "350.00")  # same delivery, same moment
    result = match_household("h", [], [], [october, november], MunicipalityRules())
    [(match, verdict)] = result.matches
    assert len(match.signals) == 2
    assert verdict.soort == "opeenvolgend"
    assert verdict.uitleg["eerdere_maanden"] == ["2026-10"]
    # the totals count the latest signal of the creditor, as before
    assert (verdict.aantal_schuldeisers, verdict.totaal_achterstand) == (1, Decimal("350.00"))


def test_one_creditor_in_two_months_delivered_each_month_is_consecutive_too() -> None:
    october = fact(A, dt.date(2026, 10, 5), "300.00", T0 - dt.timedelta(days=45))
    november = fact(A, dt.date(2026, 11, 5), "350.00", T0)
    assert kinds([october, november], MunicipalityRules())[-1] == "opeenvolgend"


def test_months_outside_the_window_do_not_make_consecutive() -> None:
    july = fact(A, dt.date(2026, 7, 5), "300.00")
    november = fact(A, dt.date(2026, 11, 5), "350.00")
    assert kinds([july, november], MunicipalityRules(opeenvolgend_maanden=3)) == ["enkelvoudig"]
    assert kinds([july, november], MunicipalityRules(opeenvolgend_maanden=4)) == ["opeenvolgend"]


def test_two_creditors_in_one_month_delivered_late_are_multiple() -> None:
    signals = [fact(A, dt.date(2026, 9, 5), "300.00"), fact(B, dt.date(2026, 9, 28), "80.00")]
    result = match_household("h", [], [], signals, MunicipalityRules())
    [(_, verdict)] = result.matches
    assert verdict.soort == "meervoudig"
    assert (verdict.aantal_schuldeisers, verdict.totaal_achterstand) == (2, Decimal("380.00"))


def test_a_match_without_signals_counts_nothing() -> None:
    verdict = classify([], [month_index(dt.date(2026, 10, 1))], 3)
    assert (verdict.aantal_schuldeisers, verdict.totaal_achterstand) == (0, Decimal("0.00"))
    assert verdict.uitleg["regel"] == "ingetrokken"


def test_a_match_event_carries_a_bounded_number_of_signals_and_all_that_count() -> None:
    many = [fact(A, dt.date(2026, 11, 1), "10.00") for _ in range(3000)]
    others = [fact(c, dt.date(2026, 10, 1), "5.00") for c in (B, C)]
    carried = carried_signals(many + others)
    assert len(carried) == MAX_EVENT_SIGNALS
    assert {s.signal_id for s in latest_per_creditor(many + others).values()} <= {
        s.signal_id for s in carried
    }
    verdict = classify(many + others, [], 3)
    assert len(verdict.uitleg["signalen"]) == MAX_EVENT_SIGNALS
    assert verdict.uitleg["aantal_signalen"] == 3002


# --- properties: the late-delivery cases --------------------------------------------------

signals = st.lists(
    st.builds(
        lambda creditor, day, amount: (creditor, day, amount),
        st.sampled_from([A, B, C]),
        st.dates(dt.date(2026, 5, 1), dt.date(2026, 11, 19)),
        st.decimals(Decimal("1.00"), Decimal("5000.00"), places=2),
    ),
    min_size=1,
    max_size=10,
)


# one signal per creditor and day: which of a creditor's signals counts follows from the
# dates alone, not from when each delivery came in
distinct = st.lists(
    st.tuples(
        st.sampled_from([A, B, C]),
        st.dates(dt.date(2026, 5, 1), dt.date(2026, 11, 19)),
        st.decimals(Decimal("1.00"), Decimal("5000.00"), places=2),
    ),
    min_size=1,
    max_size=10,
    unique_by=lambda s: (s[0], s[1]),
)
# the months of the household's earlier signals (an earlier, closed match)
history = st.sets(st.dates(dt.date(2026, 1, 1), dt.date(2026, 11, 19)).map(month_index), max_size=4)


def expected_kind(facts: list[SignalFact], window: int, earlier: Iterable[int] = ()) -> str:
    """The rule written out plainly, from the signals' months (and the household's earlier
    months) only."""
    by_month: dict[int, set[uuid.UUID]] = {}
    for f in facts:
        by_month.setdefault(month_index(f.signaaldatum), set()).add(f.creditor_id)
    if any(len(creditors) >= 2 for creditors in by_month.values()):
        return "meervoudig"
    every = set(by_month) | set(earlier)
    if any(0 < later - before <= window for later in by_month for before in every):
        return "opeenvolgend"
    return "enkelvoudig"


@given(signals, st.integers(0, 27), st.sampled_from([1, 3, 6]))
def test_a_late_delivery_in_one_go_is_classified_by_the_signals_months(
    drawn: list[tuple[uuid.UUID, dt.date, Decimal]], late_days: int, window: int
) -> None:
    # Every signal of the household arrives in one delivery, some days after the last
    # signal date: one match, whose kind the months alone decide.
    received = T0 + dt.timedelta(days=late_days)
    facts = [SignalFact(uuid.uuid4(), c, d, a, received) for c, d, a in drawn]
    result = match_household("h", [], [], facts, MunicipalityRules(opeenvolgend_maanden=window))
    [(_, verdict)] = result.matches
    assert verdict.soort == expected_kind(facts, window)
    latest = latest_per_creditor(facts)
    assert verdict.aantal_schuldeisers == len(latest)
    assert verdict.totaal_achterstand == sum(s.achterstand_bedrag for s in latest.values())


@given(
    distinct,
    history,
    st.lists(st.integers(1, 27), min_size=1, max_size=4),
    st.sampled_from([1, 3, 6]),
    st.randoms(),
)
def test_how_late_in_how_many_deliveries_and_in_what_order_signals_come_never_changes_the_case(
    drawn: list[tuple[uuid.UUID, dt.date, Decimal]],
    earlier: set[int],
    late_days: list[int],
    window: int,
    rnd: random.Random,
) -> None:
    # A household with a history: an earlier match, closed, and the months of its signals.
    closed = MatchState(
        uuid.uuid4(), T0 - dt.timedelta(days=90), T0 - dt.timedelta(days=90), [], 1, True
    )
    rules = MunicipalityRules(opeenvolgend_maanden=window)
    on_time = [SignalFact(uuid.uuid4(), c, d, a, T0) for c, d, a in drawn]
    [(_, first)] = match_household("h", [closed], earlier, on_time, rules).matches
    # The same signals in separate deliveries, each some days late, in any order: they
    # make one match (within four weeks of each other), handled delivery by delivery.
    shuffled = list(on_time)
    rnd.shuffle(shuffled)
    deliveries: list[list[SignalFact]] = [[] for _ in late_days]
    for signal in shuffled:
        deliveries[rnd.randrange(len(late_days))].append(signal)
    recent, months = [closed], list(earlier)
    match_ids: set[uuid.UUID] = set()
    last = first
    for days, delivery in zip(late_days, deliveries, strict=True):
        if not delivery:
            continue
        received = T0 + dt.timedelta(days=days)
        late = [dataclasses.replace(s, ontvangen_op=received) for s in delivery]
        result = match_household("h", recent, months, late, rules)
        [(match, last)] = result.matches
        match_ids |= set(result.assignments.values())
        recent = [m for m in recent if m.id != match.id] + [match]
        months = result.months
    assert len(match_ids) == 1
    assert first.soort == last.soort == expected_kind(on_time, window, earlier)
    assert (first.aantal_schuldeisers, first.totaal_achterstand) == (
        last.aantal_schuldeisers,
        last.totaal_achterstand,
    )
