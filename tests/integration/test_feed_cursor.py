"""The partner feed's cursor with two intake replicas writing at once, on the real
PostgreSQL: a partner paging with `vanaf` never skips an item, however the writers'
transactions interleave."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.intake import handlers
from services.intake.auth import PartnerIdentity
from services.intake.models import Municipality, Partner, Signal
from services.intake.settings import IntakeSettings
from shared.db import make_engine, make_session_factory
from shared.events import FeedbackSent
from tests.conftest import Infra
from tests.support import apoll

pytestmark = pytest.mark.integration

GEMEENTE = "GM0363"


@pytest.fixture
async def replicas(infra: Infra) -> AsyncIterator[tuple[async_sessionmaker, async_sessionmaker]]:
    """Two intake replicas: each its own engine (its own connections) on intake's database."""
    url = IntakeSettings().database_url
    engines = [make_engine(url), make_engine(url)]
    try:
        yield make_session_factory(engines[0]), make_session_factory(engines[1])
    finally:
        for engine in engines:
            await engine.dispose()


async def new_partner_with_signals(
    session_factory: async_sessionmaker, count: int
) -> tuple[PartnerIdentity, list[uuid.UUID]]:
    now = dt.datetime.now(dt.UTC)
    partner = Partner(
        id=uuid.uuid4(),
        client_id=f"feed-{uuid.uuid4().hex[:12]}",
        secret_hash="x",
        naam="Woningcorporatie Test",
        soort="Huur",
        soorten=["Huur"],
        afspraak="convenant",
        afspraak_sinds=now.date(),
        actief=True,
        aangemaakt_op=now,
    )
    signals = [
        Signal(
            id=uuid.uuid4(),
            partner_id=partner.id,
            partner_signaal_id=f"S-{n}",
            gemeentecode=GEMEENTE,
            household_key="0" * 64,
            soort="huur",
            signaaldatum=now.date(),
            achterstand_bedrag=Decimal("100.00"),
            crisissignaal=False,
            warme_overdracht=False,
            subject_id=uuid.uuid4(),
            persoonsgegevens="sealed",
            status="doorgestuurd",
            ontvangen_op=now,
        )
        for n in range(count)
    ]
    async with session_factory() as session, session.begin():
        await session.execute(
            pg_insert(Municipality)
            .values(code=GEMEENTE, naam="Amsterdam")
            .on_conflict_do_nothing(index_elements=["code"])
        )
        session.add(partner)
        await session.flush()
        session.add_all(signals)
    identity = PartnerIdentity(id=partner.id, naam=partner.naam, soort=partner.soort)
    return identity, [signal.id for signal in signals]


def feedback_for(partner: PartnerIdentity, signal_id: uuid.UUID, number: int) -> FeedbackSent:
    return FeedbackSent(
        gemeentecode=GEMEENTE,
        household_key="0" * 64,
        signal_id=signal_id,
        partner_id=partner.id,
        partner_signaal_id=f"S-{number}",
        status="in-behandeling",
        toelichting="Het signaal is in behandeling.",
    )


async def page_all(
    session_factory: async_sessionmaker, partner: PartnerIdentity, after: int
) -> tuple[list[uuid.UUID], int]:
    """What a partner reads paging from `after` to the end (pages of one), and its cursor."""
    seen: list[uuid.UUID] = []
    while True:
        async with session_factory() as session:
            page = await handlers.feedback_page(session, partner, after, 1)
        if not page:
            return seen, after
        seen.extend(item.event_id for item in page)
        after = page[-1].id


async def waits_on_a_lock(session_factory: async_sessionmaker, pid: int) -> bool:
    async with session_factory() as session:
        state = await session.scalar(
            text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
        )
    return state == "Lock"


async def backend_pid(session: AsyncSession) -> int:
    return int(await session.scalar(text("SELECT pg_backend_pid()")) or 0)


async def test_a_later_id_that_commits_first_never_makes_a_partner_skip_the_earlier(
    replicas: tuple[async_sessionmaker, async_sessionmaker],
) -> None:
    one, two = replicas
    partner, (first_signal, second_signal) = await new_partner_with_signals(one, 2)
    first = feedback_for(partner, first_signal, 0)
    second = feedback_for(partner, second_signal, 1)

    # Replica one takes the next feed id and has not committed yet.
    earlier = one()
    await earlier.begin()
    await handlers.on_feedback_sent(earlier, first)

    # Replica two writes the next item and commits, or waits (to commit after replica one).
    later = two()
    await later.begin()
    later_pid = await backend_pid(later)
    written = asyncio.Event()

    async def write_later() -> None:
        await handlers.on_feedback_sent(later, second)
        written.set()
        await later.commit()

    writer = asyncio.create_task(write_later())
    try:
        await apoll(
            lambda: (written.is_set() and writer.done()) or waits_on_a_lock(two, later_pid),
            10,
            "replica two to commit or to wait for replica one",
        )
        # The partner reads now: what it sees must not carry its cursor past replica one's row.
        seen_before, cursor = await page_all(one, partner, 0)
        await earlier.commit()
        await asyncio.wait_for(writer, 10)
    finally:
        await earlier.close()
        await later.close()
    seen_after, _ = await page_all(one, partner, cursor)
    assert sorted(map(str, seen_before + seen_after)) == sorted(
        [str(first.event_id), str(second.event_id)]
    )
