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
An infrastructure error rolls the lane back, seeks every partition of the batch back to
its first record and retries with backoff. Errors are classified (`error_kind`):
- unreachable (a connection-level error: the database or broker down or unknown, too many
  connections, a system or disk error (SQLSTATE class 58), a table that is not there yet
  (42P01: deployed before its migration)): waited for, however long; the message is not at
  fault, so it is never dead-lettered for it;
- transient (deadlock, serialization failure, statement or lock timeout, a broken
  operation on a live connection, any other OSError, TimeoutError or Kafka error): retried;
  after `consumer_max_transient_retries` failed batches in a row the batch is taken record
  by record (isolated). An isolated record whose handler still fails on a transient error
  rolls its lane back and the batch is retried with backoff, until the record has kept
  failing so, isolated, for the transient budget (the setting
  `consumer_transient_budget_s`, by default 300 s);
  only then its attempts count, with a pause between them, and a record that still fails
  is dead-lettered with the reason. So a record waiting on a lock held for minutes (an
  operator's command) is processed once the lock is released, while a record that causes
  a timeout itself does not loop for ever. A transient error outside the handler (the inbox,
  the dead-letter staging) never dead-letters: the batch is retried;
- poison (everything else, such as a value the database refuses): the handler's
  savepoint is retried `consumer_max_attempts` times, then dead-lettered.
A record whose event type does not belong to its topic is dead-lettered at once.
Dead letters themselves go through the outbox, so they are as safe as any other event;
the inbox marks a dead-lettered event, which `vroeg deadletter replay` clears (ADR 0011).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NoBrokersAvailable,
    NodeNotReadyError,
    RequestTimedOutError,
)
from aiokafka.helpers import create_ssl_context
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from opentelemetry import trace
from pydantic import BaseModel, ValidationError
from sqlalchemy import update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import events as events_module
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
    mark_span_failed,
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

ErrorKind = Literal["unreachable", "transient", "poison"]

# SQLSTATEs (PostgreSQL manual, appendix A "Error Codes") that say the database cannot be
# reached or cannot take work now: class 08 connection exception, class 53 insufficient
# resources (too many connections, disk full), class 58 system error (disk I/O),
# 57P01-57P03 shutdown / cannot connect now, 42P01 undefined table (the service was
# deployed before its migration ran: every record would fail alike).
_UNREACHABLE_SQLSTATE_CLASSES = ("08", "53", "58")
_UNREACHABLE_SQLSTATES = ("57P01", "57P02", "57P03", "42P01")
# SQLSTATEs that may pass on a retry but may as well be caused by the record itself: class
# 40 transaction rollback (serialization failure, deadlock), class 57 operator intervention
# (57014 statement timeout), 55P03 lock not available (lock timeout).
_TRANSIENT_SQLSTATE_CLASSES = ("40", "57")
_TRANSIENT_SQLSTATES = ("55P03",)
# Connection-level errors below the database's SQLSTATEs: the server or broker cannot be
# reached at all. Any other OSError or TimeoutError may be the record's doing: transient.
_UNREACHABLE_ERRNOS = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN, errno.ETIMEDOUT}
)
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, aborted, broken pipe
    socket.gaierror,  # the host name does not resolve
    asyncpg.PostgresConnectionError,  # class 08, connection does not exist
    KafkaConnectionError,
    NoBrokersAvailable,
    NodeNotReadyError,
    RequestTimedOutError,
    KafkaTimeoutError,
)
# Records tracked for that budget at most (oldest forgotten first: a record whose partition
# moved to another replica is never seen again here).
_TRACKED_RECORDS = 10_000
# Records of the dead-letter topic are keyed like the record they carry, cut to the
# outbox's key column (shared.outbox: String(128)).
_OUTBOX_KEY_LENGTH = 128


class Rejected(Exception):
    """A handler's verdict that an event can never be processed; the text names the rule.

    The text goes into the dead-letter headers: it must not hold personal data.
    """


def kafka_security(settings: ServiceSettings) -> BaseSecurity | None:
    """The TLS and SASL settings as faststream's security object (None: plaintext)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    ssl_context = None
    if protocol in ("SSL", "SASL_SSL"):
        ssl_context = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )
    if protocol == "SSL":
        return BaseSecurity(ssl_context=ssl_context)
    assert settings.kafka_sasl_username and settings.kafka_sasl_password  # settings check it
    sasl = {
        "PLAIN": SASLPlaintext,
        "SCRAM-SHA-256": SASLScram256,
        "SCRAM-SHA-512": SASLScram512,
    }[settings.kafka_sasl_mechanism or "PLAIN"]
    return sasl(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password.get_secret_value(),
        ssl_context=ssl_context,
        use_ssl=protocol == "SASL_SSL",
    )


def kafka_client_args(settings: ServiceSettings) -> dict[str, Any]:
    """The same security as keyword arguments of aiokafka's clients (producer, consumer,
    admin): faststream's own translation, so the broker and the clients never differ."""
    return {
        "bootstrap_servers": settings.kafka_bootstrap,
        **parse_security(kafka_security(settings)),
    }


