"""Kafka wiring: the broker, and consumers that commit offsets only after their own
database transaction committed.

A batch may be split by household key into lanes (`consumer_lanes`), each in its own database
transaction, run side by side; the offsets are committed once every lane committed. Per
lane, in one database transaction:
- each record is decoded; one that cannot be decoded goes to the dead-letter topic;
- the inbox drops an event id seen before (redelivery, a relay that published twice);
- the handler runs in a savepoint, up to `consumer_max_attempts` times; a message that
  keeps failing goes to the dead-letter topic with the reason, the batch goes on;
- then the transaction commits and only then is the Kafka offset committed.
An infrastructure error (database or broker unreachable, deadlock) rolls the lane back,
rewinds the partitions and retries with backoff: the message is not at fault, so it
is never dead-lettered for it.
Dead letters themselves go through the outbox, so they are as safe as any other event.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from opentelemetry import trace
from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import metrics
from shared.events import DEAD_LETTER, AnyEvent, Topic, decode_event
from shared.outbox import (
    MessagingTables,
    Outbox,
    first_deliveries,
    first_delivery,
    span_for_record,
)
from shared.settings import ServiceSettings
from shared.telemetry import (
    current_trace_headers,
    error_fields,
    kafka_headers_to_dict,
    sqlstate_of,
    trace_headers_of,
    tracing,
)

log = structlog.get_logger(__name__)

Handler = Callable[[AsyncSession, Any], Awaitable[None]]


@dataclass(frozen=True)
class Received:
    """An event handed to a batch handler, with the trace context of its consumer span:
    events it causes are staged with these headers, so a trace follows every hop."""

    event: Any
    trace_headers: dict[str, str]


BatchHandler = Callable[[AsyncSession, Sequence[Received]], Awaitable[None]]

# SQLSTATE classes that say "try again later", not "this message is bad":
# 08 connection, 40 transaction rollback (deadlock, serialization), 53 resources, 57 operator.
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57")


class Rejected(Exception):
    """A handler's verdict that an event can never be processed; the text names the rule.

    The text goes into the dead-letter headers: it must not hold personal data.
    """


def make_broker(settings: ServiceSettings) -> KafkaBroker:
    return KafkaBroker(
        settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
        client_id=f"vroeg-{settings.service_name}",
        linger_ms=5,
        logger=None,
    )


def make_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    """The outbox relay's producer: acks=all, idempotence as the broker allows, a short
    linger so that a round's records travel in few requests."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
        client_id=f"vroeg-{settings.service_name}-relay",
        linger_ms=5,
        max_batch_size=256 * 1024,
    )


def is_infrastructure_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError | TimeoutError | KafkaError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, OperationalError):
            return True
        sqlstate = sqlstate_of(exc)
        return sqlstate is not None and sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES
    return False


def failure_reason(exc: BaseException) -> str:
    """A reason fit for the dead-letter headers: the rule broken, never the data."""
    if isinstance(exc, Rejected):
        return str(exc)
    if isinstance(exc, ValidationError):
        problems = [
            f"{'.'.join(str(part) for part in error['loc'])}: {error['type']}"
            for error in exc.errors(include_input=False, include_url=False)
        ]
        return "invalid event: " + "; ".join(problems[:10])
    return f"handler error: {type(exc).__name__}"


@dataclass(frozen=True)
class Subscription:
    """A topic and its handler: `handle` takes one event; `handle_many` (if given) takes the
    fresh events of a batch at once, and is also used, one event at a time, when a batch
    is isolated record by record."""

    topic: Topic
    handle: Handler | None = None
    handle_many: BatchHandler | None = None

    def one(self) -> Handler:
        if self.handle is not None:
            return self.handle
        assert self.handle_many is not None, f"{self.topic.name}: no handler"
        handle_many = self.handle_many

        async def handle(session: AsyncSession, event: Any) -> None:
            await handle_many(session, [Received(event, current_trace_headers())])

        return handle


def lanes_of(records: Sequence[Any], lanes: int) -> list[list[Any]]:
    """Split a batch into at most `lanes` parts by record key, keeping the records of one
    key in their order. Every event's key is its household key, on every topic: a
    household's events always fall in one lane, so per-household order holds as in one
    transaction, and lanes lock disjoint households. (Should two lanes still meet on a row,
    such as one signal replayed under two household keys, one waits for the other; a
    deadlock is an infrastructure error, and the batch is retried.)"""
    if lanes <= 1:
        return [list(records)] if records else []
    parts: list[list[Any]] = [[] for _ in range(lanes)]
    for record in records:
        parts[zlib.crc32(record.key or b"") % lanes].append(record)
    return [part for part in parts if part]


def _consumer_span(topic: str, headers: dict[str, str], event: Any) -> trace.Span:
    span = span_for_record(topic, headers)
    span.set_attribute("messaging.message.id", str(event.event_id))
    span.set_attribute("vroeg.gemeentecode", event.gemeentecode)
    return span


