"""Same id, other content; corrections (issue 9, item 6).

A partnerSignaalId resent with other content is a conflict (409, the differing fields by
name, the stored signal unchanged); a duplicate line inside one delivery is refused; a
partner withdraws its own signal (DELETE), which reaches matching through the outbox and
its own feed at once.

The use-case tests run on an intake database of their own (no relay drains its outbox);
the HTTP test runs against the real stack.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal

import httpx
import pytest

from services.intake import handlers
from services.intake.auth import PartnerIdentity
from services.intake.schemas import SignalIn
from services.intake.settings import IntakeSettings
from services.matching.settings import MatchingSettings
from services.outreach.settings import OutreachSettings
from shared.events import SIGNAL_WITHDRAWN, decode_event, utc_now
from tests.integration.test_delivery_resume import Intake, own_intake
from tests.support import (
    add_partner,
    bearer,
    fresh_households,
    intake_scalar,
    poll,
    service_scalar,
    signal_for,
)
from vroeg.stack import Stack

__all__ = ["own_intake"]

pytestmark = pytest.mark.integration

WATER = {"soort": "Water"}


def run(settings: IntakeSettings, scenario: Callable[[Intake], Awaitable[None]]) -> None:
    """Run a scenario against the test's own intake database (sync tests: the helpers
    that register addresses run their own event loop)."""

    async def main() -> None:
        intake = Intake(settings)
        try:
            await scenario(intake)
        finally:
            await intake.close()

    asyncio.run(main())


async def accept(intake: Intake, partner: PartnerIdentity, *bodies: dict, levering=None) -> list:
    async with intake.session_factory() as session, session.begin():
        return await handlers.accept_signals(
            session,
            intake.vault(),
            intake.outbox,
            partner,
            [SignalIn.model_validate(body) for body in bodies],
            region=intake.region,
            household_secret=intake.settings.household_key_secret.get_secret_value(),
            now=utc_now(),
            levering_id=levering,
        )


def test_same_id_other_content_is_a_conflict_and_the_stored_signal_stays(
    own_intake: IntakeSettings,
) -> None:
    homes = fresh_households(1, seed=611)

    async def scenario(intake: Intake) -> None:
        partner = await intake.prepare(homes)
        body = signal_for(homes[0], WATER, "CORR-1", amount="100.00")
        [first] = await accept(intake, partner, body)
        assert isinstance(first, handlers.Accepted) and first.created
        [same] = await accept(intake, partner, copy.deepcopy(body))
        assert isinstance(same, handlers.Accepted) and not same.created
        assert same.receipt == first.receipt

        changed = copy.deepcopy(body)
        changed["achterstandBedrag"] = "250.00"
        changed["persoon"]["achternaam"] = "Anders"
        events_before = await intake.scalar("SELECT count(*) FROM outbox")
        [conflict] = await accept(intake, partner, changed)
        assert isinstance(conflict, handlers.Conflict)
        assert conflict.fields == ["achterstandBedrag", "persoon"]
        assert {v.name for v in conflict.violations} == {"achterstandBedrag", "persoon"}
        assert all("Anders" not in v.reason and "250" not in v.reason for v in conflict.violations)
        assert conflict.receipt.id == first.receipt.id
        stored = await intake.rows(
            "SELECT achterstand_bedrag, status FROM signalen WHERE partner_signaal_id = 'CORR-1'"
        )
        assert [(str(r.achterstand_bedrag), r.status) for r in stored] == [
            ("100.00", "doorgestuurd")
        ]
        assert await intake.scalar("SELECT count(*) FROM outbox") == events_before

    run(own_intake, scenario)


def test_a_duplicate_line_in_one_delivery_is_refused(own_intake: IntakeSettings) -> None:
    homes = fresh_households(2, seed=612)

    async def scenario(intake: Intake) -> None:
        partner = await intake.prepare(homes)
        first = signal_for(homes[0], WATER, "DUP-1")
        again = copy.deepcopy(first)
        other = signal_for(homes[1], WATER, "DUP-1", amount="999.00")  # same id, other content
        delivery = await intake.deliver(partner, [first, again, other])
        await intake.worker().process(delivery)
        lines = await intake.rows(
            "SELECT regel, status, fouten FROM levering_regels WHERE levering_id = :id ORDER BY regel",
            id=delivery,
        )
        assert [line.status for line in lines] == ["doorgestuurd", "geweigerd", "geweigerd"]
        assert [[e["name"] for e in line.fouten] for line in lines[1:]] == [
            ["partnerSignaalId"],
            ["partnerSignaalId"],
        ]
        assert "achterstandBedrag" in lines[2].fouten[0]["reason"]
        assert await intake.scalar("SELECT count(*) FROM signalen") == 1

    run(own_intake, scenario)


def test_withdrawing_marks_the_signal_tells_matching_and_the_feed_once(
    own_intake: IntakeSettings,
) -> None:
    homes = fresh_households(1, seed=613)

    async def scenario(intake: Intake) -> None:
        partner = await intake.prepare(homes)
        [accepted] = await accept(intake, partner, signal_for(homes[0], WATER, "WD-1"))
        signal_id = accepted.receipt.id
        outsider = PartnerIdentity(id=uuid.uuid4(), naam="Ander", soort="Water")
        receipts = []
        for _ in range(2):
            async with intake.session_factory() as session, session.begin():
                assert (
                    await handlers.withdraw_signal(
                        session, intake.outbox, outsider, signal_id, now=utc_now()
                    )
                    is None
                )
                receipts.append(
                    await handlers.withdraw_signal(
                        session, intake.outbox, partner, signal_id, now=utc_now()
                    )
                )
        assert receipts[0] == receipts[1]
        assert receipts[0] is not None and receipts[0].status == "ingetrokken"
        staged = await intake.rows(
            "SELECT payload FROM outbox WHERE topic = :topic", topic=SIGNAL_WITHDRAWN.name
        )
        [withdrawn] = [decode_event(bytes(row.payload)) for row in staged]
        assert (withdrawn.event_type, withdrawn.signal_id) == ("SignalWithdrawn", signal_id)
        feed = await intake.rows(
            "SELECT event_id, status FROM terugkoppelingen WHERE signal_id = :id", id=signal_id
        )
        assert [(row.event_id, row.status) for row in feed] == [(withdrawn.event_id, "ingetrokken")]

    run(own_intake, scenario)


def case_status(household_key: str) -> str | None:
    return service_scalar(
        OutreachSettings().database_url,
        "SELECT status FROM zaken WHERE household_key = :key",
        key=household_key,
    )


def test_the_partner_api_answers_conflicts_and_withdrawals(running_stack: Stack) -> None:
    partner = add_partner("Waterbedrijf Correctie (test)", "Water")
    other = add_partner("Waterbedrijf Buur (test)", "Water")
    home = fresh_households(1, seed=614)[0]
    body = signal_for(home, partner, "API-CORR-1", amount="80.00")
    with httpx.Client(base_url=running_stack.url("intake")) as client:
        headers = bearer(client, partner)
        created = client.post("/api/v1/signalen", json=body, headers=headers)
        assert created.status_code == 201, created.text
        signal_id = created.json()["id"]
        key = intake_scalar(
            "SELECT household_key FROM signalen WHERE id = :id", id=uuid.UUID(signal_id)
        )
        poll(lambda: case_status(key) == "open", 60, "the case to open")

        changed = {**body, "achterstandBedrag": "95.00"}
        conflict = client.post("/api/v1/signalen", json=changed, headers=headers)
        assert conflict.status_code == 409
        assert conflict.headers["content-type"] == "application/problem+json"
        assert [p["name"] for p in conflict.json()["invalidParams"]] == ["achterstandBedrag"]
        # the refusal names the field, never the value (ids in it are random: look for the
        # whole amount, not "95", which a uuid may hold)
        assert "95.00" not in conflict.text and "95,00" not in conflict.text

        assert (
            client.delete(f"/api/v1/signalen/{signal_id}", headers=bearer(client, other))
        ).status_code == 404
        withdrawn = client.delete(f"/api/v1/signalen/{signal_id}", headers=headers)
        again = client.delete(f"/api/v1/signalen/{signal_id}", headers=headers)
        assert (withdrawn.status_code, again.status_code) == (200, 200)
        assert withdrawn.json() == again.json()
        assert withdrawn.json()["status"] == "ingetrokken"
        receipt = client.get(f"/api/v1/signalen/{signal_id}", headers=headers).json()
        assert receipt["status"] == "ingetrokken"
        feed = client.get("/api/v1/terugkoppelingen?aantal=1000", headers=headers).json()
        assert (signal_id, "ingetrokken") in [
            (f["signaalId"], f["status"]) for f in feed["terugkoppelingen"]
        ]
    assert intake_scalar(
        "SELECT achterstand_bedrag FROM signalen WHERE id = :id", id=uuid.UUID(signal_id)
    ) == Decimal("80.00")
    # matching took it out, and the case, with no signal left, is closed as withdrawn
    poll(
        lambda: service_scalar(
            MatchingSettings().database_url,
            "SELECT ingetrokken_op IS NOT NULL FROM signals WHERE signal_id = :id",
            id=uuid.UUID(signal_id),
        ),
        60,
        "matching to mark the signal withdrawn",
    )
    poll(lambda: case_status(key) == "ingetrokken", 60, "the case to be closed as withdrawn")
