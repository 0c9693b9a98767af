"""Resuming a delivery after a crash: exactly the committed chunks are skipped, so no
line, signal or event is lost and none is doubled; parallel chunks give the same result.

Each test gets an intake database (and key store) of its own, where no delivery worker
and no outbox relay of a running stack can take the delivery or drain the outbox: the
only worker is the one the test builds, and every staged event is still in the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql.dml import Update

from services.intake import handlers
from services.intake.auth import PartnerIdentity
from services.intake.deliveries import DeliveryWorker, store_delivery
from services.intake.models import messaging
from services.intake.settings import IntakeSettings
from services.registry import BY_NAME
from shared.crypto import Vault, make_vault
from shared.db import drop_database, ensure_database, make_engine, upgrade_to_head
from shared.events import SIGNAL_RECEIVED, utc_now
from shared.outbox import Outbox
from tests.conftest import Infra
from tests.support import fresh_households, signal_for
from vroeg.addresses import address_rows
from vroeg.demo import DemoHousehold
from vroeg.stack import KEYSTORE_MIGRATIONS

pytestmark = pytest.mark.integration

LINES = 450
CHUNK = 100  # chunks of lines 1-100, 101-200, 201-300, 301-400, 401-450
REFUSED = {150: "persoon.bsn", 420: "achterstandBedrag"}  # one before the crash, one after


@pytest.fixture
def own_intake(infra: Infra) -> Iterator[IntakeSettings]:
    """Intake settings pointing at a freshly migrated intake database and key store that
    nothing else uses; both are dropped afterwards."""
    prefix = f"{infra.database_prefix}_herv{secrets.token_hex(3)}"
    settings = IntakeSettings(database_prefix=prefix, delivery_chunk_size=CHUNK)
    targets = [
        (BY_NAME["intake"].migrations, settings.database_url),
        (KEYSTORE_MIGRATIONS, settings.keystore_url),
    ]
    try:
        for migrations, url in targets:
            asyncio.run(ensure_database(url))
            upgrade_to_head(migrations, url)
        yield settings
    finally:
        for _, url in targets:
            with contextlib.suppress(Exception):
                asyncio.run(drop_database(url))


class PowerCut(Exception):
    """The process died before the chunk's transaction committed."""


class SessionThatDiesBeforeCommit(AsyncSession):
    """Runs a chunk's statements (signals, outbox rows, line results) and dies at the
    last one, the delivery's progress; the transaction never commits."""

    async def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(statement, Update) and statement.table.name == "leveringen":
            written = await super().execute(text("SELECT count(*) FROM levering_regels"))
            raise PowerCut(written.scalar())
        return await super().execute(statement, *args, **kwargs)


class Intake:
    """The pieces the intake runtime builds (see services/intake/app.py), in process."""

    def __init__(self, settings: IntakeSettings) -> None:
        self.settings = settings
        self.engine: AsyncEngine = make_engine(settings.database_url, pool_size=5)
        self.keystore: AsyncEngine = make_engine(settings.keystore_url, pool_size=2)
        self.session_factory = async_sessionmaker(self.engine, expire_on_commit=False)
        self.outbox = Outbox(messaging)
        self.region: frozenset[str] = frozenset()

    async def close(self) -> None:
        await self.engine.dispose()
        await self.keystore.dispose()

    def vault(self) -> Vault:
        return make_vault(self.settings, self.keystore)

    def worker(
        self, session_factory: async_sessionmaker | None = None, **overrides: Any
    ) -> DeliveryWorker:
        """A replica of the delivery worker, with its own vault (as another process)."""
        return DeliveryWorker(
            self.settings.model_copy(update=overrides),
            session_factory or self.session_factory,
            self.vault(),
            self.outbox,
            self.region,
        )

    async def prepare(self, homes: list[DemoHousehold]) -> PartnerIdentity:
        """Municipalities, the households' addresses and a partner, as `vroeg` would."""
        async with self.session_factory() as session, session.begin():
            await handlers.register_municipalities(session)
            await handlers.import_addresses(session, address_rows(homes))
            partner, _secret = await handlers.add_partner(
                session,
                naam="Waterbedrijf Hervatting (test)",
                soort="Water",
                kvk_nummer=None,
                now=utc_now(),
            )
            self.region = await handlers.municipality_codes(session)
        return PartnerIdentity(id=partner.id, naam=partner.naam, soort=partner.soort)

    async def deliver(self, partner: PartnerIdentity, lines: list[dict]) -> uuid.UUID:
        async with self.session_factory() as session, session.begin():
            delivery = await store_delivery(
                session,
                self.vault(),
                partner,
                json.dumps(lines).encode(),
                "application/json",
                len(lines),
                utc_now(),
            )
        return delivery.id

    async def rows(self, sql: str, **params: object) -> list[Any]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(text(sql), params)).all())

    async def scalar(self, sql: str, **params: object) -> Any:
        async with self.engine.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar()


