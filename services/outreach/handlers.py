"""Outreach's handlers: open or update a case from the match's state."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from services.outreach.domain import help_offer_deadline, is_newer_version
from services.outreach.models import Case, CaseSignal, audit
from shared import audit as audit_trail
from shared.events import OUTREACH_DUE, CaseSignalRef, MatchCreated, MatchUpdated, OutreachDue
from shared.outbox import Outbox

OPEN = "open"
WITHDRAWN = "ingetrokken"


async def on_match(
    session: AsyncSession, event: MatchCreated | MatchUpdated, *, outbox: Outbox
) -> None:
    """Open the case for a new match, or bring it up to the match's newest version.

    The four-week clock is set once, when the match was forwarded; an update never moves it.
    """
    case = await session.scalar(
        select(Case)
        .where(Case.match_id == event.match_id, Case.gemeentecode == event.gemeentecode)
        .options(selectinload(Case.signalen))
        .with_for_update()
    )
    if case is not None and not is_newer_version(event.version, case.match_version):
        return
    if case is None:
        case = Case(
            id=uuid.uuid4(),
            match_id=event.match_id,
            gemeentecode=event.gemeentecode,
            household_key=event.household_key,
            doorgestuurd_op=event.doorgestuurd_op,
            termijn=help_offer_deadline(event.doorgestuurd_op),
            status=OPEN,
            signalen=[],
        )
        session.add(case)
    case.match_version = event.version
    case.soort = event.soort
    case.aantal_schuldeisers = event.aantal_schuldeisers
    case.totaal_achterstand = event.totaal_achterstand
    case.regel = event.regel
    case.uitleg = event.uitleg
    # A signal its partner withdrew leaves the case (ADR 0012); with none left, the case
    # is closed as withdrawn.
    withdrawn = set(event.ingetrokken)
    if withdrawn:
        case.signalen = [s for s in case.signalen if s.signal_id not in withdrawn]
    if event.aantal_schuldeisers == 0:
        case.status = WITHDRAWN
    elif case.status == WITHDRAWN:
        case.status = OPEN
    known = {s.signal_id for s in case.signalen}
    for signal in event.signalen:
        if signal.signal_id not in known and signal.signal_id not in withdrawn:
            case.signalen.append(
                CaseSignal(
                    signal_id=signal.signal_id,
                    partner_id=signal.partner_id,
                    partner_naam=signal.partner_naam,
                    partner_signaal_id=signal.partner_signaal_id,
                    soort=signal.soort,
                    energiesoort=signal.energiesoort,
                    signaaldatum=signal.signaaldatum,
                    achterstand_bedrag=signal.achterstand_bedrag,
                )
            )
    await session.flush()
    await outbox.stage(
        session,
        OUTREACH_DUE,
        OutreachDue(
            gemeentecode=event.gemeentecode,
            household_key=event.household_key,
            case_id=case.id,
            match_id=event.match_id,
            doorgestuurd_op=case.doorgestuurd_op,
            termijn=case.termijn,
            signalen=tuple(
                CaseSignalRef(
                    signal_id=s.signal_id,
                    partner_id=s.partner_id,
                    partner_signaal_id=s.partner_signaal_id,
                )
                for s in case.signalen
            ),
        ),
    )


async def list_cases(
    session: AsyncSession, gemeentecode: str, *, actor: str, reason: str, now: dt.datetime
) -> list[Case]:
    """One municipality's cases, oldest deadline first; the read is audited."""
    cases = list(
        (
            await session.scalars(
                select(Case)
                .where(Case.gemeentecode == gemeentecode)
                .options(selectinload(Case.signalen))
                .order_by(Case.termijn, Case.id)
            )
        ).all()
    )
    await audit_trail.record(
        session,
        audit,
        actor=actor,
        action="zaken-lijst-gelezen",
        object_=f"zaken:{gemeentecode}",
        result=f"{len(cases)} gelezen",
        gemeentecode=gemeentecode,
        reason=reason,
        at=now,
    )
    return cases


def case_summary(case: Case) -> dict:
    """The case as the caseworker tools and `vroeg zaken` show it."""
    return {
        "id": str(case.id),
        "gemeentecode": case.gemeentecode,
        "soort": case.soort,
        "aantalSchuldeisers": case.aantal_schuldeisers,
        "totaalAchterstand": str(case.totaal_achterstand),
        "doorgestuurdOp": case.doorgestuurd_op.isoformat(),
        "termijn": case.termijn.isoformat(),
        "status": case.status,
        "regel": case.regel,
        "uitleg": case.uitleg,
        "signalen": [
            {
                "partnerSignaalId": s.partner_signaal_id,
                "partner": s.partner_naam,
                "soort": s.soort,
                "energiesoort": s.energiesoort,
                "signaaldatum": s.signaaldatum.isoformat(),
                "achterstandBedrag": str(s.achterstand_bedrag),
            }
            for s in case.signalen
        ],
    }
