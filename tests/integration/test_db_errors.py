"""A database error never carries the values it was given into a log, a span or a dead
letter's reason: not the values it was merely given, and not the value it failed on."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from services.intake.settings import IntakeSettings
from shared import telemetry
from shared.db import make_engine
from shared.events import OutreachDue, encode_event
from tests.conftest import Infra
from tests.integration.test_messaging import Harness, due_event

pytestmark = pytest.mark.integration

# A value that makes asyncpg raise DataError quoting it ("invalid input for query
# argument $1: 'Jansen-Brinkstraat-12' (invalid UUID ...)"), hide_parameters or not.
FAILING_VALUE = "Jansen-Brinkstraat-12"
FAILING_STATEMENT = "SELECT CAST(:value AS uuid)"


async def failing_statement_error() -> DBAPIError:
    engine = make_engine(IntakeSettings().database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as caught:
                await conn.execute(text(FAILING_STATEMENT), {"value": FAILING_VALUE})
    finally:
        await engine.dispose()
    return caught.value


@pytest.fixture
def service_logging() -> Iterator[None]:
    """The services' logging (structlog and the standard library's) for one test."""
    telemetry._configure_logging(IntakeSettings())
    try:
        yield
    finally:
        structlog.reset_defaults()
        logging.basicConfig(force=True)


async def test_a_failing_statement_does_not_echo_its_parameters(infra: Infra) -> None:
    engine = make_engine(IntakeSettings().database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as caught:
                await conn.execute(
                    text("INSERT INTO signalen (id, partner_signaal_id) VALUES (:id, :ref)"),
                    {"id": "not-a-uuid", "ref": "Jansen-Brinkstraat-12"},
                )
    finally:
        await engine.dispose()
    assert "Jansen-Brinkstraat-12" not in str(caught.value)
    assert "hidden" in str(caught.value).lower()


async def test_the_value_a_statement_failed_on_reaches_no_log_line(
    infra: Infra, capfd: pytest.CaptureFixture[str], service_logging: None
) -> None:
    error = await failing_statement_error()
    assert FAILING_VALUE in str(error), "the driver quotes the failing value: the danger"
    try:
        raise error
    except DBAPIError:
        structlog.get_logger("test").exception("statement failed")
        structlog.get_logger("test").error("statement failed", error=error)
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
        logging.getLogger("aiokafka").error("Unexpected error: %s", error)
    output = capfd.readouterr().err
    assert FAILING_VALUE not in output
    assert output.count("statement failed") == 2 and "Exception in ASGI application" in output
    assert output.count("DBAPIError") == 4, output  # each line names the type
    assert output.count("sqlstate") == 4, output  # and the SQLSTATE


async def test_the_value_a_statement_failed_on_reaches_no_exported_span(infra: Infra) -> None:
    error = await failing_statement_error()
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(telemetry.ScrubbingSpanExporter(memory)))
    with provider.get_tracer("test").start_as_current_span("request") as span:
        span.record_exception(error)  # what the ASGI instrumentation does
        span.set_status(Status(StatusCode.ERROR, str(error)))  # what SQLAlchemy's does
    [exported] = memory.get_finished_spans()
    assert exported.status.status_code is StatusCode.ERROR
    assert [event.attributes["exception.type"] for event in exported.events if event.attributes]
    assert FAILING_VALUE not in repr(exported.to_json())


async def test_a_consumer_whose_statement_fails_on_a_value_shows_it_nowhere(
    infra: Infra,
    capfd: pytest.CaptureFixture[str],
    service_logging: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    memory = InMemorySpanExporter()  # not scrubbed: the consumer's own spans must be clean
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr("shared.outbox.tracer", provider.get_tracer)
    bad, good = due_event(), due_event()

    async def handle(session: Any, event: OutreachDue) -> None:
        if event.event_id == bad.event_id:
            await session.execute(text(FAILING_STATEMENT), {"value": FAILING_VALUE})

    async with Harness(infra, handle) as harness:
        await harness.publish(encode_event(bad), key=bad.household_key.encode())
        await harness.publish(encode_event(good), key=good.household_key.encode())
        [(_record, headers)] = await harness.dead_letters(expected=1)
    spans = memory.get_finished_spans()
    assert FAILING_VALUE not in "".join(span.to_json() for span in spans)
    failed = [s for s in spans if s.status.status_code is StatusCode.ERROR]
    assert failed and all(s.attributes and s.attributes["error.type"] for s in failed)
    assert str(bad.event_id) in {
        str((s.attributes or {}).get("messaging.message.id")) for s in failed
    }
    output = capfd.readouterr()
    assert "message dead-lettered" in output.err
    assert FAILING_VALUE not in output.err + output.out
    assert headers["dlq.reason"] == "handler error: DBAPIError (SQLSTATE 22000)"
    assert uuid.UUID(headers["dlq.event_id"]) == bad.event_id
