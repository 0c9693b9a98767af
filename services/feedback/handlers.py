"""Feedback's handlers."""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.feedback.models import PartnerSignal
from shared.events import OutreachDue, SignalBlocked

IN_PROGRESS = "in behandeling"
NOT_FORWARDED = "niet doorgestuurd"


async def on_outreach_due(session: AsyncSession, event: OutreachDue) -> None:
    """Remember, per partner signal, which case answers it and by when."""
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
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["signal_id"],
            set_={"case_id": statement.excluded.case_id, "termijn": statement.excluded.termijn},
        )
    )


async def on_signal_blocked(session: AsyncSession, event: SignalBlocked) -> None:
    """A signal stopped at the door: the partner will hear only that it was not forwarded."""
    await session.execute(
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
    )
