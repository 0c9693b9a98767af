"""Retention's tables: an index of records and their lifecycle, no personal data."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import DateTime, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.audit import add_audit_tables
from shared.db import new_metadata
from shared.outbox import add_messaging_tables


class Base(DeclarativeBase):
    metadata = new_metadata()


messaging = add_messaging_tables(Base.metadata)
audit = add_audit_tables(Base.metadata)  # append-only, hash-chained (shared.audit)


class ArchiveRecord(Base):
    """One archival record (signal, match, case) as far as retention needs to know it."""

    __tablename__ = "archiefstukken"

    record_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    soort: Mapped[str] = mapped_column(String(20))
    gemeentecode: Mapped[str] = mapped_column(String(6), index=True)
    household_key: Mapped[str] = mapped_column(String(64), index=True)
    ontstaan_op: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    laatste_gebeurtenis: Mapped[str] = mapped_column(String(40))
    laatste_gebeurtenis_op: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
