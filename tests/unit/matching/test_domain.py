import datetime as dt
import uuid
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from services.matching.domain import (
    MATCH_WINDOW,
    SignalFact,
    classify,
    joins_open_match,
    latest_per_creditor,
)

T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)
A, B, C = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def fact(creditor: uuid.UUID, day: dt.date, amount: str, received: dt.datetime = T0) -> SignalFact:
    return SignalFact(uuid.uuid4(), creditor, day, Decimal(amount), received)


def test_one_signal_is_single() -> None:
    verdict = classify([fact(A, dt.date(2026, 11, 2), "300.00")], [], 3)
    assert (verdict.soort, verdict.aantal_schuldeisers, verdict.totaal_achterstand) == (
        "enkelvoudig",
        1,
        Decimal("300.00"),
    )


def test_two_creditors_in_one_month_are_multiple() -> None:
    verdict = classify(
        [fact(A, dt.date(2026, 11, 2), "300.00"), fact(B, dt.date(2026, 11, 20), "250.50")], [], 3
    )
    assert verdict.soort == "meervoudig"
    assert verdict.aantal_schuldeisers == 2
    assert verdict.totaal_achterstand == Decimal("550.50")
    assert "2 verschillende schuldeisers" in verdict.regel


def test_two_creditors_in_different_months_are_not_multiple() -> None:
    verdict = classify(
        [fact(A, dt.date(2026, 10, 30), "300.00"), fact(B, dt.date(2026, 11, 2), "250.00")], [], 3
    )
    assert verdict.soort == "enkelvoudig"
    assert verdict.aantal_schuldeisers == 2


def test_same_creditor_twice_counts_once_with_its_latest_arrears() -> None:
    verdict = classify(
        [fact(A, dt.date(2026, 11, 2), "300.00"), fact(A, dt.date(2026, 11, 25), "420.00")], [], 3
    )
    assert verdict.soort == "enkelvoudig"
    assert verdict.aantal_schuldeisers == 1
    assert verdict.totaal_achterstand == Decimal("420.00")


def test_signal_in_previous_months_makes_consecutive() -> None:
    earlier = [fact(A, dt.date(2026, 9, 15), "200.00")]
    verdict = classify([fact(A, dt.date(2026, 11, 2), "300.00")], earlier, 3)
    assert verdict.soort == "opeenvolgend"


def test_signal_outside_the_window_is_not_consecutive() -> None:
    earlier = [fact(A, dt.date(2026, 7, 31), "200.00")]
    assert classify([fact(A, dt.date(2026, 11, 2), "300.00")], earlier, 3).soort == "enkelvoudig"
    assert classify([fact(A, dt.date(2026, 11, 2), "300.00")], earlier, 6).soort == "opeenvolgend"


def test_multiple_wins_over_consecutive() -> None:
    earlier = [fact(A, dt.date(2026, 10, 1), "200.00")]
    signals = [fact(A, dt.date(2026, 11, 2), "300.00"), fact(B, dt.date(2026, 11, 3), "300.00")]
    assert classify(signals, earlier, 3).soort == "meervoudig"


def test_match_window_is_four_weeks_from_forwarding() -> None:
    assert joins_open_match(T0 + MATCH_WINDOW - dt.timedelta(seconds=1), T0)
    assert not joins_open_match(T0 + MATCH_WINDOW, T0)


def test_a_signal_received_just_before_the_match_was_forwarded_joins_it() -> None:
    # Concurrent deliveries commit out of order: the earlier-received one may come second.
    assert joins_open_match(T0 - dt.timedelta(milliseconds=5), T0)
    assert not joins_open_match(T0 - MATCH_WINDOW, T0)


amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("99999.99"), places=2)
days = st.dates(min_value=dt.date(2026, 1, 1), max_value=dt.date(2026, 12, 31))
signal_lists = st.lists(
    st.builds(fact, st.sampled_from([A, B, C]), days, amounts.map(str)), min_size=1, max_size=8
)


@given(signal_lists, st.randoms())
def test_arrival_order_never_changes_the_verdict(signals: list[SignalFact], rnd) -> None:
    shuffled = list(signals)
    rnd.shuffle(shuffled)
    assert classify(signals, [], 3) == classify(shuffled, [], 3)


@given(signal_lists)
def test_renaming_creditors_never_changes_kind_or_total(signals: list[SignalFact]) -> None:
    renamed = {A: uuid.uuid4(), B: uuid.uuid4(), C: uuid.uuid4()}
    other = [
        SignalFact(
            s.signal_id,
            renamed[s.creditor_id],
            s.signaaldatum,
            s.achterstand_bedrag,
            s.ontvangen_op,
        )
        for s in signals
    ]
    original, after = classify(signals, [], 3), classify(other, [], 3)
    assert (original.soort, original.aantal_schuldeisers, original.totaal_achterstand) == (
        after.soort,
        after.aantal_schuldeisers,
        after.totaal_achterstand,
    )


@given(signal_lists)
def test_total_is_the_sum_of_each_creditors_latest_signal(signals: list[SignalFact]) -> None:
    latest = latest_per_creditor(signals)
    assert classify(signals, [], 3).totaal_achterstand == sum(
        s.achterstand_bedrag for s in latest.values()
    )
    assert set(latest) == {s.creditor_id for s in signals}
