"""Partner type and agreement (issue 9, item 7): a partner reports only the kinds of
arrears it is registered for (403 naming soort at the API, a refused line in a delivery),
its agreement is recorded and listed, and a disabled partner's queued deliveries stop at
the next chunk after the disabling."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from services.intake import domain, handlers
from services.intake.auth import PartnerIdentity
from services.intake.models import Partner
from services.intake.settings import IntakeSettings
from shared.events import utc_now
from tests.integration.test_corrections import accept, run
from tests.integration.test_delivery_resume import Intake, own_intake
from tests.support import add_partner, bearer, fresh_households, signal_for, vroeg_cli
from vroeg.stack import Stack

__all__ = ["own_intake"]

pytestmark = pytest.mark.integration


async def registered(intake: Intake, partner: PartnerIdentity, kinds: list[str]) -> None:
    async with intake.session_factory() as session, session.begin():
        await session.execute(update(Partner).where(Partner.id == partner.id).values(soorten=kinds))


def test_a_partner_reports_only_the_kinds_it_is_registered_for(own_intake: IntakeSettings) -> None:
    homes = fresh_households(2, seed=621)

    async def scenario(intake: Intake) -> None:
        water = await intake.prepare(homes)  # a water company: Water only
        [refused] = await accept(intake, water, signal_for(homes[0], {"soort": "Huur"}, "K-1"))
        assert isinstance(refused, handlers.Refused)
        [violation] = refused.violations
        assert (violation.name, violation.code) == ("soort", domain.NOT_REGISTERED)
        assert "Huur" in violation.reason and "Water" in violation.reason
        assert await intake.scalar("SELECT count(*) FROM signalen") == 0
        # a housing corporation that also supplies heat holds two kinds
        await registered(intake, water, ["Huur", "Energie"])
        heat = signal_for(homes[1], {"soort": "Energie"}, "K-2")
        outcomes = await accept(intake, water, signal_for(homes[0], {"soort": "Huur"}, "K-3"), heat)
        assert [type(o) for o in outcomes] == [handlers.Accepted, handlers.Accepted]

    run(own_intake, scenario)


def test_a_disabled_partners_queued_deliveries_stop_at_the_next_chunk(
    own_intake: IntakeSettings,
) -> None:
    """The partner is disabled between two chunks: the chunks after it are refused. It
    does not show disabling while a chunk is under way (accept_signals' hold_partner row
    lock); removing hold_partner=True would not fail this test."""
    homes = fresh_households(6, seed=622)

    async def scenario(intake: Intake) -> None:
        partner = await intake.prepare(homes)
        client_id = await intake.scalar(
            "SELECT client_id FROM partners WHERE id = :id", id=partner.id
        )
        lines = [signal_for(home, {"soort": "Water"}, f"Q-{n}") for n, home in enumerate(homes)]
        delivery = await intake.deliver(partner, lines)
        worker = intake.worker(delivery_chunk_size=2, delivery_parallel_chunks=1)
        original = worker._process_chunk
        chunks = []

        async def disable_after_first(
            delivery_id: uuid.UUID, who: PartnerIdentity, chunk: list[tuple[int, Any]]
        ) -> None:
            await original(delivery_id, who, chunk)
            chunks.append(chunk)
            if len(chunks) == 1:  # the operator disables the partner mid-delivery
                async with intake.session_factory() as session, session.begin():
                    await handlers.set_partner_active(
                        session, client_id, False, actor="test", now=utc_now()
                    )

        worker._process_chunk = disable_after_first  # type: ignore[method-assign]
        await worker.process(delivery)
        results = await intake.rows(
            "SELECT regel, status, fouten FROM levering_regels WHERE levering_id = :id "
            "ORDER BY regel",
            id=delivery,
        )
        assert [r.status for r in results] == ["doorgestuurd"] * 2 + ["geweigerd"] * 4
        assert {r.fouten[0]["code"] for r in results[2:]} == {"partner-uitgezet"}
        assert await intake.scalar("SELECT count(*) FROM signalen") == 2
        assert await intake.scalar("SELECT status FROM leveringen WHERE id = :id", id=delivery) == (
            "verwerkt"
        )

    run(own_intake, scenario)


def test_the_api_refuses_another_kind_with_403_and_the_agreement_is_listed(
    running_stack: Stack,
) -> None:
    naam = f"Woonstichting Warmte {uuid.uuid4().hex[:6]} (test)"
    credentials = json.loads(
        vroeg_cli(
            "partner", "add", "--naam", naam, "--type", "Huur", "--soort", "Energie",
            "--afspraak", "eigen", "--afspraak-sinds", "2026-01-01", "--signaal-na-dagen", "30",
            "--json",
        )
    )  # fmt: skip
    partner = {**credentials, "naam": naam, "soort": "Huur"}
    water = add_partner("Waterbedrijf Soort (test)", "Water")
    home = fresh_households(1, seed=623)[0]
    with httpx.Client(base_url=running_stack.url("intake")) as client:
        rent = client.post(
            "/api/v1/signalen",
            json=signal_for(home, partner, "S-1"),
            headers=bearer(client, partner),
        )
        heat = client.post(
            "/api/v1/signalen",
            json=signal_for(home, {"soort": "Energie"}, "S-2"),
            headers=bearer(client, partner),
        )
        refused = client.post(
            "/api/v1/signalen", json=signal_for(home, partner, "S-3"), headers=bearer(client, water)
        )
    assert (rent.status_code, heat.status_code) == (201, 201), heat.text
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert [p["name"] for p in refused.json()["invalidParams"]] == ["soort"]
    [listed] = [
        p
        for p in json.loads(vroeg_cli("partner", "list", "--json"))
        if p["client_id"] == partner["client_id"]
    ]
    assert (listed["soorten"], listed["afspraak"], listed["afspraak_sinds"]) == (
        ["Huur", "Energie"],
        "eigen",
        "2026-01-01",
    )
    assert listed["signaal_na_dagen"] == 30
    assert "eigen" in vroeg_cli("partner", "list")  # the table shows it too
