"""Tracing and structured logging, set up once per process.

Span attributes and log fields carry identifiers (event ids, case ids, municipality
codes, topic names), never personal data: no names, addresses, BSNs or amounts.

No exception message reaches a log line or a span: a database or validation error's text
can quote the value it failed on (asyncpg's DataError does, despite `hide_parameters`).
An error is described by its type, its SQLSTATE and the place it was raised
(`error_fields`), in structlog's lines, in the standard library's (uvicorn, aiokafka,
faststream) and in exported spans (`ScrubbingSpanExporter`, which also covers the
instrumentations that record `exception.message` or put the text in the span status).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Status, StatusCode

from shared.settings import ServiceSettings

_configured = False
_tracing = False


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans to a file, one JSON object a line (development and tests)."""

    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            parent = span.parent
            lines.append(
                json.dumps(
                    {
                        "service": span.resource.attributes.get("service.name"),
                        "name": span.name,
                        "trace_id": format(ctx.trace_id, "032x") if ctx else None,
                        "span_id": format(ctx.span_id, "016x") if ctx else None,
                        "parent_id": format(parent.span_id, "016x") if parent else None,
                        "kind": span.kind.name,
                        "start": span.start_time,
                        "end": span.end_time,
                        "attributes": dict(span.attributes or {}),
                    },
                    default=str,
                )
            )
        with self._lock, open(self._path, "a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS


# Event attributes (OpenTelemetry semantic conventions, "Exceptions") that hold an
# exception's text: its message, and the traceback whose last line repeats it.
_EXCEPTION_TEXT_ATTRIBUTES = ("exception.message", "exception.stacktrace")


def scrubbed(span: ReadableSpan) -> ReadableSpan:
    """The span without exception text: events keep `exception.type`, the status keeps its
    code and drops its description (SQLAlchemy's instrumentation puts str(error) there)."""
    events = [
        Event(
            event.name,
            {
                key: value
                for key, value in (event.attributes or {}).items()
                if key not in _EXCEPTION_TEXT_ATTRIBUTES
            },
            event.timestamp,
        )
        for event in span.events
    ]
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=span.attributes,
        events=events,
        links=span.links,
        kind=span.kind,
        status=Status(span.status.status_code),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class ScrubbingSpanExporter(SpanExporter):
    """Hands spans to another exporter without any exception message (see `scrubbed`)."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._inner.export([scrubbed(span) for span in spans])

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _exporter(settings: ServiceSettings) -> SpanExporter | None:
    exporter: SpanExporter
    if settings.otel_exporter == "console":
        exporter = ConsoleSpanExporter(out=sys.stderr)
    elif settings.otel_exporter == "file":
        exporter = JsonLinesSpanExporter(settings.otel_file)
    elif settings.otel_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otel_endpoint)
    else:
        return None
    return ScrubbingSpanExporter(exporter)


def configure(settings: ServiceSettings) -> None:
    """Install the tracer provider and JSON logging for this process."""
    global _configured, _tracing
    if _configured:
        return
    _configured = True
    exporter = _exporter(settings)
    _configure_logging(settings)
    if exporter is None:
        return  # the API's no-op tracer: spans cost nothing when nobody collects them
    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": f"vroeg-{settings.service_name}",
                "service.instance.id": str(os.getpid()),
            }
        )
    )
    # Export off the request path; the file exporter (development, tests) flushes often.
    delay_ms = 100 if settings.otel_exporter == "file" else 5000
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=delay_ms))
    trace.set_tracer_provider(provider)
    _tracing = True


def tracing() -> bool:
    """Whether this process exports spans. Without an exporter the hot paths skip making
    spans and pass the trace context they received on unchanged, so a trace stays whole
    across a service that does not export."""
    return _tracing


def describe_error(exc: BaseException) -> str:
    """An exception in one line without its message: type, SQLSTATE, place."""
    return " ".join(f"{key}={value}" for key, value in error_fields(exc).items())


class SafeFormatter(logging.Formatter):
    """The standard library's log lines (uvicorn's error log, aiokafka, faststream) with an
    exception as its type, SQLSTATE and place: never its message or traceback text."""

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, BaseException):
            record.msg = describe_error(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                describe_error(arg) if isinstance(arg, BaseException) else arg
                for arg in record.args
            )
        elif isinstance(record.args, Mapping):
            record.args = {
                key: describe_error(arg) if isinstance(arg, BaseException) else arg
                for key, arg in record.args.items()
            }
        return super().format(record)

    def formatException(self, ei: Any) -> str:
        exc = ei[1] if isinstance(ei, tuple) else None
        return describe_error(exc) if isinstance(exc, BaseException) else ""


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the process' current stderr; a record it cannot write is dropped without
    the standard library's report, which prints the traceback of the exception being
    handled, message and all."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        return None


def safe_exc_info(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog's `format_exc_info` without the message: `log.exception(...)` and an
    exception passed as a field give type, SQLSTATE and place."""
    exc_info = event.pop("exc_info", None)
    if exc_info is True:
        exc_info = sys.exc_info()
    exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
    if isinstance(exc, BaseException):
        for key, value in error_fields(exc).items():
            event.setdefault(key, value)
    for key, value in list(event.items()):
        if isinstance(value, BaseException):
            event[key] = describe_error(value)
    return event


def _configure_logging(settings: ServiceSettings) -> None:
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(message)s"))
    logging.basicConfig(handlers=[handler], level=settings.log_level.upper(), force=True)
    for noisy in ("aiokafka", "faststream", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_trace_ids,
            safe_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(settings.log_level.upper())
        ),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=settings.service_name)


def _add_trace_ids(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event["trace_id"] = format(ctx.trace_id, "032x")
        event["span_id"] = format(ctx.span_id, "016x")
    return event


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def current_trace_headers() -> dict[str, str]:
    """W3C trace context of the current span, to store with an outbox row."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def context_from_headers(headers: Mapping[str, str]) -> otel_context.Context:
    return propagate.extract(dict(headers))


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error raised through SQLAlchemy (asyncpg or psycopg)."""
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return str(sqlstate) if sqlstate else None


def error_fields(exc: BaseException) -> dict[str, str]:
    """What a log line may say about an exception: its type, its SQLSTATE and where it
    was raised, never its message (a database error's detail can quote the row's values)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:  # the first that happened
        exc = exc.exceptions[0]
    fields = {"error": type(exc).__name__}
    sqlstate = sqlstate_of(exc)
    if sqlstate:
        fields["sqlstate"] = str(sqlstate)
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        fields["raised_at"] = f"{frames[-1].filename}:{frames[-1].lineno} {frames[-1].name}"
    return fields


def mark_span_failed(span: trace.Span, exc: BaseException) -> None:
    """Mark a span failed with the error's type and SQLSTATE (semantic conventions
    `error.type`, `db.response.status_code`), never its message."""
    fields = error_fields(exc)
    span.set_status(Status(StatusCode.ERROR))
    span.set_attribute("error.type", fields["error"])
    if "sqlstate" in fields:
        span.set_attribute("db.response.status_code", fields["sqlstate"])


TRACE_HEADERS = ("traceparent", "tracestate")


def trace_headers_of(headers: Mapping[str, str]) -> dict[str, str]:
    """The W3C trace context among a message's headers."""
    return {name: headers[name] for name in TRACE_HEADERS if name in headers}


def kafka_headers_to_dict(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    return {key: value.decode("utf-8", "replace") for key, value in headers or ()}
