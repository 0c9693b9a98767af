"""Personal data is sealed per person, at rest and in Kafka; destroying the person's key
makes every copy unreadable."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from services.intake.settings import IntakeSettings
from shared.crypto import KeyDestroyed, make_vault, subject_of
from shared.db import make_engine
from shared.events import SIGNAL_RECEIVED, utc_now
from tests.support import add_partner, apoll, bearer, fresh_households, intake_scalar, signal_for
from vroeg.stack import Stack

pytestmark = pytest.mark.integration

CONTEXT = "signaal.persoonsgegevens"


async def event_payload(bootstrap: str, partner_signaal_id: str) -> dict:
    consumer = AIOKafkaConsumer(
        SIGNAL_RECEIVED.name,
        bootstrap_servers=bootstrap,
        group_id=f"peek-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[dict] = []
    try:

        async def seen() -> bool:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                for record in records:
                    payload = json.loads(record.value)
                    if payload["partner_signaal_id"] == partner_signaal_id:
                        found.append(payload)
            return bool(found)

        await apoll(seen, 30, "the signal.received event")
        return found[0]
    finally:
        await consumer.stop()


def test_destroying_a_persons_key_makes_the_table_and_the_kafka_copy_unreadable(
    running_stack: Stack,
    infra,  # type: ignore[no-untyped-def]
) -> None:
    partner = add_partner("Energie Versleuteld (test)", "Energie")
    home = fresh_households(1, seed=61)[0]
    with httpx.Client(base_url=running_stack.url("intake")) as client:
        response = client.post(
            "/api/v1/signalen",
            json=signal_for(home, partner, "CRYPT-1"),
            headers=bearer(client, partner),
        )
    assert response.status_code == 201
    stored = intake_scalar(
        "SELECT persoonsgegevens FROM signalen WHERE partner_signaal_id = 'CRYPT-1'"
    )
    assert stored.startswith("v1.") and home.achternaam not in stored and home.bsn not in stored
    event = asyncio.run(event_payload(infra.kafka_bootstrap, "CRYPT-1"))
    assert home.bsn not in json.dumps(event) and home.postcode not in json.dumps(event)
    asyncio.run(shred(stored, event["persoonsgegevens"], home.bsn, home.huisnummer))


async def shred(stored: str, in_kafka: str, bsn: str, huisnummer: int) -> None:
    settings = IntakeSettings()
    engine = make_engine(settings.keystore_url, pool_size=1)
    vault = make_vault(settings, engine)
    try:
        opened = json.loads(await vault.open(in_kafka, CONTEXT))
        assert opened["persoon"]["bsn"] == bsn
        assert opened["adres"]["huisnummer"] == huisnummer
        assert await vault.destroy([subject_of(stored)], utc_now()) == 1
        fresh_vault = make_vault(settings, engine)  # another process: no cached key
        for sealed in (stored, in_kafka):
            with pytest.raises(KeyDestroyed):
                await fresh_vault.open(sealed, CONTEXT)
        # New data for the same person gets a new key; the old stays unreadable.
        resealed = await fresh_vault.seal(subject_of(stored), b"{}", CONTEXT)
        assert await fresh_vault.open(resealed, CONTEXT) == b"{}"
        with pytest.raises(KeyDestroyed):
            await make_vault(settings, engine).open(stored, CONTEXT)
    finally:
        await engine.dispose()