class _IsolateRecords(Exception):
    """A batch holds a message that cannot be processed: handle it record by record.

    `spent_on` is the event whose handler already failed once in the batch: that attempt
    counts towards its bound.
    """

    def __init__(self, spent_on: Any = None) -> None:
        super().__init__()
        self.spent_on = spent_on


class BatchConsumer:
    """Consumes a service's topics in batches, one consumer group per service (see the
    module docstring); replicas of the service share the partitions."""

    def __init__(
        self,
        *,
        settings: ServiceSettings,
        subscriptions: Sequence[Subscription],
        session_factory: async_sessionmaker,
        outbox: Outbox,
        tables: MessagingTables,
    ) -> None:
        self.settings = settings
        self.handlers = {s.topic.name: s.one() for s in subscriptions}
        self.batch_handlers = {
            s.topic.name: s.handle_many for s in subscriptions if s.handle_many is not None
        }
        self.session_factory = session_factory
        self.outbox = outbox
        self.tables = tables
        self.group_id = settings.consumer_group
        self._backoff_s = settings.consumer_retry_backoff_s

    def register(self, broker: KafkaBroker) -> None:
        async def on_batch(body: Any, msg: KafkaMessage) -> None:
            await self.consume(msg)

        async def skip_decoding(msg: Any) -> None:  # records are decoded per event type below
            return None

        on_batch.__name__ = f"{self.settings.service_name}_consumer"
        on_batch.__doc__ = f"{self.settings.service_name} consumes {', '.join(self.handlers)}."
        broker.subscriber(
            *self.handlers,
            group_id=self.group_id,
            batch=True,
            max_records=self.settings.consumer_batch_size,
            # An empty poll is followed by a pause of the same length (faststream), in
            # which an arriving record waits: keep both short (the default 200 ms added up
            # to 400 ms per hop to a signal's way to its case).
            batch_timeout_ms=self.settings.consumer_fetch_max_wait_ms,
            auto_offset_reset="earliest",
            session_timeout_ms=self.settings.consumer_session_timeout_ms,
            heartbeat_interval_ms=max(self.settings.consumer_session_timeout_ms // 4, 500),
            max_poll_interval_ms=self.settings.consumer_max_poll_interval_ms,
            fetch_max_wait_ms=self.settings.consumer_fetch_max_wait_ms,
            ack_policy=AckPolicy.MANUAL,
            decoder=skip_decoding,
        )(on_batch)

    async def consume(self, msg: KafkaMessage) -> None:
        raw = msg.raw_message
        records = raw if isinstance(raw, tuple | list) else (raw,)
        with metrics.BATCH_SECONDS.labels(group=self.group_id).time():
            outcomes: list[tuple[str, str]] = []
            lanes = lanes_of(records, self.settings.consumer_lanes)
            results = await asyncio.gather(
                *(self._transaction(lane) for lane in lanes), return_exceptions=True
            )
            # Every lane has ended (committed or rolled back) before the batch is judged.
            failures = [result for result in results if isinstance(result, BaseException)]
            if failures:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise failures[0]  # the service is stopping: the offsets stay uncommitted
                await self._retry_later(msg, failures)
                return
            for result in results:
                outcomes.extend(result)  # type: ignore[arg-type]
        self._backoff_s = self.settings.consumer_retry_backoff_s
        for topic, outcome in outcomes:  # counted once the transaction committed
            metrics.EVENTS_CONSUMED.labels(topic=topic, outcome=outcome).inc()
        self.outbox.wake()
        try:
            await msg.ack()
        except KafkaError as exc:  # partitions moved away: the new owner's inbox dedupes
            log.warning("offset commit failed", group=self.group_id, error=type(exc).__name__)

    async def _retry_later(self, msg: KafkaMessage, failures: Sequence[BaseException]) -> None:
        """Rewind the whole batch and wait before it comes again. Lanes that committed are
        redelivered with the rest, and their inbox drops them."""
        for failure in failures:  # each lane's failure, so no bug hides behind another
            if not is_infrastructure_error(failure):
                log.error("unexpected batch failure", group=self.group_id, **error_fields(failure))
        metrics.CONSUMER_RETRIES.labels(group=self.group_id).inc()
        log.warning(
            "batch rolled back, will retry",
            group=self.group_id,
            errors=sorted({type(failure).__name__ for failure in failures}),
            backoff_s=self._backoff_s,
        )
        await msg.nack()
        await asyncio.sleep(self._backoff_s)  # retry delay, not synchronisation
        self._backoff_s = min(self._backoff_s * 2, 30.0)

    async def _transaction(self, records: Sequence[Any]) -> list[tuple[str, str]]:
        """One lane of a batch in one database transaction; its outcomes once committed."""
        outcomes: list[tuple[str, str]] = []
        try:
            async with self.session_factory() as session, session.begin():
                await self._process_batch(session, records, outcomes)
        except _IsolateRecords as isolate:
            # Something in the lane is poison: redo it record by record, each in a
            # savepoint, so only the poison goes to the dead-letter topic.
            outcomes.clear()
            async with self.session_factory() as session, session.begin():
                for record in records:
                    await self._process(session, record, outcomes, isolate.spent_on)
        return outcomes

    async def _process_batch(
        self, session: AsyncSession, records: Sequence[Any], outcomes: list[tuple[str, str]]
    ) -> None:
        """The common case in few round trips: one inbox statement for the whole batch and
        no savepoints. Any failure that is not infrastructure asks for isolation."""
        try:
            decoded = [(record, decode_event(record.value)) for record in records]
        except ValidationError:
            raise _IsolateRecords from None
        fresh = await first_deliveries(
            session, self.tables, [(event.event_id, record.topic) for record, event in decoded]
        )
        together: dict[str, list[tuple[Received, trace.Span | None]]] = {}
        for record, event in decoded:
            if event.event_id not in fresh:  # seen before, or twice in this batch
                outcomes.append((record.topic, "duplicate"))
                continue
            fresh.discard(event.event_id)
            incoming = kafka_headers_to_dict(record.headers)
            if record.topic not in self.batch_handlers:
                span = _consumer_span(record.topic, incoming, event)
                with trace.use_span(span, end_on_exit=True):
                    try:
                        await self.handlers[record.topic](session, event)
                    except Exception as exc:
                        if is_infrastructure_error(exc):
                            raise
                        raise _IsolateRecords(spent_on=event.event_id) from exc
                outcomes.append((record.topic, "processed"))
                continue
            # For the batch handler: spans only when tracing; what an event causes carries
            # on its consumer span's context, or else the context it came with.
            batch_span = _consumer_span(record.topic, incoming, event) if tracing() else None
            headers = trace_headers_of(incoming)
            if batch_span is not None:
                with trace.use_span(batch_span):
                    headers = current_trace_headers()
            together.setdefault(record.topic, []).append((Received(event, headers), batch_span))
            outcomes.append((record.topic, "processed"))
        for topic, items in together.items():
            try:
                await self.batch_handlers[topic](session, [received for received, _ in items])
            except Exception as exc:
                if is_infrastructure_error(exc):
                    raise
                raise _IsolateRecords from exc
            finally:
                for _, record_span in items:
                    if record_span is not None:
                        record_span.end()

    async def _process(
        self,
        session: AsyncSession,
        record: Any,
        outcomes: list[tuple[str, str]],
        spent_on: Any = None,
    ) -> None:
        topic = record.topic
        headers = kafka_headers_to_dict(record.headers)
        span = span_for_record(topic, headers)
        with trace.use_span(span, end_on_exit=True):
            try:
                event = decode_event(record.value)
            except ValidationError as exc:
                await self._dead_letter(session, record, headers, failure_reason(exc), outcomes)
                return
            span.set_attribute("messaging.message.id", str(event.event_id))
            span.set_attribute("vroeg.gemeentecode", event.gemeentecode)
            if not await first_delivery(session, self.tables, event.event_id, topic):
                outcomes.append((topic, "duplicate"))
                return
            attempts = self.settings.consumer_max_attempts - (event.event_id == spent_on)
            error = await self._handle_with_retries(
                session, self.handlers[topic], event, max(attempts, 1)
            )
            if error is None:
                outcomes.append((topic, "processed"))
                return
            await session.execute(
                update(self.tables.inbox)
                .where(self.tables.inbox.c.event_id == event.event_id)
                .values(outcome="deadlettered")
            )
            await self._dead_letter(session, record, headers, failure_reason(error), outcomes)

    async def _handle_with_retries(
        self, session: AsyncSession, handle: Handler, event: AnyEvent, attempts: int
    ) -> Exception | None:
        error: Exception | None = None
        for _attempt in range(attempts):
            try:
                async with session.begin_nested():
                    await handle(session, event)
                return None
            except Exception as exc:
                if is_infrastructure_error(exc):
                    raise
                if isinstance(exc, Rejected):
                    return exc
                error = exc
        return error

    async def _dead_letter(
        self,
        session: AsyncSession,
        record: Any,
        headers: dict[str, str],
        reason: str,
        outcomes: list[tuple[str, str]],
    ) -> None:
        outcomes.append((record.topic, "deadlettered"))
        log.error(
            "message dead-lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=reason,
        )
        key = record.key.decode("utf-8", "replace") if record.key else "unknown"
        await self.outbox.stage_raw(
            session,
            DEAD_LETTER,
            key=key,
            payload=record.value or b"",
            headers={
                **headers,
                "dlq.reason": reason,
                "dlq.topic": record.topic,
                "dlq.partition": str(record.partition),
                "dlq.offset": str(record.offset),
                "dlq.group": self.group_id,
            },
        )
