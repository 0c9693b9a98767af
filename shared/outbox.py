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
from aiokafka.errors import (
    InvalidTopicError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnknownTopicOrPartitionError,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter
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
from shared.events import DEAD_LETTER, Event, Topic, encode_event
from shared.telemetry import context_from_headers, current_trace_headers, tracer, tracing

log = structlog.get_logger(__name__)

TOPICS_UNAVAILABLE = Counter(
    "vroeg_outbox_topic_unavailable_total",
    "Relay rounds that skipped a topic the broker's metadata did not have (rows kept).",
    ["topic"],
)


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


# Kafka's default for the broker's message.max.bytes and the producer's max_request_size.
DEFAULT_MAX_RECORD_BYTES = 1_048_576

# One relaying round at a time per database (advisory locks are scoped to the database).
_RELAY_LOCK = text("SELECT pg_advisory_xact_lock(hashtext('vroeg.outbox.relay'))")
# A round's transaction waits for the broker's acknowledgements, idle, holding the lock: a
# server-side timeout would kill it after the publish and before the deletes (ADR 0010).
_RELAY_TIMEOUTS = (
    text("SET LOCAL statement_timeout = 0"),
    text("SET LOCAL idle_in_transaction_session_timeout = 0"),
)

_RELAY_GROUP = "outbox-relay"


@dataclass(frozen=True)
class RelayRound:
    """What one relay round did: rows read from the head of the outbox, and rows that
    left it (published, or dead-lettered for a reason resending cannot cure)."""

    selected: int
    removed: int


@dataclass
class _Batch:
    topic: str
    partition: int
    rows: list[Any]
    builder: Any


def permanent_reason(exc: BaseException, size: int) -> str | None:
    """Why a record can never be published (for the dead-letter headers), or None when
    the error may pass (the broker or the network) and the row is to be retried."""
    if isinstance(exc, MessageSizeTooLargeError | RecordListTooLargeError | RecordTooLargeError):
        return f"outbox: bericht te groot ({size} bytes)"
    if isinstance(exc, InvalidTopicError):
        return "outbox: ongeldige topicnaam"
    # UnknownTopicOrPartitionError is not here: metadata without the topic (a failover, a
    # refresh that omits it, a topic not yet created at deploy) passes, the rows wait.
    return None


def record_size(row: Any, headers: list[tuple[str, bytes]]) -> int:
    """An upper bound of the bytes a row takes on the wire as a record batch of its own."""
    return int(
        DefaultRecordBatchBuilder.estimate_size_in_bytes(row.key.encode(), row.payload, headers)
    )


class Outbox:
    """Stages events in the caller's transaction and relays committed ones to Kafka."""

    def __init__(self, tables: MessagingTables) -> None:
        self.tables = tables
        self._wake = asyncio.Event()
        # Rows of a batch the broker refused for good: sent one at a time to find the culprit.
        self._suspects: set[int] = set()
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
        self,
        session_factory: async_sessionmaker,
        producer: AIOKafkaProducer,
        batch_size: int,
        *,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> RelayRound:
        """Publish committed rows from the head of the outbox, at most one record batch per
        topic partition, and delete what the broker acknowledged.

        Per-key order across replicas: a round holds the database's relay lock from before
        it reads the head until it committed its deletes, so rounds never overlap, and each
        starts after the acknowledgements of the one before. A replica that dies mid-round
        loses the lock with its connection, and another relays at once (resending what the
        dead one may have published: consumers dedupe by event id). Within a round a
        partition's rows go in one batch, so a failed batch has nothing of its partition
        after it in flight, and the rows of that partition are all retried, in order.

        A row that can never be published (too large, an invalid topic name) goes to the
        dead-letter topic with the reason, instead of stopping the line. A topic missing
        from the broker's metadata is retriable: its rows stay for a later round."""
        outbox = self.tables.outbox
        async with session_factory() as session, session.begin():
            for statement in _RELAY_TIMEOUTS:
                await session.execute(statement)
            await session.execute(_RELAY_LOCK)
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
                )
            ).all()
            if not rows:
                return RelayRound(0, 0)
            batches, dead = await self._enqueue(producer, rows, max_record_bytes)
            results = await asyncio.gather(
                *(future for _, future in batches), return_exceptions=True
            )
            done: list[Any] = []
            for (batch, _), result in zip(batches, results, strict=True):
                if not isinstance(result, BaseException):
                    done.extend(batch.rows)
                    continue
                reason = permanent_reason(result, batch.builder.size())
                if reason is None:  # the broker or the network: the rows are retried
                    log.warning("outbox batch not published", error=type(result).__name__)
                elif len(batch.rows) == 1:
                    dead.append((batch.rows[0], reason))
                else:  # which row? the next rounds send this batch's rows one at a time
                    self._suspects.update(row.id for row in batch.rows)
            for row, reason in dead:
                await self._dead_letter(session, row, reason)
            removed = [row.id for row in done] + [row.id for row, _ in dead]
            self._suspects.difference_update(removed)
            if removed:
                # One array parameter, not a thousand: the statement stays the same (prepared).
                await session.execute(
                    delete(outbox).where(outbox.c.id == func.any(cast(removed, ARRAY(BigInteger))))
                )
        for row in done:
            metrics.EVENTS_PUBLISHED.labels(topic=row.topic).inc()
        return RelayRound(len(rows), len(removed))

    async def _enqueue(
        self, producer: AIOKafkaProducer, rows: Sequence[Any], max_record_bytes: int
    ) -> tuple[list[tuple[_Batch, asyncio.Future]], list[tuple[Any, str]]]:
        """Enqueue one record batch per topic partition, each partition's rows in id order
        from the head on; partitions are chosen from the key as `producer.send` would choose
        them. A partition's rows that do not fit its batch wait for the next round, and so
        does everything of that partition after them. Returns the batches with the futures
        that resolve when the broker acknowledged, and the rows to dead-letter."""
        partitions: dict[str, list[int] | str | None] = {}
        for topic in dict.fromkeys(row.topic for row in rows):
            try:
                partitions[topic] = sorted(await producer.partitions_for(topic))
            except UnknownTopicOrPartitionError:
                # Retriable: metadata may lack a topic for a while. Its rows stay, in order.
                log.warning("outbox topic not in the broker's metadata, rows kept", topic=topic)
                TOPICS_UNAVAILABLE.labels(topic=topic).inc()
                partitions[topic] = None
            except InvalidTopicError as exc:
                partitions[topic] = permanent_reason(exc, 0)
        open_batches: dict[tuple[str, int], _Batch] = {}
        closed: set[tuple[str, int]] = set()
        dead: list[tuple[Any, str]] = []
        for row in rows:
            all_partitions = partitions[row.topic]
            if all_partitions is None:
                continue  # this topic's partitions wait for a later round
            if isinstance(all_partitions, str):
                dead.append((row, all_partitions))
                continue
            key = row.key.encode()
            partition = _PARTITIONER(key, all_partitions, all_partitions)
            place = (row.topic, partition)
            if place in closed:
                continue
            headers = _headers_for(row)
            size = record_size(row, headers)
            if size > max_record_bytes:
                dead.append((row, f"outbox: bericht te groot ({size} bytes)"))
                continue
            batch = open_batches.get(place)
            suspect = row.id in self._suspects
            if batch is not None and (suspect or not self._append(batch, row, key, headers)):
                closed.add(place)  # full, or the next row must go alone: next round
                continue
            if batch is None:
                batch = _Batch(row.topic, partition, [], producer.create_batch())
                open_batches[place] = batch
                self._append(batch, row, key, headers)  # an empty batch takes any record
                if suspect:
                    closed.add(place)
        sent = [
            (
                batch,
                await producer.send_batch(batch.builder, batch.topic, partition=batch.partition),
            )
            for batch in open_batches.values()
        ]
        return sent, dead

    @staticmethod
    def _append(batch: _Batch, row: Any, key: bytes, headers: list[tuple[str, bytes]]) -> bool:
        if (
            batch.builder.append(timestamp=None, key=key, value=row.payload, headers=headers)
            is None
        ):
            return False
        batch.rows.append(row)
        return True

    async def _dead_letter(self, session: AsyncSession, row: Any, reason: str) -> None:
        """Move a row that can never be published to the dead-letter topic, with the
        headers the consumers' dead letters carry; a row too large for its own topic is
        too large for the dead-letter topic as well, so that one carries the metadata only."""
        log.error("outbox row dead-lettered", topic=row.topic, reason=reason)
        if row.topic == DEAD_LETTER.name and not row.payload:
            return  # a dead letter that even without its payload cannot go: nothing left
        too_large = reason.startswith("outbox: bericht te groot")
        await self.stage_raw(
            session,
            DEAD_LETTER,
            key=row.key,
            payload=b"" if too_large or row.topic == DEAD_LETTER.name else row.payload,
            headers={
                **dict(row.headers),
                **_identity(row),
                "dlq.reason": reason,
                "dlq.topic": row.topic,
                "dlq.group": _RELAY_GROUP,
                "dlq.outbox_id": str(row.id),
            },
        )

    async def run_relay(
        self,
        session_factory: async_sessionmaker,
        producer: AIOKafkaProducer,
        *,
        batch_size: int,
        poll_interval_s: float,
        linger_s: float = 0.0,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        """Relay until cancelled; commits in this process wake it, others are polled for.

        After a wake-up the relay lingers a moment so that commits arriving together are
        published in one round (like Kafka's linger.ms). Rounds run one after another,
        also across the replicas of a service (see `relay_once`)."""
        gauge_due = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if loop.time() >= gauge_due:
                    gauge_due = loop.time() + 5
                    async with session_factory() as session:
                        metrics.OUTBOX_PENDING.set(await self.pending(session))
                done = await self.relay_once(
                    session_factory, producer, batch_size, max_record_bytes=max_record_bytes
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the relay must outlive a broker or database hiccup
                log.warning("outbox relay round failed", error=type(exc).__name__)
                done = RelayRound(0, 0)
                await asyncio.sleep(poll_interval_s)
            if done.removed and (done.selected == batch_size or done.removed < done.selected):
                continue  # more is waiting
            if done.selected and not done.removed:
                await asyncio.sleep(poll_interval_s)  # the broker refused all: not a busy loop
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=poll_interval_s)
                if linger_s:
                    await asyncio.sleep(linger_s)


def _identity(row: Any) -> dict[str, str]:
    """The event id and type of an outbox row, for its dead letter (replay needs the id)."""
    try:
        event = json.loads(row.payload)
    except ValueError:
        return {}
    if not isinstance(event, dict):
        return {}
    known: dict[str, str] = {}
    if isinstance(event.get("event_id"), str):
        known["dlq.event_id"] = event["event_id"]
    if isinstance(event.get("event_type"), str):
        known["event_type"] = event["event_type"]
    return known


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
