"""How the relay lays a round's rows into record batches: one batch per topic partition,
each from the head of the partition in id order, never a later row before an earlier one;
rows that can never be published marked for the dead-letter topic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    UnknownTopicOrPartitionError,
)

from services.feedback.models import messaging as tables
from shared.outbox import Outbox, permanent_reason

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


async def test_a_topic_the_broker_lacks_sends_its_rows_to_the_dead_letters(
    broker: FakeBroker,
) -> None:
    broker.missing = "gone"
    rows = [row(1, topic="gone"), row(2), row(3, topic="gone")]
    sent, dead = await enqueue(Outbox(tables), broker, rows)
    assert sent == [[2]]
    assert dead == [
        (1, "outbox: topic bestaat niet bij de broker"),
        (3, "outbox: topic bestaat niet bij de broker"),
    ]


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
        (UnknownTopicOrPartitionError(), "outbox: topic bestaat niet bij de broker"),
        (KafkaTimeoutError(), None),
        (OSError(), None),
    ],
)
def test_only_errors_resending_cannot_cure_are_permanent(
    error: BaseException, reason: str | None
) -> None:
    assert permanent_reason(error, 123) == reason
