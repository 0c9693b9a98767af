"""Outreach's tables."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, Date, DateTime, ForeignKey, Integer, Numeric, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shared.audit import add_audit_tables
from shared.db import new_metadata
from shared.outbox import add_messaging_tables


class Base(DeclarativeBase):
    metadata = new_metadata()


messaging = add_messaging_tables(Base.metadata)
audit = add_audit_tables(Base.metadata)  # append-only, hash-chained (shared.audit)


class Case(Base):
    """A vroegsignaalzaak: one match under case handling, with its legal clock."""

    __tablename__ = "zaken"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    match_id: Mapped[uuid.UUID] = mapped_column(unique=True)
    match_version: Mapped[int] = mapped_column(Integer)
    gemeentecode: Mapped[str] = mapped_column(String(6), index=True)
    household_key: Mapped[str] = mapped_column(String(64), index=True)
    soort: Mapped[str] = mapped_column(String(20))
    aantal_schuldeisers: Mapped[int] = mapped_column(Integer)
    totaal_achterstand: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    regel: Mapped[str] = mapped_column(String(300))
    uitleg: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    doorgestuurd_op: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    termijn: Mapped[dt.date] = mapped_column(Date, index=True)
    status: Mapped[str] = mapped_column(String(30))
    signalen: Mapped[list[CaseSignal]] = relationship(
        back_populates="zaak", cascade="all, delete-orphan", order_by="CaseSignal.signaaldatum"
    )


class CaseSignal(Base):
    __tablename__ = "zaak_signalen"

    signal_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("zaken.id"), index=True)
    partner_id: Mapped[uuid.UUID]
    partner_naam: Mapped[str] = mapped_column(String(200))
    partner_signaal_id: Mapped[str] = mapped_column(String(100))
    soort: Mapped[str] = mapped_column(String(40))
    energiesoort: Mapped[str | None] = mapped_column(String(20))
    signaaldatum: Mapped[dt.date] = mapped_column(Date)
    achterstand_bedrag: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    zaak: Mapped[Case] = relationship(back_populates="signalen")
