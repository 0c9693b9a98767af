"""The partner API's HTTP routes (contract: partner-api.md)."""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Form, Header, Request, Response
from sqlalchemy import select

from services.intake import domain, handlers
from services.intake.auth import CurrentPartner, confirm_active, issue_token, secret_matches
from services.intake.models import Partner
from services.intake.problems import Problem, invalid_input
from services.intake.schemas import Receipt, SignalIn, TokenResponse
from shared.events import utc_now

router = APIRouter()

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None


@router.post(
    "/oauth/token",
    response_model=TokenResponse,
    tags=["authenticatie"],
    summary="Vraag een toegangstoken aan (OAuth 2.0 client credentials)",
    responses={400: _PROBLEM, 401: _PROBLEM},
)
async def token(
    request: Request,
    grant_type: Annotated[str, Form()],
    authorization: Annotated[str | None, Header()] = None,
) -> TokenResponse:
    if grant_type != "client_credentials":
        raise Problem(400, "Ongeldig verzoek", "grant_type moet client_credentials zijn.")
    credentials = _basic_credentials(authorization)
    refused = Problem(
        401,
        "Niet geauthenticeerd",
        "Onbekende client of onjuist geheim (HTTP Basic met client_id en client_secret).",
        headers={"WWW-Authenticate": 'Basic realm="vroeg"'},
    )
    if credentials is None:
        raise refused
    runtime = request.app.state.runtime
    async with runtime.session_factory() as session:
        partner = await session.scalar(select(Partner).where(Partner.client_id == credentials[0]))
    if (
        partner is None
        or not partner.actief
        or not secret_matches(partner.secret_hash, credentials[1])
    ):
        raise refused
    return TokenResponse(
        access_token=issue_token(partner, runtime.settings, utc_now()),
        expires_in=runtime.settings.token_lifetime_s,
    )


@router.post(
    "/api/v1/signalen",
    response_model=Receipt,
    status_code=201,
    tags=["signalen"],
    summary="Lever één signaal aan",
    responses={
        200: {
            "model": Receipt,
            "description": "Dit signaal was al geleverd: dezelfde ontvangstbevestiging.",
        },
        400: _PROBLEM,
        401: _PROBLEM,
    },
)
async def deliver_signal(
    request: Request, response: Response, signal: SignalIn, partner: CurrentPartner
) -> Receipt:
    runtime = request.app.state.runtime
    now = utc_now()
    violations = domain.check_signal(signal, now.date())
    if violations:
        raise invalid_input(
            [{"name": v.name, "code": "regel", "reason": v.reason} for v in violations]
        )
    gemeentecode = _route(request.app.state.municipalities, signal)
    async with runtime.session_factory() as session, session.begin():
        await confirm_active(session, partner)
        receipt, created = await handlers.accept_signal(
            session,
            runtime.outbox,
            partner,
            signal,
            gemeentecode=gemeentecode,
            household_secret=runtime.settings.household_key_secret.get_secret_value(),
            now=now,
        )
    if created:
        runtime.outbox.wake()
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/api/v1/signalen/{receipt.id}"
    return receipt


def _route(municipalities: frozenset[str], signal: SignalIn) -> str:
    """The municipality a signal belongs to (derivation from the address follows in #3)."""
    if signal.gemeentecode is None:
        raise invalid_input(
            [
                {
                    "name": "gemeentecode",
                    "code": "regel",
                    "reason": "Geef de gemeentecode van het adres.",
                }
            ]
        )
    if signal.gemeentecode not in municipalities:
        raise invalid_input(
            [
                {
                    "name": "gemeentecode",
                    "code": "regel",
                    "reason": "Deze gemeente hoort niet bij deze regio; het signaal is niet aangenomen.",
                }
            ]
        )
    return signal.gemeentecode


@router.get(
    "/api/v1/signalen/{signaal_id}",
    response_model=Receipt,
    tags=["signalen"],
    summary="De ontvangstbevestiging van een eigen signaal",
    responses={401: _PROBLEM, 404: _PROBLEM},
)
async def get_receipt(request: Request, signaal_id: uuid.UUID, partner: CurrentPartner) -> Receipt:
    async with request.app.state.runtime.session_factory() as session:
        await confirm_active(session, partner)
        receipt = await handlers.receipt_for(session, partner, signaal_id)
    if receipt is None:
        raise Problem(404, "Niet gevonden", "Geen signaal van u met dit id.")
    return receipt
