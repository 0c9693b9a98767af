"""A municipality's matching rules, as its functional administrator sets them
(`vroeg matchregels`). Bounds come from domain.MunicipalityRules."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.matching.domain import Bundling, MunicipalityRules
from services.matching.models import MunicipalityRule, audit
from services.matching.settings import MatchingSettings
from shared import audit as audit_trail
from shared.region import DRENTHE


async def set_rules(
    session: AsyncSession,
    gemeentecode: str,
    rules: MunicipalityRules,
    *,
    actor: str,
    now: dt.datetime,
) -> None:
    """Store a municipality's rules; later signals are matched by them (matches already
    made keep the rules they were made under)."""
    if gemeentecode not in DRENTHE:
        raise ValueError(f"gemeentecode {gemeentecode} hoort niet bij deze regio")
    values = {
        "gemeentecode": gemeentecode,
        "opeenvolgend_maanden": rules.opeenvolgend_maanden,
        "bundeling": rules.bundeling,
        "bundeling_dagen": rules.bundeling_dagen,
        "gewijzigd_op": now,
        "gewijzigd_door": actor,
    }
    await session.execute(
        pg_insert(MunicipalityRule)
        .values(**values)
        .on_conflict_do_update(index_elements=["gemeentecode"], set_=values)
    )
    await audit_trail.record(
        session,
        audit,
        actor=actor,
        action="matchregels-gezet",
        object_=rules_object(rules),
        result="ok",
        gemeentecode=gemeentecode,
        at=now,
    )


def rules_object(rules: MunicipalityRules) -> str:
    """The audit object of a rules change: what was set (no personal data in rules)."""
    return (
        f"matchregels:opeenvolgend={rules.opeenvolgend_maanden},"
        f"bundeling={rules.bundeling},dagen={rules.bundeling_dagen}"
    )


async def list_rules(session: AsyncSession, settings: MatchingSettings) -> list[dict[str, Any]]:
    """Every municipality of the region with the rules that apply to it."""
    own = {r.gemeentecode: r for r in await session.scalars(select(MunicipalityRule))}
    result = []
    for code in sorted(DRENTHE):
        row = own.get(code)
        bundeling: Bundling = row.bundeling if row else "geen"  # type: ignore[assignment]
        result.append(
            {
                "gemeentecode": code,
                "gemeente": DRENTHE[code],
                "opeenvolgendMaanden": row.opeenvolgend_maanden
                if row
                else settings.consecutive_window_months,
                "bundeling": bundeling,
                "bundelingDagen": row.bundeling_dagen if row else 0,
                "bron": f"eigen regel ({row.gewijzigd_door}, {row.gewijzigd_op:%Y-%m-%d})"
                if row
                else "standaard",
            }
        )
    return result
