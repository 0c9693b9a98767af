"""Intake's tables."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.audit import add_audit_tables
from shared.db import new_metadata
from shared.outbox import add_messaging_tables


class Base(DeclarativeBase):
    metadata = new_metadata()


messaging = add_messaging_tables(Base.metadata)
# Append-only, hash-chained: every partner call and every administrator action.
audit = add_audit_tables(Base.metadata)


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
    soorten: Mapped[list[str]] = mapped_column(
        ARRAY(String(40)), doc="The kinds of arrears it may report (its registration)."
    )
    afspraak: Mapped[str] = mapped_column(String(20), doc="convenant or eigen (own agreement).")
    afspraak_sinds: Mapped[dt.date] = mapped_column(Date)
    signaal_na_dagen: Mapped[int | None] = mapped_column(
        Integer, doc="After how many days of arrears it signals, as its agreement says."
    )
    actief: Mapped[bool] = mapped_column(Boolean, default=True)
    gewijzigd_op: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
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
    aantal_termijnen: Mapped[int | None] = mapped_column(Integer)
    crisissignaal: Mapped[bool] = mapped_column(Boolean)
    warme_overdracht: Mapped[bool] = mapped_column(Boolean)
    subject_id: Mapped[uuid.UUID] = mapped_column(index=True)
    persoonsgegevens: Mapped[str] = mapped_column(Text, doc="Sealed with the person's data key.")
    status: Mapped[str] = mapped_column(String(30))
    reden: Mapped[str | None] = mapped_column(String(300))
    ontvangen_op: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    levering_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("leveringen.id"))
    ingetrokken_op: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    vingerafdruk: Mapped[dict[str, str] | None] = mapped_column(
        JSON, doc="A keyed digest per delivered field (handlers.fingerprint); no content."
    )


class Address(Base):
    """The region's address table: which municipality a dwelling lies in (CBS file
    'buurt, wijk en gemeente bij postcode en huisnummer')."""

    __tablename__ = "adressen"

    postcode: Mapped[str] = mapped_column(String(6), primary_key=True)
    huisnummer: Mapped[int] = mapped_column(Integer, primary_key=True)
    gemeentecode: Mapped[str] = mapped_column(String(6), index=True)


class BlacklistEntry(Base):
    """A household whose signals are not forwarded, for a reason and until a date."""

    __tablename__ = "uitsluitingen"
    __table_args__ = (Index("ix_uitsluitingen_actief", "household_key", "einde"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    household_key: Mapped[str] = mapped_column(String(64))
    gemeentecode: Mapped[str] = mapped_column(String(6), index=True)
    reden: Mapped[str] = mapped_column(String(40))
    toelichting: Mapped[str | None] = mapped_column(String(300))
    begin: Mapped[dt.date] = mapped_column(Date)
    einde: Mapped[dt.date] = mapped_column(Date)
    bron: Mapped[str] = mapped_column(String(20))
    ingevoerd_door: Mapped[str] = mapped_column(String(200))
    ingevoerd_op: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    verwijderd_op: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Delivery(Base):
    """A batch of signals (levering) and how far its processing got."""

    __tablename__ = "leveringen"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    partner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("partners.id"), index=True)
    formaat: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(20), index=True)
    ontvangen_op: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    afgerond_op: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    aantal: Mapped[int] = mapped_column(Integer)
    aantal_verwerkt: Mapped[int] = mapped_column(Integer, default=0)
    aantal_doorgestuurd: Mapped[int] = mapped_column(Integer, default=0)
    aantal_niet_doorgestuurd: Mapped[int] = mapped_column(Integer, default=0)
    aantal_geweigerd: Mapped[int] = mapped_column(Integer, default=0)
    inhoud: Mapped[bytes | None] = mapped_column(
        LargeBinary, doc="The delivered file, sealed; deleted once processed."
    )
    verwerker: Mapped[str | None] = mapped_column(String(64))
    lease_tot: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class DeliveryLine(Base):
    """One line of a delivery: its receipt or why it was refused."""

    __tablename__ = "levering_regels"

    levering_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("leveringen.id"), primary_key=True)
    regel: Mapped[int] = mapped_column(Integer, primary_key=True)
    partner_signaal_id: Mapped[str | None] = mapped_column(String(100))
    signal_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("signalen.id"))
    status: Mapped[str] = mapped_column(String(30))
    fouten: Mapped[list | None] = mapped_column(JSON)


class PartnerFeedback(Base):
    """A partner's feed of feedback (terugkoppelingen), in the order it was told; the
    row id is the cursor a partner pages with."""

    __tablename__ = "terugkoppelingen"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(unique=True)
    partner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("partners.id"), index=True)
    signal_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("signalen.id"))
    partner_signaal_id: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(30))
    toelichting: Mapped[str] = mapped_column(String(300))
    datum: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
