"""The outbox relay across replicas, on the real broker and PostgreSQL: two relays on one
outbox keep every key's events in staging order, a relay that dies mid-round loses its
lock with its connection and the other takes over without losing or reordering anything,
a row that can never be published goes to the dead-letter topic instead of stopping
the line, a topic missing from the broker's metadata only delays its rows, and a slow
broker does not get a round killed by the database's timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import MessageSizeTooLargeError, UnknownTopicOrPartitionError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from shared.db import (
    drop_database,
    ensure_database,
    make_engine,
    make_session_factory,
    new_metadata,
)
from shared.events import DEAD_LETTER, Topic
from shared.messaging import make_producer
from shared.outbox import Outbox, add_messaging_tables
from shared.settings import ServiceSettings
from tests.conftest import Infra
from tests.support import apoll
from vroeg.status import end_offsets

pytestmark = pytest.mark.integration

KEYS = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
PARTITIONS = 3


@dataclass
class Setup:
    engine: AsyncEngine
    session_factory: async_sessionmaker
    outbox: Outbox
    topic: Topic
    settings: ServiceSettings
    infra: Infra


@pytest.fixture
async def setup(infra: Infra) -> AsyncIterator[Setup]:
    """A database of its own (the relay lock is per database) and a topic of its own."""
    settings = ServiceSettings()
    url = (
        make_url(settings.postgres_url)
        .set(database=f"{settings.database_prefix}_relay{uuid.uuid4().hex[:8]}")
        .render_as_string(hide_password=False)
    )
    await ensure_database(url)
    metadata = new_metadata()
    tables = add_messaging_tables(metadata)
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    topic = Topic(f"test.{uuid.uuid4().hex[:10]}", (), "test")
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic.name, PARTITIONS, 1)])
    await admin.close()
    try:
        yield Setup(engine, make_session_factory(engine), Outbox(tables), topic, settings, infra)
    finally:
        await engine.dispose()
        await drop_database(url)


async def stage(setup: Setup, count_per_key: int) -> list[tuple[str, int]]:
    """Rows of a few keys, interleaved, committed before any relay starts."""
    staged = [(key, n) for n in range(count_per_key) for key in KEYS]
    async with setup.session_factory() as session, session.begin():
        for key, n in staged:
            await setup.outbox.stage_raw(
                session, setup.topic, key, f"{key[0]}:{n}".encode(), {"event_type": "Test"}
            )
    return staged


async def read_topic(bootstrap: str, topic: str, expected: int) -> list[Any]:
    """Every record of a topic, from the beginning, once `expected` have arrived."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await consumer_partitions(consumer, topic)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[Any] = []

        async def enough() -> bool:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
            return len(records) >= expected

        await apoll(enough, 30, f"{expected} records on {topic}", interval_s=0)
        return records
    finally:
        await consumer.stop()


async def consumer_partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    async def known() -> set[int] | None:
        return consumer.partitions_for_topic(topic) or (await consumer.topics() and None)

    return await apoll(known, 10, f"metadata of {topic}")  # type: ignore[no-any-return]


def first_seen_order(records: list[Any]) -> dict[str, list[int]]:
    """Per key, the sequence numbers in the order they first arrived (consumers dedupe a
    resent record by its id, so a duplicate after the first copy changes nothing)."""
    seen: set[bytes] = set()
    order: dict[str, list[int]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        if record.value in seen:
            continue
        seen.add(record.value)
        letter, number = record.value.decode().split(":")
        order.setdefault(letter, []).append(int(number))
    return order


class GatedProducer:
    """The real producer, whose n-th `send_batch` first waits for a gate: a slow relay."""

    def __init__(self, producer: AIOKafkaProducer, gated_call: int, after_send: bool) -> None:
        self._producer = producer
        self._gated_call = gated_call
        self._after_send = after_send
        self.calls = 0
        self.at_gate = asyncio.Event()
        self.gate = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future:
        self.calls += 1
        gated = self.calls == self._gated_call
        if gated and not self._after_send:
            self.at_gate.set()
            await self.gate.wait()
        future = await self._producer.send_batch(batch, topic, partition=partition)
        if gated and self._after_send:
            await future  # published, not yet deleted from the outbox
            self.at_gate.set()
            await self.gate.wait()
        return future


class CountingProducer(GatedProducer):
    def __init__(self, producer: AIOKafkaProducer) -> None:
        super().__init__(producer, gated_call=0, after_send=False)


async def waiting_on_relay_lock(setup: Setup) -> bool:
    async with setup.engine.connect() as conn:
        waiting = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        )
    return bool(waiting)


