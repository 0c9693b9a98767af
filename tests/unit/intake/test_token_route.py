"""The token route's door, without a database: a client id not shaped like ours is
refused 401 before it gets a rate-limit bucket or a lookup, at the same argon2 cost."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from services.intake import api, problems
from services.intake.auth import is_client_id, new_client_credentials


class _Recording:
    """A limiter that records its keys and refuses every one (429 before any lookup)."""

    def __init__(self, wait: float | None) -> None:
        self.keys: list[Hashable] = []
        self.wait = wait

    def allow(self, key: Hashable) -> float | None:
        self.keys.append(key)
        return self.wait


def _app(client_limiter: _Recording) -> FastAPI:
    app = FastAPI()
    app.include_router(api.router)
    problems.install(app)
    app.state.token_source_limiter = _Recording(None)
    app.state.token_client_limiter = client_limiter
    app.state.runtime = SimpleNamespace()  # no session_factory: a lookup would fail
    return app


def _ask(app: FastAPI, client_id: str) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
            return await client.post(
                "/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(client_id, "gok"),
            )

    return asyncio.run(call())


@pytest.mark.parametrize(
    "client_id", ["x" * 16_000, "partner-onbekend-1", "partner-0123456789abcdeF", ""]
)
def test_a_client_id_not_shaped_like_ours_gets_401_without_a_bucket_or_lookup(
    monkeypatch: pytest.MonkeyPatch, client_id: str
) -> None:
    checks: list[str | None] = []

    async def dummy_check(secret_hash: str | None, secret: str) -> bool:
        checks.append(secret_hash)
        return False

    monkeypatch.setattr(api, "client_secret_matches", dummy_check)
    limiter = _Recording(None)
    response = _ask(_app(limiter), client_id)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="vroeg"'
    assert limiter.keys == []  # no bucket for it
    assert checks == [None]  # one argon2 check against the dummy hash: the same cost


def test_a_client_id_shaped_like_ours_is_throttled_on_that_id() -> None:
    client_id, _ = new_client_credentials()
    limiter = _Recording(30.0)
    response = _ask(_app(limiter), client_id)
    assert response.status_code == 429
    assert limiter.keys == [client_id]


def test_every_issued_client_id_has_our_shape() -> None:
    assert all(is_client_id(new_client_credentials()[0]) for _ in range(100))
    assert not is_client_id("partner-0123456789abcdef\n")