def make_broker(settings: ServiceSettings) -> KafkaBroker:
    return KafkaBroker(
        settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
        client_id=f"vroeg-{settings.service_name}",
        linger_ms=5,
        logger=None,
        security=kafka_security(settings),
    )


def make_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    """The outbox relay's producer: acks=all, idempotence as the broker allows, a short
    linger so that a round's records travel in few requests."""
    return AIOKafkaProducer(
        **kafka_client_args(settings),
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
        client_id=f"vroeg-{settings.service_name}-relay",
        linger_ms=5,
        max_batch_size=256 * 1024,
    )


def _driver_error(exc: BaseException) -> BaseException | None:
    """The driver's own exception under SQLAlchemy's (asyncpg's, raised from the adapter's)."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "__cause__", None) or orig


def _connection_lost(exc: BaseException | None) -> bool:
    """A connection-level error: the database or broker cannot be reached."""
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    return isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS


def _sqlstate_kind(sqlstate: str) -> ErrorKind | None:
    if sqlstate[:2] in _UNREACHABLE_SQLSTATE_CLASSES or sqlstate in _UNREACHABLE_SQLSTATES:
        return "unreachable"
    if sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES or sqlstate in _TRANSIENT_SQLSTATES:
        return "transient"
    return None


def error_kind(exc: BaseException) -> ErrorKind:
    """Whether an error is the infrastructure's (wait: `unreachable`; retry a bounded number
    of times: `transient`) or the record's (`poison`)."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return "unreachable"
        driver = _driver_error(exc)
        if isinstance(driver, asyncpg.DataError | ValueError):
            # The driver refused a value (asyncpg: DataError, some of them an InterfaceError
            # and a ValueError at once): the record is at fault, however often retried.
            return "poison"
        sqlstate = sqlstate_of(exc)
        if sqlstate is not None:
            kind = _sqlstate_kind(sqlstate)
            if kind is not None:
                return kind
            return "transient" if isinstance(exc, OperationalError) else "poison"
        if _connection_lost(driver):
            return "unreachable"  # no SQLSTATE: the driver could not talk to the server
        return "transient" if isinstance(exc, OperationalError | InterfaceError) else "poison"
    if isinstance(exc, asyncpg.PostgresError):  # raised by the driver itself (connecting)
        return _sqlstate_kind(exc.sqlstate or "") or "poison"
    if isinstance(exc, asyncpg.InterfaceError):
        return "poison" if isinstance(exc, ValueError) else "transient"
    if _connection_lost(exc) or isinstance(exc, PoolTimeoutError):
        return "unreachable"
    if isinstance(exc, OSError | TimeoutError | KafkaError):
        return "transient"  # bounded: it may be the record's doing
    return "poison"


def is_infrastructure_error(exc: BaseException) -> bool:
    """Not the record's fault: the batch is rolled back and retried (bounded if transient)."""
    return error_kind(exc) != "poison"


# The names a validation error's location may show: the event models and their fields.
# Any other part (an unexpected key, a key inside a free-form dict) comes from the
# payload and could be personal data (a BSN as a key), so it is shown as "?".
_KNOWN_NAMES = frozenset(
    name
    for model in vars(events_module).values()
    if isinstance(model, type) and issubclass(model, BaseModel)
    for name in (model.__name__, *model.model_fields)
)


def _location(loc: Sequence[int | str]) -> str:
    return ".".join(
        str(part) if isinstance(part, int) or part in _KNOWN_NAMES else "?" for part in loc
    )


def failure_reason(exc: BaseException) -> str:
    """A reason fit for the dead-letter headers: the rule broken, never the data."""
    if isinstance(exc, Rejected):
        return str(exc)
    if isinstance(exc, ValidationError):
        problems = [
            f"{_location(error['loc'])}: {error['type']}"
            for error in exc.errors(include_input=False, include_url=False)
        ]
        return "invalid event: " + "; ".join(problems[:10])
    reason = f"handler error: {type(exc).__name__}"
    sqlstate = sqlstate_of(exc)
    if sqlstate:
        reason += f" (SQLSTATE {sqlstate})"
    if error_kind(exc) == "transient":
        reason += ", transient error that kept coming back"
    return reason


