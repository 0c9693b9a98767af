"""A partner's signal over HTTP becomes a case, traced through every hop."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.support import add_partner, fresh_households, poll, signal_for, token, vroeg_cli
from vroeg.stack import Stack

pytestmark = pytest.mark.e2e


def cases_with(gemeente: str, partner_signaal_ids: set[str]) -> list[dict]:
    cases = json.loads(vroeg_cli("zaken", "--gemeente", gemeente, "--json", "--reden", "test"))
    return [
        c for c in cases if {s["partnerSignaalId"] for s in c["signalen"]} & partner_signaal_ids
    ]


def spans(trace_dir: Path) -> list[dict]:
    found = []
    for path in trace_dir.glob("*.jsonl"):
        found.extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return found


def test_signal_becomes_a_case_with_its_deadline_in_one_trace(
    running_stack: Stack, trace_dir: Path
) -> None:
    partner = add_partner("Woonstichting Eindtest (test)", "Huur")
    home = fresh_households(1, seed=11)[0]
    body = signal_for(home, partner, "E2E-0001", amount="612.40")
    with httpx.Client(base_url=running_stack.url("intake"), timeout=10) as client:
        headers = {"Authorization": f"Bearer {token(client, partner)}"}
        first = client.post("/api/v1/signalen", json=body, headers=headers)
        again = client.post("/api/v1/signalen", json=body, headers=headers)
    assert first.status_code == 201, first.text
    receipt = first.json()
    assert receipt["status"] == "doorgestuurd"
    assert first.headers["Location"] == f"/api/v1/signalen/{receipt['id']}"
    assert first.headers["API-Version"]
    assert again.status_code == 200 and again.json() == receipt

    [case] = poll(lambda: cases_with(home.gemeentecode, {"E2E-0001"}), 30, "the case")
    forwarded = dt.datetime.fromisoformat(case["doorgestuurdOp"])
    assert case["gemeentecode"] == home.gemeentecode
    assert case["soort"] == "enkelvoudig"
    assert case["aantalSchuldeisers"] == 1
    assert Decimal(case["totaalAchterstand"]) == Decimal("612.40")
    assert dt.date.fromisoformat(case["termijn"]) - forwarded.date() in (
        dt.timedelta(days=28),
        dt.timedelta(days=29),  # forwarded late in the evening, Dutch time
    )
    assert case["signalen"] == [
        {
            "partnerSignaalId": "E2E-0001",
            "partner": partner["naam"],
            "soort": "Huur",
            "energiesoort": None,
            "signaaldatum": body["signaaldatum"],
            "achterstandBedrag": "612.40",
        }
    ]

    def one_trace_over_three_services() -> set[str] | None:
        everything = spans(trace_dir)
        request = [
            s
            for s in everything
            if s["service"] == "vroeg-intake" and s["name"] == "POST /api/v1/signalen"
        ]
        for root in request:
            services = {s["service"] for s in everything if s["trace_id"] == root["trace_id"]}
            if {"vroeg-intake", "vroeg-matching", "vroeg-outreach"} <= services:
                return services
        return None

    services = poll(
        one_trace_over_three_services, 30, "one trace across intake, matching, outreach"
    )
    assert "vroeg-feedback" in services or "vroeg-retention" in services


def test_two_creditors_at_one_address_in_one_month_make_one_multiple_case(
    running_stack: Stack,
) -> None:
    landlord = add_partner("Woonstichting Meervoud (test)", "Huur")
    water = add_partner("Waterbedrijf Meervoud (test)", "Water")
    home = fresh_households(1, seed=12)[0]
    with httpx.Client(base_url=running_stack.url("intake"), timeout=10) as client:
        for partner, ref, amount in ((landlord, "MV-1", "400.00"), (water, "MV-2", "150.25")):
            response = client.post(
                "/api/v1/signalen",
                json=signal_for(home, partner, ref, amount=amount),
                headers={"Authorization": f"Bearer {token(client, partner)}"},
            )
            assert response.status_code == 201, response.text

    def upgraded() -> list[dict] | None:
        found = cases_with(home.gemeentecode, {"MV-1", "MV-2"})
        return found if found and len(found[0]["signalen"]) == 2 else None

    [case] = poll(upgraded, 30, "the case with both signals")
    assert case["soort"] == "meervoudig"
    assert case["aantalSchuldeisers"] == 2
    assert Decimal(case["totaalAchterstand"]) == Decimal("550.25")
    assert {s["partner"] for s in case["signalen"]} == {landlord["naam"], water["naam"]}
    # the caseworker sees why: the rule, its source, and the two signals it counted
    assert case["uitleg"]["regel"] == "meervoudig" and case["uitleg"]["bron"]
    assert len(case["uitleg"]["signalen"]) == 2


def test_one_dwelling_spelled_two_ways_by_two_partners_is_one_case(
    running_stack: Stack,
) -> None:
    # The landlord writes the letter and the floor as the BAG does; the energy supplier's
    # system puts both in the addition field, in lower case, with a hyphen and a space.
    landlord = add_partner("Woonstichting Spelling (test)", "Huur")
    energy = add_partner("Energie Spelling (test)", "Energie")
    home = fresh_households(1, seed=113)[0]
    bag = signal_for(home, landlord, "SP-1", amount="410.00")
    bag["adres"] |= {"huisletter": "A", "huisnummertoevoeging": "1"}
    messy = signal_for(home, energy, "SP-2", amount="95.10")
    messy["adres"] |= {
        "huisnummertoevoeging": "a - 1",
        "postcode": home.postcode.replace(" ", "").lower(),
        "straatnaam": home.straatnaam.upper(),
    }
    with httpx.Client(base_url=running_stack.url("intake"), timeout=10) as client:
        for partner, body in ((landlord, bag), (energy, messy)):
            response = client.post(
                "/api/v1/signalen",
                json=body,
                headers={"Authorization": f"Bearer {token(client, partner)}"},
            )
            assert response.status_code == 201, response.text

    def both() -> list[dict] | None:
        found = cases_with(home.gemeentecode, {"SP-1", "SP-2"})
        return found if found and len(found[0]["signalen"]) == 2 else None

    [case] = poll(both, 30, "one case with both spellings")
    assert case["soort"] == "meervoudig"
    assert Decimal(case["totaalAchterstand"]) == Decimal("505.10")


def test_the_partner_hears_its_signal_is_being_handled(running_stack: Stack) -> None:
    partner = add_partner("Waterbedrijf Terugkoppeling (test)", "Water")
    homes = fresh_households(2, seed=13)
    with httpx.Client(base_url=running_stack.url("intake"), timeout=10) as client:
        headers = {"Authorization": f"Bearer {token(client, partner)}"}
        for index, home in enumerate(homes):
            response = client.post(
                "/api/v1/signalen", json=signal_for(home, partner, f"TK-{index}"), headers=headers
            )
            assert response.status_code == 201, response.text

        def both_told() -> list[dict] | None:
            page = client.get("/api/v1/terugkoppelingen", headers=headers).json()
            return page["terugkoppelingen"] if len(page["terugkoppelingen"]) == 2 else None

        told = poll(both_told, 30, "feedback on both signals")
        assert {t["partnerSignaalId"] for t in told} == {"TK-0", "TK-1"}
        assert {t["status"] for t in told} == {"in-behandeling"}
        first, second = told
        rest = client.get(
            f"/api/v1/terugkoppelingen?vanaf={first['volgnummer']}", headers=headers
        ).json()
        assert [t["partnerSignaalId"] for t in rest["terugkoppelingen"]] == [
            second["partnerSignaalId"]
        ]
        done = client.get(
            f"/api/v1/terugkoppelingen?vanaf={second['volgnummer']}", headers=headers
        ).json()
        assert done == {"terugkoppelingen": [], "volgende": None}
