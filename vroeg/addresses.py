"""Loading the region's address table from the operator's side (CLI, demo, tests, bench)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.intake.handlers import import_addresses
from services.intake.settings import IntakeSettings
from shared.db import make_engine, make_session_factory

if TYPE_CHECKING:
    from vroeg.demo import DemoHousehold


def address_rows(homes: list[DemoHousehold]) -> list[tuple[str, int, str]]:
    """(postcode, house number, municipality) of households, as the address table holds them."""
    return [(h.postcode.replace(" ", ""), h.huisnummer, h.gemeentecode) for h in homes]


async def import_address_rows(rows: list[tuple[str, int, str]]) -> int:
    """Load rows into intake's address table in one transaction (demo, tests, benchmarks)."""
    engine = make_engine(IntakeSettings().database_url, pool_size=1)
    try:
        async with make_session_factory(engine)() as session, session.begin():
            return await import_addresses(session, rows)
    finally:
        await engine.dispose()
