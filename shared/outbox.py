"""Transactional outbox and inbox: nothing lost, nothing doubled.

A state change and the events it causes are written in one database transaction (the
outbox); a relay publishes committed rows to Kafka and deletes them once the broker
acknowledged (acks=all). A crash between publish and delete publishes a row twice, which
the inbox of every consumer absorbs: it records each event id it processed, in the same
transaction as the processing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Identity,
    LargeBinary,
    MetaData,
    String,
    Table,
    cast,
    delete,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import UUID as PgUUID
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import TextClause

from shared import metrics
from shared.events import Event, Topic, encode_event
from shared.telemetry import context_from_headers, current_trace_headers, tracer, tracing

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class MessagingTables:
    outbox: Table
    inbox: Table


def add_messaging_tables(metadata: MetaData) -> MessagingTables:
    """The outbox and inbox tables every service keeps in its own database."""
    outbox = Table(
        "outbox",
        metadata,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("topic", String(100), nullable=False),
        Column("key", String(128), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("headers", JSON, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    inbox = Table(
        "inbox",
        metadata,
        Column("event_id", PgUUID(as_uuid=True), primary_key=True),
        Column("topic", String(100), nullable=False),
        Column("outcome", String(20), nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    return MessagingTables(outbox=outbox, inbox=inbox)


_PARTITIONER = DefaultPartitioner()  # the one aiokafka's producer.send uses by default


def _headers_for(row: Any) -> list[tuple[str, bytes]]:
    """A row's Kafka headers: as stored, and with a publish span's context when tracing."""
    headers: dict[str, str] = dict(row.headers)
    if tracing():
        with tracer(__name__).start_as_current_span(
            f"{row.topic} publish",
            context=context_from_headers(headers),
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "kafka", "messaging.destination.name": row.topic},
        ):
            headers.update(current_trace_headers())
    return [(name, value.encode()) for name, value in headers.items()]


class Outbox:
    """Stages events in the caller's transaction and relays committed ones to Kafka."""

    def __init__(self, tables: MessagingTables) -> None:
        self.tables = tables
        self._wake = asyncio.Event()
        self._enqueueing = asyncio.Lock()
        self._stage_statement = text(
            f"INSERT INTO {tables.outbox.name} (topic, key, payload, headers) "
            "SELECT * FROM unnest(CAST(:topics AS text[]), CAST(:keys AS text[]), "
            "CAST(:payloads AS bytea[]), CAST(CAST(:headers AS text[]) AS json[]))"
        )

    async def stage(self, session: AsyncSession, topic: Topic, event: Event) -> None:
        """Write an event to the outbox inside the caller's open transaction."""
        await self.stage_many(session, [(topic, event)])

    @staticmethod
    def columns(
        events: Sequence[tuple[Topic, Event]],
        trace_headers: Sequence[dict[str, str]] | None = None,
    ) -> dict[str, list[Any]]:
        """Outbox rows as column arrays (topics, keys, payloads, headers) for a statement
        that stages events together with the state change that causes them. Each event
        carries the current trace context, or its own from `trace_headers` (a batch
        handler passes the context of the event that caused each one)."""
        contexts = (
            list(trace_headers)
            if trace_headers is not None
            else [current_trace_headers()] * len(events)
        )
        return {
            "topics": [topic.check(event) for topic, event in events],  # a foreign type raises
            "keys": [event.household_key for _, event in events],
            "payloads": [encode_event(event) for _, event in events],
            "headers": [
                json.dumps(context | {"event_type": event.__class__.__name__})
                for (_, event), context in zip(events, contexts, strict=True)
            ],
        }

    async def stage_many(
        self,
        session: AsyncSession,
        events: Sequence[tuple[Topic, Event]],
        trace_headers: Sequence[dict[str, str]] | None = None,
    ) -> None:
        """Write several events to the outbox in one statement, in the caller's transaction."""
        if not events:
            return
        await session.execute(self._stage_statement, self.columns(events, trace_headers))

    async def stage_raw(
        self, session: AsyncSession, topic: Topic, key: str, payload: bytes, headers: dict
    ) -> None:
        await session.execute(
            insert(self.tables.outbox).values(
                topic=topic.name, key=key, payload=payload, headers=headers
            )
        )

    def wake(self) -> None:
        """Tell the relay a transaction with outbox rows committed."""
        self._wake.set()

    async def pending(self, session: AsyncSession) -> int:
        return int(await session.scalar(select(func.count()).select_from(self.tables.outbox)) or 0)

    async def relay_once(
        self, session_factory: async_sessionmaker, producer: AIOKafkaProducer, batch_size: int
    ) -> int:
        """Publish one batch of committed rows; returns how many were published."""
        outbox = self.tables.outbox
        async with session_factory() as session, session.begin():
            rows = (
                await session.execute(
                    select(
                        outbox.c.id,
                        outbox.c.topic,
                        outbox.c.key,
                        outbox.c.payload,
                        outbox.c.headers,
                    )
                    .order_by(outbox.c.id)
                    .limit(batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            # Enqueue in id order (keeps per-key order; one round enqueues at a time), then
            # wait for every acknowledgement while the next round may already enqueue.
            async with self._enqueueing:
                confirmations = await self._publish_all(producer, rows)
            await asyncio.gather(*confirmations)
            # One array parameter, not a thousand: the statement stays the same (and prepared).
            await session.execute(
                delete(outbox).where(
                    outbox.c.id == func.any(cast([row.id for row in rows], ARRAY(BigInteger)))
                )
            )
        for row in rows:
            metrics.EVENTS_PUBLISHED.labels(topic=row.topic).inc()
        return len(rows)

    @staticmethod
    async def _publish_all(producer: AIOKafkaProducer, rows: Sequence[Any]) -> list[asyncio.Future]:
        """Enqueue rows in record batches per topic partition (one future per batch, not per
        row), each partition's rows in id order; partitions are chosen from the key as
        `producer.send` would choose them. The futures resolve when the broker acknowledged."""
        partitions: dict[str, list[int]] = {}
        for topic in {row.topic for row in rows}:
            partitions[topic] = sorted(await producer.partitions_for(topic))
        grouped: dict[tuple[str, int], list[tuple[Any, dict[str, Any]]]] = {}
        for row in rows:
            key = row.key.encode()
            all_partitions = partitions[row.topic]
            partition = _PARTITIONER(key, all_partitions, all_partitions)
            record = {"key": key, "value": row.payload, "headers": _headers_for(row)}
            grouped.setdefault((row.topic, partition), []).append((row, record))
        futures: list[asyncio.Future] = []
        for (topic, partition), items in grouped.items():
            batch = producer.create_batch()
            for row, record in items:
                if batch.append(timestamp=None, **record) is None:  # full: send, start anew
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if batch.append(timestamp=None, **record) is None:
                        raise ValueError(f"outbox row {row.id} is larger than a record batch")
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        return futures

    async def run_relay(
        self,
        session_factory: async_sessionmaker,
        producer: AIOKafkaProducer,
        *,
        batch_size: int,
        poll_interval_s: float,
        linger_s: float = 0.0,
        rounds_in_flight: int = 1,
    ) -> None:
        """Relay until cancelled; commits in this process wake it, others are polled for.

        After a wake-up the relay lingers a moment so that commits arriving together are
        published in one round (like Kafka's linger.ms). With `rounds_in_flight` above one,
        a round selects and enqueues the next rows (skipping the locked ones) while earlier
        rounds still wait for their acknowledgements and delete their rows; rounds enqueue
        one after another, so per-key order holds unless a round fails and is retried.
        """
        async with asyncio.TaskGroup() as rounds:
            for number in range(rounds_in_flight):
                rounds.create_task(
                    self._relay_loop(
                        session_factory,
                        producer,
                        batch_size=batch_size,
                        poll_interval_s=poll_interval_s,
                        linger_s=linger_s,
                        keeps_gauge=number == 0,
                    )
                )

    async def _relay_loop(
        self,
        session_factory: async_sessionmaker,
        producer: AIOKafkaProducer,
        *,
        batch_size: int,
        poll_interval_s: float,
        linger_s: float,
        keeps_gauge: bool,
    ) -> None:
        gauge_due = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if keeps_gauge and loop.time() >= gauge_due:
                    gauge_due = loop.time() + 5
                    async with session_factory() as session:
                        metrics.OUTBOX_PENDING.set(await self.pending(session))
                published = await self.relay_once(session_factory, producer, batch_size)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the relay must outlive a broker or database hiccup
                log.warning("outbox relay round failed", error=type(exc).__name__)
                published = 0
                await asyncio.sleep(poll_interval_s)
            if published == batch_size:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=poll_interval_s)
                if linger_s:
                    await asyncio.sleep(linger_s)


@functools.cache
def _inbox_statement(inbox: str) -> TextClause:
    return text(
        f"INSERT INTO {inbox} (event_id, topic, outcome, processed_at) "
        "SELECT e, t, 'processed', now() FROM unnest(CAST(:ids AS uuid[]), "
        "CAST(:topics AS text[])) AS u(e, t) ON CONFLICT (event_id) DO NOTHING "
        "RETURNING event_id"
    )


async def first_delivery(
    session: AsyncSession, tables: MessagingTables, event_id: Any, topic: str
) -> bool:
    """Record an event id in the inbox; False if it was processed before."""
    return bool(await first_deliveries(session, tables, [(event_id, topic)]))


async def first_deliveries(
    session: AsyncSession, tables: MessagingTables, events: Sequence[tuple[Any, str]]
) -> set[Any]:
    """Record a batch of (event id, topic) in the inbox in one statement; the ids not seen before."""
    if not events:
        return set()
    result = await session.execute(
        _inbox_statement(tables.inbox.name),
        {"ids": [event_id for event_id, _ in events], "topics": [topic for _, topic in events]},
    )
    return set(result.scalars())


def span_for_record(topic: str, headers: dict[str, str]) -> trace.Span:
    """A consumer span whose parent is the producer span that published the record."""
    return tracer(__name__).start_span(
        f"{topic} process",
        context=context_from_headers(headers),
        kind=SpanKind.CONSUMER,
        attributes={"messaging.system": "kafka", "messaging.destination.name": topic},
    )
