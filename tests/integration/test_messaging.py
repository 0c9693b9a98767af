"""The consumer promises, on the real broker and PostgreSQL: offsets committed only after
the database transaction, duplicates dropped, poison to the dead-letter topic with the
reason, infrastructure errors retried and never dead-lettered, outbox atomic."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faststream.kafka.message import KafkaAckableMessage
from sqlalchemy import select, text

from services.feedback.models import messaging as tables
from services.feedback.settings import FeedbackSettings
from shared.db import make_engine, make_session_factory
from shared.events import BlacklistChanged, OutreachDue, Topic, encode_event
from shared.messaging import BatchConsumer, Subscription, lanes_of, make_broker, make_producer
from shared.outbox import Outbox
from tests.conftest import Infra
from tests.support import apoll

pytestmark = pytest.mark.integration

Handler = Callable[[object, OutreachDue], Awaitable[None]]


def due_event() -> OutreachDue:
    return OutreachDue(
        gemeentecode="GM1731",
        household_key=uuid.uuid4().hex * 2,
        case_id=uuid.uuid4(),
        match_id=uuid.uuid4(),
        doorgestuurd_op=dt.datetime(2026, 11, 2, tzinfo=dt.UTC),
        termijn=dt.date(2026, 11, 30),
        signalen=(),
    )


class Harness:
    """One consumer (the real BatchConsumer) on a private topic, with its outbox relay."""

    def __init__(
        self,
        infra: Infra,
        handler: Handler,
        *,
        lanes: int = 1,
        waiting: Sequence[OutreachDue] = (),
        partitions: int = 1,
        **settings: Any,
    ) -> None:
        self.settings = FeedbackSettings(
            consumer_retry_backoff_s=0.05, consumer_lanes=lanes, **settings
        )
        self.waiting = waiting  # published before the consumer starts: one batch
        self.partitions = partitions
        self.topic = Topic(f"test.{uuid.uuid4().hex[:10]}", (OutreachDue,), "test")
        self.engine = make_engine(self.settings.database_url)
        self.session_factory = make_session_factory(self.engine)
        self.outbox = Outbox(tables)
        self.broker = make_broker(self.settings)
        self.consumer = BatchConsumer(
            settings=self.settings,
            subscriptions=[Subscription(self.topic, handler)],
            session_factory=self.session_factory,
            outbox=self.outbox,
            tables=tables,
        )
        self.consumer.group_id = f"test-{uuid.uuid4().hex[:10]}"
        self.infra = infra

    async def __aenter__(self) -> Harness:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.infra.kafka_bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(self.topic.name, self.partitions, 1)])
        await admin.close()
        self.producer = make_producer(self.settings)
        await self.producer.start()
        sent = [
            await self.producer.send(
                self.topic.name, encode_event(event), key=event.household_key.encode()
            )
            for event in self.waiting
        ]
        self.waiting_partitions = {metadata.partition for metadata in await asyncio.gather(*sent)}
        self.consumer.register(self.broker)
        await self.broker.start()
        self.relay = asyncio.create_task(
            self.outbox.run_relay(
                self.session_factory, self.producer, batch_size=100, poll_interval_s=0.05
            )
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.relay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.relay
        await self.producer.stop()
        await self.broker.stop()
        await self.engine.dispose()

    async def publish(self, payload: bytes, key: bytes = b"k") -> None:
        await self.broker.publish(payload, self.topic.name, key=key)

    async def inbox_outcome(self, event_id: uuid.UUID) -> str | None:
        async with self.session_factory() as session:
            return await session.scalar(
                select(tables.inbox.c.outcome).where(tables.inbox.c.event_id == event_id)
            )

    async def committed(self) -> int:
        """The committed offsets of the harness' group, summed over the topic's partitions."""
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.infra.kafka_bootstrap, group_id=self.consumer.group_id
        )
        await reader.start()
        try:
            offsets = [
                await reader.committed(TopicPartition(self.topic.name, partition))
                for partition in range(self.partitions)
            ]
            return sum(offset or 0 for offset in offsets)
        finally:
            await reader.stop()

    async def committed_is(self, offset: int) -> bool:
        return await self.committed() == offset

    async def dead_letters(self, expected: int) -> list:
        """Records of the dead-letter topic that came from this harness' topic."""
        reader = AIOKafkaConsumer(
            "deadletter",
            bootstrap_servers=self.infra.kafka_bootstrap,
            group_id=f"dlq-reader-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await reader.start()
        found: list = []
        try:

            async def enough() -> bool:
                batches = await reader.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        headers = {k: v.decode() for k, v in record.headers}
                        if headers.get("dlq.topic") == self.topic.name:
                            found.append((record, headers))
                return len(found) >= expected

            await apoll(enough, 30, f"{expected} dead letter(s)")
            return found
        finally:
            await reader.stop()


async def test_poison_goes_to_the_dead_letter_topic_and_the_consumer_goes_on(infra: Infra) -> None:
    handled: list[uuid.UUID] = []

    async def handle(session: object, event: OutreachDue) -> None:
        handled.append(event.event_id)

    good = due_event()
    async with Harness(infra, handle) as harness:
        await harness.publish(b'{"not": "an event", "bsn": "999990019"}')
        await harness.publish(encode_event(good))
        await apoll(lambda: good.event_id in handled, 30, "the good event")
        [(record, headers)] = await harness.dead_letters(expected=1)
    assert record.value == b'{"not": "an event", "bsn": "999990019"}'
    assert headers["dlq.reason"].startswith("invalid event")
    assert "999990019" not in headers["dlq.reason"]
    assert headers["dlq.group"] == harness.consumer.group_id
    assert headers["dlq.offset"] == "0"


async def test_a_redelivered_event_is_processed_once(infra: Infra) -> None:
    handled: list[uuid.UUID] = []

    async def handle(session: object, event: OutreachDue) -> None:
        handled.append(event.event_id)

    event = due_event()
    async with Harness(infra, handle) as harness:
        await harness.publish(encode_event(event))
        await harness.publish(encode_event(event))
        await apoll(lambda: harness.committed_is(2), 30, "both copies consumed")
        assert await harness.inbox_outcome(event.event_id) == "processed"
    assert handled == [event.event_id]


async def test_a_handler_that_keeps_failing_dead_letters_after_bounded_attempts(
    infra: Infra,
) -> None:
    attempts: list[uuid.UUID] = []
    bad, good = due_event(), due_event()

    async def handle(session: object, event: OutreachDue) -> None:
        attempts.append(event.event_id)
        if event.event_id == bad.event_id:
            raise ValueError("rule broken")

    async with Harness(infra, handle) as harness:
        await harness.publish(encode_event(bad))
        await harness.publish(encode_event(good))
        [(_record, headers)] = await harness.dead_letters(expected=1)
        assert await harness.inbox_outcome(bad.event_id) == "deadlettered"
        assert await harness.inbox_outcome(good.event_id) == "processed"
    assert attempts.count(bad.event_id) == harness.settings.consumer_max_attempts
    assert attempts.count(good.event_id) == 1
    assert headers["dlq.reason"] == "handler error: ValueError"


async def test_an_infrastructure_error_is_retried_and_never_dead_lettered(infra: Infra) -> None:
    calls: list[uuid.UUID] = []
    event = due_event()

    async def handle(session: object, incoming: OutreachDue) -> None:
        calls.append(incoming.event_id)
        if len(calls) <= 4:  # more failures than consumer_max_attempts
            raise ConnectionResetError("database went away")

    async with Harness(infra, handle) as harness:
        await harness.publish(encode_event(event))

        async def processed() -> bool:
            return await harness.inbox_outcome(event.event_id) == "processed"

        await apoll(processed, 30, "the event processed after the outage")
    assert len(calls) == 5


async def test_the_outbox_publishes_only_what_committed(infra: Infra) -> None:
    async def ignore(session: object, event: OutreachDue) -> None:
        return None

    kept, rolled_back = due_event(), due_event()
    async with Harness(infra, ignore) as harness:
        with contextlib.suppress(RuntimeError):
            async with harness.session_factory() as session, session.begin():
                await harness.outbox.stage(session, harness.topic, rolled_back)
                raise RuntimeError("the state change failed")
        async with harness.session_factory() as session, session.begin():
            await harness.outbox.stage(session, harness.topic, kept)
        harness.outbox.wake()

        async def kept_consumed() -> bool:
            return await harness.inbox_outcome(kept.event_id) == "processed"

        await apoll(kept_consumed, 30, "the committed event")
        assert await harness.committed() == 1
        assert await harness.inbox_outcome(rolled_back.event_id) is None


async def test_a_failed_lane_rewinds_the_batch_and_the_committed_lanes_are_not_redone(
    infra: Infra,
) -> None:
    events = [due_event() for _ in range(12)]  # twelve households, one batch, three lanes
    lanes = lanes_of([SimpleNamespace(key=e.household_key.encode()) for e in events], 3)
    assert len(lanes) == 3, "the households spread over the lanes"
    failing = events[-1]  # the last: in one transaction, every other event would be redone
    [failing_lane] = [
        {r.key for r in lane}
        for lane in lanes
        if failing.household_key.encode() in {r.key for r in lane}
    ]
    calls: list[uuid.UUID] = []

    async def handle(session: object, event: OutreachDue) -> None:
        calls.append(event.event_id)
        if event.event_id == failing.event_id and calls.count(failing.event_id) == 1:
            raise ConnectionResetError("database went away")  # infrastructure: rewind

    async with Harness(infra, handle, lanes=3, waiting=events) as harness:
        await apoll(lambda: harness.committed_is(len(events)), 30, "every event committed")
        outcomes = {e.event_id: await harness.inbox_outcome(e.event_id) for e in events}
    assert set(outcomes.values()) == {"processed"}
    assert calls.count(failing.event_id) == 2
    for event in events:
        if event.household_key.encode() not in failing_lane:
            # its lane committed before the rewind: the inbox drops its redelivery
            assert calls.count(event.event_id) == 1, event.event_id


async def test_a_failed_batch_on_several_partitions_is_rewound_on_every_partition(
    infra: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not every faststream 0.7 release rewinds every partition of a batch on nack(); the
    # consumer must not depend on it. A nack that seeks only the first record's partition:
    async def nack_first_partition_only(self: KafkaAckableMessage) -> None:
        raw = self.raw_message
        first = raw[0] if isinstance(raw, tuple) else raw
        self.consumer.seek(TopicPartition(first.topic, first.partition), first.offset)

    monkeypatch.setattr(KafkaAckableMessage, "nack", nack_first_partition_only)
    events = [due_event() for _ in range(18)]  # eighteen households over three partitions
    calls: list[uuid.UUID] = []

    async def handle(session: object, event: OutreachDue) -> None:
        calls.append(event.event_id)
        if len(calls) == 1:
            raise ConnectionResetError("database went away")  # infrastructure: rewind

    harness = Harness(infra, handle, waiting=events, partitions=3)
    rewound: list[set[int]] = []
    retry_later = harness.consumer._retry_later

    async def spy(msg: Any, records: Sequence[Any], failures: Sequence[BaseException]) -> None:
        rewound.append({record.partition for record in records})
        await retry_later(msg, records, failures)

    harness.consumer._retry_later = spy  # type: ignore[method-assign]
    async with harness:
        assert harness.waiting_partitions == {0, 1, 2}, "records in every partition"
        await apoll(lambda: harness.committed_is(len(events)), 30, "every event committed")
        outcomes = {e.event_id: await harness.inbox_outcome(e.event_id) for e in events}
    assert len(rewound[0]) >= 2, f"the failed batch spanned one partition only: {rewound}"
    assert set(outcomes.values()) == {"processed"}, "a record skipped by the rewind"
    assert {e.event_id for e in events} <= set(calls)


async def test_a_statement_timeout_on_one_record_is_dead_lettered_after_the_transient_budget(
    infra: Infra,
) -> None:
    bad, good = due_event(), due_event()
    attempts: list[uuid.UUID] = []
    tried_at: list[float] = []  # when each attempt at the bad record started

    async def handle(session: Any, event: OutreachDue) -> None:
        attempts.append(event.event_id)
        if event.event_id == bad.event_id:  # this record's work always takes too long
            tried_at.append(time.monotonic())
            await session.execute(text("SET LOCAL statement_timeout = '20ms'"))
            await session.execute(text("SELECT pg_sleep(2)"))

    harness = Harness(infra, handle, consumer_max_transient_retries=2)
    harness.consumer.transient_budget_s = 0.5
    async with harness:
        await harness.publish(encode_event(bad), key=bad.household_key.encode())
        await harness.publish(encode_event(good), key=good.household_key.encode())
        [(_record, headers)] = await harness.dead_letters(expected=1)
        assert await harness.inbox_outcome(bad.event_id) == "deadlettered"
        assert await harness.inbox_outcome(good.event_id) == "processed"
    assert headers["dlq.reason"].startswith("handler error: DBAPIError (SQLSTATE 57014)")
    assert headers["dlq.event_id"] == str(bad.event_id)
    max_attempts = harness.settings.consumer_max_attempts
    # two failed batches, then isolated: failing for the budget before the attempts count
    assert len(tried_at) > 2 + max_attempts, "the budget cut short"
    isolated_for = tried_at[-1] - tried_at[2]
    assert isolated_for >= harness.consumer.transient_budget_s, isolated_for
    # the counted attempts, in savepoints, each after a pause (backoff 0.05 s, doubling)
    last = tried_at[-max_attempts:]
    gaps = [later - earlier for earlier, later in itertools.pairwise(last)]
    assert all(gap >= 0.05 for gap in gaps), f"attempts back to back: {gaps}"


async def test_a_record_blocked_by_a_lock_for_a_while_is_processed_not_dead_lettered(
    infra: Infra,
) -> None:
    """An operator's command holds a row lock longer than the consumer's bounded batch
    retries: the record waits and is processed once the lock is released."""
    event = due_event()
    probe = f"lock_probe_{uuid.uuid4().hex[:10]}"
    attempts: list[uuid.UUID] = []

    async def handle(session: Any, incoming: OutreachDue) -> None:
        attempts.append(incoming.event_id)
        await session.execute(text("SET LOCAL lock_timeout = '50ms'"))
        await session.execute(text(f"UPDATE {probe} SET n = n + 1"))

    harness = Harness(infra, handle, consumer_max_transient_retries=2)
    strict_after = harness.settings.consumer_max_transient_retries
    async with harness.engine.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {probe} (n integer NOT NULL)"))
        await conn.execute(text(f"INSERT INTO {probe} VALUES (0)"))
    operator = await harness.engine.connect()
    try:
        held = await operator.begin()
        await operator.execute(text(f"SELECT n FROM {probe} FOR UPDATE"))
        async with harness:
            await harness.publish(encode_event(event), key=event.household_key.encode())

            async def isolated_and_failing() -> bool:
                # isolated (record by record) and failed there three times, or given up
                if await harness.inbox_outcome(event.event_id) == "deadlettered":
                    return True
                return harness.consumer._failed_batches >= strict_after + 3

            await apoll(isolated_and_failing, 30, "the record failing while isolated")
            await held.rollback()  # the operator is done: the lock is released

            async def settled() -> str | None:
                return await harness.inbox_outcome(event.event_id)

            outcome = await apoll(settled, 60, "the record processed")
        assert outcome == "processed", "a healthy record dead-lettered for a lock"
        assert len(attempts) > strict_after + 3
    finally:
        await operator.close()
        async with harness.engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {probe}"))
        await harness.engine.dispose()


async def test_an_event_of_a_foreign_type_is_dead_lettered_with_the_reason(infra: Infra) -> None:
    handled: list[uuid.UUID] = []

    async def handle(session: object, event: OutreachDue) -> None:
        handled.append(event.event_id)

    foreign = BlacklistChanged(
        gemeentecode="GM1731",
        household_key="ab" * 32,
        entry_id=uuid.uuid4(),
        actie="toegevoegd",
        reden="overig",
        begin=dt.date(2026, 11, 1),
        einde=dt.date(2026, 12, 1),
    )
    good = due_event()
    async with Harness(infra, handle) as harness:
        await harness.publish(encode_event(foreign))
        await harness.publish(encode_event(good))
        [(_record, headers)] = await harness.dead_letters(expected=1)
        assert await harness.inbox_outcome(foreign.event_id) == "deadlettered"
        await apoll(lambda: good.event_id in handled, 30, "the good event")
    assert handled == [good.event_id]
    assert headers["dlq.reason"] == (
        f"event type BlacklistChanged does not belong on topic {harness.topic.name} "
        "(expected OutreachDue)"
    )
    assert headers["event_type"] == "BlacklistChanged"


async def test_a_record_with_a_key_too_long_for_the_outbox_is_still_dead_lettered(
    infra: Infra,
) -> None:
    async def ignore(session: object, event: OutreachDue) -> None:
        return None

    long_key = b"k" * 300
    async with Harness(infra, ignore) as harness:
        await harness.publish(b"not json", key=long_key)
        [(record, headers)] = await harness.dead_letters(expected=1)
    assert record.key == long_key[:128]
    assert headers["dlq.key"] == long_key.decode()
