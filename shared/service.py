"""What every service process is: a FastAPI app with health and metrics, a Kafka broker
with its consumers, and an outbox relay, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from faststream.kafka import KafkaBroker
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import telemetry
from shared.db import make_engine, make_session_factory
from shared.messaging import BatchConsumer, Subscription, make_broker, make_producer
from shared.outbox import MessagingTables, Outbox
from shared.settings import ServiceSettings

log = structlog.get_logger(__name__)


@dataclass
class Runtime:
    """The I/O a service's handlers and routes work with."""

    settings: ServiceSettings
    engine: AsyncEngine
    session_factory: async_sessionmaker
    broker: KafkaBroker
    outbox: Outbox
    producer: AIOKafkaProducer | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)

    @classmethod
    def create(cls, settings: ServiceSettings, tables: MessagingTables) -> Runtime:
        engine = make_engine(
            settings.database_url,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_pool_overflow,
        )
        return cls(
            settings=settings,
            engine=engine,
            session_factory=make_session_factory(engine),
            broker=make_broker(settings),
            outbox=Outbox(tables),
        )


def create_service_app(
    *,
    settings: ServiceSettings,
    tables: MessagingTables,
    subscriptions: Sequence[Subscription] = (),
    routers: Sequence[APIRouter] = (),
    title: str,
    description: str,
    version: str = "1.0.0",
    runtime: Runtime | None = None,
    on_startup: Callable[[FastAPI], Awaitable[None]] | None = None,
    on_shutdown: Callable[[FastAPI], Awaitable[None]] | None = None,
    middlewares: Sequence[tuple[Any, dict[str, Any]]] = (),
) -> FastAPI:
    telemetry.configure(settings)
    runtime = runtime or Runtime.create(settings, tables)
    if subscriptions:
        BatchConsumer(
            settings=settings,
            subscriptions=subscriptions,
            session_factory=runtime.session_factory,
            outbox=runtime.outbox,
            tables=tables,
        ).register(runtime.broker)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if telemetry.tracing():  # without an exporter the instrumentation only costs time
            SQLAlchemyInstrumentor().instrument(engine=runtime.engine.sync_engine)
        if on_startup is not None:
            await on_startup(app)
        await runtime.broker.start()
        runtime.producer = make_producer(settings)  # aiokafka wants the running loop
        await runtime.producer.start()
        runtime.tasks.append(
            asyncio.create_task(
                runtime.outbox.run_relay(
                    runtime.session_factory,
                    runtime.producer,
                    batch_size=settings.outbox_batch_size,
                    poll_interval_s=settings.outbox_poll_interval_s,
                    linger_s=settings.outbox_linger_s,
                    max_record_bytes=settings.outbox_max_record_bytes,
                ),
                name="outbox-relay",
            )
        )
        # What start-up built (modules, models, compiled schemas) lives as long as the
        # process: out of the collector's sight, so a full collection under load is short.
        gc.collect()
        gc.freeze()
        log.info("service started", port=settings.http_port)
        try:
            yield
        finally:
            for task in runtime.tasks:
                task.cancel()
            await asyncio.gather(*runtime.tasks, return_exceptions=True)
            if on_shutdown is not None:
                await on_shutdown(app)
            if runtime.producer is not None:
                await runtime.producer.stop()
            await runtime.broker.stop()
            await runtime.engine.dispose()
            log.info("service stopped")

    app = FastAPI(title=title, description=description, version=version, lifespan=lifespan)
    app.state.runtime = runtime

    @app.get("/health/live", tags=["beheer"], summary="Process is alive")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready", tags=["beheer"], summary="Database and broker reachable")
    async def ready() -> JSONResponse:
        checks = {"database": await _database_ok(runtime), "broker": await _broker_ok(runtime)}
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )

    for router in routers:
        app.include_router(router)
    for middleware, options in middlewares:  # innermost first
        app.add_middleware(middleware, **options)
    app.add_middleware(ResponseHeaders, version=version)  # outermost: on every answer

    @app.get("/metrics", tags=["beheer"], summary="Prometheus metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    if telemetry.tracing():
        FastAPIInstrumentor.instrument_app(app, excluded_urls="health/.*,metrics")
    return app


class ResponseHeaders:
    """API-Version and the security headers of the API Design Rules on every response."""

    def __init__(self, app: ASGIApp, version: str) -> None:
        self.app = app
        self.headers = [
            (b"api-version", version.encode()),
            (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
            (b"x-content-type-options", b"nosniff"),
            (b"cache-control", b"no-store"),
            (b"content-security-policy", b"frame-ancestors 'none'"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in self.headers if n not in names]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


async def _database_ok(runtime: Runtime) -> bool:
    try:
        async with runtime.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


async def _broker_ok(runtime: Runtime) -> bool:
    try:
        return bool(await runtime.broker.ping(timeout=2.0))
    except Exception:
        return False


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Run one service process until SIGINT/SIGTERM."""
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=30,  # longer than clients keep idle connections (httpx: 5 s)
        # uvicorn takes uvloop and httptools (dependencies) when installed: about a fifth
        # more requests per core than asyncio's own loop and h11 (bench/intake).
    )
    server = uvicorn.Server(config)
    if not settings.http_shared_port:
        server.run()
        return
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((settings.http_host, settings.http_port))
    server.run(sockets=[listener])
