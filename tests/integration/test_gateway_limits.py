"""Size and shape limits hold for every body, and invalid text is refused everywhere:
against the real intake process (real PostgreSQL, real broker)."""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.intake.settings import IntakeSettings
from shared.db import make_engine
from tests.support import (
    add_partner,
    apoll,
    bearer,
    fresh_households,
    intake_scalar,
    signal_for,
)
from vroeg.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def partner() -> dict[str, str]:
    return add_partner("Woonbedrijf Grenzen (test)", "Huur")


def _chunked(body: bytes, piece: int = 64 * 1024) -> Iterator[bytes]:
    """A body sent without Content-Length (Transfer-Encoding: chunked)."""
    for start in range(0, len(body), piece):
        yield body[start : start + piece]


def _problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return dict(response.json())


def test_a_chunked_signal_over_the_limit_gets_413_not_400(
    running_stack: Stack, partner: dict[str, str]
) -> None:
    with httpx.Client(base_url=running_stack.url("intake"), timeout=30) as client:
        headers = {**bearer(client, partner), "Content-Type": "application/json"}
        response = client.post(
            "/api/v1/signalen",
            content=_chunked(b'{"partnerSignaalId": "' + b"x" * 70_000 + b'"}', 8 * 1024),
            headers=headers,
        )
    assert "content-length" not in response.request.headers
    assert _problem(response, 413)["title"] == "Te groot"


def test_a_delivery_over_64_mib_gets_413_sent_chunked_or_not(
    running_stack: Stack, partner: dict[str, str]
) -> None:
    limit = IntakeSettings().max_delivery_bytes
    body = b"[" + b" " * limit + b"]"
    with httpx.Client(base_url=running_stack.url("intake"), timeout=60) as client:
        headers = {**bearer(client, partner), "Content-Type": "application/json"}
        declared = client.post("/api/v1/leveringen", content=body, headers=headers)
        chunked = client.post("/api/v1/leveringen", content=_chunked(body), headers=headers)
    _problem(declared, 413)
    _problem(chunked, 413)


@pytest.mark.parametrize(
    ("media_type", "body", "reason"),
    [
        ("application/json", b"[" * 200_000 + b"]" * 200_000, "diep genest"),
        ("application/json", b'[{"a": ' + b"9" * 5_000 + b"}]", "JSON"),
        (
            "text/csv",
            b"partnerSignaalId;soort\nA-1;" + b"x" * (csv.field_size_limit() + 10) + b"\n",
            "Regel 2",
        ),
        ("text/csv", b"partnerSignaalId;soort\r\nA\r-1;Huur\r\n\x80\xfe\r", "UTF-8"),
        ("text/csv", b"partnerSignaalId;adres;adres.postcode\nA;b;c\n", "kopregel"),
    ],
    ids=["nested-json", "huge-number", "csv-cell", "csv-cr-not-utf8", "csv-header"],
)
def test_a_delivery_that_cannot_be_read_gets_400_naming_why(
    running_stack: Stack, partner: dict[str, str], media_type: str, body: bytes, reason: str
) -> None:
    with httpx.Client(base_url=running_stack.url("intake"), timeout=30) as client:
        response = client.post(
            "/api/v1/leveringen",
            content=body,
            headers={**bearer(client, partner), "Content-Type": media_type},
        )
    problem = _problem(response, 400)
    assert problem["invalidParams"][0]["name"] == "body"
    assert reason in problem["invalidParams"][0]["reason"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("partnerSignaalId", "NUL-\u0000-1"), ("persoon.achternaam", "Be\ud800rg")],
    ids=["nul", "lone-surrogate"],
)
def test_nul_or_a_lone_surrogate_in_a_signal_is_refused_naming_the_field(
    running_stack: Stack, partner: dict[str, str], field: str, value: str
) -> None:
    home = fresh_households(1, seed=93)[0]
    signal = signal_for(home, partner, "NUL-OK-1")
    target = signal
    *parents, leaf = field.split(".")
    for part in parents:
        target = target[part]
    target[leaf] = value
    with httpx.Client(base_url=running_stack.url("intake")) as client:
        response = client.post(
            "/api/v1/signalen",
            # json.dumps writes \u0000 and \ud800 as escapes: valid JSON, invalid text
            content=json.dumps(signal).encode(),
            headers={**bearer(client, partner), "Content-Type": "application/json"},
        )
    problem = _problem(response, 400)
    assert [p["name"] for p in problem["invalidParams"]] == [field]
    assert "ongeldig teken" in problem["invalidParams"][0]["reason"]
    assert not intake_scalar("SELECT count(*) FROM signalen WHERE partner_signaal_id = 'NUL-OK-1'")


_HOLD = text(
    "INSERT INTO leveringen (id, partner_id, formaat, status, ontvangen_op, aantal, "
    "aantal_verwerkt, aantal_doorgestuurd, aantal_niet_doorgestuurd, aantal_geweigerd, "
    "lease_tot) VALUES (gen_random_uuid(), :p, 'json', 'in-verwerking', now(), 1, 0, 0, 0, 0, "
    "now() + interval '1 day')"
)


