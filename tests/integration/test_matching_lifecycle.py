"""Matching's handlers on a real PostgreSQL for a signal's lifecycle (issue 9): a withdrawn
signal leaves its match (kind and totals recomputed, case handling told), a withdrawal
that overtakes its signal still holds, signals delivered late are classified by their own
months, and thousands of signals at one address never make an event over the bound."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from services.matching.domain import MAX_EVENT_SIGNALS
from services.matching.handlers import forward_due, on_signals_received, on_signals_withdrawn
from services.matching.models import messaging
from services.matching.settings import MatchingSettings
from shared.events import MatchUpdated, SignalReceived, SignalWithdrawn
from shared.messaging import Received
from shared.outbox import Outbox
from tests.integration.test_matching_handler import (  # the fixtures and helpers
    T0,
    WATER,
    WONEN,
    handle,
    household,
    sessions,
    settings,
    signal,
    staged,
)
from tests.support import apoll

__all__ = ["sessions", "settings"]

EVENT_BOUND = 256 * 1024  # bytes: well under Kafka's default 1 MiB message limit
CREDITORS = [uuid.uuid4() for _ in range(5)]


def withdrawal(of: SignalReceived, at: dt.datetime) -> SignalWithdrawn:
    return SignalWithdrawn(
        gemeentecode=of.gemeentecode,
        household_key=of.household_key,
        signal_id=of.signal_id,
        partner_id=of.partner_id,
        partner_signaal_id=of.partner_signaal_id,
        ingetrokken_op=at,
    )


async def withdraw(
    sessions: async_sessionmaker, settings: MatchingSettings, *events: SignalWithdrawn
) -> None:
    async with sessions() as session, session.begin():
        await on_signals_withdrawn(
            session, [Received(e, {}) for e in events], outbox=Outbox(messaging), settings=settings
        )


async def payload_sizes(sessions: async_sessionmaker) -> list[int]:
    async with sessions() as session:
        return list(
            (await session.execute(text("SELECT octet_length(payload) FROM outbox"))).scalars()
        )


async def test_a_withdrawn_signal_leaves_its_match_and_case_handling_is_told(
    sessions: async_sessionmaker, settings: MatchingSettings
) -> None:
    home = household()
    rent = signal(home, WONEN, T0, "300.00")
    water = signal(home, WATER, T0 + dt.timedelta(days=2), "120.50")
    await handle(sessions, settings, rent)
    await handle(sessions, settings, water)
    await withdraw(sessions, settings, withdrawal(water, T0 + dt.timedelta(days=3)))
    created, upgraded, after = await staged(sessions)
    assert (upgraded.soort, upgraded.aantal_schuldeisers) == ("meervoudig", 2)
    assert isinstance(after, MatchUpdated)
    assert after.match_id == created.match_id
    assert after.version == upgraded.version + 1
    assert (after.soort, after.aantal_schuldeisers, after.totaal_achterstand) == (
        "enkelvoudig",
        1,
        Decimal("300.00"),
    )
    assert [s.signal_id for s in after.signalen] == [rent.signal_id]
    assert after.ingetrokken == (water.signal_id,)
    assert after.doorgestuurd_op == created.doorgestuurd_op  # the clock is not moved
    # withdrawing again changes nothing
    await withdraw(sessions, settings, withdrawal(water, T0 + dt.timedelta(days=4)))
    assert len(await staged(sessions)) == 3


async def test_a_withdrawal_that_overtakes_its_signal_still_holds(
    sessions: async_sessionmaker, settings: MatchingSettings
) -> None:
    home = household()
    rent = signal(home, WONEN, T0)
    water = signal(home, WATER, T0 + dt.timedelta(hours=1))
    await withdraw(sessions, settings, withdrawal(water, T0 + dt.timedelta(hours=2)))
    await handle(sessions, settings, rent, water)
    [created] = await staged(sessions)
    assert (created.soort, created.aantal_schuldeisers) == ("enkelvoudig", 1)
    assert [s.signal_id for s in created.signalen] == [rent.signal_id]


async def waits_on_a_lock(sessions: async_sessionmaker) -> bool:
    """Whether a connection to this test's own database waits for a lock right now."""
    async with sessions() as session:
        waiting = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


