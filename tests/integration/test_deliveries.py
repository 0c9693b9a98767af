"""Deliveries: a batch judged signal by signal, as JSON or CSV, with progress and receipts."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from services.intake import deliveries
from services.intake.auth import PartnerIdentity
from services.intake.settings import IntakeSettings
from shared.crypto import make_vault
from shared.db import make_engine
from shared.events import utc_now
from tests.support import add_partner, bearer, fresh_households, intake_scalar, poll, signal_for
from vroeg.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def partner() -> dict[str, str]:
    return add_partner("Waterbedrijf Levering (test)", "Water")


def finished(client: httpx.Client, location: str, headers: dict[str, str]) -> dict:
    def status() -> dict | None:
        body = client.get(location, headers=headers).json()
        return body if body["status"] == "verwerkt" else None

    return poll(status, 60, "the delivery to be processed")


def every_line(client: httpx.Client, location: str, headers: dict[str, str]) -> list[dict]:
    """Page through a processed delivery's lines with vanaf/volgende."""
    lines: list[dict] = []
    vanaf: int | None = 0
    while vanaf is not None:
        page = client.get(location, params={"vanaf": vanaf}, headers=headers).json()
        lines.extend(page["signalen"])
        vanaf = page["volgende"]
    return lines


def flatten(signal: dict, prefix: str = "") -> dict[str, str]:
    cells: dict[str, str] = {}
    for key, value in signal.items():
        if isinstance(value, dict):
            cells.update(flatten(value, f"{prefix}{key}."))
        else:
            cells[f"{prefix}{key}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return cells


def as_csv(signals: list[dict], delimiter: str) -> str:
    rows = [flatten(s) for s in signals]
    columns = sorted({c for row in rows for c in row})
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, delimiter=delimiter, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def test_a_json_delivery_accepts_the_good_and_names_what_is_wrong_with_the_rest(
    running_stack: Stack, partner: dict[str, str]
) -> None:
    homes = fresh_households(1_203, seed=41)  # crosses the 1,000-signal chunk
    signals = [signal_for(home, partner, f"JL-{i:05d}") for i, home in enumerate(homes)]
    signals[7]["persoon"]["bsn"] = "123456789"
    signals[1_100]["adres"]["huisnummer"] = 99_997  # outside the address table
    signals[1_201] = {"partnerSignaalId": "JL-KAPOT", "onbekend": True}
    signals[1_202] = dict(signals[5])  # the same partnerSignaalId twice: the later refused
    with httpx.Client(base_url=running_stack.url("intake"), timeout=60) as client:
        headers = bearer(client, partner)
        response = client.post("/api/v1/leveringen", json=signals, headers=headers)
        assert response.status_code == 202, response.text
        assert response.json()["aantal"] == 1_203
        status = finished(client, response.headers["Location"], headers)
        first_page = [line["regel"] for line in status["signalen"]]
        lines = {
            line["regel"]: line
            for line in every_line(client, response.headers["Location"], headers)
        }
        progress_only = client.get(
            response.headers["Location"], params={"aantal": 0}, headers=headers
        ).json()
    assert status["aantalVerwerkt"] == 1_203
    assert status["aantalGeweigerd"] == 4
    assert status["aantalDoorgestuurd"] == 1_199
    assert first_page == list(range(1, 1_001))  # a page of 1,000 lines by default
    assert (progress_only["signalen"], progress_only["aantalVerwerkt"]) == ([], 1_203)
    assert sorted(lines) == list(range(1, 1_204))
    assert [e["name"] for e in lines[8]["fouten"]] == ["persoon.bsn"]
    assert [e["name"] for e in lines[1_101]["fouten"]] == ["adres"]
    assert {e["name"] for e in lines[1_202]["fouten"]} >= {"onbekend", "soort"}
    assert [e["name"] for e in lines[1_203]["fouten"]] == ["partnerSignaalId"]
    assert (
        intake_scalar("SELECT count(*) FROM signalen WHERE partner_signaal_id LIKE 'JL-%'")
        == 1_199  # line 1,203 repeats line 6 and is refused
    )
    assert (
        intake_scalar(
            "SELECT count(*) FROM leveringen WHERE inhoud IS NOT NULL AND status = 'verwerkt'"
        )
        == 0
    )


@pytest.mark.parametrize(("delimiter", "bom"), [(";", True), (",", False)])
def test_a_csv_delivery_with_either_separator(
    running_stack: Stack, partner: dict[str, str], delimiter: str, bom: bool
) -> None:
    homes = fresh_households(3, seed=42 if bom else 43)
    signals = [
        signal_for(home, partner, f"CSV-{'puntkomma' if bom else 'komma'}-{i}")
        for i, home in enumerate(homes)
    ]
    body = ("\ufeff" if bom else "") + as_csv(signals, delimiter)
    with httpx.Client(base_url=running_stack.url("intake"), timeout=60) as client:
        headers = bearer(client, partner)
        response = client.post(
            "/api/v1/leveringen",
            content=body.encode(),
            headers={**headers, "Content-Type": "text/csv"},
        )
        assert response.status_code == 202, response.text
        status = finished(client, response.headers["Location"], headers)
    assert status["aantalDoorgestuurd"] == 3, [line["fouten"] for line in status["signalen"]]


def test_an_unreadable_file_is_refused_as_a_whole(
    running_stack: Stack, partner: dict[str, str]
) -> None:
    with httpx.Client(base_url=running_stack.url("intake")) as client:
        headers = bearer(client, partner)
        response = client.post(
            "/api/v1/leveringen",
            content=b"geen;kopregel\n1;2\n",
            headers={**headers, "Content-Type": "text/csv"},
        )
    assert response.status_code == 400
    assert response.json()["invalidParams"][0]["name"] == "body"


def test_another_partners_delivery_is_not_found(
    running_stack: Stack, partner: dict[str, str]
) -> None:
    other = add_partner("Nieuwsgierige Partner (test)", "Huur")
    homes = fresh_households(1, seed=44)
    with httpx.Client(base_url=running_stack.url("intake")) as client:
        response = client.post(
            "/api/v1/leveringen",
            json=[signal_for(homes[0], partner, "OWN-1")],
            headers=bearer(client, partner),
        )
        peek = client.get(response.headers["Location"], headers=bearer(client, other))
    assert peek.status_code == 404


def test_the_partner_side_upload_command(
    running_stack: Stack, partner: dict[str, str], tmp_path: Path
) -> None:
    homes = fresh_households(4, seed=45)
    signals = [signal_for(home, partner, f"LEVER-{i}") for i, home in enumerate(homes)]
    signals[2]["achterstandBedrag"] = "-5"
    path = tmp_path / "levering.csv"
    path.write_text(as_csv(signals, ";"), encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vroeg.cli",
            "lever",
            str(path),
            "--partner",
            partner["client_id"],
            "--url",
            running_stack.url("intake"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "VROEG_CLIENT_SECRET": partner["client_secret"]},
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert (status["aantalDoorgestuurd"], status["aantalGeweigerd"]) == (3, 1)
    assert status["signalen"][2]["fouten"][0]["name"] == "achterstandBedrag"


@pytest.mark.parametrize("media_type", ["application/json", "text/csv"])
def test_a_poison_line_is_refused_alone_and_every_other_line_goes_on(
    running_stack: Stack, partner: dict[str, str], media_type: str
) -> None:
    """A NUL or a lone surrogate in partnerSignaalId (or any text) once made the chunk's
    transaction fail at every lease: the other lines were never accepted."""
    tag = "PJ" if media_type == "application/json" else "PC"
    homes = fresh_households(5, seed=43 if tag == "PJ" else 44)
    signals = [signal_for(home, partner, f"{tag}-{i}") for i, home in enumerate(homes)]
    signals[1]["partnerSignaalId"] = f"{tag}-\u0000-1"
    signals[3]["persoon"]["achternaam"] = "Be\x00rg"
    if media_type == "application/json":
        signals[2]["partnerSignaalId"] = f"{tag}-\ud800-2"  # CSV in UTF-8 cannot hold one
        body = json.dumps(signals).encode()
    else:
        body = as_csv(signals, ";").encode()
    with httpx.Client(base_url=running_stack.url("intake"), timeout=60) as client:
        headers = bearer(client, partner)
        response = client.post(
            "/api/v1/leveringen", content=body, headers={**headers, "Content-Type": media_type}
        )
        assert response.status_code == 202, response.text
        status = finished(client, response.headers["Location"], headers)
        lines = every_line(client, response.headers["Location"], headers)
    poisoned = {2, 3, 4} if media_type == "application/json" else {2, 4}
    assert status["aantalVerwerkt"] == 5
    assert status["aantalGeweigerd"] == len(poisoned)
    assert [line["regel"] for line in lines] == [1, 2, 3, 4, 5]
    for line in lines:
        if line["regel"] in poisoned:
            assert line["status"] == "geweigerd"
            assert "ongeldig teken" in line["fouten"][0]["reason"], line
        else:
            assert line["status"] == "doorgestuurd", line
    by_line = {line["regel"]: line for line in lines}
    assert by_line[2]["partnerSignaalId"] is None  # never stored with the NUL
    assert by_line[2]["fouten"][0]["name"] == "partnerSignaalId"
    assert by_line[4]["fouten"][0]["name"] == "persoon.achternaam"


def test_a_stored_delivery_that_no_longer_reads_ends_with_every_line_refused(
    running_stack: Stack, partner: dict[str, str]
) -> None:
    """A delivery taken at the door under older rules (here: a line that is not an object)
    once failed at every lease; now each of its lines is refused with the reason."""
    settings = IntakeSettings()
    partner_id = intake_scalar(
        "SELECT id FROM partners WHERE client_id = :c", c=partner["client_id"]
    )
    identity = PartnerIdentity(id=uuid.UUID(str(partner_id)), naam=partner["naam"], soort="Water")

    async def store() -> uuid.UUID:
        keystore = make_engine(settings.keystore_url, pool_size=1)
        engine = make_engine(settings.database_url, pool_size=1)
        try:
            async with AsyncSession(engine) as session, session.begin():
                delivery = await deliveries.store_delivery(
                    session,
                    make_vault(settings, keystore),
                    identity,
                    b'[{"partnerSignaalId": "OUD-1"}, 7]',
                    "application/json",
                    2,
                    utc_now(),
                )
                delivery_id = delivery.id
            return delivery_id
        finally:
            await engine.dispose()
            await keystore.dispose()

    location = f"/api/v1/leveringen/{asyncio.run(store())}"
    with httpx.Client(base_url=running_stack.url("intake"), timeout=60) as client:
        headers = bearer(client, partner)
        status = finished(client, location, headers)
        lines = every_line(client, location, headers)
    assert status["aantalGeweigerd"] == 2
    assert [line["status"] for line in lines] == ["geweigerd", "geweigerd"]
    assert all("Regel 2 is geen signaal" in line["fouten"][0]["reason"] for line in lines)