async def _hold(engine: AsyncEngine, partner_id: object, count: int) -> None:
    """Deliveries received but held under a lease far ahead: no worker takes them."""
    async with engine.begin() as conn:
        for _ in range(count):
            await conn.execute(_HOLD, {"p": partner_id})


def test_deliveries_one_after_another_get_429_with_retry_after_once_the_bound_is_reached(
    running_stack: Stack,
) -> None:
    """Sequential: the count of deliveries in flight is checked. It does not show that two
    deliveries at the same moment count each other (the partner's row lock in
    in_flight()); removing that lock would not fail this test."""
    busy = add_partner("Energie Druk (test)", "Energie")
    partner_id = intake_scalar("SELECT id FROM partners WHERE client_id = :c", c=busy["client_id"])
    settings = IntakeSettings()

    async def hold(count: int) -> None:
        engine = make_engine(settings.database_url, pool_size=1)
        try:
            await _hold(engine, partner_id, count)
        finally:
            await engine.dispose()

    home = fresh_households(1, seed=94)[0]
    with httpx.Client(base_url=running_stack.url("intake")) as client:
        headers = bearer(client, busy)
        asyncio.run(hold(settings.delivery_max_in_flight - 1))
        last_room = client.post(
            "/api/v1/leveringen", json=[signal_for(home, busy, "FLIGHT-1")], headers=headers
        )
        asyncio.run(hold(1))  # now as many in flight as allowed, however fast FLIGHT-1 goes
        refused = client.post(
            "/api/v1/leveringen", json=[signal_for(home, busy, "FLIGHT-2")], headers=headers
        )
    assert last_room.status_code == 202, last_room.text
    problem = _problem(refused, 429)
    assert int(refused.headers["Retry-After"]) == settings.delivery_retry_after_s
    assert "in verwerking" in problem["detail"]
    # the refused delivery left nothing behind
    stored = intake_scalar("SELECT count(*) FROM leveringen WHERE partner_id = :p", p=partner_id)
    assert stored == settings.delivery_max_in_flight + 1


def test_a_delivery_beyond_the_in_flight_bound_is_refused_before_its_body_is_read(
    running_stack: Stack,
) -> None:
    """The body is not JSON: read and parsed it would be a 400; it gets 429 unread."""
    full = add_partner("Energie Vol (test)", "Energie")
    partner_id = intake_scalar("SELECT id FROM partners WHERE client_id = :c", c=full["client_id"])
    settings = IntakeSettings()

    async def hold_all() -> None:
        engine = make_engine(settings.database_url, pool_size=1)
        try:
            await _hold(engine, partner_id, settings.delivery_max_in_flight)
        finally:
            await engine.dispose()

    asyncio.run(hold_all())
    with httpx.Client(base_url=running_stack.url("intake")) as client:
        refused = client.post(
            "/api/v1/leveringen",
            content=b"dit is geen JSON",
            headers={**bearer(client, full), "Content-Type": "application/json"},
        )
    _problem(refused, 429)


async def _start_upload(url: str, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A chunked upload whose headers and first piece are sent, the rest still to come."""
    address = httpx.URL(url)
    reader, writer = await asyncio.open_connection(address.host, address.port)
    first = b"[" + b" " * 1024
    writer.write(
        b"POST /api/v1/leveringen HTTP/1.1\r\n"
        + f"Host: {address.host}:{address.port}\r\nAuthorization: {token}\r\n".encode()
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(first):x}\r\n".encode()
        + first
        + b"\r\n"
    )
    await writer.drain()
    return reader, writer


async def _finish_upload(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """The rest of the body (not a signal: 400, nothing stored); the answer's status."""
    writer.write(b"2\r\n1]\r\n0\r\n\r\n")
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])


def test_parallel_uploads_of_one_partner_beyond_the_reading_bound_get_429_unread(
    running_stack: Stack,
) -> None:
    """While delivery_max_reading_per_partner uploads of a partner are being read (their
    bodies still coming), one more is refused 429 before its body is read: its body is not
    JSON, and read it would be a 400. When the uploads end, the slot is free again."""
    partner = add_partner("Energie Parallel (test)", "Energie")
    settings = IntakeSettings()
    url = running_stack.url("intake")
    with httpx.Client(base_url=url) as client:
        headers = {**bearer(client, partner), "Content-Type": "application/json"}

    async def scenario() -> tuple[list[int], list[int], int]:
        uploads = [
            await _start_upload(url, headers["Authorization"])
            for _ in range(settings.delivery_max_reading_per_partner)
        ]
        seen: list[int] = []
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def one_more_refused() -> bool:
                response = await client.post(
                    "/api/v1/leveringen", content=b"geen JSON", headers=headers
                )
                seen.append(response.status_code)
                return response.status_code == 429

            try:
                await apoll(one_more_refused, 30, "a delivery refused while others are read")
            finally:
                done = [await _finish_upload(*upload) for upload in uploads]
            after = await client.post("/api/v1/leveringen", content=b"geen JSON", headers=headers)
            return seen, done, after.status_code

    seen, done, after = asyncio.run(scenario())
    assert set(seen) <= {400, 429} and seen[-1] == 429
    assert done == [400] * settings.delivery_max_reading_per_partner
    assert after == 400  # read again once the uploads ended