@contextlib.asynccontextmanager
async def relay(setup: Setup, producer: Any, batch_size: int) -> AsyncIterator[asyncio.Task]:
    """A relay replica: its own Outbox, engine and connections; nothing shared in memory."""
    own = Outbox(setup.outbox.tables)
    engine = make_engine(setup.engine.url.render_as_string(hide_password=False))
    task = asyncio.create_task(
        own.run_relay(
            make_session_factory(engine), producer, batch_size=batch_size, poll_interval_s=0.05
        )
    )
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await engine.dispose()


@contextlib.asynccontextmanager
async def producers(settings: ServiceSettings, count: int) -> AsyncIterator[list[AIOKafkaProducer]]:
    started = [make_producer(settings) for _ in range(count)]
    for producer in started:
        await producer.start()
    try:
        yield started
    finally:
        for producer in started:
            await producer.stop()


async def outbox_empty(setup: Setup) -> bool:
    async with setup.session_factory() as session:
        return await setup.outbox.pending(session) == 0


async def test_two_relays_keep_every_keys_order(setup: Setup) -> None:
    staged = await stage(setup, count_per_key=10)
    async with producers(setup.settings, 2) as (first, second):
        slow = GatedProducer(first, gated_call=1, after_send=False)
        other = CountingProducer(second)
        async with relay(setup, slow, batch_size=5):
            await asyncio.wait_for(slow.at_gate.wait(), 10)  # the slow relay holds a round
            async with relay(setup, other, batch_size=5):

                async def other_sent_or_waits() -> bool:
                    return other.calls > 0 or await waiting_on_relay_lock(setup)

                await apoll(other_sent_or_waits, 10, "the second relay to send or wait")
                slow.gate.set()
                await apoll(lambda: outbox_empty(setup), 30, "the outbox to drain")
    records = await read_topic(setup.infra.kafka_bootstrap, setup.topic.name, len(staged))
    assert first_seen_order(records) == {key[0]: list(range(10)) for key in KEYS}


async def test_a_relay_that_dies_mid_round_loses_its_lock_and_nothing_is_lost(
    setup: Setup,
) -> None:
    staged = await stage(setup, count_per_key=10)
    async with producers(setup.settings, 2) as (first, second):
        # The doomed relay publishes its second round's first batch, then dies before it
        # deletes the round's rows; its connection goes with it.
        doomed = GatedProducer(first, gated_call=2, after_send=True)
        async with relay(setup, doomed, batch_size=6) as doomed_task:
            await asyncio.wait_for(doomed.at_gate.wait(), 10)
            async with relay(setup, second, batch_size=6):
                await apoll(lambda: waiting_on_relay_lock(setup), 10, "the survivor to wait")
                async with setup.engine.connect() as conn:
                    killed = await conn.scalar(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_locks "
                            "WHERE locktype = 'advisory' AND granted AND database = "
                            "(SELECT oid FROM pg_database WHERE datname = current_database())"
                        )
                    )
                assert killed
                doomed_task.cancel()
                await apoll(lambda: outbox_empty(setup), 30, "the survivor to drain the outbox")
    records = await read_topic(setup.infra.kafka_bootstrap, setup.topic.name, len(staged))
    assert first_seen_order(records) == {key[0]: list(range(10)) for key in KEYS}


