"""Matching's tables: pseudonymous household history only."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from sqlalchemy import Date, DateTime, ForeignKey, Integer, Numeric, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import new_metadata
from shared.outbox import add_messaging_tables


class Base(DeclarativeBase):
    metadata = new_metadata()


messaging = add_messaging_tables(Base.metadata)


class Household(Base):
    """One row per household key; locked while one of its signals is matched."""

    __tablename__ = "households"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    gemeentecode: Mapped[str] = mapped_column(String(6))


class Match(Base):
    __tablename__ = "matches"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    household_key: Mapped[str] = mapped_column(ForeignKey("households.key"), index=True)
    gemeentecode: Mapped[str] = mapped_column(String(6), index=True)
    soort: Mapped[str] = mapped_column(String(20))
    version: Mapped[int] = mapped_column(Integer)
    aantal_schuldeisers: Mapped[int] = mapped_column(Integer)
    totaal_achterstand: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    doorgestuurd_op: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    regel: Mapped[str] = mapped_column(String(300))


class MatchSignal(Base):
    """A signal in the household history, and the match it joined."""

    __tablename__ = "signals"

    signal_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    household_key: Mapped[str] = mapped_column(ForeignKey("households.key"), index=True)
    gemeentecode: Mapped[str] = mapped_column(String(6))
    match_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("matches.id"), index=True)
    partner_id: Mapped[uuid.UUID]
    partner_naam: Mapped[str] = mapped_column(String(200))
    creditor_id: Mapped[uuid.UUID]
    partner_signaal_id: Mapped[str] = mapped_column(String(100))
    soort: Mapped[str] = mapped_column(String(40))
    energiesoort: Mapped[str | None] = mapped_column(String(20))
    signaaldatum: Mapped[dt.date] = mapped_column(Date)
    achterstand_bedrag: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    ontvangen_op: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