class Seekable(Protocol):
    def seek(self, partition: TopicPartition, offset: int) -> None: ...


def rewind(consumer: Seekable, records: Sequence[Any]) -> dict[TopicPartition, int]:
    """Seek every partition of a batch back to its first record, so that the next poll
    returns the whole batch again and no offset is committed past an unprocessed record.
    Done here with aiokafka's consumer rather than left to faststream's `nack()`, whose
    rewind of a multi-partition batch differs between its 0.7 releases."""
    earliest: dict[TopicPartition, int] = {}
    for record in records:
        partition = TopicPartition(record.topic, record.partition)
        earliest[partition] = min(record.offset, earliest.get(partition, record.offset))
    for partition, offset in earliest.items():
        consumer.seek(partition, offset)
    return earliest


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
        transient_budget_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.topics = {s.topic.name: s.topic for s in subscriptions}
        self.handlers = {s.topic.name: s.one() for s in subscriptions}
        self.batch_handlers = {
            s.topic.name: s.handle_many for s in subscriptions if s.handle_many is not None
        }
        self.session_factory = session_factory
        self.outbox = outbox
        self.tables = tables
        self.group_id = settings.consumer_group
        self._backoff_s = settings.consumer_retry_backoff_s
        # Batches in a row that failed on other than an unreachable database or broker.
        self._failed_batches = 0
        # How long an isolated record may keep failing on transient errors before its
        # attempts count (module docstring); per event id, since when it has been failing.
        self.transient_budget_s: float = (
            transient_budget_s
            if transient_budget_s is not None
            else settings.consumer_transient_budget_s
        )
        self._failing_since: dict[Any, float] = {}

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
        # After too many failed batches in a row, record by record: a transient error that
        # keeps coming back on one isolated record for the transient budget then counts
        # towards that record's attempts.
        strict = self._failed_batches >= self.settings.consumer_max_transient_retries
        with metrics.BATCH_SECONDS.labels(group=self.group_id).time():
            outcomes: list[tuple[str, str]] = []
            lanes = lanes_of(records, self.settings.consumer_lanes)
            results = await asyncio.gather(
                *(self._transaction(lane, strict=strict) for lane in lanes),
                return_exceptions=True,
            )
            # Every lane has ended (committed or rolled back) before the batch is judged.
            failures = [result for result in results if isinstance(result, BaseException)]
            if failures:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise failures[0]  # the service is stopping: the offsets stay uncommitted
                if any(error_kind(failure) != "unreachable" for failure in failures):
                    self._failed_batches += 1  # an unreachable database is waited for
                await self._retry_later(msg, records, failures)
                return
            for result in results:
                outcomes.extend(result)  # type: ignore[arg-type]
        self._backoff_s = self.settings.consumer_retry_backoff_s
        self._failed_batches = 0
        for topic, outcome in outcomes:  # counted once the transaction committed
            metrics.EVENTS_CONSUMED.labels(topic=topic, outcome=outcome).inc()
        self.outbox.wake()
        try:
            await msg.ack()
        except KafkaError as exc:  # partitions moved away: the new owner's inbox dedupes
            log.warning("offset commit failed", group=self.group_id, error=type(exc).__name__)

    async def _retry_later(
        self, msg: KafkaMessage, records: Sequence[Any], failures: Sequence[BaseException]
    ) -> None:
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
            kinds=sorted({error_kind(failure) for failure in failures}),
            failed_batches=self._failed_batches,
            backoff_s=self._backoff_s,
        )
        try:
            rewind(msg.consumer, records)
        except KafkaError as exc:  # a partition moved away: its new owner starts at the commit
            log.warning("rewind failed", group=self.group_id, error=type(exc).__name__)
        await asyncio.sleep(self._backoff_s)  # retry delay, not synchronisation
        self._backoff_s = min(self._backoff_s * 2, self.settings.consumer_retry_backoff_max_s)

    async def _transaction(
        self, records: Sequence[Any], *, strict: bool = False
    ) -> list[tuple[str, str]]:
        """One lane of a batch in one database transaction; its outcomes once committed.
        `strict`: the lane failed too often, so it goes record by record at once and a
        transient error counts as a failed attempt."""
        outcomes: list[tuple[str, str]] = []
        spent_on = None
        if not strict:
            try:
                async with self.session_factory() as session, session.begin():
                    await self._process_batch(session, records, outcomes)
                return outcomes
            except _IsolateRecords as isolate:
                spent_on = isolate.spent_on
        # Something in the lane is poison: redo it record by record, each in a savepoint,
        # so only the poison goes to the dead-letter topic.
        outcomes.clear()
        async with self.session_factory() as session, session.begin():
            for record in records:
                await self._process(session, record, outcomes, spent_on, strict=strict)
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
        if not all(self.topics[record.topic].accepts(event) for record, event in decoded):
            raise _IsolateRecords  # a foreign event type: dead-lettered record by record
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
                # No exception message on a span (it can quote a value): type and SQLSTATE.
                with trace.use_span(
                    span, end_on_exit=True, record_exception=False, set_status_on_exception=False
                ):
                    try:
                        await self.handlers[record.topic](session, event)
                    except Exception as exc:
                        mark_span_failed(span, exc)
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
                for _, record_span in items:
                    if record_span is not None:
                        mark_span_failed(record_span, exc)
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
        *,
        strict: bool = False,
    ) -> None:
        topic = record.topic
        headers = kafka_headers_to_dict(record.headers)
        span = span_for_record(topic, headers)
        with trace.use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
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
            reason: str | None = None
            if not self.topics[topic].accepts(event):
                reason = (
                    f"event type {event.event_type} does not belong on topic {topic} "
                    f"(expected {', '.join(sorted(self.topics[topic].event_types))})"
                )
            else:
                attempts = self.settings.consumer_max_attempts - (event.event_id == spent_on)
                error = await self._handle_with_retries(
                    session, self.handlers[topic], event, max(attempts, 1), strict=strict
                )
                self._failing_since.pop(event.event_id, None)  # processed or dead-lettered
                if error is None:
                    outcomes.append((topic, "processed"))
                    return
                mark_span_failed(span, error)
                reason = failure_reason(error)
            await session.execute(
                update(self.tables.inbox)
                .where(self.tables.inbox.c.event_id == event.event_id)
                .values(outcome="deadlettered")
            )
            await self._dead_letter(session, record, headers, reason, outcomes, event=event)

    async def _handle_with_retries(
        self,
        session: AsyncSession,
        handle: Handler,
        event: AnyEvent,
        attempts: int,
        *,
        strict: bool = False,
    ) -> Exception | None:
        """The handler in a savepoint, up to `attempts` times; the last error if every
        attempt failed. A transient error is raised (the lane is retried) unless `strict`
        and the isolated record has kept failing for the transient budget; then the
        attempts count, with a pause after each transient failure."""
        error: Exception | None = None
        for attempt in range(attempts):
            if error is not None and error_kind(error) == "transient":
                await asyncio.sleep(self._pause(attempt))  # retry delay, not synchronisation
            try:
                async with session.begin_nested():
                    await handle(session, event)
                return None
            except Exception as exc:
                kind = error_kind(exc)
                if kind == "unreachable" or (kind == "transient" and not strict):
                    raise
                if isinstance(exc, Rejected):
                    return exc
                if kind == "transient" and not self._budget_spent(event.event_id):
                    raise  # not yet: the lane rolls back and the batch waits its backoff
                error = exc
        return error

    def _pause(self, attempt: int) -> float:
        """The wait before an isolated record's next attempt after a transient error."""
        pause = self.settings.consumer_retry_backoff_s * 2 ** (attempt - 1)
        return float(min(pause, self.settings.consumer_retry_backoff_max_s))

    def _budget_spent(self, event_id: Any) -> bool:
        """Whether an isolated record has been failing on transient errors for the whole
        transient budget; its first such failure starts the clock."""
        now = time.monotonic()
        since = self._failing_since.setdefault(event_id, now)
        while len(self._failing_since) > _TRACKED_RECORDS:
            del self._failing_since[next(iter(self._failing_since))]
        return now - since >= self.transient_budget_s

    async def _dead_letter(
        self,
        session: AsyncSession,
        record: Any,
        headers: dict[str, str],
        reason: str,
        outcomes: list[tuple[str, str]],
        event: Any = None,
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
        known = (
            {"dlq.event_id": str(event.event_id), "event_type": event.event_type} if event else {}
        )
        await self.outbox.stage_raw(
            session,
            DEAD_LETTER,
            key=key[:_OUTBOX_KEY_LENGTH],  # a foreign producer's long key must not loop
            payload=record.value or b"",
            headers={
                **headers,
                **known,
                "dlq.reason": reason,
                "dlq.topic": record.topic,
                "dlq.partition": str(record.partition),
                "dlq.offset": str(record.offset),
                "dlq.key": key,
                "dlq.group": self.group_id,
            },
        )
