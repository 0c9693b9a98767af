"""How the relay lays a round's rows into record batches: one batch per topic partition,
each from the head of the partition in id order, never a later row before an earlier one;
rows that can never be published marked for the dead-letter topic."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    UnknownTopicOrPartitionError,
)

from services.feedback.models import messaging as tables
from shared.events import OutreachDue, encode_event
from shared.outbox import TOPICS_UNAVAILABLE, Outbox, _identity, permanent_reason

BATCH_BYTES = 4_096
KEY = "k" * 64  # every row of one key goes to one partition


class FakeBroker:
    """Real record batches (aiokafka's builder), a fixed partition count, sends recorded."""

    def __init__(self, producer: AIOKafkaProducer, missing: str | None = None) -> None:
        self.producer = producer
        self.missing = missing
        self.sent: list[tuple[str, int, Any]] = []

    def create_batch(self) -> Any:
        return self.producer.create_batch()

    async def partitions_for(self, topic: str) -> set[int]:
        if topic == self.missing:
            raise UnknownTopicOrPartitionError()
        return {0, 1, 2}

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future:
        self.sent.append((topic, partition, batch))
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@pytest.fixture
async def broker() -> AsyncIterator[FakeBroker]:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", max_batch_size=BATCH_BYTES)
    yield FakeBroker(producer)
    await producer.client.close()


def row(number: int, size: int = 10, topic: str = "t", key: str = KEY) -> SimpleNamespace:
    return SimpleNamespace(id=number, topic=topic, key=key, payload=b"x" * size, headers={})


async def enqueue(
    outbox: Outbox, broker: FakeBroker, rows: list[SimpleNamespace], limit: int = 1_000_000
) -> tuple[list[list[int]], list[tuple[int, str]]]:
    batches, dead = await outbox._enqueue(broker, rows, limit)  # type: ignore[arg-type]
    return [[r.id for r in batch.rows] for batch, _ in batches], [(r.id, why) for r, why in dead]


async def test_a_full_batch_keeps_every_later_row_of_its_partition_for_the_next_round(
    broker: FakeBroker,
) -> None:
    # Row 3 does not fit behind rows 1 and 2; row 4 would, but must not overtake row 3.
    rows = [row(1), row(2, 2_000), row(3, 3_000), row(4)]
    sent, dead = await enqueue(Outbox(tables), broker, rows)
    assert sent == [[1, 2]]
    assert dead == []


async def test_an_oversized_row_is_marked_dead_and_the_rows_after_it_still_go(
    broker: FakeBroker,
) -> None:
    rows = [row(1), row(2, 5_000), row(3)]
    sent, dead = await enqueue(Outbox(tables), broker, rows, limit=4_000)
    assert sent == [[1, 3]]
    assert len(dead) == 1
    assert dead[0][0] == 2
    assert dead[0][1].startswith("outbox: bericht te groot (") and dead[0][1].endswith(" bytes)")


async def test_rows_of_a_refused_batch_go_one_at_a_time_in_order(broker: FakeBroker) -> None:
    outbox = Outbox(tables)
    outbox._suspects.update({1, 2})
    assert (await enqueue(outbox, broker, [row(1), row(2), row(3)]))[0] == [[1]]
    outbox._suspects.discard(1)
    assert (await enqueue(outbox, broker, [row(2), row(3)]))[0] == [[2]]
    outbox._suspects.discard(2)
    assert (await enqueue(outbox, broker, [row(3), row(4)]))[0] == [[3, 4]]
    # A suspect behind a clean row waits: the clean row goes first, alone.
    outbox._suspects.add(6)
    assert (await enqueue(outbox, broker, [row(5), row(6), row(7)]))[0] == [[5]]


async def test_a_topic_missing_from_the_metadata_keeps_its_rows_for_a_later_round(
    broker: FakeBroker,
) -> None:
    # Metadata without the topic (a failover, a refresh, a topic not yet created) passes:
    # its rows are neither sent nor dead-lettered, the other topics' rows still go.
    broker.missing = "later"
    skipped = TOPICS_UNAVAILABLE.labels(topic="later")
    before = skipped._value.get()
    rows = [row(1, topic="later"), row(2), row(3, topic="later")]
    sent, dead = await enqueue(Outbox(tables), broker, rows)
    assert sent == [[2]]
    assert dead == []
    assert skipped._value.get() == before + 1
    broker.missing = None  # the metadata has it again: the rows go, in order
    sent, dead = await enqueue(
        Outbox(tables), broker, [row(1, topic="later"), row(3, topic="later")]
    )
    assert sent == [[1, 3]]
    assert dead == []


def test_a_dead_letter_of_the_relay_carries_the_event_id_and_type() -> None:
    event = OutreachDue(
        gemeentecode="GM1731",
        household_key=uuid.uuid4().hex * 2,
        case_id=uuid.uuid4(),
        match_id=uuid.uuid4(),
        doorgestuurd_op=dt.datetime(2026, 11, 2, tzinfo=dt.UTC),
        termijn=dt.date(2026, 11, 30),
        signalen=(),
    )
    stored = SimpleNamespace(id=1, topic="t", key=KEY, payload=encode_event(event), headers={})
    assert _identity(stored) == {
        "dlq.event_id": str(event.event_id),
        "event_type": "OutreachDue",
    }
    assert _identity(row(2)) == {}  # not an event: nothing to claim


async def test_partitions_are_batched_apart_each_in_id_order(broker: FakeBroker) -> None:
    keys = [f"{n:064x}" for n in range(12)]
    rows = [row(n, key=keys[n % len(keys)]) for n in range(1, 40)]
    sent, _ = await enqueue(Outbox(tables), broker, rows)
    assert sorted(id_ for batch in sent for id_ in batch) == list(range(1, 40))
    assert all(batch == sorted(batch) for batch in sent)
    assert len({partition for _, partition, _ in broker.sent}) == len(sent)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (MessageSizeTooLargeError(), "outbox: bericht te groot (123 bytes)"),
        (RecordListTooLargeError(), "outbox: bericht te groot (123 bytes)"),
        (InvalidTopicError(), "outbox: ongeldige topicnaam"),
        (UnknownTopicOrPartitionError(), None),
        (KafkaTimeoutError(), None),
        (OSError(), None),
    ],
)
def test_only_errors_resending_cannot_cure_are_permanent(
    error: BaseException, reason: str | None
) -> None:
    assert permanent_reason(error, 123) == reason
