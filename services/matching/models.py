"""Matching's tables: pseudonymous household history only (keys, creditors, types,
amounts, dates; no names, no readable addresses).

The cost of matching a signal does not grow with history: a household row keeps the
months it had signals in (bounded, domain.MONTHS_KEPT), and a signal reads only the
household's matches whose window can still cover it (an index on household and
forwarding time) and those matches' signals.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.audit import add_audit_tables
from shared.db import new_metadata
from shared.outbox import add_messaging_tables


class Base(DeclarativeBase):
    metadata = new_metadata()


messaging = add_messaging_tables(Base.metadata)
audit = add_audit_tables(Base.metadata)  # append-only, hash-chained (shared.audit)

HELD, FORWARDED = "gebundeld", "doorgestuurd"


class Household(Base):
    """One row per household key; locked while its signals are matched."""

    __tablename__ = "households"

    # A hex digest: compared byte by byte (its order means nothing), not by the locale.
    key: Mapped[str] = mapped_column(String(64, collation="C"), primary_key=True)
    gemeentecode: Mapped[str] = mapped_column(String(6))
    maanden: Mapped[list[int]] = mapped_column(ARRAY(Integer), default=list)


class Match(Base):
    __tablename__ = "matches"
    # A household's recent matches are found by (household, forwarding time); the held
    # ones that are due by a partial index that forwarded matches (nearly all) stay out of.
    __table_args__ = (
        Index("ix_matches_household_recent", "household_key", "doorsturen_op"),
        Index("ix_matches_held", "doorsturen_op", postgresql_where=text("status = 'gebundeld'")),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    household_key: Mapped[str] = mapped_column(ForeignKey("households.key"))
    gemeentecode: Mapped[str] = mapped_column(String(6))
    status: Mapped[str] = mapped_column(String(20))
    soort: Mapped[str] = mapped_column(String(20))
    version: Mapped[int] = mapped_column(Integer)
    aantal_schuldeisers: Mapped[int] = mapped_column(Integer)
    totaal_achterstand: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    geopend_op: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    doorsturen_op: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    doorgestuurd_op: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    regel: Mapped[str] = mapped_column(String(300))
    uitleg: Mapped[dict[str, Any]] = mapped_column(JSON)


class MatchSignal(Base):
    """A signal in the household history, and the match it joined."""

    __tablename__ = "signals"

    signal_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    # no index of its own: a household's signals are found through its matches
    household_key: Mapped[str] = mapped_column(ForeignKey("households.key"))
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
    ingetrokken_op: Mapped[dt.datetime | None] = mapped_column(
        DateTime(timezone=True), doc="Withdrawn by its partner: kept, but no rule counts it."
    )


class WithdrawnSignal(Base):
    """Every withdrawal matching heard of, also one that overtook its signal (ADR 0012)."""

    __tablename__ = "withdrawn_signals"

    signal_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    household_key: Mapped[str] = mapped_column(String(64, collation="C"))
    ingetrokken_op: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class MunicipalityRule(Base):
    """A municipality's matching settings; a municipality without a row uses the defaults."""

    __tablename__ = "gemeente_regels"
    # The bounds of domain.MunicipalityRules, also for a row edited by hand: a bad row
    # would otherwise fail every signal of the municipality.
    __table_args__ = (
        CheckConstraint("opeenvolgend_maanden BETWEEN 1 AND 6", name="opeenvolgend_maanden"),
        CheckConstraint("bundeling IN ('geen', 'einde-maand', 'dagen')", name="bundeling"),
        CheckConstraint(
            "bundeling <> 'dagen' OR bundeling_dagen BETWEEN 1 AND 31", name="bundeling_dagen"
        ),
    )

    gemeentecode: Mapped[str] = mapped_column(String(6), primary_key=True)
    opeenvolgend_maanden: Mapped[int] = mapped_column(Integer)
    bundeling: Mapped[str] = mapped_column(String(20))
    bundeling_dagen: Mapped[int] = mapped_column(Integer, default=0)
    gewijzigd_op: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    gewijzigd_door: Mapped[str] = mapped_column(String(100))