async def test_an_oversized_row_is_dead_lettered_and_the_rows_after_it_are_published(
    setup: Setup,
) -> None:
    big_key, small_key = KEYS[0], KEYS[1]
    big = b"x" * (2 * 1024 * 1024)  # twice Kafka's default message.max.bytes
    async with setup.session_factory() as session, session.begin():
        await setup.outbox.stage_raw(session, setup.topic, small_key, b"b:0", {})
        await setup.outbox.stage_raw(session, setup.topic, big_key, big, {"event_type": "Big"})
        await setup.outbox.stage_raw(session, setup.topic, big_key, b"a:1", {})
        await setup.outbox.stage_raw(session, setup.topic, small_key, b"b:1", {})
    async with producers(setup.settings, 1) as (producer,), relay(setup, producer, 100):
        await apoll(lambda: outbox_empty(setup), 30, "the outbox to drain")
    records = await read_topic(setup.infra.kafka_bootstrap, setup.topic.name, 3)
    assert sorted(record.value for record in records) == [b"a:1", b"b:0", b"b:1"]
    dead = await dead_letters_for(setup, lambda headers: headers["dlq.topic"] == setup.topic.name)
    assert len(dead) == 1
    headers = {name: value.decode() for name, value in dead[0].headers}
    assert headers["dlq.reason"].startswith("outbox: bericht te groot (")
    assert headers["dlq.reason"].endswith(" bytes)")
    assert int(headers["dlq.reason"].split("(")[1].split()[0]) > len(big)
    assert headers["event_type"] == "Big"
    assert dead[0].key == big_key.encode()
    assert dead[0].value == b""  # too large for the dead-letter topic too: metadata only


async def dead_letters_for(setup: Setup, wanted: Callable[[dict[str, str]], bool]) -> list[Any]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=setup.infra.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(DEAD_LETTER.name, p)
            for p in await consumer_partitions(consumer, DEAD_LETTER.name)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: list[Any] = []

        async def arrived() -> bool:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                for record in batch:
                    headers = {name: value.decode() for name, value in record.headers}
                    if "dlq.topic" in headers and wanted(headers):
                        found.append(record)
            return bool(found)

        await apoll(arrived, 30, "the dead letter", interval_s=0)
        return found
    finally:
        await consumer.stop()


class RefusingBroker(GatedProducer):
    """The real producer in front of a broker whose message.max.bytes is below the
    producer's: a batch above `limit` bytes comes back MESSAGE_TOO_LARGE, unsent."""

    def __init__(self, producer: AIOKafkaProducer, limit: int) -> None:
        super().__init__(producer, gated_call=0, after_send=False)
        self.limit = limit

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future:
        if batch.size() > self.limit:
            refused: asyncio.Future = asyncio.get_running_loop().create_future()
            refused.set_exception(MessageSizeTooLargeError())
            return refused
        return await super().send_batch(batch, topic, partition=partition)


async def test_a_row_the_broker_refuses_is_found_and_dead_lettered_in_order(setup: Setup) -> None:
    key = KEYS[0]
    bulky = b"y" * 60_000  # fits the producer, not this broker
    async with setup.session_factory() as session, session.begin():
        await setup.outbox.stage_raw(session, setup.topic, key, b"a:0", {})
        await setup.outbox.stage_raw(session, setup.topic, key, bulky, {"event_type": "Bulky"})
        await setup.outbox.stage_raw(session, setup.topic, key, b"a:1", {})
        await setup.outbox.stage_raw(session, setup.topic, key, b"a:2", {})
    async with producers(setup.settings, 1) as (producer,):
        refusing = RefusingBroker(producer, limit=50_000)
        async with relay(setup, refusing, 100):
            await apoll(lambda: outbox_empty(setup), 30, "the outbox to drain")
    records = await read_topic(setup.infra.kafka_bootstrap, setup.topic.name, 3)
    assert first_seen_order(records) == {"a": [0, 1, 2]}
    dead = await dead_letters_for(setup, lambda headers: headers["dlq.topic"] == setup.topic.name)
    assert len(dead) == 1
    headers = {name: value.decode() for name, value in dead[0].headers}
    assert headers["dlq.reason"].startswith("outbox: bericht te groot (")
    assert headers["event_type"] == "Bulky"


class NoAutoCreate(GatedProducer):
    """The real producer in front of a broker that does not create topics on demand (Tansu
    does, Apache Kafka in production must not): asked for a topic it lacks, the metadata
    wait ends in UNKNOWN_TOPIC_OR_PARTITION."""

    def __init__(self, producer: AIOKafkaProducer, missing: str | None) -> None:
        super().__init__(producer, gated_call=0, after_send=False)
        self.missing = missing
        self.refusals = 0

    async def partitions_for(self, topic: str) -> set[int]:
        if topic == self.missing:
            self.refusals += 1
            raise UnknownTopicOrPartitionError()
        return await self._producer.partitions_for(topic)  # type: ignore[no-any-return]


