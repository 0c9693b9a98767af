"""Feedback's handlers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import literal_column
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.feedback.models import PartnerSignal
from shared.events import FEEDBACK_SENT, FeedbackSent, OutreachDue, SignalBlocked
from shared.outbox import Outbox

IN_PROGRESS = "in behandeling"
NOT_FORWARDED = "niet doorgestuurd"


# What a partner is told (partner-api.md; national practice: never why a signal was not
# picked up).
TOLD_IN_PROGRESS = "De gemeente heeft het signaal opgepakt; het hulpaanbod volgt binnen vier weken."
TOLD_NOT_FORWARDED = "Het signaal is niet doorgestuurd."


async def on_outreach_due(session: AsyncSession, event: OutreachDue, *, outbox: Outbox) -> None:
    """Remember, per partner signal, which case answers it and by when; tell the partner
    once that its signal is being handled."""
    if not event.signalen:
        return
    rows = [
        {
            "signal_id": ref.signal_id,
            "partner_id": ref.partner_id,
            "partner_signaal_id": ref.partner_signaal_id,
            "gemeentecode": event.gemeentecode,
            "case_id": event.case_id,
            "termijn": event.termijn,
            "status": IN_PROGRESS,
            "bijgewerkt_op": event.occurred_at,
        }
        for ref in event.signalen
    ]
    statement = pg_insert(PartnerSignal).values(rows)
    rows_back: Any = await session.execute(
        statement.on_conflict_do_update(
            index_elements=["signal_id"],
            set_={"case_id": statement.excluded.case_id, "termijn": statement.excluded.termijn},
        ).returning(PartnerSignal.signal_id, literal_column("(xmax = 0)").label("inserted"))
    )
    new = {row.signal_id for row in rows_back if row.inserted}  # PostgreSQL: xmax 0 = inserted
    await outbox.stage_many(
        session,
        [
            (FEEDBACK_SENT, _told(event.gemeentecode, event.household_key, ref, "in-behandeling"))
            for ref in event.signalen
            if ref.signal_id in new
        ],
    )


def _told(gemeentecode: str, household_key: str, ref: object, status: str) -> FeedbackSent:
    return FeedbackSent(
        gemeentecode=gemeentecode,
        household_key=household_key,
        signal_id=ref.signal_id,  # type: ignore[attr-defined]
        partner_id=ref.partner_id,  # type: ignore[attr-defined]
        partner_signaal_id=ref.partner_signaal_id,  # type: ignore[attr-defined]
        status=status,  # type: ignore[arg-type]
        toelichting=TOLD_IN_PROGRESS if status == "in-behandeling" else TOLD_NOT_FORWARDED,
    )


async def on_signal_blocked(session: AsyncSession, event: SignalBlocked, *, outbox: Outbox) -> None:
    """A signal stopped at the door: the partner hears only that it was not forwarded."""
    inserted = await session.scalar(
        pg_insert(PartnerSignal)
        .values(
            signal_id=event.signal_id,
            partner_id=event.partner_id,
            partner_signaal_id=event.partner_signaal_id,
            gemeentecode=event.gemeentecode,
            case_id=None,
            termijn=None,
            status=NOT_FORWARDED,
            bijgewerkt_op=event.occurred_at,
        )
        .on_conflict_do_nothing(index_elements=["signal_id"])
        .returning(PartnerSignal.signal_id)
    )
    if inserted is not None:
        await outbox.stage(
            session,
            FEEDBACK_SENT,
            _told(event.gemeentecode, event.household_key, event, "niet-doorgestuurd"),
        )
