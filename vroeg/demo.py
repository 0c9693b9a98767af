"""Synthetic demo data: partners, and signals that make single, multiple and
consecutive matches. Every person is made up; every BSN lies in the 9999xxxxx test range.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import select
from stdnum.nl import bsn as bsn_rules

from services.intake import handlers as intake
from services.intake.addresses import cbs_csv, read_cbs_rows
from services.intake.models import Partner
from services.intake.settings import IntakeSettings
from shared.db import make_engine, make_session_factory
from shared.events import utc_now
from shared.region import DRENTHE
from vroeg.addresses import address_rows, import_address_rows

DEMO_PARTNERS: tuple[tuple[str, str], ...] = (
    ("Woonstichting Brinkhuis (demo)", "Huur"),
    ("Energie Samen Noord (demo)", "Energie"),
    ("Waterbedrijf Hunzedal (demo)", "Water"),
    ("Zorgverzekeraar Noorderzorg (demo)", "CAK Zorgverzekeringen"),
)

# Real street names and postcode areas would point at real people; these are invented.
_STREETS = ("Esweg", "Brinkpad", "Heidelaan", "Veenwijk", "Zandkamp", "Hunzeoever", "Turfstraat")
_PLACES = {
    "GM1731": ("Beilen", "9411"),
    "GM0106": ("Assen", "9401"),
    "GM0114": ("Emmen", "7811"),
    "GM0118": ("Hoogeveen", "7901"),
    "GM0119": ("Meppel", "7941"),
    "GM0109": ("Coevorden", "7741"),
    "GM1680": ("Gieten", "9461"),
    "GM1681": ("Borger", "9531"),
    "GM1690": ("Zuidwolde", "7921"),
    "GM1699": ("Roden", "9301"),
    "GM1701": ("Diever", "7981"),
    "GM1730": ("Eelde", "9761"),
}
_SURNAMES = ("Jansma", "Bakker", "de Vries", "Hoekstra", "Mulder", "Smit", "Dijkstra", "Visser")


def test_bsns() -> Iterator[str]:
    """BSNs that pass the elfproef, from the 99999xxxx test range no real person has;
    after its ~900 numbers the sequence starts again."""
    valid = [
        f"{n:09d}" for n in range(999_990_000, 1_000_000_000) if bsn_rules.is_valid(f"{n:09d}")
    ]
    return itertools.cycle(valid)


@dataclass(frozen=True)
class DemoHousehold:
    gemeentecode: str
    postcode: str
    huisnummer: int
    straatnaam: str
    woonplaats: str
    achternaam: str
    bsn: str


def households(count: int, rng: random.Random) -> list[DemoHousehold]:
    bsns = test_bsns()
    result = []
    codes = list(DRENTHE)
    for index in range(count):
        code = codes[index % len(codes)]
        place, digits = _PLACES[code]
        letters = "".join(rng.choice("ABCDEGHJKLMNPRTVXZ") for _ in range(2))
        result.append(
            DemoHousehold(
                gemeentecode=code,
                postcode=f"{digits} {letters}",
                huisnummer=index + 1,
                straatnaam=rng.choice(_STREETS),
                woonplaats=place,
                achternaam=rng.choice(_SURNAMES),
                bsn=next(bsns),
            )
        )
    return result


def signal_body(
    household: DemoHousehold,
    *,
    partner_signaal_id: str,
    soort: str,
    amount: str,
    signaaldatum: dt.date,
) -> dict:
    """A valid partner-API signal for a demo household."""
    return {
        "partnerSignaalId": partner_signaal_id,
        "soort": soort,
        **({"energiesoort": "elektriciteit"} if soort == "Energie" else {}),
        "signaaldatum": signaaldatum.isoformat(),
        "ontstaansdatum": (signaaldatum - dt.timedelta(days=60)).isoformat(),
        "achterstandBedrag": amount,
        "aantalTermijnenAchterstand": 2,
        "incassotraject": {
            "herinneringVerstuurdOp": (signaaldatum - dt.timedelta(days=30)).isoformat(),
            "persoonlijkContactGezocht": True,
            "gewezenOpSchuldhulp": True,
            "aanbodGegevensDoorgeven": True,
        },
        "persoon": {
            "bsn": household.bsn,
            "voorletters": "A.",
            "achternaam": household.achternaam,
            "geboortedatum": "1985-03-14",
        },
        "adres": {
            "straatnaam": household.straatnaam,
            "huisnummer": household.huisnummer,
            "postcode": household.postcode,
            "woonplaats": household.woonplaats,
        },
        "gemeentecode": household.gemeentecode,
    }


def register_demo_partners(credentials_file: Path) -> list[dict]:
    """Register the region's municipalities and the demo partners (once); write credentials."""
    known = json.loads(credentials_file.read_text()) if credentials_file.exists() else []
    partners = asyncio.run(_register(known))
    if partners != known:
        credentials_file.parent.mkdir(parents=True, exist_ok=True)
        credentials_file.write_text(json.dumps(partners, indent=2, ensure_ascii=False))
        credentials_file.chmod(0o600)
    return partners


