"""Matching process: consumes signal.received (and signal.withdrawn) in batches, forwards matches, and forwards
held (bundled) matches when their bundling period ends."""

from __future__ import annotations

import asyncio
from functools import partial

import structlog
from fastapi import FastAPI

from services.matching.handlers import forward_due, on_signals_received, on_signals_withdrawn
from services.matching.models import messaging
from services.matching.settings import MatchingSettings
from shared.events import SIGNAL_RECEIVED, SIGNAL_WITHDRAWN, utc_now
from shared.messaging import Subscription
from shared.service import Runtime, create_service_app, serve

log = structlog.get_logger(__name__)


async def forward_held_matches(runtime: Runtime, settings: MatchingSettings) -> None:
    """Every few seconds, forward the held matches whose bundling period has ended."""
    while True:
        try:
            async with runtime.session_factory() as session, session.begin():
                forwarded = await forward_due(session, outbox=runtime.outbox, now=utc_now())
            if forwarded:
                runtime.outbox.wake()
                log.info("held matches forwarded", count=forwarded)
                continue
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the loop must outlive a database hiccup
            log.warning("forwarding held matches failed", error=type(exc).__name__)
        await asyncio.sleep(settings.bundling_check_interval_s)  # a schedule, not a sync


def create_app(settings: MatchingSettings | None = None) -> FastAPI:
    settings = settings or MatchingSettings()
    runtime = Runtime.create(settings, messaging)

    async def start(app: FastAPI) -> None:
        runtime.tasks.append(
            asyncio.create_task(forward_held_matches(runtime, settings), name="bundling")
        )

    return create_service_app(
        settings=settings,
        tables=messaging,
        runtime=runtime,
        subscriptions=[
            Subscription(
                SIGNAL_RECEIVED,
                handle_many=partial(on_signals_received, outbox=runtime.outbox, settings=settings),
            ),
            Subscription(
                SIGNAL_WITHDRAWN,
                handle_many=partial(on_signals_withdrawn, outbox=runtime.outbox, settings=settings),
            ),
        ],
        title="Vroegsignalering – matching",
        description="Combineert signalen per huishouden tot matches.",
        on_startup=start,
    )


def main() -> None:
    settings = MatchingSettings()
    serve(create_app(settings), settings)
