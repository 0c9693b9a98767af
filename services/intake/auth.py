"""Partner credentials and access tokens (OAuth 2.0 client credentials)."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from dataclasses import dataclass
from typing import Annotated

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.intake.models import Partner
from services.intake.problems import Problem
from services.intake.settings import IntakeSettings

_hasher = PasswordHasher()
_bearer = HTTPBearer(auto_error=False, description="Toegangstoken van POST /oauth/token")


def new_client_credentials() -> tuple[str, str]:
    return f"partner-{secrets.token_hex(8)}", secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return _hasher.hash(secret)


def secret_matches(secret_hash: str, secret: str) -> bool:
    try:
        return _hasher.verify(secret_hash, secret)
    except VerificationError:
        return False


@dataclass(frozen=True)
class PartnerIdentity:
    """Who is calling: always from the token, never from the payload."""

    id: uuid.UUID
    naam: str
    soort: str


def issue_token(partner: Partner, settings: IntakeSettings, now: dt.datetime) -> str:
    claims = {
        "iss": settings.token_issuer,
        "sub": str(partner.id),
        "naam": partner.naam,
        "soort": partner.soort,
        "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + settings.token_lifetime_s,
    }
    return jwt.encode(claims, settings.token_signing_key.get_secret_value(), algorithm="HS256")


UNAUTHORIZED = Problem(
    401,
    "Niet geauthenticeerd",
    "Stuur een geldig toegangstoken mee: Authorization: Bearer <token> (zie POST /oauth/token).",
    headers={"WWW-Authenticate": "Bearer"},
)


async def current_partner(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> PartnerIdentity:
    """The caller as its access token says; `confirm_active` checks it is still enabled."""
    settings: IntakeSettings = request.app.state.runtime.settings
    if credentials is None:
        raise UNAUTHORIZED
    try:
        claims = jwt.decode(
            credentials.credentials,
            settings.token_signing_key.get_secret_value(),
            algorithms=["HS256"],
            issuer=settings.token_issuer,
            options={"require": ["exp", "sub", "iss"]},
        )
        partner = PartnerIdentity(
            id=uuid.UUID(claims["sub"]), naam=claims["naam"], soort=claims["soort"]
        )
    except (jwt.PyJWTError, ValueError, KeyError):
        raise UNAUTHORIZED from None
    request.state.partner_id = str(partner.id)
    return partner


async def confirm_active(session: AsyncSession, partner: PartnerIdentity) -> None:
    """A disabled partner's token stops working at once: checked in the request's own
    transaction, so it costs no extra round trip to the database."""
    active = await session.scalar(select(Partner.actief).where(Partner.id == partner.id))
    if not active:
        raise UNAUTHORIZED


CurrentPartner = Annotated[PartnerIdentity, Depends(current_partner)]
