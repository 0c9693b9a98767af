"""Intake's tables."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from sqlalchemy import JSON, Boolean, Date, DateTime, ForeignKey, Numeric, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import new_metadata
from shared.outbox import add_messaging_tables


class Base(DeclarativeBase):
    metadata = new_metadata()


messaging = add_messaging_tables(Base.metadata)


class Municipality(Base):
    """A tenant of the regional deployment."""

    __tablename__ = "gemeenten"

    code: Mapped[str] = mapped_column(String(6), primary_key=True)
    naam: Mapped[str] = mapped_column(String(100))


class Partner(Base):
    """A creditor organisation that delivers signals."""

    __tablename__ = "partners"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(200))
    naam: Mapped[str] = mapped_column(String(200))
    soort: Mapped[str] = mapped_column(String(40))
    kvk_nummer: Mapped[str | None] = mapped_column(String(8))
    actief: Mapped[bool] = mapped_column(Boolean, default=True)
    aangemaakt_op: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class Signal(Base):
    """One signal as a partner delivered it."""

    __tablename__ = "signalen"
    __table_args__ = (UniqueConstraint("partner_id", "partner_signaal_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    partner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("partners.id"))
    partner_signaal_id: Mapped[str] = mapped_column(String(100))
    gemeentecode: Mapped[str] = mapped_column(ForeignKey("gemeenten.code"), index=True)
    household_key: Mapped[str] = mapped_column(String(64), index=True)
    soort: Mapped[str] = mapped_column(String(40))
    energiesoort: Mapped[str | None] = mapped_column(String(20))
    signaaldatum: Mapped[dt.date] = mapped_column(Date)
    ontstaansdatum: Mapped[dt.date | None] = mapped_column(Date)
    achterstand_bedrag: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    persoonsgegevens: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(30))
    reden: Mapped[str | None] = mapped_column(String(300))
    ontvangen_op: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