def delivery_lines(homes: list[DemoHousehold], prefix: str) -> list[dict]:
    """LINES signals for distinct households; the lines in REFUSED are wrong."""
    partner = {"soort": "Water"}
    lines = [signal_for(home, partner, f"{prefix}-{n:03d}") for n, home in enumerate(homes, 1)]
    lines[150 - 1]["persoon"]["bsn"] = "123456789"  # fails the elfproef
    lines[420 - 1]["achterstandBedrag"] = "-5"
    return lines


def record_chunks(worker: DeliveryWorker) -> tuple[list[list[int]], list[int]]:
    """Wrap the worker's chunk step: the line numbers of every chunk it processes, and the
    most chunks in flight at once (the wrapper runs inside the worker's semaphore)."""
    seen: list[list[int]] = []
    in_flight = [0, 0]  # now, most
    original = worker._process_chunk

    async def recording(
        delivery_id: uuid.UUID, partner: PartnerIdentity, chunk: list[tuple[int, Any]]
    ) -> None:
        seen.append([number for number, _ in chunk])
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        try:
            await original(delivery_id, partner, chunk)
        finally:
            in_flight[0] -= 1

    worker._process_chunk = recording  # type: ignore[method-assign]
    return seen, in_flight


async def outcome(intake: Intake, delivery_id: uuid.UUID, lines: list[dict]) -> dict[str, Any]:
    """Check nothing was lost or doubled, and summarise what the delivery came to."""
    references = [line["partnerSignaalId"] for line in lines]
    accepted = {ref for n, ref in enumerate(references, 1) if n not in REFUSED}

    results = await intake.rows(
        "SELECT regel, partner_signaal_id, signal_id, status, fouten FROM levering_regels "
        "WHERE levering_id = :id ORDER BY regel",
        id=delivery_id,
    )
    assert [r.regel for r in results] == list(range(1, LINES + 1)), "a line lost or doubled"
    assert [r.partner_signaal_id for r in results] == references
    for r in results:
        if r.regel in REFUSED:
            assert (r.status, r.signal_id) == ("geweigerd", None)
            assert [error["name"] for error in r.fouten] == [REFUSED[r.regel]]
        else:
            assert (r.status, r.fouten) == ("doorgestuurd", None), r

    signals = await intake.rows(
        "SELECT id, partner_signaal_id FROM signalen WHERE levering_id = :id", id=delivery_id
    )
    assert sorted(s.partner_signaal_id for s in signals) == sorted(accepted), "a signal lost"
    assert await intake.scalar("SELECT count(*) FROM signalen") == len(accepted), "doubled"
    by_reference = {s.partner_signaal_id: s.id for s in signals}
    assert {r.partner_signaal_id: r.signal_id for r in results if r.signal_id} == by_reference

    # No relay runs on this database: every event staged is still in the outbox.
    events = await intake.rows("SELECT topic, payload FROM outbox")
    assert {topic for topic, _ in events} == {SIGNAL_RECEIVED.name}
    event_signals = [uuid.UUID(json.loads(payload)["signal_id"]) for _, payload in events]
    assert sorted(event_signals) == sorted(by_reference.values()), "an event lost or doubled"

    delivery = (
        await intake.rows(
            "SELECT status, aantal, aantal_verwerkt, aantal_doorgestuurd, "
            "aantal_niet_doorgestuurd, aantal_geweigerd, inhoud IS NULL AS opgeruimd, "
            "lease_tot, afgerond_op IS NOT NULL AS afgerond FROM leveringen WHERE id = :id",
            id=delivery_id,
        )
    )[0]
    return {
        **delivery._asdict(),
        "regels": [(r.regel, r.status) for r in results],
        "signalen": len(signals),
        "events": len(events),
    }


