import base64
import contextlib
import errno
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    NodeNotReadyError,
    RequestTimedOutError,
    UnknownTopicOrPartitionError,
)
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)

from services.intake.settings import IntakeSettings
from shared import messaging
from shared.events import decode_event
from shared.messaging import (
    BatchConsumer,
    Rejected,
    error_kind,
    failure_reason,
    is_infrastructure_error,
    lanes_of,
    rewind,
)
from shared.settings import ServiceSettings


class _Orig(Exception):
    def __init__(self, sqlstate: str | None = None) -> None:
        self.sqlstate = sqlstate


class _ClientDataError(asyncpg.InterfaceError, ValueError):
    """As asyncpg's client-side DataError: an InterfaceError and a ValueError at once."""


def _asyncpg_data_error() -> InterfaceError:
    """What SQLAlchemy raises when asyncpg refuses a value on the client side."""
    orig = _Orig()
    orig.__cause__ = _ClientDataError("invalid input for query argument $1: 'Jansen'")
    return InterfaceError("SELECT", {}, orig)


def test_unreachable_database_or_broker_is_infrastructure_not_poison() -> None:
    assert is_infrastructure_error(ConnectionRefusedError())
    assert is_infrastructure_error(OperationalError("SELECT 1", {}, _Orig("08006")))
    assert is_infrastructure_error(IntegrityError("x", {}, _Orig("40P01")))  # deadlock


def test_a_broken_rule_is_poison() -> None:
    assert not is_infrastructure_error(IntegrityError("x", {}, _Orig("23505")))
    assert not is_infrastructure_error(ValueError("bad"))
    assert not is_infrastructure_error(Rejected("bad"))


def test_errors_are_classified_unreachable_transient_or_poison() -> None:
    # Waited for, never dead-lettered: the database or broker cannot be reached.
    assert error_kind(ConnectionRefusedError()) == "unreachable"
    assert error_kind(OperationalError("SELECT 1", {}, _Orig("08006"))) == "unreachable"
    assert error_kind(DBAPIError("x", {}, _Orig("53300"))) == "unreachable"  # too many conns
    assert error_kind(DBAPIError("x", {}, _Orig("57P01"))) == "unreachable"  # admin shutdown
    invalidated = InterfaceError("x", {}, _Orig(), connection_invalidated=True)
    assert error_kind(invalidated) == "unreachable"
    # Retried, but bounded: the record itself may be the cause.
    assert error_kind(DBAPIError("x", {}, _Orig("57014"))) == "transient"  # statement timeout
    assert error_kind(DBAPIError("x", {}, _Orig("55P03"))) == "transient"  # lock timeout
    assert error_kind(DBAPIError("x", {}, _Orig("40P01"))) == "transient"  # deadlock
    assert error_kind(InterfaceError("x", {}, _Orig())) == "transient"
    assert error_kind(OperationalError("SELECT 1", {}, _Orig())) == "transient"
    # The record's fault at once.
    assert error_kind(_asyncpg_data_error()) == "poison"
    assert error_kind(DBAPIError("x", {}, _Orig("22P02"))) == "poison"
    assert error_kind(IntegrityError("x", {}, _Orig("23505"))) == "poison"


def test_a_system_error_or_a_missing_table_is_waited_for_not_dead_lettered() -> None:
    assert error_kind(DBAPIError("x", {}, _Orig("58030"))) == "unreachable"  # I/O error
    assert error_kind(OperationalError("x", {}, _Orig("58000"))) == "unreachable"
    # deployed before its migration: every record would fail alike
    assert error_kind(ProgrammingError("SELECT", {}, _Orig("42P01"))) == "unreachable"
    assert error_kind(ProgrammingError("SELECT", {}, _Orig("42703"))) == "poison"


