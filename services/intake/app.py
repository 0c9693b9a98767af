"""Intake process: the partner gateway (HTTP), the delivery worker, the blacklist
consumer and the outbox relay."""

import asyncio
from functools import partial

from fastapi import FastAPI, Request, Response

from services.intake import handlers, problems
from services.intake.api import router
from services.intake.auth import UNAUTHORIZED
from services.intake.deliveries import DeliveryWorker
from services.intake.gateway import RateLimiter, RequestGuard
from services.intake.models import audit, messaging
from services.intake.openapi import partner_openapi
from services.intake.settings import IntakeSettings
from shared.audit import AuditHttpCalls, AuditTrail
from shared.crypto import make_vault
from shared.db import make_engine
from shared.events import BLACKLIST_CHANGED, FEEDBACK_SENT
from shared.messaging import Subscription
from shared.service import Runtime, create_service_app, serve


async def start(app: FastAPI) -> None:
    """Region, vault, delivery worker and audit trail, before the first request."""
    runtime: Runtime = app.state.runtime
    settings: IntakeSettings = runtime.settings  # type: ignore[assignment]
    async with runtime.session_factory() as session, session.begin():
        await handlers.register_municipalities(session)
        app.state.municipalities = await handlers.municipality_codes(session)
    # 10 and none beyond: within the connection budget (README, "Tuning")
    app.state.keystore = make_engine(settings.keystore_url, pool_size=10, max_overflow=0)
    app.state.vault = make_vault(settings, app.state.keystore)
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    app.state.token_source_limiter = RateLimiter(
        settings.token_rate_per_source_per_s,
        settings.token_burst_per_source,
        settings.rate_limit_max_keys,
    )
    app.state.token_client_limiter = RateLimiter(
        settings.token_rate_per_client_per_s,
        settings.token_burst_per_client,
        settings.rate_limit_max_keys,
    )
    app.state.audit_trail = AuditTrail(runtime.session_factory, audit)
    app.state.delivery_worker = DeliveryWorker(
        settings, runtime.session_factory, app.state.vault, runtime.outbox, app.state.municipalities
    )
    runtime.tasks.append(asyncio.create_task(app.state.audit_trail.run(), name="audit-trail"))
    runtime.tasks.append(asyncio.create_task(app.state.delivery_worker.run(), name="deliveries"))


async def stop(app: FastAPI) -> None:
    await app.state.audit_trail.close()
    await app.state.vault.close()  # its key-destruction listener
    await app.state.keystore.dispose()


def partner_call(path: str) -> bool:
    """The calls the audit trail records: the partner API and its token endpoint."""
    return path.startswith("/api/") or path == "/oauth/token"


def create_app(settings: IntakeSettings | None = None) -> FastAPI:
    settings = settings or IntakeSettings()
    runtime = Runtime.create(settings, messaging)
    app = create_service_app(
        settings=settings,
        tables=messaging,
        runtime=runtime,
        routers=[router],
        subscriptions=[
            Subscription(
                BLACKLIST_CHANGED, partial(handlers.on_blacklist_changed, outbox=runtime.outbox)
            ),
            Subscription(FEEDBACK_SENT, handlers.on_feedback_sent),
        ],
        title="Vroegsignalering – signaal-API voor partners",
        description="Signaalpartners (verhuurders, energie-, water- en zorgverzekeraars) leveren hier "
        "betalingsachterstanden aan bij de gemeente, volgens de Wet gemeentelijke "
        "schuldhulpverlening. Authenticatie: OAuth 2.0 client credentials (POST /oauth/token).",
        on_startup=start,
        on_shutdown=stop,
        middlewares=[
            (
                RequestGuard,
                {
                    "default_limit": settings.max_signal_bytes,
                    "limits": {"/api/v1/leveringen": settings.max_delivery_bytes},
                    "content_types": {
                        "/api/v1/signalen": ("application/json",),
                        "/api/v1/leveringen": ("application/json", "text/csv"),
                        "/oauth/token": ("application/x-www-form-urlencoded",),
                    },
                },
            ),
            # Outside the guard, so refusals (413, 415) are audited too.
            (
                AuditHttpCalls,
                {
                    "trail_of": lambda: getattr(app.state, "audit_trail", None),  # type: ignore[has-type]
                    "audited": partner_call,
                    "timeout_s": settings.audit_commit_timeout_s,
                    "retry_after_s": settings.audit_retry_after_s,
                },
            ),
        ],
    )
    problems.install(app)

    @app.exception_handler(handlers.PartnerDisabled)
    async def on_disabled(request: Request, exc: handlers.PartnerDisabled) -> Response:
        return UNAUTHORIZED.response(request.url.path)

    document: dict = {}

    def openapi() -> dict:
        if not document:
            document.update(partner_openapi(app, public_url=settings.public_url))
        return document

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def main() -> None:
    settings = IntakeSettings()
    serve(create_app(settings), settings)
