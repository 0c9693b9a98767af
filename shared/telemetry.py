"""Tracing and structured logging, set up once per process.

Span attributes and log fields carry identifiers (event ids, case ids, municipality
codes, topic names), never personal data: no names, addresses, BSNs or amounts.
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
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

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


def _exporter(settings: ServiceSettings) -> SpanExporter | None:
    if settings.otel_exporter == "console":
        return ConsoleSpanExporter(out=sys.stderr)
    if settings.otel_exporter == "file":
        return JsonLinesSpanExporter(settings.otel_file)
    if settings.otel_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=settings.otel_endpoint)
    return None


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
    delay_ms = 100 if isinstance(exporter, JsonLinesSpanExporter) else 5000
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=delay_ms))
    trace.set_tracer_provider(provider)
    _tracing = True


def tracing() -> bool:
    """Whether this process exports spans. Without an exporter the hot paths skip making
    spans and pass the trace context they received on unchanged, so a trace stays whole
    across a service that does not export."""
    return _tracing


def _configure_logging(settings: ServiceSettings) -> None:
    logging.basicConfig(
        format="%(message)s", stream=sys.stderr, level=settings.log_level.upper(), force=True
    )
    for noisy in ("aiokafka", "faststream", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_trace_ids,
            structlog.processors.format_exc_info,
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


TRACE_HEADERS = ("traceparent", "tracestate")


def trace_headers_of(headers: Mapping[str, str]) -> dict[str, str]:
    """The W3C trace context among a message's headers."""
    return {name: headers[name] for name in TRACE_HEADERS if name in headers}


def kafka_headers_to_dict(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    return {key: value.decode("utf-8", "replace") for key, value in headers or ()}