def _wrapped(cause: BaseException) -> OperationalError:
    """What SQLAlchemy raises over a driver error without a SQLSTATE."""
    orig = _Orig()
    orig.__cause__ = cause
    return OperationalError("SELECT 1", {}, orig)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(),
        ConnectionResetError(),
        BrokenPipeError(),
        socket.gaierror(socket.EAI_NONAME, "unknown host"),
        OSError(errno.EHOSTUNREACH, "no route to host"),
        OSError(errno.ENETUNREACH, "network unreachable"),
        KafkaConnectionError(),
        RequestTimedOutError(),
        NodeNotReadyError(),
        asyncpg.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.CannotConnectNowError("starting up"),
        asyncpg.TooManyConnectionsError("too many"),
        OperationalError("SELECT 1", {}, _Orig(), connection_invalidated=True),
        _wrapped(ConnectionResetError()),
    ],
    ids=type,
)
def test_connection_level_errors_are_unreachable(exc: BaseException) -> None:
    assert error_kind(exc) == "unreachable"


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOENT, "no such file"),
        OSError("anything else"),
        PermissionError(),
        TimeoutError(),
        KafkaError(),
        UnknownTopicOrPartitionError(),
        asyncpg.InterfaceError("another operation is in progress"),
        _wrapped(RuntimeError()),
    ],
    ids=type,
)
def test_other_os_timeout_and_kafka_errors_are_transient_so_bounded(exc: BaseException) -> None:
    assert error_kind(exc) == "transient"


def test_a_transient_error_that_kept_coming_back_is_named_in_the_reason() -> None:
    reason = failure_reason(DBAPIError("SELECT pg_sleep(1)", {}, _Orig("57014")))
    assert (
        reason
        == "handler error: DBAPIError (SQLSTATE 57014), transient error that kept coming back"
    )
    assert "Jansen" not in failure_reason(_asyncpg_data_error())


class _Seeks:
    def __init__(self) -> None:
        self.seeks: dict[TopicPartition, int] = {}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks[partition] = offset


def test_rewind_seeks_every_partition_of_the_batch_to_its_first_record() -> None:
    records = [
        SimpleNamespace(topic=topic, partition=partition, offset=offset)
        for topic, partition, offset in [
            ("a", 1, 7),
            ("a", 0, 3),
            ("a", 1, 8),
            ("b", 0, 40),
            ("a", 2, 11),
            ("a", 0, 4),
        ]
    ]
    consumer = _Seeks()
    rewind(consumer, records)
    assert consumer.seeks == {
        TopicPartition("a", 0): 3,
        TopicPartition("a", 1): 7,
        TopicPartition("a", 2): 11,
        TopicPartition("b", 0): 40,
    }


def test_failure_reason_names_the_rule_but_never_the_data() -> None:
    with pytest.raises(ValidationError) as caught:
        decode_event(b'{"event_type":"SignalReceived","gemeentecode":"Jansen, Brinkstraat 12"}')
    reason = failure_reason(caught.value)
    assert "gemeentecode" in reason
    assert "Jansen" not in reason and "Brinkstraat" not in reason
    assert failure_reason(KeyError("Jansen")) == "handler error: KeyError"
    with pytest.raises(ValidationError) as caught:
        decode_event(b'{"event_type":"OutreachDue","999990019":1}')
    reason = failure_reason(caught.value)
    assert "OutreachDue.?: extra_forbidden" in reason  # an unexpected key: not shown
    assert "OutreachDue.case_id: missing" in reason
    assert "999990019" not in reason


def test_production_refuses_development_and_placeholder_secrets() -> None:
    with pytest.raises(ValidationError, match="development secret"):
        IntakeSettings(environment="production", _env_file=None)
    real = {
        "household_key_secret": "k" * 40,
        "token_signing_key": "t" * 40,
        "master_key": base64.b64encode(bytes(range(32))).decode(),
        "public_url": "https://vroegsignalering.example.nl",
    }
    for placeholder in ("REPLACE_ME", "too-short", "x" * 40 + "changethis"):
        with pytest.raises(ValidationError, match="placeholder or is too short"):
            IntakeSettings(
                environment="production",
                _env_file=None,
                **{**real, "token_signing_key": placeholder},
            )
    IntakeSettings(environment="production", _env_file=None, **real)
    with pytest.raises(ValidationError, match="32 random bytes"):
        IntakeSettings(environment="production", _env_file=None, **{**real, "master_key": "p" * 44})
    with pytest.raises(ValidationError, match="https"):
        IntakeSettings(
            environment="production", _env_file=None, **{**real, "public_url": "http://x"}
        )
    ServiceSettings(environment="production", _env_file=None)  # no secrets of its own


@dataclass(frozen=True)
class _Record:
    key: bytes | None
    offset: int


