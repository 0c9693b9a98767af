"""Partner credentials and access tokens (OAuth 2.0 client credentials).

Tokens are HS256 JWTs with `iss`, `aud`, `exp` and a key id (`kid`) in the header; the
key that signs is `token_signing_key`, and a previous key is still accepted until its
date, so the key can be rotated without refusing tokens in flight (ADR 0014)."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.intake.models import Partner
from services.intake.problems import Problem
from services.intake.settings import IntakeSettings
from shared.events import utc_now

_hasher = PasswordHasher()
_bearer = HTTPBearer(auto_error=False, description="Toegangstoken van POST /oauth/token")

ALGORITHM = "HS256"  # the only algorithm accepted: never `none`, never one the token names
REQUIRED_CLAIMS = ["exp", "iat", "aud", "iss", "sub"]

# An unknown client id is checked against this hash, so that it costs the same argon2
# work as a known client id with a wrong secret: the answer time tells nothing.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(32))
# Threads of their own: a flood of token requests queues here, not in the default pool
# that parses deliveries. Two: argon2 is CPU-bound, and a replica has about two cores.
_ARGON2_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="argon2")


_CLIENT_ID = re.compile(r"partner-[0-9a-f]{16}")


def new_client_credentials() -> tuple[str, str]:
    return f"partner-{secrets.token_hex(8)}", secrets.token_urlsafe(32)


def is_client_id(value: str) -> bool:
    """Shaped like the client ids new_client_credentials gives (24 characters): anything
    else is no client of ours, refused before it gets a rate-limit bucket or a lookup."""
    return _CLIENT_ID.fullmatch(value) is not None


def hash_secret(secret: str) -> str:
    return _hasher.hash(secret)


def secret_matches(secret_hash: str, secret: str) -> bool:
    try:
        return _hasher.verify(secret_hash, secret)
    except (VerificationError, InvalidHashError):
        return False


async def client_secret_matches(secret_hash: str | None, secret: str) -> bool:
    """Argon2 off the event loop (it takes tens of milliseconds of CPU); without a hash
    (an unknown client) the same work is done against a dummy hash, and the answer is no."""
    matches = await asyncio.get_running_loop().run_in_executor(
        _ARGON2_THREADS, secret_matches, secret_hash or _DUMMY_HASH, secret
    )
    return matches and secret_hash is not None


@dataclass(frozen=True)
class PartnerIdentity:
    """Who is calling: always from the token, never from the payload."""

    id: uuid.UUID
    naam: str
    soort: str


def issue_token(partner: Partner, settings: IntakeSettings, now: dt.datetime) -> str:
    claims = {
        "iss": settings.token_issuer,
        "aud": settings.token_audience,
        "sub": str(partner.id),
        "naam": partner.naam,
        "soort": partner.soort,
        "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + settings.token_lifetime_s,
    }
    return jwt.encode(
        claims,
        settings.token_signing_key.get_secret_value(),
        algorithm=ALGORITHM,
        headers={"kid": settings.token_key_id},
    )


class InvalidToken(Exception):
    """The token is refused; the reason is for tests and never shown to the caller."""


def verification_key(kid: object, settings: IntakeSettings, now: dt.datetime) -> str:
    """The key a token with this key id must be signed with: the current key, or a
    previous key until its `accepted_until`."""
    if kid == settings.token_key_id:
        return settings.token_signing_key.get_secret_value()
    for previous in settings.token_previous_keys:
        if kid == previous.kid:
            if now > previous.accepted_until:
                raise InvalidToken("key no longer accepted")
            return previous.key.get_secret_value()
    raise InvalidToken("unknown key id")


def decode_token(token: str, settings: IntakeSettings, now: dt.datetime) -> PartnerIdentity:
    """The partner a token names, or InvalidToken: HS256 only, signed with a key we
    accept for its `kid`, not expired, our `iss` and `aud`."""
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") != ALGORITHM:
            raise InvalidToken("algorithm")
        claims = jwt.decode(
            token,
            verification_key(header.get("kid"), settings, now),
            algorithms=[ALGORITHM],
            audience=settings.token_audience,
            issuer=settings.token_issuer,
            options={"require": REQUIRED_CLAIMS},
        )
        return PartnerIdentity(
            id=uuid.UUID(claims["sub"]), naam=str(claims["naam"]), soort=str(claims["soort"])
        )
    except (jwt.PyJWTError, ValueError, KeyError, TypeError, AttributeError):
        raise InvalidToken("malformed or not valid") from None


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
        partner = decode_token(credentials.credentials, settings, utc_now())
    except InvalidToken:
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
