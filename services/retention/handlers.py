"""Retention's handlers: every lifecycle event updates the record index."""

from __future__ import annotations

import uuid

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.retention.models import ArchiveRecord
from shared.events import MatchCreated, MatchUpdated, OutreachDue, SignalBlocked, SignalReceived

LifecycleEvent = SignalReceived | SignalBlocked | MatchCreated | MatchUpdated | OutreachDue


def _record(event: LifecycleEvent) -> tuple[uuid.UUID, str]:
    if isinstance(event, SignalReceived | SignalBlocked):
        return event.signal_id, "signaal"
    if isinstance(event, OutreachDue):
        return event.case_id, "zaak"
    return event.match_id, "match"


async def on_lifecycle_event(session: AsyncSession, event: LifecycleEvent) -> None:
    """Index the record the event is about; keep its first and latest moments."""
    record_id, soort = _record(event)
    statement = pg_insert(ArchiveRecord).values(
        record_id=record_id,
        soort=soort,
        gemeentecode=event.gemeentecode,
        household_key=event.household_key,
        ontstaan_op=event.occurred_at,
        laatste_gebeurtenis=event.event_type,
        laatste_gebeurtenis_op=event.occurred_at,
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["record_id"],
            set_={
                "laatste_gebeurtenis": statement.excluded.laatste_gebeurtenis,
                "laatste_gebeurtenis_op": statement.excluded.laatste_gebeurtenis_op,
            },
            where=ArchiveRecord.laatste_gebeurtenis_op <= statement.excluded.laatste_gebeurtenis_op,
        )
    )