@given(
    st.lists(st.sampled_from([b"a" * 64, b"b" * 64, b"c" * 64, b"d" * 64, None]), max_size=60),
    st.integers(min_value=1, max_value=6),
)
def test_lanes_keep_each_household_in_one_lane_in_order(
    keys: list[bytes | None], lanes: int
) -> None:
    records = [_Record(key, offset) for offset, key in enumerate(keys)]
    parts = lanes_of(records, lanes)
    assert len(parts) <= lanes
    assert all(parts), "no empty lane"
    assert sorted(r.offset for part in parts for r in part) == list(range(len(records)))
    lane_of = {r.key: i for i, part in enumerate(parts) for r in part}
    for i, part in enumerate(parts):
        assert all(lane_of[r.key] == i for r in part), "a household in two lanes"
        assert [r.offset for r in part] == sorted(r.offset for r in part), "order kept"


def test_one_lane_is_the_batch_as_it_came() -> None:
    records = [_Record(bytes([n]), n) for n in range(10)]
    assert lanes_of(records, 1) == [records]
    assert lanes_of([], 3) == []


def test_many_households_spread_over_every_lane() -> None:
    records = [_Record(f"{n:064x}".encode(), n) for n in range(300)]
    parts = lanes_of(records, 3)
    assert len(parts) == 3
    assert min(len(part) for part in parts) >= 60, [len(part) for part in parts]
    assert lanes_of(records, 3) == parts, "the same batch splits the same way"


class _Session:
    """Just the savepoints of a session."""

    @contextlib.asynccontextmanager
    async def begin_nested(self) -> AsyncIterator[None]:
        yield


def _consumer(budget_s: float) -> BatchConsumer:
    settings = ServiceSettings(_env_file=None, consumer_retry_backoff_s=0.25)
    return BatchConsumer(
        settings=settings,
        subscriptions=[],
        session_factory=None,  # type: ignore[arg-type]
        outbox=None,  # type: ignore[arg-type]
        tables=None,  # type: ignore[arg-type]
        transient_budget_s=budget_s,
    )


async def test_an_isolated_record_is_dead_lettered_for_a_lock_only_after_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[float] = []

    async def pause(seconds: float) -> None:  # record the back-off instead of waiting
        pauses.append(seconds)

    monkeypatch.setattr(messaging.asyncio, "sleep", pause)
    clock = [1000.0]
    monkeypatch.setattr(messaging.time, "monotonic", lambda: clock[0])
    calls: list[int] = []

    async def locked(session: Any, event: Any) -> None:
        calls.append(1)
        raise DBAPIError("UPDATE", {}, _Orig("55P03"))  # lock not available

    consumer = _consumer(budget_s=300)
    event = SimpleNamespace(event_id=uuid.uuid4())
    session: Any = _Session()
    for elapsed in (0.0, 60.0, 299.0):  # within the budget: the lane is retried later
        clock[0] = 1000.0 + elapsed
        with pytest.raises(DBAPIError):
            await consumer._handle_with_retries(session, locked, event, 3, strict=True)
    assert len(calls) == 3 and pauses == []
    clock[0] = 1000.0 + 300.0  # failing isolated for the whole budget: attempts count now
    error = await consumer._handle_with_retries(session, locked, event, 3, strict=True)
    assert isinstance(error, DBAPIError)
    assert len(calls) == 6
    assert pauses == [0.25, 0.5], "a pause between the attempts"


async def test_a_poison_record_is_not_delayed_by_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(messaging.asyncio, "sleep", pause)

    async def refused(session: Any, event: Any) -> None:
        raise IntegrityError("INSERT", {}, _Orig("23505"))

    consumer = _consumer(budget_s=300)
    event = SimpleNamespace(event_id=uuid.uuid4())
    error = await consumer._handle_with_retries(_Session(), refused, event, 3, strict=True)  # type: ignore[arg-type]
    assert isinstance(error, IntegrityError) and pauses == []


def test_the_transient_budget_defaults_to_five_minutes() -> None:
    consumer = BatchConsumer(
        settings=ServiceSettings(_env_file=None),
        subscriptions=[],
        session_factory=None,  # type: ignore[arg-type]
        outbox=None,  # type: ignore[arg-type]
        tables=None,  # type: ignore[arg-type]
    )
    assert consumer.transient_budget_s == 300.0
