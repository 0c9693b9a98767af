"""Personal data is sealed per person, at rest and in Kafka; destroying the person's key
makes every copy unreadable, in every process within a second, and for good, while new
data for the person is sealed under a new key."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.intake.settings import IntakeSettings
from shared.crypto import KeyDestroyed, Vault, key_id_of, make_vault, subject_of
from shared.db import make_engine
from shared.events import SIGNAL_RECEIVED, utc_now
from tests.support import (
    add_partner,
    apoll,
    bearer,
    fresh_households,
    intake_scalar,
    poll,
    signal_for,
)
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
        # New data for the person gets a new key; what was sealed before stays unreadable.
        resealed = await fresh_vault.seal(subject_of(stored), b"{}", CONTEXT)
        assert key_id_of(resealed) != key_id_of(stored)
        assert await vault.open(resealed, CONTEXT) == b"{}"
        for sealed in (stored, in_kafka):
            with pytest.raises(KeyDestroyed):
                await make_vault(settings, engine).open(sealed, CONTEXT)
        await vault.close()
        await fresh_vault.close()
    finally:
        await engine.dispose()


def test_a_signal_after_the_persons_key_was_destroyed_gets_a_new_key(
    running_stack: Stack,
) -> None:
    partner = add_partner("Energie Vernietigd (test)", "Energie")
    gone, other = fresh_households(2, seed=62)

    def without_bsn(body: dict) -> dict:  # demo BSNs repeat across seeds; the address does not
        body["persoon"].pop("bsn", None)
        return body

    def stored(partner_signaal_id: str) -> str:
        return str(
            intake_scalar(
                "SELECT persoonsgegevens FROM signalen "
                f"WHERE partner_signaal_id = '{partner_signaal_id}'"
            )
        )

    with httpx.Client(base_url=running_stack.url("intake"), timeout=30) as client:
        headers = bearer(client, partner)
        first = client.post(
            "/api/v1/signalen",
            json=without_bsn(signal_for(gone, partner, "GONE-1")),
            headers=headers,
        )
        assert first.status_code == 201
        asyncio.run(destroy_subject(subject_of(stored("GONE-1"))))
        single = client.post(
            "/api/v1/signalen",
            json=without_bsn(signal_for(gone, partner, "GONE-2")),
            headers=headers,
        )
        delivery = client.post(
            "/api/v1/leveringen",
            json=[
                without_bsn(signal_for(gone, partner, "GONE-3")),
                without_bsn(signal_for(other, partner, "GONE-4")),
            ],
            headers=headers,
        )
        assert delivery.status_code == 202, delivery.text

        def processed() -> dict | None:
            body = client.get(delivery.headers["Location"], headers=headers).json()
            return body if body["status"] == "verwerkt" else None

        lines = {line["regel"]: line for line in poll(processed, 60, "the delivery")["signalen"]}
    # Every later signal for the person is answered, under the person's new key.
    assert single.status_code == 201, single.text
    assert lines[1]["status"] == "doorgestuurd", lines[1]
    assert lines[2]["status"] == "doorgestuurd", lines[2]
    before, after = stored("GONE-1"), stored("GONE-2")
    assert subject_of(after) == subject_of(before)
    assert key_id_of(after) != key_id_of(before)
    assert key_id_of(stored("GONE-3")) == key_id_of(after)
    asyncio.run(opens(before, after))


async def opens(destroyed: str, current: str) -> None:
    """`destroyed` stays unreadable; `current` (the person's new key) opens."""
    settings = IntakeSettings()
    engine = make_engine(settings.keystore_url, pool_size=1)
    vault = make_vault(settings, engine)
    try:
        with pytest.raises(KeyDestroyed):
            await vault.open(destroyed, CONTEXT)
        assert json.loads(await vault.open(current, CONTEXT))["adres"]
    finally:
        await vault.close()
        await engine.dispose()


async def destroy_subject(subject: uuid.UUID) -> None:
    settings = IntakeSettings()
    engine = make_engine(settings.keystore_url, pool_size=1)
    vault = make_vault(settings, engine)
    try:
        assert await vault.destroy([subject], utc_now()) == 1
    finally:
        await vault.close()
        await engine.dispose()


# Two "processes": two engines and two vaults on the one key store.


@pytest.fixture
async def two_vaults(infra) -> AsyncIterator[tuple[Vault, Vault, AsyncEngine]]:  # type: ignore[no-untyped-def]
    settings = IntakeSettings()
    engines = [make_engine(settings.keystore_url, pool_size=2) for _ in range(2)]
    vaults = [make_vault(settings, engine) for engine in engines]
    try:
        yield vaults[0], vaults[1], engines[0]
    finally:
        for vault in vaults:
            await vault.close()
        for engine in engines:
            await engine.dispose()


async def refused_within(deadline_s: float, use: Callable[[], Awaitable[object]]) -> float:
    """Poll until `use` raises KeyDestroyed; the seconds it took (fails past the deadline)."""
    started = time.monotonic()
    while True:
        try:
            await use()
        except KeyDestroyed:
            return time.monotonic() - started
        if time.monotonic() - started > deadline_s:
            raise AssertionError(f"a destroyed key still worked after {deadline_s} s")
        await asyncio.sleep(0.01)


async def cached_in(vault: Vault, sealed: str) -> None:
    """Open once the listener is up, so that the key is cached in `vault`."""

    async def listening() -> bool:
        await vault.open(sealed, CONTEXT)  # starts the listener
        return vault.listening

    await apoll(listening, 10, "the key-destruction listener")
    assert await vault.open(sealed, CONTEXT) == b"geheim"


async def test_a_key_destroyed_in_one_process_is_refused_by_another_within_a_second(
    two_vaults: tuple[Vault, Vault, AsyncEngine],
) -> None:
    here, there, _ = two_vaults
    subject = uuid.uuid4()
    sealed = await here.seal(subject, b"geheim", CONTEXT)
    await cached_in(there, sealed)
    assert await here.destroy([subject], utc_now()) == 1
    assert await refused_within(1.0, lambda: there.open(sealed, CONTEXT)) <= 1.0
    # New data for the person, sealed by the other process: a new key, the old one gone.
    resealed = await there.seal(subject, b"nieuw", CONTEXT)
    assert key_id_of(resealed) != key_id_of(sealed)
    assert await here.open(resealed, CONTEXT) == b"nieuw"
    for vault in (here, there):
        with pytest.raises(KeyDestroyed):
            await vault.open(sealed, CONTEXT)


async def test_a_missed_notification_never_leaves_a_destroyed_key_usable(
    two_vaults: tuple[Vault, Vault, AsyncEngine],
) -> None:
    here, there, engine = two_vaults
    subject = uuid.uuid4()
    sealed = await here.seal(subject, b"geheim", CONTEXT)
    await cached_in(there, sealed)
    async with engine.begin() as conn:
        # The other process's listener connection breaks, and the key is destroyed behind
        # its back with no notification at all: the cache must not be trusted any more.
        await conn.execute(
            text("SELECT pg_terminate_backend(:pid)"), {"pid": there.listener_backend_pid}
        )
        await conn.execute(
            text(
                "UPDATE person_keys SET wrapped_key = NULL, destroyed_at = now() "
                "WHERE subject_id = :s"
            ),
            {"s": subject},
        )
    assert await refused_within(1.0, lambda: there.open(sealed, CONTEXT)) <= 1.0


async def test_a_stalled_listener_never_leaves_a_destroyed_key_usable(
    two_vaults: tuple[Vault, Vault, AsyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    here, there, engine = two_vaults
    subject = uuid.uuid4()
    sealed = await here.seal(subject, b"geheim", CONTEXT)
    await cached_in(there, sealed)
    stalled = asyncio.Event()

    async def hang(_conn: object) -> None:  # the connection stays open, the probe never ends
        stalled.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(there, "_prove_healthy", hang)
    await asyncio.wait_for(stalled.wait(), 5)
    assert there.listener_backend_pid is not None  # no reconnect: the cache is never cleared
    async with engine.begin() as conn:  # destroyed behind its back, with no notification
        await conn.execute(
            text(
                "UPDATE person_keys SET wrapped_key = NULL, destroyed_at = now() "
                "WHERE subject_id = :s"
            ),
            {"s": subject},
        )
    assert await refused_within(1.0, lambda: there.open(sealed, CONTEXT)) <= 1.0


async def destructions(engine: AsyncEngine, subject: uuid.UUID) -> list[tuple[bytes, object]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT key_id, destroyed_at FROM person_key_destructions "
                "WHERE subject_id = :s ORDER BY destroyed_at"
            ),
            {"s": subject},
        )
        return [(bytes(row.key_id), row.destroyed_at) for row in rows]


async def test_new_data_for_a_destroyed_person_gets_a_new_key_and_every_destruction_stays_recorded(
    two_vaults: tuple[Vault, Vault, AsyncEngine],
) -> None:
    here, there, engine = two_vaults
    subject = uuid.uuid4()
    first = await here.seal(subject, b"geheim", CONTEXT)
    await cached_in(there, first)  # `there` holds the first key in its cache
    first_destroyed_at = utc_now()
    assert await here.destroy([subject], first_destroyed_at) == 1
    await refused_within(1.0, lambda: there.open(first, CONTEXT))
    # New data, in a batch with someone else: sealed under a new key for the person.
    other = uuid.uuid4()
    _, second = await there.seal_many([(other, b"ander"), (subject, b"nieuw")], CONTEXT)
    assert subject_of(second) == subject and key_id_of(second) != key_id_of(first)
    for vault in (here, there):
        assert await vault.open(second, CONTEXT) == b"nieuw"
        with pytest.raises(KeyDestroyed):  # the first key stays destroyed everywhere
            await vault.open(first, CONTEXT)
    assert await destructions(engine, subject) == [(key_id_of(first), first_destroyed_at)]
    # Destroying again destroys the new key too, with a record of its own.
    second_destroyed_at = utc_now()
    assert await there.destroy([subject], second_destroyed_at) == 1
    assert await there.destroy([subject], utc_now()) == 0  # nothing live is left
    await refused_within(1.0, lambda: here.open(second, CONTEXT))  # `here` cached it
    for vault in (here, there):
        for sealed in (first, second):
            with pytest.raises(KeyDestroyed):
                await vault.open(sealed, CONTEXT)
    assert await destructions(engine, subject) == [
        (key_id_of(first), first_destroyed_at),
        (key_id_of(second), second_destroyed_at),
    ]


async def test_a_vault_that_cached_the_old_key_seals_and_opens_under_the_new_one(
    two_vaults: tuple[Vault, Vault, AsyncEngine],
) -> None:
    here, _, engine = two_vaults
    settings = IntakeSettings().model_copy(update={"key_cache_listener_stale_s": 60.0})
    # A process whose cache is trusted for a long while, and which misses the destruction.
    late_engine = make_engine(settings.keystore_url, pool_size=1)
    late = make_vault(settings, late_engine)

    async def rekeyed_behind_its_back() -> tuple[uuid.UUID, str, str]:
        subject = uuid.uuid4()
        first = await here.seal(subject, b"geheim", CONTEXT)
        await cached_in(late, first)
        async with engine.begin() as conn:  # destroyed with no notification reaching `late`
            await conn.execute(
                text(
                    "UPDATE person_keys SET wrapped_key = NULL, destroyed_at = now() "
                    "WHERE subject_id = :s"
                ),
                {"s": subject},
            )
        second = await here.seal(subject, b"nieuw", CONTEXT)  # the person's new key
        assert key_id_of(second) != key_id_of(first)
        assert late.listening  # the old key is still in `late`'s cache, and trusted
        return subject, first, second

    try:
        # New data opens under the new key, though the old one is cached.
        _, first, second = await rekeyed_behind_its_back()
        assert await late.open(second, CONTEXT) == b"nieuw"
        with pytest.raises(KeyDestroyed):
            await late.open(first, CONTEXT)
        # Sealing never takes the cached (destroyed) key: new data gets the new one.
        subject, first, second = await rekeyed_behind_its_back()
        resealed = await late.seal(subject, b"later", CONTEXT)
        assert key_id_of(resealed) == key_id_of(second)
        assert await here.open(resealed, CONTEXT) == b"later"
    finally:
        await late.close()
        await late_engine.dispose()
