"""The blacklist at the door: stopped signals, risen arrears, outreach's events, audit."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import uuid

import httpx
import pytest
from sqlalchemy import text

from services.feedback.settings import FeedbackSettings
from services.intake.settings import IntakeSettings
from shared.db import make_engine
from shared.events import BLACKLIST_CHANGED, BlacklistChanged, encode_event
from shared.household import DwellingAddress, household_key
from shared.messaging import make_broker
from shared.region import DRENTHE
from tests.support import (
    add_partner,
    bearer,
    fresh_households,
    intake_scalar,
    poll,
    service_scalar,
    signal_for,
    vroeg_cli,
)
from vroeg.demo import DemoHousehold
from vroeg.stack import Stack

pytestmark = pytest.mark.integration


def deliver(stack: Stack, partner: dict[str, str], body: dict) -> httpx.Response:
    with httpx.Client(base_url=stack.url("intake")) as client:
        return client.post("/api/v1/signalen", json=body, headers=bearer(client, partner))


def test_a_blacklisted_address_is_stopped_unless_the_arrears_rose(running_stack: Stack) -> None:
    partner = add_partner("Woonstichting Uitsluiting (test)", "Huur")
    home = fresh_households(1, seed=51)[0]
    until = (dt.date.today() + dt.timedelta(days=90)).isoformat()
    out = vroeg_cli(
        "blacklist",
        "add",
        "--gemeente",
        home.gemeentecode,
        "--postcode",
        home.postcode,
        "--huisnummer",
        str(home.huisnummer),
        "--tot",
        until,
        "--reden",
        "weigert-medewerking",
    )
    entry_id = out.strip().split()[-1]

    stopped = deliver(running_stack, partner, signal_for(home, partner, "BL-1", amount="500.00"))
    same = deliver(running_stack, partner, signal_for(home, partner, "BL-2", amount="500.00"))
    risen = deliver(running_stack, partner, signal_for(home, partner, "BL-3", amount="650.00"))

    assert stopped.status_code == 201
    assert stopped.json()["status"] == "niet-doorgestuurd"
    assert "niet doorgestuurd" in stopped.json()["reden"]
    assert "weiger" not in stopped.json()["reden"]  # the partner never learns why
    assert same.json()["status"] == "niet-doorgestuurd"
    assert risen.json()["status"] == "doorgestuurd"

    def feedback_knows() -> bool:
        return (
            service_scalar(
                FeedbackSettings().database_url,
                "SELECT count(*) FROM partner_signalen WHERE partner_signaal_id IN ('BL-1', 'BL-2') "
                "AND status = 'niet doorgestuurd'",
            )
            == 2
        )

    poll(feedback_knows, 30, "feedback to hear of the stopped signals")
    with httpx.Client(base_url=running_stack.url("intake")) as client:

        def partner_told() -> list[dict] | None:
            page = client.get("/api/v1/terugkoppelingen", headers=bearer(client, partner)).json()
            stopped_told = [
                t for t in page["terugkoppelingen"] if t["status"] == "niet-doorgestuurd"
            ]
            return stopped_told if len(stopped_told) == 2 else None

        told = poll(partner_told, 30, "the partner to be told")
    assert {t["partnerSignaalId"] for t in told} == {"BL-1", "BL-2"}
    assert all("weiger" not in t["toelichting"] for t in told)
    listed = json.loads(vroeg_cli("blacklist", "list", "--gemeente", home.gemeentecode, "--json"))
    assert entry_id in [e["id"] for e in listed]
    vroeg_cli("blacklist", "remove", entry_id, "--gemeente", home.gemeentecode)
    after = deliver(running_stack, partner, signal_for(home, partner, "BL-4", amount="100.00"))
    assert after.json()["status"] == "doorgestuurd"
    actions = intake_scalar(
        "SELECT string_agg(action, ',' ORDER BY id) FROM audit_log WHERE object = :o",
        o=f"uitsluiting:{entry_id}",
    )
    assert actions == "uitsluiting-toegevoegd,uitsluiting-verwijderd"


def test_outreach_events_feed_the_blacklist(running_stack: Stack, infra) -> None:  # type: ignore[no-untyped-def]
    partner = add_partner("Zorgverzekeraar Uitsluiting (test)", "CAK Zorgverzekeringen")
    home = fresh_households(1, seed=52)[0]
    key = household_key(
        DwellingAddress(home.postcode, home.huisnummer),
        IntakeSettings().household_key_secret.get_secret_value(),
    )
    entry = uuid.uuid4()

    async def publish(actie: str) -> None:
        broker = make_broker(IntakeSettings())
        await broker.start()
        try:
            event = BlacklistChanged(
                gemeentecode=home.gemeentecode,
                household_key=key,
                entry_id=entry,
                actie=actie,  # type: ignore[arg-type]
                reden="onveilig-contact",
                begin=dt.date.today(),
                einde=dt.date.today() + dt.timedelta(days=30),
            )
            await broker.publish(encode_event(event), BLACKLIST_CHANGED.name, key=key.encode())
        finally:
            await broker.stop()

    asyncio.run(publish("toegevoegd"))
    poll(
        lambda: intake_scalar("SELECT count(*) FROM uitsluitingen WHERE id = :i", i=entry),
        30,
        "the entry",
    )
    assert (
        deliver(running_stack, partner, signal_for(home, partner, "OBL-1")).json()["status"]
        == "niet-doorgestuurd"
    )
    asyncio.run(publish("verwijderd"))
    poll(
        lambda: intake_scalar(
            "SELECT count(*) FROM uitsluitingen WHERE id = :i AND verwijderd_op IS NOT NULL",
            i=entry,
        ),
        30,
        "the entry to be removed",
    )
    assert (
        deliver(running_stack, partner, signal_for(home, partner, "OBL-2")).json()["status"]
        == "doorgestuurd"
    )


def _vroeg(*args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, allowed to fail (vroeg_cli asserts success)."""
    return subprocess.run(
        [sys.executable, "-m", "vroeg.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
        check=False,
    )


def _other_municipality(code: str) -> str:
    return next(other for other in sorted(DRENTHE) if other != code)


def _add(home: DemoHousehold, gemeente: str) -> subprocess.CompletedProcess[str]:
    return _vroeg(
        "blacklist",
        "add",
        "--gemeente",
        gemeente,
        "--postcode",
        home.postcode,
        "--huisnummer",
        str(home.huisnummer),
        "--tot",
        (dt.date.today() + dt.timedelta(days=30)).isoformat(),
        "--reden",
        "overig",
    )


def test_a_municipality_blacklists_only_its_own_addresses(running_stack: Stack) -> None:
    home = fresh_households(1, seed=53)[0]
    other = _other_municipality(home.gemeentecode)
    before = intake_scalar("SELECT count(*) FROM uitsluitingen")
    since = dt.datetime.now(dt.UTC)
    elsewhere = _add(home, other)
    outside = _add(home, "GM0363")  # Amsterdam: not in this region
    unknown = _add(DemoHousehold(**{**home.__dict__, "huisnummer": 99999}), home.gemeentecode)
    assert elsewhere.returncode == outside.returncode == unknown.returncode == 1
    assert f"ligt niet in gemeente {other}" in elsewhere.stdout and "--gemeente" in elsewhere.stdout
    assert "hoort niet bij deze regio" in outside.stdout
    assert "adrestabel" in unknown.stdout and "--postcode" in unknown.stdout
    assert home.postcode not in elsewhere.stdout + unknown.stdout  # no personal data
    assert intake_scalar("SELECT count(*) FROM uitsluitingen") == before
    refused = intake_scalar(
        "SELECT string_agg(gemeentecode, ',' ORDER BY id) FROM audit_log "
        "WHERE action = 'uitsluiting-toevoegen' AND result = 'geweigerd' "
        "AND at >= :since",
        since=since,
    )
    assert refused == f"{other},GM0363,{home.gemeentecode}"
    partner = add_partner("Waterbedrijf Eigen Gemeente (test)", "Water")
    kept = deliver(running_stack, partner, signal_for(home, partner, "OWN-1"))
    assert kept.json()["status"] == "doorgestuurd"


def test_an_entry_is_removed_only_by_its_own_municipality(running_stack: Stack) -> None:
    home = fresh_households(1, seed=54)[0]
    added = _add(home, home.gemeentecode)
    assert added.returncode == 0, added.stdout + added.stderr
    entry_id = added.stdout.strip().split()[-1]
    other = _other_municipality(home.gemeentecode)
    refused = _vroeg("blacklist", "remove", entry_id, "--gemeente", other)
    assert refused.returncode == 1
    assert "Geen actieve uitsluiting" in refused.stdout
    assert intake_scalar(
        "SELECT verwijderd_op IS NULL FROM uitsluitingen WHERE id = :i", i=uuid.UUID(entry_id)
    )
    assert (
        intake_scalar(
            "SELECT result FROM audit_log WHERE object = :o AND gemeentecode = :g",
            o=f"uitsluiting:{entry_id}",
            g=other,
        )
        == "geweigerd"
    )
    vroeg_cli("blacklist", "remove", entry_id, "--gemeente", home.gemeentecode)
    assert intake_scalar(
        "SELECT verwijderd_op IS NOT NULL FROM uitsluitingen WHERE id = :i", i=uuid.UUID(entry_id)
    )


def test_another_municipalitys_entry_never_stops_a_signal_at_the_door(running_stack: Stack) -> None:
    partner = add_partner("Energieleverancier Deur (test)", "Energie")
    home = fresh_households(1, seed=55)[0]
    key = household_key(
        DwellingAddress(home.postcode, home.huisnummer),
        IntakeSettings().household_key_secret.get_secret_value(),
    )

    async def insert_entry(gemeentecode: str) -> None:
        engine = make_engine(IntakeSettings().database_url, pool_size=1)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO uitsluitingen (id, household_key, gemeentecode, reden, begin, "
                        "einde, bron, ingevoerd_door, ingevoerd_op) VALUES (:i, :k, :g, 'overig', "
                        "current_date, current_date + 30, 'beheer', 'test', now())"
                    ),
                    {"i": uuid.uuid4(), "k": key, "g": gemeentecode},
                )
        finally:
            await engine.dispose()

    asyncio.run(insert_entry(_other_municipality(home.gemeentecode)))
    passed = deliver(running_stack, partner, signal_for(home, partner, "DOOR-1"))
    assert passed.json()["status"] == "doorgestuurd"
    asyncio.run(insert_entry(home.gemeentecode))
    stopped = deliver(running_stack, partner, signal_for(home, partner, "DOOR-2", amount="1.00"))
    assert stopped.json()["status"] == "niet-doorgestuurd"