EXPECTED = {
    "status": "verwerkt",
    "aantal": LINES,
    "aantal_verwerkt": LINES,
    "aantal_doorgestuurd": LINES - len(REFUSED),
    "aantal_niet_doorgestuurd": 0,
    "aantal_geweigerd": len(REFUSED),
    "opgeruimd": True,  # the sealed file is gone
    "lease_tot": None,
    "afgerond": True,
    "regels": [(n, "geweigerd" if n in REFUSED else "doorgestuurd") for n in range(1, LINES + 1)],
    "signalen": LINES - len(REFUSED),
    "events": LINES - len(REFUSED),
}


def test_a_delivery_resumed_after_a_crash_skips_exactly_the_committed_chunks(
    own_intake: IntakeSettings,
) -> None:
    homes = fresh_households(LINES, seed=81)
    assert asyncio.run(crash_and_resume(own_intake, delivery_lines(homes, "HERV"), homes)) == (
        EXPECTED
    )


async def crash_and_resume(
    settings: IntakeSettings, lines: list[dict], homes: list[DemoHousehold]
) -> dict[str, Any]:
    intake = Intake(settings)
    try:
        partner = await intake.prepare(homes)
        delivery_id = await intake.deliver(partner, lines)

        # The first replica claims the delivery; parallel chunks commit out of order (the
        # 4th, then the 2nd) while the 3rd dies before its commit. Then the process is gone
        # and, with it, its lease (of no length here, so no waiting is needed).
        first = intake.worker(delivery_lease_s=0)
        assert await first._claim() == delivery_id
        numbered = list(enumerate(lines, start=1))
        chunks = [numbered[start : start + CHUNK] for start in range(0, LINES, CHUNK)]
        await first._process_chunk(delivery_id, partner, chunks[3])
        await first._process_chunk(delivery_id, partner, chunks[1])
        dying = intake.worker(
            async_sessionmaker(
                intake.engine, expire_on_commit=False, class_=SessionThatDiesBeforeCommit
            ),
            delivery_lease_s=0,
        )
        with pytest.raises(PowerCut) as cut:
            await dying._process_chunk(delivery_id, partner, chunks[2])
        assert cut.value.args == (3 * CHUNK,)  # it had written its line results, uncommitted

        # A replica that lost its lease mid-chunk and finishes it after the other one did:
        # its lines are already there, so nothing is counted twice.
        await intake.worker(delivery_lease_s=0)._process_chunk(delivery_id, partner, chunks[1])

        committed = list(range(101, 201)) + list(range(301, 401))
        assert [
            r.regel
            for r in await intake.rows(
                "SELECT regel FROM levering_regels WHERE levering_id = :id ORDER BY regel",
                id=delivery_id,
            )
        ] == committed
        assert await intake.scalar("SELECT count(*) FROM outbox") == 2 * CHUNK - 1
        assert (
            await intake.scalar(
                "SELECT aantal_verwerkt FROM leveringen WHERE id = :id", id=delivery_id
            )
            == 2 * CHUNK
        )

        # Another replica takes over once the lease ran out and does only what is left.
        second = intake.worker()
        seen, _ = record_chunks(second)
        assert await second._claim() == delivery_id
        await second.process(delivery_id)
        assert sorted(seen) == [
            list(range(1, 101)),
            list(range(201, 301)),
            list(range(401, LINES + 1)),
        ]
        return await outcome(intake, delivery_id, lines)
    finally:
        await intake.close()


def test_three_chunks_at_once_from_scratch_give_the_same_result(
    own_intake: IntakeSettings,
) -> None:
    homes = fresh_households(LINES, seed=82)
    assert asyncio.run(in_parallel(own_intake, delivery_lines(homes, "PARA"), homes)) == EXPECTED


async def in_parallel(
    settings: IntakeSettings, lines: list[dict], homes: list[DemoHousehold]
) -> dict[str, Any]:
    intake = Intake(settings)
    try:
        partner = await intake.prepare(homes)
        delivery_id = await intake.deliver(partner, lines)
        worker = intake.worker(delivery_parallel_chunks=3)
        seen, in_flight = record_chunks(worker)
        await worker.process(delivery_id)
        assert sorted(seen) == [
            list(range(start, min(start + CHUNK, LINES + 1)))
            for start in range(1, LINES + 1, CHUNK)
        ]
        assert in_flight[1] == 3, "the chunks did not run three at once"
        return await outcome(intake, delivery_id, lines)
    finally:
        await intake.close()
