"""Feedback process: consumes outreach.due; partner feedback follows."""

from functools import partial

from fastapi import FastAPI

from services.feedback.handlers import on_outreach_due, on_signal_blocked
from services.feedback.models import messaging
from services.feedback.settings import FeedbackSettings
from shared.events import OUTREACH_DUE, SIGNAL_BLOCKED
from shared.messaging import Subscription
from shared.service import Runtime, create_service_app, serve


def create_app(settings: FeedbackSettings | None = None) -> FastAPI:
    settings = settings or FeedbackSettings()
    runtime = Runtime.create(settings, messaging)
    return create_service_app(
        settings=settings,
        tables=messaging,
        runtime=runtime,
        subscriptions=[
            Subscription(OUTREACH_DUE, partial(on_outreach_due, outbox=runtime.outbox)),
            Subscription(SIGNAL_BLOCKED, partial(on_signal_blocked, outbox=runtime.outbox)),
        ],
        title="Vroegsignalering – terugkoppeling",
        description="Houdt bij wat partners over hun signalen te horen krijgen.",
    )


def main() -> None:
    settings = FeedbackSettings()
    serve(create_app(settings), settings)
