"""Intake process: the partner gateway (HTTP) and its outbox relay."""

from fastapi import FastAPI

from services.intake import handlers, problems
from services.intake.api import router
from services.intake.models import messaging
from services.intake.settings import IntakeSettings
from shared.service import create_service_app, serve


async def register_region(app: FastAPI) -> None:
    """The region's municipalities are the tenants: make sure they exist, keep their codes."""
    async with app.state.runtime.session_factory() as session, session.begin():
        await handlers.register_municipalities(session)
        app.state.municipalities = await handlers.municipality_codes(session)


def create_app(settings: IntakeSettings | None = None) -> FastAPI:
    settings = settings or IntakeSettings()
    app = create_service_app(
        settings=settings,
        tables=messaging,
        routers=[router],
        title="Vroegsignalering – signaal-API voor partners",
        description="Signaalpartners leveren hier betalingsachterstanden aan bij de gemeente.",
        on_startup=register_region,
    )
    problems.install(app)
    return app


def main() -> None:
    settings = IntakeSettings()
    serve(create_app(settings), settings)
