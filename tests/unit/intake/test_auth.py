"""Access tokens: what is refused, key rotation, and the secret check off the loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import uuid
from typing import Any

import jwt
import pytest

from services.intake import auth
from services.intake.auth import InvalidToken, decode_token, issue_token
from services.intake.settings import IntakeSettings, PreviousTokenKey

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
KEY = "current-signing-key-" + "0123456789abcdef" * 3
OLD_KEY = "previous-signing-key-" + "0123456789abcdef" * 3


class _Partner:
    id = uuid.UUID("0190a2b4-0000-7000-8000-000000000001")
    naam = "Woonstichting Test"
    soort = "Huur"


def _settings(**overrides: Any) -> IntakeSettings:
    previous = PreviousTokenKey(
        kid="k1",
        key=OLD_KEY,  # type: ignore[arg-type]
        accepted_until=NOW + dt.timedelta(hours=1),
    )
    values: dict[str, Any] = {
        "token_signing_key": KEY,
        "token_key_id": "k2",
        "token_previous_keys": [previous],
        **overrides,
    }
    return IntakeSettings(_env_file=None, **values)  # type: ignore[call-arg]


def _claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": "vroeg-intake",
        "aud": "vroeg-partner-api",
        "sub": str(_Partner.id),
        "naam": _Partner.naam,
        "soort": _Partner.soort,
        "iat": int(NOW.timestamp()),
        "exp": int(NOW.timestamp()) + 900,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(
    claims: dict[str, Any], key: str = KEY, kid: str | None = "k2", alg: str = "HS256"
) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def _decode(token: str, now: dt.datetime | None = None) -> auth.PartnerIdentity:
    # pyjwt checks exp against the clock; the tokens here are signed for the real now
    return decode_token(token, _settings(), now or NOW)


def _now_claims(**changes: Any) -> dict[str, Any]:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    return _claims(**{"iat": now, "exp": now + 900, **changes})


def test_an_issued_token_names_the_partner_and_its_key() -> None:
    token = issue_token(_Partner(), _settings(), dt.datetime.now(dt.UTC))  # type: ignore[arg-type]
    assert jwt.get_unverified_header(token)["kid"] == "k2"
    partner = _decode(token)
    assert partner.id == _Partner.id and partner.naam == _Partner.naam


@pytest.mark.parametrize("missing", ["exp", "aud", "iss", "sub", "iat"])
def test_a_token_without_a_required_claim_is_refused(missing: str) -> None:
    with pytest.raises(InvalidToken):
        _decode(_sign(_now_claims(**{missing: None})))


@pytest.mark.parametrize(
    "changes", [{"aud": "another-api"}, {"iss": "someone-else"}, {"exp": 1_000_000}]
)
def test_a_token_for_another_audience_issuer_or_expired_is_refused(changes: Any) -> None:
    with pytest.raises(InvalidToken):
        _decode(_sign(_now_claims(**changes)))


def test_alg_none_is_refused() -> None:
    unsigned = jwt.encode(_now_claims(), None, algorithm="none", headers={"kid": "k2"})
    with pytest.raises(InvalidToken):
        _decode(unsigned)


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_another_algorithm_is_refused_even_with_the_right_key(alg: str) -> None:
    with pytest.raises(InvalidToken):
        _decode(_sign(_now_claims(), alg=alg))


def test_a_wrong_key_is_refused() -> None:
    with pytest.raises(InvalidToken):
        _decode(_sign(_now_claims(), key="not-our-key-0123456789abcdef0123456789"))


def test_a_token_without_or_with_an_unknown_key_id_is_refused() -> None:
    with pytest.raises(InvalidToken):
        _decode(_sign(_now_claims(), kid=None))
    with pytest.raises(InvalidToken):
        _decode(_sign(_now_claims(), kid="k9"))


def test_the_previous_key_is_accepted_until_its_date_and_not_after() -> None:
    old = _sign(_now_claims(), key=OLD_KEY, kid="k1")
    assert _decode(old, NOW).id == _Partner.id
    with pytest.raises(InvalidToken):
        _decode(old, NOW + dt.timedelta(hours=1, seconds=1))
    with pytest.raises(InvalidToken):  # the old key id with the new key: wrong key
        _decode(_sign(_now_claims(), key=KEY, kid="k1"))


def test_key_ids_must_differ() -> None:
    with pytest.raises(ValueError, match="key id of its own"):
        _settings(token_key_id="k1")


def test_an_unknown_client_costs_one_argon2_check_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, int]] = []
    real = auth.secret_matches

    def counting(secret_hash: str, secret: str) -> bool:
        calls.append((secret_hash, threading.get_ident()))
        return real(secret_hash, secret)

    monkeypatch.setattr(auth, "secret_matches", counting)
    known = auth.hash_secret("the-secret")

    async def check() -> tuple[bool, bool, bool]:
        return (
            await auth.client_secret_matches(None, "guess"),
            await auth.client_secret_matches(known, "guess"),
            await auth.client_secret_matches(known, "the-secret"),
        )

    loop_thread = threading.get_ident()
    assert asyncio.run(check()) == (False, False, True)
    assert [h for h, _ in calls] == [auth._DUMMY_HASH, known, known]
    assert all(thread != loop_thread for _, thread in calls)


def test_the_dummy_hash_matches_no_secret() -> None:
    assert not asyncio.run(auth.client_secret_matches(None, ""))
