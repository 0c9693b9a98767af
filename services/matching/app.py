"""Matching process: consumes signal.received, forwards matches."""

from functools import partial

from fastapi import FastAPI

from services.matching.handlers import on_signal_received
from services.matching.models import messaging
from services.matching.settings import MatchingSettings
from shared.events import SIGNAL_RECEIVED
from shared.messaging import Subscription
from shared.service import Runtime, create_service_app, serve


def create_app(settings: MatchingSettings | None = None) -> FastAPI:
    settings = settings or MatchingSettings()
    runtime = Runtime.create(settings, messaging)
    return create_service_app(
        settings=settings,
        tables=messaging,
        runtime=runtime,
        subscriptions=[
            Subscription(
                SIGNAL_RECEIVED,
                partial(on_signal_received, outbox=runtime.outbox, settings=settings),
            )
        ],
        title="Vroegsignalering – matching",
        description="Combineert signalen per huishouden tot matches.",
    )


def main() -> None:
    settings = MatchingSettings()
    serve(create_app(settings), settings)
