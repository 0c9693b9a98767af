"""Size and shape limits of every body, and refusals that never repeat what they refuse:
the pure parts (the body guard, the parsers, the refusal texts), without infrastructure."""

from __future__ import annotations

import asyncio
import csv
import json
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, ValidationError
from starlette.types import Message

from services.intake import problems
from services.intake.deliveries import (
    UnreadableDelivery,
    _reference,
    parse_csv,
    parse_json,
    parse_off_loop,
)
from services.intake.gateway import RateLimiter, RequestGuard
from services.intake.problems import params_from_validation
from services.intake.schemas import Person, SignalIn

# --- the body guard -------------------------------------------------------------------


class _Body(BaseModel):
    text: str


def _guarded_app(limit: int) -> RequestGuard:
    app = FastAPI()

    @app.post("/signalen")
    async def take(body: _Body) -> dict[str, str]:
        return {"ok": body.text}

    problems.install(app)
    return RequestGuard(
        app,
        default_limit=limit,
        limits={},
        content_types={"/signalen": ("application/json",)},
    )


def _call(app: RequestGuard, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> Any:
    """One request as the server hands it over: the body in chunks, as sent chunked."""
    sent: list[Message] = []
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/signalen",
        "raw_path": b"/signalen",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    asyncio.run(app(scope, receive, send))
    starts = [m for m in sent if m["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert len(starts) == 1, f"one answer expected, got {starts}"
    return starts[0]["status"], dict(starts[0]["headers"]), body


def test_a_chunked_body_over_the_limit_gets_413_not_400() -> None:
    chunks = [b'{"text": "', b"x" * 80, b"x" * 80, b'"}']
    status, headers, body = _call(_guarded_app(100), chunks, [(b"transfer-encoding", b"chunked")])
    assert status == 413
    assert headers[b"content-type"] == b"application/problem+json"
    assert json.loads(body)["title"] == "Te groot"


def test_a_declared_length_over_the_limit_gets_413_before_the_body_is_read() -> None:
    status, _, _ = _call(_guarded_app(100), [b"{}"], [(b"content-length", b"101")])
    assert status == 413


def test_a_body_within_the_limit_passes() -> None:
    status, _, body = _call(_guarded_app(100), [b'{"text": ', b'"hoi"}'], [])
    assert status == 200 and json.loads(body) == {"ok": "hoi"}


# --- the delivery parsers -------------------------------------------------------------


def test_a_stray_carriage_return_in_a_csv_is_a_line_break_not_a_crash() -> None:
    lines = parse_csv(b"partnerSignaalId;soort\nA-1;Huur\rA-2;Water\n")
    assert [line["partnerSignaalId"] for line in lines] == ["A-1", "A-2"]


def test_csv_that_is_not_utf8_is_unreadable() -> None:
    with pytest.raises(UnreadableDelivery, match="UTF-8"):
        parse_csv(b"partnerSignaalId\r\n\x80\xff\r")


def test_a_csv_cell_over_the_csv_modules_limit_is_unreadable_naming_the_line() -> None:
    body = b"partnerSignaalId;soort\nA-1;Huur\nA-2;" + b"x" * (csv.field_size_limit() + 1)
    with pytest.raises(UnreadableDelivery, match="Regel 3"):
        parse_csv(body)


@pytest.mark.parametrize(
    "header",
    [
        "partnerSignaalId;adres;adres.postcode",
        "partnerSignaalId;adres..postcode",
        "partnerSignaalId;soort;soort",
    ],
)
def test_a_csv_header_that_cannot_be_one_signal_is_unreadable(header: str) -> None:
    with pytest.raises(UnreadableDelivery, match=r"kopregel|Kolom"):
        parse_csv(f"{header}\nA-1;x;y\n".encode())


def test_deeply_nested_json_is_unreadable_not_a_crash() -> None:
    with pytest.raises(UnreadableDelivery, match="diep genest"):
        parse_json(b"[" * 100_000 + b"]" * 100_000)


def test_a_number_over_pythons_digit_limit_is_unreadable_not_a_crash() -> None:
    with pytest.raises(UnreadableDelivery, match="JSON"):
        parse_json(b'[{"partnerSignaalId": "A", "achterstandBedrag": ' + b"9" * 5000 + b"}]")


def test_a_json_line_that_is_not_an_object_refuses_the_delivery() -> None:
    with pytest.raises(UnreadableDelivery, match="Regel 2"):
        parse_json(b'[{"partnerSignaalId": "A"}, 7]')


# --- NUL and lone surrogates ----------------------------------------------------------


@pytest.mark.parametrize("bad", ["Be\x00rg", "Berg\ud800", "\udfff"])
def test_nul_and_lone_surrogates_are_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Person.model_validate({"achternaam": bad})
    [param] = params_from_validation(refused.value.errors())
    assert param["name"] == "achternaam"
    assert "ongeldig teken" in param["reason"]


def test_a_partner_signal_id_with_nul_is_refused_and_never_stored_as_reference() -> None:
    line = {"partnerSignaalId": "WS-\x00-1"}
    with pytest.raises(ValidationError) as refused:
        SignalIn.model_validate(line)
    names = {p["name"] for p in params_from_validation(refused.value.errors())}
    assert "partnerSignaalId" in names
    assert _reference(line) is None
    assert _reference({"partnerSignaalId": "\ud83d"}) is None
    assert _reference({"partnerSignaalId": "WS-1"}) == "WS-1"


def test_an_unknown_field_name_is_repeated_only_in_printable_characters() -> None:
    with pytest.raises(ValidationError) as refused:
        Person.model_validate({"achternaam": "Berg", "x\x00y\x01": 1})
    [param] = params_from_validation(refused.value.errors())
    assert param["name"] == "xy"
    json.dumps(param, ensure_ascii=False).encode()  # an answer can carry it


# --- refusal texts are our own --------------------------------------------------------


def test_a_library_error_message_never_reaches_a_refusal() -> None:
    errors = [
        {
            "type": "value_error",
            "loc": ("body", "veld"),
            "msg": "x",
            "ctx": {"error": ValueError('relation "partners" violates constraint pk_secret')},
        }
    ]
    [param] = params_from_validation(errors)
    assert "partners" not in param["reason"]
    assert param["reason"] == "De waarde voldoet niet aan de regel."


# --- rate limits keyed by any name, bounded in memory --------------------------------


def test_a_limiter_keyed_by_text_refuses_after_the_burst_and_tells_how_long() -> None:
    limiter = RateLimiter(per_second=1, burst=2)
    assert limiter.allow("client:a", now=0) is None
    assert limiter.allow("client:a", now=0) is None
    assert limiter.allow("client:a", now=0) == pytest.approx(1.0)
    assert limiter.allow("client:b", now=0) is None  # another key, its own bucket


def test_a_limiter_keeps_at_most_max_keys_buckets() -> None:
    limiter = RateLimiter(per_second=1, burst=5, max_keys=100)
    for n in range(1_000):
        limiter.allow(f"guess-{n}", now=n / 1_000)
    assert len(limiter) <= 100
    busy = RateLimiter(per_second=1, burst=1, max_keys=10)
    busy.allow("partner", now=0)
    for n in range(50):
        busy.allow(f"guess-{n}", now=0.5)
    assert len(busy) <= 10


def test_an_unexpected_error_answers_500_in_our_words_never_the_exceptions() -> None:
    app = FastAPI()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError('duplicate key value violates "signalen_pkey": Berg, 9411 AB')

    problems.install(app)

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
            return await client.get("/boom")

    response = asyncio.run(call())
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "Berg" not in response.text and "signalen" not in response.text
    assert response.json()["title"] == "Interne fout"


def test_a_large_json_delivery_is_parsed_without_holding_the_event_loop() -> None:
    """json.loads holds the GIL for the whole file, even in a thread; the parser reads
    the array element by element, so the event loop keeps turning meanwhile."""
    line = {
        "partnerSignaalId": "WS-1",
        "soort": "Huur",
        "persoon": {"achternaam": "Berg", "bsn": "999990019"},
        "adres": {"postcode": "9411 AB", "huisnummer": 12, "straatnaam": "Brinkstraat"},
    }
    body = json.dumps([line] * 60_000).encode()

    async def longest_pause_and_parse_time() -> tuple[float, float, int]:
        pauses: list[float] = []
        done = asyncio.Event()

        async def turn() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0)
                now = time.perf_counter()
                pauses.append(now - last)
                last = now

        turning = asyncio.create_task(turn())
        await asyncio.sleep(0)
        started = time.perf_counter()
        lines = await parse_off_loop(body, "application/json")
        took = time.perf_counter() - started
        done.set()
        await turning
        return max(pauses), took, len(lines)

    longest, took, count = asyncio.run(longest_pause_and_parse_time())
    assert count == 60_000
    assert longest < took / 2, f"the loop stood still {longest:.3f}s of {took:.3f}s"
