"""A municipality's own matching rules, set with `vroeg matchregels`, as its functional
administrator would: bundling holds a new match back from case handling."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import httpx
import pytest
from sqlalchemy import text

from services.matching.settings import MatchingSettings
from shared.db import make_engine
from tests.support import add_partner, apoll, fresh_households, signal_for, token, vroeg_cli
from vroeg.stack import Stack

pytestmark = pytest.mark.e2e


def refused(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vroeg.cli", "matchregels", "set", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
        check=False,
    )


def test_rules_outside_the_sources_bounds_are_refused_in_dutch(running_stack: Stack) -> None:
    too_long = refused("GM0106", "--opeenvolgend", "7")
    assert too_long.returncode == 2
    assert "opeenvolgend_maanden moet tussen 1 en 6 liggen" in too_long.stderr
    elsewhere = refused("GM0363", "--opeenvolgend", "3")  # Amsterdam: not in this region
    assert elsewhere.returncode == 2
    assert "hoort niet bij deze regio" in elsewhere.stderr


async def test_bundling_holds_a_new_match_back_until_its_period_ends(running_stack: Stack) -> None:
    [home] = await asyncio.to_thread(fresh_households, 1, 114)
    gemeente = home.gemeentecode
    vroeg_cli("matchregels", "set", gemeente, "--bundeling", "dagen", "--dagen", "7")
    try:
        rules = {
            r["gemeentecode"]: r for r in json.loads(vroeg_cli("matchregels", "list", "--json"))
        }
        assert (rules[gemeente]["bundeling"], rules[gemeente]["bundelingDagen"]) == ("dagen", 7)
        assert rules[gemeente]["bron"].startswith("eigen regel")
        landlord = add_partner("Woonstichting Bundel (test)", "Huur")
        async with httpx.AsyncClient(base_url=running_stack.url("intake"), timeout=10) as client:
            with httpx.Client(base_url=running_stack.url("intake")) as sync_client:
                bearer = token(sync_client, landlord)
            response = await client.post(
                "/api/v1/signalen",
                json=signal_for(home, landlord, "BUNDEL-1"),
                headers={"Authorization": f"Bearer {bearer}"},
            )
            assert response.status_code == 201, response.text
        signal_id = response.json()["id"]
        engine = make_engine(MatchingSettings().database_url, pool_size=1)
        try:

            async def held() -> tuple | None:
                async with engine.connect() as conn:
                    row = (
                        await conn.execute(
                            text(
                                "SELECT m.status, m.doorgestuurd_op, "
                                "m.doorsturen_op - m.geopend_op AS periode FROM matches m "
                                "JOIN signals s ON s.match_id = m.id WHERE s.signal_id = :id"
                            ),
                            {"id": signal_id},
                        )
                    ).first()
                return tuple(row) if row else None

            status, forwarded_at, period = await apoll(held, 30, "the signal to be matched")
        finally:
            await engine.dispose()
        assert (status, forwarded_at) == ("gebundeld", None)
        assert period.days == 7
        # held back: no case for it (matching published nothing for this match)
        cases = json.loads(vroeg_cli("zaken", "--gemeente", gemeente, "--json", "--reden", "test"))
        assert not [
            c for c in cases if any(s["partnerSignaalId"] == "BUNDEL-1" for s in c["signalen"])
        ]
    finally:
        vroeg_cli("matchregels", "set", gemeente)  # back to the defaults for later tests