async def _register(known: list[dict]) -> list[dict]:
    settings = IntakeSettings()
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        async with make_session_factory(engine)() as session, session.begin():
            await intake.register_municipalities(session)
            registered = set(
                await session.scalars(
                    select(Partner.client_id).where(
                        Partner.client_id.in_([p["client_id"] for p in known])
                    )
                )
            )
            if known and len(registered) == len(known):
                return known
            partners = []
            for naam, soort in DEMO_PARTNERS:
                partner, secret = await intake.add_partner(
                    session, naam=naam, soort=soort, kvk_nummer=None, now=utc_now()
                )
                partners.append(
                    {
                        "naam": naam,
                        "soort": soort,
                        "client_id": partner.client_id,
                        "client_secret": secret,
                    }
                )
            return partners
    finally:
        await engine.dispose()


EXAMPLE_ADDRESS = ("9411AB", 12, "GM1731")


def load_demo_addresses(path: Path, homes: list[DemoHousehold]) -> int:
    """Write the demo households' addresses as a CBS-style file and import it the way an
    operator imports the real one (`vroeg adressen import`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [*address_rows(homes), EXAMPLE_ADDRESS]  # the address of docs/examples/signaal.json
    path.write_text(cbs_csv(rows), encoding="utf-8")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(read_cbs_rows(handle, DRENTHE))
    return asyncio.run(import_address_rows(rows))


def demo_households() -> list[DemoHousehold]:
    return households(24, random.Random(1731))


def access_token(client: httpx.Client, partner: dict) -> str:
    response = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(partner["client_id"], partner["client_secret"]),
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def post_demo_signals(intake_url: str, partners: list[dict], *, today: dt.date) -> int:
    """Deliver a small month of signals: singles, multiples and a consecutive household."""
    rng = random.Random(17)
    homes = demo_households()
    sent = 0
    with httpx.Client(base_url=intake_url, timeout=10) as client:
        tokens = [access_token(client, partner) for partner in partners]
        for index, home in enumerate(homes):
            creditors = 1 if index % 3 else min(len(partners), 2 + index % 2)
            for offset in range(creditors):
                partner_index = (index + offset) % len(partners)
                body = signal_body(
                    home,
                    partner_signaal_id=f"DEMO-{index:03d}-{offset}",
                    soort=partners[partner_index]["soort"],
                    amount=f"{rng.randint(150, 2400)}.{rng.randint(0, 99):02d}",
                    signaaldatum=today - dt.timedelta(days=rng.randint(0, 10)),
                )
                response = client.post(
                    "/api/v1/signalen",
                    json=body,
                    headers={"Authorization": f"Bearer {tokens[partner_index]}"},
                )
                response.raise_for_status()
                sent += 1
    return sent
