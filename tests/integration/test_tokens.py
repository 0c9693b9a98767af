"""The token endpoint and the tokens it gives, against the real intake process: refused
tokens answer 401 with WWW-Authenticate: Bearer; guessing secrets is throttled per
client id and per source, and every failed attempt is audited with the client id."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from services.intake.settings import IntakeSettings
from services.registry import BY_NAME
from tests.support import add_partner, intake_scalar, poll, token
from vroeg.stack import Stack, free_port

pytestmark = pytest.mark.integration

RECEIPT = f"/api/v1/signalen/{uuid.UUID(int=7)}"


@pytest.fixture(scope="module")
def partner() -> dict[str, str]:
    return add_partner("Zorgverzekeraar Token (test)", "Zorg")


def _claims(partner_id: str, **changes: Any) -> dict[str, Any]:
    settings = IntakeSettings()
    now = int(dt.datetime.now(dt.UTC).timestamp())
    claims = {
        "iss": settings.token_issuer,
        "aud": settings.token_audience,
        "sub": partner_id,
        "naam": "x",
        "soort": "Zorg",
        "iat": now,
        "exp": now + 600,
        **changes,
    }
    return {k: v for k, v in claims.items() if v is not None}


def _forged(partner_id: str, case: str) -> str:
    settings = IntakeSettings()
    key = settings.token_signing_key.get_secret_value()
    kid = {"kid": settings.token_key_id}
    if case == "alg-none":
        return jwt.encode(_claims(partner_id), None, algorithm="none", headers=kid)
    if case == "other-algorithm":
        return jwt.encode(_claims(partner_id), key + "x" * 40, algorithm="HS512", headers=kid)
    if case == "wrong-key":
        return jwt.encode(_claims(partner_id), secrets.token_hex(32), "HS256", headers=kid)
    if case == "unknown-kid":
        return jwt.encode(_claims(partner_id), key, "HS256", headers={"kid": "elders"})
    missing = case.removeprefix("no-")
    return jwt.encode(_claims(partner_id, **{missing: None}), key, "HS256", headers=kid)


@pytest.mark.parametrize(
    "case",
    ["alg-none", "other-algorithm", "wrong-key", "unknown-kid", "no-exp", "no-aud", "no-iss"],
)
def test_a_token_we_would_not_issue_gets_401_with_www_authenticate_bearer(
    running_stack: Stack, partner: dict[str, str], case: str
) -> None:
    with httpx.Client(base_url=running_stack.url("intake")) as client:
        good = token(client, partner)
        partner_id = jwt.decode(good, options={"verify_signature": False})["sub"]
        accepted = client.get(RECEIPT, headers={"Authorization": f"Bearer {good}"})
        refused = client.get(
            RECEIPT, headers={"Authorization": f"Bearer {_forged(partner_id, case)}"}
        )
    assert accepted.status_code == 404  # the real token passes the door
    assert refused.status_code == 401, refused.text
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert refused.headers["content-type"] == "application/problem+json"


@pytest.fixture(scope="module")
def throttled(running_stack: Stack) -> Iterator[str]:
    """An intake replica with small token limits, so a test reaches them quickly."""
    process = running_stack.start_service(
        BY_NAME["intake"],
        name="intake-token-limits",
        port=free_port(),
        env={
            "VROEG_TOKEN_BURST_PER_CLIENT": "3",
            "VROEG_TOKEN_RATE_PER_CLIENT_PER_S": "0.01",
            "VROEG_TOKEN_BURST_PER_SOURCE": "8",
            "VROEG_TOKEN_RATE_PER_SOURCE_PER_S": "0.01",
        },
    )
    try:
        running_stack.wait_ready(["intake-token-limits"])
        yield running_stack.url("intake-token-limits")
    finally:
        process.stop()


def _ask(client: httpx.Client, client_id: str, secret: str) -> httpx.Response:
    return client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )


def test_guessing_secrets_is_throttled_per_client_id_and_per_source(throttled: str) -> None:
    known = add_partner("Waterbedrijf Raden (test)", "Water")
    with httpx.Client(base_url=throttled) as client:
        guesses = [_ask(client, known["client_id"], f"gok-{n}") for n in range(4)]
        # other client ids from the same source: the source's bucket (8) runs out
        others = [_ask(client, f"partner-onbekend-{n}", "gok") for n in range(5)]
    assert [r.status_code for r in guesses] == [401, 401, 401, 429]
    assert [r.status_code for r in others] == [401, 401, 401, 401, 429]
    for refused in (guesses[-1], others[-1]):
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["content-type"] == "application/problem+json"


def test_each_failed_attempt_is_audited_with_the_client_id_tried(running_stack: Stack) -> None:
    tried = f"partner-geraden-{secrets.token_hex(4)}"
    with httpx.Client(base_url=running_stack.url("intake")) as client:
        assert _ask(client, tried + "\x01" + "x" * 100, "gok").status_code == 401

    expected = (tried + "x" * 100)[:64]  # printable characters only, at most 64

    def audited() -> bool:
        return bool(
            intake_scalar(
                "SELECT count(*) FROM audit_log WHERE action = 'POST /oauth/token' "
                "AND result = '401' AND actor = 'anoniem' AND object = :o",
                o=expected,
            )
        )

    poll(audited, 10, "the audit record of the failed token request")
