"""The partner gateway's edges: authentication, refusals as problem+json, idempotency."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import text

from services.intake.settings import IntakeSettings
from shared.db import make_engine
from tests.support import add_partner, fresh_households, signal_for, token
from vroeg.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def partner() -> dict[str, str]:
    return add_partner("Woonstichting Poort (test)", "Huur")


def intake_rows(partner_signaal_id: str) -> int:
    async def count() -> int:
        engine = make_engine(IntakeSettings().database_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                return int(
                    (
                        await conn.execute(
                            text("SELECT count(*) FROM signalen WHERE partner_signaal_id = :id"),
                            {"id": partner_signaal_id},
                        )
                    ).scalar_one()
                )
        finally:
            await engine.dispose()

    return asyncio.run(count())


def test_openapi_is_public_and_names_the_partner_endpoints(running_stack: Stack) -> None:
    response = httpx.get(f"{running_stack.url('intake')}/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/oauth/token", "/api/v1/signalen", "/api/v1/signalen/{signaal_id}"} <= set(paths)
    assert response.headers["API-Version"]


def test_no_token_no_entry(running_stack: Stack, partner: dict[str, str]) -> None:
    home = fresh_households(1, seed=31)[0]
    response = httpx.post(
        f"{running_stack.url('intake')}/api/v1/signalen", json=signal_for(home, partner, "AUTH-1")
    )
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    bad_secret = httpx.post(
        f"{running_stack.url('intake')}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(partner["client_id"], "wrong"),
    )
    assert bad_secret.status_code == 401
    assert intake_rows("AUTH-1") == 0


def test_a_refused_signal_names_each_field_in_dutch_and_stores_nothing(
    running_stack: Stack, partner: dict[str, str]
) -> None:
    home = fresh_households(1, seed=32)[0]
    body = signal_for(home, partner, "BAD-1")
    body["achterstandBedrag"] = "12.345"
    body["incassotraject"]["gewezenOpSchuldhulp"] = False
    body["onbekendVeld"] = 1
    with httpx.Client(base_url=running_stack.url("intake")) as client:
        response = client.post(
            "/api/v1/signalen",
            json=body,
            headers={"Authorization": f"Bearer {token(client, partner)}"},
        )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert {"type", "title", "status", "detail", "instance"} <= set(problem)
    named = {p["name"] for p in problem["invalidParams"]}
    assert {"achterstandBedrag", "onbekendVeld"} <= named
    assert "achterstandBedrag" in problem["detail"]
    assert intake_rows("BAD-1") == 0


def test_the_same_signal_delivered_at_the_same_moment_is_stored_once(
    running_stack: Stack, partner: dict[str, str]
) -> None:
    home = fresh_households(1, seed=33)[0]
    body = signal_for(home, partner, "RACE-1")

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=running_stack.url("intake")) as client:
            with httpx.Client(base_url=running_stack.url("intake")) as sync_client:
                bearer = token(sync_client, partner)
            return await asyncio.gather(
                *(
                    client.post(
                        "/api/v1/signalen", json=body, headers={"Authorization": f"Bearer {bearer}"}
                    )
                    for _ in range(8)
                )
            )

    responses = asyncio.run(race())
    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert intake_rows("RACE-1") == 1
