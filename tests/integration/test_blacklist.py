"""The blacklist at the door: stopped signals, risen arrears, outreach's events, audit."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid

import httpx
import pytest

from services.feedback.settings import FeedbackSettings
from services.intake.settings import IntakeSettings
from shared.events import BLACKLIST_CHANGED, BlacklistChanged, encode_event
from shared.household import DwellingAddress, household_key
from shared.messaging import make_broker
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
    vroeg_cli("blacklist", "remove", entry_id)
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