async def is_withdrawn(sessions: async_sessionmaker, of: SignalReceived) -> bool:
    async with sessions() as session:
        at = await session.scalar(
            text("SELECT ingetrokken_op FROM signals WHERE signal_id = :id"), {"id": of.signal_id}
        )
    return at is not None


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
async def test_a_withdrawal_while_its_signal_adds_a_new_household_is_not_lost(
    sessions: async_sessionmaker, settings: MatchingSettings, outcome: str
) -> None:
    home = household()  # new: the signal's batch adds its row
    rent = signal(home, WONEN, T0)
    batch = sessions()
    await batch.begin()
    withdrawing: asyncio.Task[None] | None = None
    try:
        # The signal's batch has added the household and matched the signal, uncommitted,
        # when the withdrawal comes in on another replica.
        await on_signals_received(
            batch, [Received(rent, {})], outbox=Outbox(messaging), settings=settings
        )
        withdrawing = asyncio.create_task(
            withdraw(sessions, settings, withdrawal(rent, T0 + dt.timedelta(hours=1)))
        )
        await apoll(
            lambda: withdrawing.done() or waits_on_a_lock(sessions),
            10,
            "the withdrawal to finish or to wait for the signal's batch",
        )
        await (batch.commit() if outcome == "commit" else batch.rollback())
        await asyncio.wait_for(withdrawing, 10)
    finally:
        if withdrawing is not None and not withdrawing.done():
            withdrawing.cancel()
        await batch.close()
    if outcome == "rollback":  # the batch is redone: the withdrawal it never saw still holds
        await handle(sessions, settings, rent)
        assert await staged(sessions) == []
        return
    assert await is_withdrawn(sessions, rent)
    created, after = await staged(sessions)
    assert after.match_id == created.match_id
    assert after.ingetrokken == (rent.signal_id,)
    assert (after.aantal_schuldeisers, after.totaal_achterstand) == (0, Decimal("0.00"))


async def test_a_held_match_whose_every_signal_was_withdrawn_is_never_forwarded(
    sessions: async_sessionmaker, settings: MatchingSettings
) -> None:
    from services.matching.domain import MunicipalityRules
    from services.matching.rules import set_rules
    from shared.events import utc_now

    async with sessions() as session, session.begin():
        await set_rules(
            session,
            "GM1680",
            MunicipalityRules(bundeling="dagen", bundeling_dagen=7),
            actor="test",
            now=T0,
        )
    start = utc_now()
    rent = signal(household(), WONEN, start, gemeente="GM1680")
    await handle(sessions, settings, rent)
    await withdraw(sessions, settings, withdrawal(rent, start + dt.timedelta(hours=1)))
    async with sessions() as session, session.begin():
        forwarded = await forward_due(
            session, outbox=Outbox(messaging), now=start + dt.timedelta(days=8)
        )
    assert forwarded == 0
    assert await staged(sessions) == []


async def test_one_creditor_in_two_months_delivered_late_in_one_go_is_consecutive(
    sessions: async_sessionmaker, settings: MatchingSettings
) -> None:
    home = household()
    received = T0 + dt.timedelta(days=10)  # both arrive in one late delivery
    october = signal(home, WONEN, received, "300.00").model_copy(
        update={"signaaldatum": dt.date(2026, 10, 1)}
    )
    november = signal(home, WONEN, received, "350.00").model_copy(
        update={"signaaldatum": dt.date(2026, 11, 1)}
    )
    await handle(sessions, settings, october, november)
    [created] = await staged(sessions)
    assert created.soort == "opeenvolgend"
    assert (created.aantal_schuldeisers, created.totaal_achterstand) == (1, Decimal("350.00"))


async def test_thousands_of_signals_at_one_address_never_make_an_event_over_the_bound(
    sessions: async_sessionmaker, settings: MatchingSettings
) -> None:
    home = household()
    total = 3000
    signals = [
        signal(
            home, CREDITORS[n % len(CREDITORS)], T0 + dt.timedelta(seconds=n), "10.00"
        ).model_copy(update={"partner_naam": "P" * 200, "partner_signaal_id": f"S{n:0>99}"})
        for n in range(total)
    ]
    for start in range(0, total, 1000):
        await handle(sessions, settings, *signals[start : start + 1000])
    sizes = await payload_sizes(sessions)
    assert sizes and max(sizes) < EVENT_BOUND, max(sizes)
    last = (await staged(sessions))[-1]
    # what a caseworker needs is all there: kind, totals, every creditor's counted signal
    assert (last.aantal_schuldeisers, last.totaal_achterstand) == (len(CREDITORS), Decimal("50.00"))
    assert last.aantal_signalen == total
    assert len(last.signalen) == MAX_EVENT_SIGNALS
    counted = set(last.uitleg["telt_per_schuldeiser"].values())
    assert len(counted) == len(CREDITORS)
    assert counted <= {str(s.signal_id) for s in last.signalen}
