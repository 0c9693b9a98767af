"""The partner gateway's edges: authentication, refusals as problem+json, idempotency,
routing, limits and the audit trail."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from services.registry import BY_NAME
from tests.support import (
    add_partner,
    bearer,
    fresh_households,
    intake_scalar,
    poll,
    signal_for,
    token,
    vroeg_cli,
)
from vroeg.stack import Stack, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def partner() -> dict[str, str]:
    return add_partner("Woonstichting Poort (test)", "Huur")


def rows_for(partner_signaal_id: str) -> int:
    return int(
        intake_scalar(
            "SELECT count(*) FROM signalen WHERE partner_signaal_id = :id", id=partner_signaal_id
        )
    )


def test_openapi_is_public_and_names_the_partner_endpoints(running_stack: Stack) -> None:
    response = httpx.get(f"{running_stack.url('intake')}/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["servers"][0]["url"].endswith("/api/v1")
    assert set(document["paths"]) == {
        "/signalen",
        "/signalen/{signaal_id}",
        "/leveringen",
        "/leveringen/{levering_id}",
        "/terugkoppelingen",
    }
    assert document["components"]["securitySchemes"]["oauth2"]["flows"]["clientCredentials"][
        "tokenUrl"
    ].endswith("/oauth/token")
    assert response.headers["API-Version"]


def test_every_response_carries_the_security_headers(running_stack: Stack) -> None:
    headers = httpx.get(f"{running_stack.url('intake')}/openapi.json").headers
    assert headers["Strict-Transport-Security"].startswith("max-age=")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


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
    assert rows_for("AUTH-1") == 0


def test_a_disabled_partners_token_stops_working_at_once(running_stack: Stack) -> None:
    partner = add_partner("Energie Uitgezet (test)", "Energie")
    home = fresh_households(1, seed=34)[0]
    with httpx.Client(base_url=running_stack.url("intake")) as client:
        headers = bearer(client, partner)
        assert (
            client.get(
                f"/api/v1/signalen/{'0' * 8}-0000-0000-0000-{'0' * 12}", headers=headers
            ).status_code
            == 404
        )
        vroeg_cli("partner", "disable", partner["client_id"])
        refused = client.post(
            "/api/v1/signalen", json=signal_for(home, partner, "OFF-1"), headers=headers
        )
        new_token = client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(partner["client_id"], partner["client_secret"]),
        )
    assert refused.status_code == 401
    assert new_token.status_code == 401
    assert rows_for("OFF-1") == 0
    listed = [
        p
        for p in __import__("json").loads(vroeg_cli("partner", "list", "--json"))
        if p["client_id"] == partner["client_id"]
    ]
    assert listed[0]["actief"] is False


def test_a_refused_signal_names_each_field_in_dutch_and_stores_nothing(
    running_stack: Stack, partner: dict[str, str]
) -> None:
    home = fresh_households(1, seed=32)[0]
    body = signal_for(home, partner, "BAD-1")
    body["achterstandBedrag"] = "12.345"
    body["incassotraject"]["gewezenOpSchuldhulp"] = False
    body["persoon"]["bsn"] = "123456789"
    body["onbekendVeld"] = 1
    with httpx.Client(base_url=running_stack.url("intake")) as client:
        response = client.post("/api/v1/signalen", json=body, headers=bearer(client, partner))
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert {"type", "title", "status", "detail", "instance"} <= set(problem)
    named = {p["name"]: p["reason"] for p in problem["invalidParams"]}
    assert {"achterstandBedrag", "onbekendVeld", "persoon.bsn"} <= set(named)
    assert "elfproef" in named["persoon.bsn"]
    assert "achterstandBedrag" in problem["detail"]
    assert rows_for("BAD-1") == 0


def test_a_rule_broken_after_the_format_check_is_refused_too(
    running_stack: Stack, partner: dict[str, str]
) -> None:
    home = fresh_households(1, seed=35)[0]
    body = signal_for(home, partner, "BAD-2")
    body["incassotraject"]["gewezenOpSchuldhulp"] = False
    with httpx.Client(base_url=running_stack.url("intake")) as client:
        response = client.post("/api/v1/signalen", json=body, headers=bearer(client, partner))
    assert response.status_code == 400
    assert [p["name"] for p in response.json()["invalidParams"]] == [
        "incassotraject.gewezenOpSchuldhulp"
    ]
    assert rows_for("BAD-2") == 0


def test_routing_follows_the_address_and_never_guesses(
    running_stack: Stack, partner: dict[str, str]
) -> None:
    home = fresh_households(1, seed=36)[0]
    derived = signal_for(home, partner, "ROUTE-1")
    del derived["gemeentecode"]
    contradicting = signal_for(home, partner, "ROUTE-2")
    contradicting["gemeentecode"] = "GM0106" if home.gemeentecode != "GM0106" else "GM1731"
    outside = signal_for(home, partner, "ROUTE-3")
    outside["adres"]["huisnummer"] = 99998  # not in the address table
    with httpx.Client(base_url=running_stack.url("intake")) as client:
        headers = bearer(client, partner)
        ok = client.post("/api/v1/signalen", json=derived, headers=headers)
        wrong = client.post("/api/v1/signalen", json=contradicting, headers=headers)
        unknown = client.post("/api/v1/signalen", json=outside, headers=headers)
    assert ok.status_code == 201
    assert (
        intake_scalar("SELECT gemeentecode FROM signalen WHERE partner_signaal_id = 'ROUTE-1'")
        == home.gemeentecode
    )
    assert wrong.status_code == 400 and wrong.json()["invalidParams"][0]["name"] == "gemeentecode"
    assert unknown.status_code == 400 and unknown.json()["invalidParams"][0]["name"] == "adres"
    assert rows_for("ROUTE-2") == rows_for("ROUTE-3") == 0


def test_wrong_content_type_and_oversized_bodies_are_refused(
    running_stack: Stack, partner: dict[str, str]
) -> None:
    with httpx.Client(base_url=running_stack.url("intake")) as client:
        headers = bearer(client, partner)
        as_text = client.post(
            "/api/v1/signalen", content=b"{}", headers={**headers, "Content-Type": "text/plain"}
        )
        huge = client.post(
            "/api/v1/signalen",
            content=b"[" + b" " * 70_000 + b"]",
            headers={**headers, "Content-Type": "application/json"},
        )
    assert as_text.status_code == 415
    assert huge.status_code == 413
    assert huge.headers["content-type"] == "application/problem+json"


def test_the_same_signal_delivered_at_the_same_moment_is_stored_once(
    running_stack: Stack, partner: dict[str, str]
) -> None:
    home = fresh_households(1, seed=33)[0]
    body = signal_for(home, partner, "RACE-1")

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=running_stack.url("intake")) as client:
            with httpx.Client(base_url=running_stack.url("intake")) as sync_client:
                headers = bearer(sync_client, partner)
            return await asyncio.gather(
                *(client.post("/api/v1/signalen", json=body, headers=headers) for _ in range(8))
            )

    responses = asyncio.run(race())
    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert rows_for("RACE-1") == 1


def test_a_partner_that_sends_too_fast_gets_429_with_retry_after(running_stack: Stack) -> None:
    limited = running_stack.start_service(
        BY_NAME["intake"],
        name="intake-limited",
        port=free_port(),
        env={"VROEG_RATE_LIMIT_PER_S": "1", "VROEG_RATE_LIMIT_BURST": "5"},
    )
    try:
        running_stack.wait_ready(["intake-limited"])
        partner = add_partner("Snelle Partner (test)", "Water")
        with httpx.Client(base_url=running_stack.url("intake-limited")) as client:
            headers = {"Authorization": f"Bearer {token(client, partner)}"}
            statuses = [
                client.get(f"/api/v1/signalen/{'1' * 8}-1111-1111-1111-{'1' * 12}", headers=headers)
                for _ in range(12)
            ]
    finally:
        limited.stop()
    codes = [r.status_code for r in statuses]
    assert codes[:5] == [404] * 5
    assert 429 in codes[5:]
    refused = next(r for r in statuses if r.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["content-type"] == "application/problem+json"


def test_every_partner_call_is_audited_without_personal_data(
    running_stack: Stack, partner: dict[str, str]
) -> None:
    home = fresh_households(1, seed=37)[0]
    with httpx.Client(base_url=running_stack.url("intake")) as client:
        receipt = client.post(
            "/api/v1/signalen",
            json=signal_for(home, partner, "AUDIT-1"),
            headers=bearer(client, partner),
        ).json()

    def audited() -> bool:
        return bool(
            intake_scalar(
                "SELECT count(*) FROM audit_log WHERE object = :o AND action = 'POST /api/v1/signalen' "
                "AND result = '201' AND actor LIKE 'partner:%'",
                o=f"signaal:{receipt['id']}",
            )
        )

    poll(audited, 10, "the audit record of the call")
    assert not intake_scalar(
        "SELECT count(*) FROM audit_log WHERE concat(actor, action, object) LIKE :name",
        name=f"%{home.achternaam}%",
    )
