"""Outreach process: consumes matches, keeps cases and their deadlines."""

from functools import partial

from fastapi import FastAPI

from services.outreach.handlers import on_match
from services.outreach.models import messaging
from services.outreach.settings import OutreachSettings
from shared.events import MATCH_CREATED, MATCH_UPDATED
from shared.messaging import Subscription
from shared.service import Runtime, create_service_app, serve


def create_app(settings: OutreachSettings | None = None) -> FastAPI:
    settings = settings or OutreachSettings()
    runtime = Runtime.create(settings, messaging)
    handle = partial(on_match, outbox=runtime.outbox)
    return create_service_app(
        settings=settings,
        tables=messaging,
        runtime=runtime,
        subscriptions=[Subscription(MATCH_CREATED, handle), Subscription(MATCH_UPDATED, handle)],
        title="Vroegsignalering – outreach",
        description="Zaken per match, met de wettelijke termijn van vier weken.",
    )


def main() -> None:
    settings = OutreachSettings()
    serve(create_app(settings), settings)
