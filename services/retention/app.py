"""Retention process: consumes every lifecycle event; destruction follows."""

from fastapi import FastAPI

from services.retention.handlers import on_lifecycle_event
from services.retention.models import messaging
from services.retention.settings import RetentionSettings
from shared.events import (
    MATCH_CREATED,
    MATCH_UPDATED,
    OUTREACH_DUE,
    SIGNAL_BLOCKED,
    SIGNAL_RECEIVED,
)
from shared.messaging import Subscription
from shared.service import create_service_app, serve


def create_app(settings: RetentionSettings | None = None) -> FastAPI:
    settings = settings or RetentionSettings()
    return create_service_app(
        settings=settings,
        tables=messaging,
        subscriptions=[
            Subscription(topic, on_lifecycle_event)
            for topic in (
                SIGNAL_RECEIVED,
                SIGNAL_BLOCKED,
                MATCH_CREATED,
                MATCH_UPDATED,
                OUTREACH_DUE,
            )
        ],
        title="Vroegsignalering – archief",
        description="Bewaart de levensloop van elk archiefstuk voor vernietiging volgens de selectielijst.",
    )


def main() -> None:
    settings = RetentionSettings()
    serve(create_app(settings), settings)
