"""What the integration and end-to-end tests share: partners, signals, polling."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from sqlalchemy import text

from services.intake.settings import IntakeSettings
from shared.db import make_engine
from vroeg.addresses import address_rows, import_address_rows
from vroeg.demo import DemoHousehold, households, signal_body

T = TypeVar("T")


def vroeg_cli(*args: str) -> str:
    """Run the real `vroeg` command line (as an operator would) and return its output."""
    result = subprocess.run(
        [sys.executable, "-m", "vroeg.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def add_partner(naam: str, soort: str) -> dict[str, str]:
    credentials = json.loads(vroeg_cli("partner", "add", "--naam", naam, "--type", soort, "--json"))
    return {**credentials, "naam": naam, "soort": soort}


def token(client: httpx.Client, partner: dict[str, str]) -> str:
    response = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(partner["client_id"], partner["client_secret"]),
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def fresh_households(count: int, seed: int) -> list[DemoHousehold]:
    """Synthetic households at addresses no other test uses: the seed (< 1000) picks the
    house numbers, the index the postcode letters."""
    homes = households(count, random.Random(seed))
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    unique = []
    for index, home in enumerate(homes):
        block = index // 100
        postcode = f"{home.postcode[:4]} {letters[block // 26 % 26]}{letters[block % 26]}"
        unique.append(
            DemoHousehold(
                **{
                    **home.__dict__,
                    "postcode": postcode,
                    "huisnummer": seed * 100 + index % 100 + 1,
                }
            )
        )
    register_addresses(unique)
    return unique


def register_addresses(homes: list[DemoHousehold]) -> None:
    """Put the households' addresses in the region's address table, as the CBS import would."""
    asyncio.run(import_address_rows(address_rows(homes)))


def signal_for(
    home: DemoHousehold,
    partner: dict[str, str],
    partner_signaal_id: str,
    amount: str = "734.50",
    signaaldatum: dt.date | None = None,
) -> dict:
    return signal_body(
        home,
        partner_signaal_id=partner_signaal_id,
        soort=partner["soort"],
        amount=amount,
        signaaldatum=signaaldatum or dt.date.today().replace(day=1),
    )


def poll(probe: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.1) -> T:
    """Poll until `probe` returns something truthy (a deadline, not a sleep for sync)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


async def apoll(probe, timeout_s: float, what: str, interval_s: float = 0.1):  # type: ignore[no-untyped-def]
    """`poll` for the event loop; the probe may be a plain or a coroutine function."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(interval_s)


def service_scalar(database_url: str, sql: str, **params: object) -> Any:
    """One value from a service's database (tests observe; services never do this)."""

    async def read() -> Any:
        engine = make_engine(database_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                return (await conn.execute(text(sql), params)).scalar()
        finally:
            await engine.dispose()

    return asyncio.run(read())


def intake_scalar(sql: str, **params: object) -> Any:
    return service_scalar(IntakeSettings().database_url, sql, **params)


def bearer(client: httpx.Client, partner: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(client, partner)}"}
