"""Matching's event handlers: a signal joins its household's open match or opens one."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.matching.domain import SignalFact, classify, joins_open_match
from services.matching.models import Household, Match, MatchSignal
from services.matching.settings import MatchingSettings
from shared.events import (
    MATCH_CREATED,
    MATCH_UPDATED,
    MatchCreated,
    MatchedSignal,
    MatchUpdated,
    SignalReceived,
)
from shared.outbox import Outbox


def _fact(row: MatchSignal) -> SignalFact:
    return SignalFact(
        signal_id=row.signal_id,
        creditor_id=row.creditor_id,
        signaaldatum=row.signaaldatum,
        achterstand_bedrag=row.achterstand_bedrag,
        ontvangen_op=row.ontvangen_op,
    )


def _matched(row: MatchSignal) -> MatchedSignal:
    return MatchedSignal(
        signal_id=row.signal_id,
        partner_id=row.partner_id,
        partner_naam=row.partner_naam,
        creditor_id=row.creditor_id,
        partner_signaal_id=row.partner_signaal_id,
        soort=row.soort,  # type: ignore[arg-type]
        energiesoort=row.energiesoort,  # type: ignore[arg-type]
        signaaldatum=row.signaaldatum,
        achterstand_bedrag=row.achterstand_bedrag,
    )


async def on_signal_received(
    session: AsyncSession, event: SignalReceived, *, outbox: Outbox, settings: MatchingSettings
) -> None:
    """Add the signal to its household's history and forward the (updated) match."""
    await session.execute(
        pg_insert(Household)
        .values(key=event.household_key, gemeentecode=event.gemeentecode)
        .on_conflict_do_nothing(index_elements=["key"])
    )
    # One household is matched by one transaction at a time, also during a rebalance.
    await session.execute(
        select(Household.key).where(Household.key == event.household_key).with_for_update()
    )
    history = list(
        (
            await session.scalars(
                select(MatchSignal).where(
                    MatchSignal.household_key == event.household_key,
                    MatchSignal.gemeentecode == event.gemeentecode,
                )
            )
        ).all()
    )
    if any(row.signal_id == event.signal_id for row in history):
        return
    open_match = await session.scalar(
        select(Match)
        .where(Match.household_key == event.household_key, Match.gemeentecode == event.gemeentecode)
        .order_by(Match.doorgestuurd_op.desc())
        .limit(1)
    )
    if open_match is not None and not joins_open_match(
        event.ontvangen_op, open_match.doorgestuurd_op
    ):
        open_match = None
    is_new = open_match is None
    if open_match is None:
        open_match = Match(
            id=uuid.uuid4(),
            household_key=event.household_key,
            gemeentecode=event.gemeentecode,
            version=0,
            doorgestuurd_op=event.ontvangen_op,
        )
        session.add(open_match)
    row = MatchSignal(
        signal_id=event.signal_id,
        household_key=event.household_key,
        gemeentecode=event.gemeentecode,
        match_id=open_match.id,
        partner_id=event.partner_id,
        partner_naam=event.partner_naam,
        creditor_id=event.creditor_id,
        partner_signaal_id=event.partner_signaal_id,
        soort=event.soort,
        energiesoort=event.energiesoort,
        signaaldatum=event.signaaldatum,
        achterstand_bedrag=event.achterstand_bedrag,
        ontvangen_op=event.ontvangen_op,
    )
    in_match = [r for r in history if r.match_id == open_match.id] + [row]
    earlier = [r for r in history if r.match_id != open_match.id]
    verdict = classify(
        [_fact(r) for r in in_match],
        [_fact(r) for r in earlier],
        settings.consecutive_window_months,
    )
    open_match.soort = verdict.soort
    open_match.aantal_schuldeisers = verdict.aantal_schuldeisers
    open_match.totaal_achterstand = verdict.totaal_achterstand
    open_match.regel = verdict.regel
    open_match.version += 1
    session.add(row)
    await session.flush()
    state = {
        "gemeentecode": event.gemeentecode,
        "household_key": event.household_key,
        "match_id": open_match.id,
        "version": open_match.version,
        "soort": verdict.soort,
        "aantal_schuldeisers": verdict.aantal_schuldeisers,
        "totaal_achterstand": verdict.totaal_achterstand,
        "doorgestuurd_op": open_match.doorgestuurd_op,
        "regel": verdict.regel,
        "signalen": tuple(
            _matched(r) for r in sorted(in_match, key=lambda r: (r.signaaldatum, str(r.signal_id)))
        ),
    }
    if is_new:
        await outbox.stage(session, MATCH_CREATED, MatchCreated(**state))
    else:
        await outbox.stage(session, MATCH_UPDATED, MatchUpdated(**state))
