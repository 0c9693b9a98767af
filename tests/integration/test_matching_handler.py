"""Matching's batch handler on a real PostgreSQL: upgrades keep the clock, bundling holds
matches until their period ends, a municipality's own window counts, a replayed signal
changes nothing, and each match explains itself.

Each test gets a matching database of its own (no consumer, no relay): the events the
handler stages stay in the outbox, where the test reads them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from services.matching.domain import MunicipalityRules
from services.matching.handlers import forward_due, on_signals_received
from services.matching.models import messaging
from services.matching.rules import set_rules
from services.matching.settings import MatchingSettings
from services.registry import BY_NAME
from shared.db import (
    drop_database,
    ensure_database,
    make_engine,
    make_session_factory,
    upgrade_to_head,
)
from shared.events import MatchCreated, SignalReceived, decode_event, utc_now
from shared.messaging import Received
from shared.outbox import Outbox
from tests.conftest import Infra

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)
WONEN, WATER = uuid.uuid4(), uuid.uuid4()


@pytest.fixture
def settings(infra: Infra) -> Iterator[MatchingSettings]:
    prefix = f"{infra.database_prefix}_match{secrets.token_hex(3)}"
    own = MatchingSettings(database_prefix=prefix)
    asyncio.run(ensure_database(own.database_url))
    upgrade_to_head(BY_NAME["matching"].migrations, own.database_url)
    try:
        yield own
    finally:
        asyncio.run(drop_database(own.database_url))


@pytest.fixture
async def sessions(settings: MatchingSettings) -> AsyncIterator[async_sessionmaker]:
    engine = make_engine(settings.database_url, pool_size=2)
    try:
        yield make_session_factory(engine)
    finally:
        await engine.dispose()


def signal(
    household: str,
    creditor: uuid.UUID,
    received: dt.datetime,
    amount: str = "300.00",
    gemeente: str = "GM0106",
) -> SignalReceived:
    return SignalReceived(
        gemeentecode=gemeente,
        household_key=household,
        signal_id=uuid.uuid4(),
        partner_id=creditor,
        partner_naam="Testpartner",
        creditor_id=creditor,
        partner_signaal_id=f"T-{uuid.uuid4().hex[:8]}",
        soort="Huur",
        signaaldatum=received.date(),
        achterstand_bedrag=Decimal(amount),
        ontvangen_op=received,
        subject_id=uuid.uuid4(),
        persoonsgegevens="v1.AAAA",
    )


def household() -> str:
    return secrets.token_hex(32)


async def handle(
    sessions: async_sessionmaker, settings: MatchingSettings, *events: SignalReceived
) -> None:
    async with sessions() as session, session.begin():
        await on_signals_received(
            session, [Received(e, {}) for e in events], outbox=Outbox(messaging), settings=settings
        )


async def staged(sessions: async_sessionmaker) -> list:
    async with sessions() as session:
        rows = await session.execute(text("SELECT payload FROM outbox ORDER BY id"))
        return [decode_event(bytes(row.payload)) for row in rows]


async def test_a_forwarded_match_that_gains_a_creditor_is_upgraded_and_keeps_its_clock(
    sessions: async_sessionmaker, settings: MatchingSettings
) -> None:
    home = household()
    rent = signal(home, WONEN, T0)
    await handle(sessions, settings, rent)
    water = signal(home, WATER, T0 + dt.timedelta(days=3), "120.50")
    await handle(sessions, settings, water)
    created, updated = await staged(sessions)
    assert (created.event_type, created.soort, created.version) == (
        "MatchCreated",
        "enkelvoudig",
        1,
    )
    assert (updated.event_type, updated.soort, updated.version) == ("MatchUpdated", "meervoudig", 2)
    assert updated.match_id == created.match_id
    assert updated.doorgestuurd_op == created.doorgestuurd_op == T0  # the clock is not reset
    assert (updated.aantal_schuldeisers, updated.totaal_achterstand) == (2, Decimal("420.50"))
    assert updated.uitleg["regel"] == "meervoudig"
    assert set(updated.uitleg["signalen"]) == {str(rent.signal_id), str(water.signal_id)}


async def test_a_signal_after_the_window_opens_a_new_match(
    sessions: async_sessionmaker, settings: MatchingSettings
) -> None:
    home = household()
    await handle(sessions, settings, signal(home, WONEN, T0))
    await handle(sessions, settings, signal(home, WONEN, T0 + dt.timedelta(days=29)))
    first, second = await staged(sessions)
    assert (first.event_type, second.event_type) == ("MatchCreated", "MatchCreated")
    assert first.match_id != second.match_id
    # 29 days later is December: the November signal makes the new match consecutive.
    assert (second.soort, second.uitleg["eerdere_maanden"]) == ("opeenvolgend", ["2026-11"])


async def test_bundling_holds_matches_until_the_period_ends(
    sessions: async_sessionmaker, settings: MatchingSettings
) -> None:
    async with sessions() as session, session.begin():
        await set_rules(
            session,
            "GM1731",
            MunicipalityRules(bundeling="dagen", bundeling_dagen=7),
            actor="test",
            now=T0,
        )
    home = household()
    start = utc_now()  # the bundling period must still be running for the handler
    await handle(sessions, settings, signal(home, WONEN, start, gemeente="GM1731"))
    await handle(
        sessions,
        settings,
        signal(home, WATER, start + dt.timedelta(hours=2), "80.00", gemeente="GM1731"),
    )
    assert await staged(sessions) == []  # held: nothing forwarded yet
    async with sessions() as session, session.begin():
        assert (
            await forward_due(session, outbox=Outbox(messaging), now=start + dt.timedelta(days=6))
            == 0
        )
    async with sessions() as session, session.begin():
        assert (
            await forward_due(session, outbox=Outbox(messaging), now=start + dt.timedelta(days=7))
            == 1
        )
    [created] = await staged(sessions)
    assert isinstance(created, MatchCreated)
    assert created.doorgestuurd_op == start + dt.timedelta(days=7)  # the clock starts now
    assert (created.soort, created.aantal_schuldeisers) == ("meervoudig", 2)
    async with sessions() as session, session.begin():
        assert (
            await forward_due(session, outbox=Outbox(messaging), now=start + dt.timedelta(days=9))
            == 0
        )


async def test_a_municipalitys_own_consecutive_window_counts(
    sessions: async_sessionmaker, settings: MatchingSettings
) -> None:
    async with sessions() as session, session.begin():
        await set_rules(
            session, "GM0114", MunicipalityRules(opeenvolgend_maanden=6), actor="test", now=T0
        )
    four_months_ago = T0 - dt.timedelta(days=122)
    in_emmen, in_assen = household(), household()
    await handle(
        sessions,
        settings,
        signal(in_emmen, WONEN, four_months_ago, gemeente="GM0114"),
        signal(in_assen, WONEN, four_months_ago, gemeente="GM0106"),
    )
    await handle(
        sessions,
        settings,
        signal(in_emmen, WONEN, T0, gemeente="GM0114"),
        signal(in_assen, WONEN, T0, gemeente="GM0106"),
    )
    latest = {e.gemeentecode: e for e in (await staged(sessions))[2:]}
    assert latest["GM0114"].soort == "opeenvolgend"  # six months back
    assert latest["GM0106"].soort == "enkelvoudig"  # the default three
    assert latest["GM0114"].uitleg["eerdere_maanden"] == [f"{four_months_ago:%Y-%m}"]


async def test_a_replayed_signal_changes_nothing(
    sessions: async_sessionmaker, settings: MatchingSettings
) -> None:
    home = household()
    original = signal(home, WONEN, T0)
    await handle(sessions, settings, original)
    # The same signal under a new event id (intake's relay published it twice, say), and
    # twice inside one batch.
    replay = original.model_copy(update={"event_id": uuid.uuid4()})
    await handle(sessions, settings, replay, replay)
    assert len(await staged(sessions)) == 1
    async with sessions() as session:
        counts = (
            await session.execute(
                text("SELECT (SELECT count(*) FROM signals), (SELECT count(*) FROM matches)")
            )
        ).one()
    assert tuple(counts) == (1, 1)


async def test_the_match_row_explains_itself_without_personal_data(
    sessions: async_sessionmaker, settings: MatchingSettings
) -> None:
    home = household()
    await handle(sessions, settings, signal(home, WONEN, T0), signal(home, WATER, T0))
    async with sessions() as session:
        row = (await session.execute(text("SELECT regel, uitleg FROM matches"))).one()
    assert row.regel.startswith("Meervoudig: 2 verschillende schuldeisers")
    explanation = row.uitleg if isinstance(row.uitleg, dict) else json.loads(row.uitleg)
    assert explanation["bron"] and explanation["maand"] == "2026-11"
    assert "Testpartner" not in json.dumps(explanation)


async def test_matches_never_cross_municipalities(
    sessions: async_sessionmaker, settings: MatchingSettings
) -> None:
    # The same address key under another municipality (a boundary change): a match and
    # history of its own there, nothing joined or counted from the other municipality.
    home = household()
    await handle(
        sessions, settings, signal(home, WONEN, T0 - dt.timedelta(days=40), gemeente="GM1680")
    )
    await handle(
        sessions, settings, signal(home, WONEN, T0 - dt.timedelta(days=5), gemeente="GM1680")
    )
    await handle(sessions, settings, signal(home, WATER, T0, gemeente="GM1730"))
    *_, in_tynaarlo = await staged(sessions)
    assert in_tynaarlo.gemeentecode == "GM1730"
    assert (in_tynaarlo.event_type, in_tynaarlo.soort) == ("MatchCreated", "enkelvoudig")
    assert len(in_tynaarlo.signalen) == 1
