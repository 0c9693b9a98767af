"""The raw broker, measured the same way by every bench: produce and consume rates of
plain aiokafka clients, for the ratio against what the services reach."""

from __future__ import annotations

import asyncio
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


async def reader(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    """A consumer of every partition of `topic` from the beginning, without a consumer
    group (a group join takes seconds on Tansu and would be counted as work)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    await consumer.topics()  # fetches the metadata
    partitions = consumer.partitions_for_topic(topic) or set()
    consumer.assign([TopicPartition(topic, p) for p in partitions])
    await consumer.seek_to_beginning()
    return consumer


async def consume_rate(bootstrap: str, topic: str, count: int) -> float:
    """Messages/s reading `count` records of `topic`, timed from the first fetch (the
    consumer is assigned and positioned before the clock starts)."""
    consumer = await reader(bootstrap, topic)
    try:
        received = 0
        started = time.perf_counter()
        while received < count:
            batches = await consumer.getmany(timeout_ms=1000, max_records=500)
            received += sum(len(records) for records in batches.values())
        return count / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def produce(bootstrap: str, count: int, size: int) -> tuple[str, float]:
    """A new 6-partition topic with `count` messages of `size` bytes (acks=all); the topic
    and the produce rate in messages/s."""
    topic = f"bench.raw.{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 6, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        payload = b"x" * size
        started = time.perf_counter()
        futures = [await producer.send(topic, payload, key=str(i).encode()) for i in range(count)]
        await asyncio.gather(*futures)
        return topic, count / (time.perf_counter() - started)
    finally:
        await producer.stop()
