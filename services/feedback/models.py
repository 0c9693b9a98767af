"""Feedback's tables."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import Date, DateTime, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.audit import add_audit_tables
from shared.db import new_metadata
from shared.outbox import add_messaging_tables


class Base(DeclarativeBase):
    metadata = new_metadata()


messaging = add_messaging_tables(Base.metadata)
audit = add_audit_tables(Base.metadata)  # append-only, hash-chained (shared.audit)


class PartnerSignal(Base):
    """A partner's signal under case handling: what feedback will report on."""

    __tablename__ = "partner_signalen"

    signal_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    partner_id: Mapped[uuid.UUID] = mapped_column(index=True)
    partner_signaal_id: Mapped[str] = mapped_column(String(100))
    gemeentecode: Mapped[str] = mapped_column(String(6), index=True)
    case_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    termijn: Mapped[dt.date | None] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(40))
    bijgewerkt_op: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