async def test_a_topic_missing_from_the_metadata_keeps_its_rows_until_it_is_there(
    setup: Setup,
) -> None:
    """UNKNOWN_TOPIC_OR_PARTITION is retriable (a failover, a metadata refresh without the
    topic, a topic not yet created at deploy): the rows stay, the other topics' rows go,
    and once the topic is there its rows are published, nothing dead-lettered."""
    later = Topic(f"test.later.{uuid.uuid4().hex[:10]}", (), "created later")
    async with setup.session_factory() as session, session.begin():
        await setup.outbox.stage_raw(session, later, KEYS[0], b"a:0", {"event_type": "Late"})
        await setup.outbox.stage_raw(session, setup.topic, KEYS[0], b"a:1", {})
        await setup.outbox.stage_raw(session, later, KEYS[0], b"a:2", {"event_type": "Late"})
    async with producers(setup.settings, 1) as (producer,):
        strict = NoAutoCreate(producer, later.name)
        async with relay(setup, strict, 100):
            records = await read_topic(setup.infra.kafka_bootstrap, setup.topic.name, 1)
            assert [record.value for record in records] == [b"a:1"]

            async def refused_again() -> bool:
                return strict.refusals >= 2  # a round after the one that published a:1

            await apoll(refused_again, 30, "a later round to find the topic missing again")
            async with setup.engine.connect() as conn:
                kept = (
                    await conn.execute(text("SELECT topic, payload FROM outbox ORDER BY id"))
                ).all()
            assert [(topic, bytes(payload)) for topic, payload in kept] == [
                (later.name, b"a:0"),
                (later.name, b"a:2"),
            ]
            admin = AIOKafkaAdminClient(bootstrap_servers=setup.infra.kafka_bootstrap)
            await admin.start()
            await admin.create_topics([NewTopic(later.name, PARTITIONS, 1)])
            await admin.close()
            strict.missing = None  # the metadata has it now
            await apoll(lambda: outbox_empty(setup), 30, "the outbox to drain")
    records = await read_topic(setup.infra.kafka_bootstrap, later.name, 2)
    assert first_seen_order(records) == {"a": [0, 2]}


async def test_a_slow_broker_does_not_get_the_relay_round_killed_by_server_timeouts(
    setup: Setup,
) -> None:
    """A round waits for acknowledgements idle in its transaction, holding the relay lock:
    the database's statement and idle-in-transaction timeouts must not end it between the
    publish and the deletes (each record would be published again)."""
    database = setup.engine.url.database
    async with setup.engine.begin() as conn:
        for setting in ("idle_in_transaction_session_timeout", "statement_timeout"):
            await conn.execute(text(f'ALTER DATABASE "{database}" SET {setting} = 300'))
    staged = await stage(setup, count_per_key=2)
    async with producers(setup.settings, 1) as (producer,):
        slow = GatedProducer(producer, gated_call=1, after_send=True)
        async with relay(setup, slow, batch_size=100):
            await asyncio.wait_for(slow.at_gate.wait(), 10)

            async def idle_past_the_timeout() -> bool:
                async with setup.engine.connect() as conn:
                    return bool(
                        await conn.scalar(
                            text(
                                "SELECT count(*) FROM pg_stat_activity "
                                "WHERE datname = current_database() "
                                "AND state = 'idle in transaction' "
                                "AND now() - state_change > interval '900 milliseconds'"
                            )
                        )
                    )

            try:
                await apoll(idle_past_the_timeout, 10, "the round to outlast the timeouts")
            finally:
                slow.gate.set()
            await apoll(lambda: outbox_empty(setup), 30, "the outbox to drain")
    partitions = [TopicPartition(setup.topic.name, p) for p in range(PARTITIONS)]
    published = await end_offsets(setup.infra.kafka_bootstrap, partitions)
    assert sum(published.values()) == len(staged)  # each once: the round was not killed
