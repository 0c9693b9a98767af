"""Intake's use cases: orchestration around the pure rules, in one transaction each."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.intake.auth import PartnerIdentity, hash_secret, new_client_credentials
from services.intake.models import Municipality, Partner, Signal
from services.intake.schemas import Receipt, SignalIn
from shared.events import SIGNAL_RECEIVED, SignalReceived
from shared.household import DwellingAddress, household_key
from shared.outbox import Outbox
from shared.region import DRENTHE

FORWARDED = "doorgestuurd"


def receipt_of(signal: Signal) -> Receipt:
    return Receipt(
        id=signal.id,
        partner_signaal_id=signal.partner_signaal_id,
        ontvangen_op=signal.ontvangen_op,
        status=signal.status,  # type: ignore[arg-type]
        reden=signal.reden,
    )


async def accept_signal(
    session: AsyncSession,
    outbox: Outbox,
    partner: PartnerIdentity,
    signal_in: SignalIn,
    *,
    gemeentecode: str,
    household_secret: str,
    now: dt.datetime,
) -> tuple[Receipt, bool]:
    """Store a signal and stage `signal.received`; (receipt, False) if it was delivered before."""
    key = household_key(
        DwellingAddress(
            postcode=signal_in.adres.postcode,
            huisnummer=signal_in.adres.huisnummer,
            huisletter=signal_in.adres.huisletter,
            huisnummertoevoeging=signal_in.adres.huisnummertoevoeging,
        ),
        household_secret,
    )
    signal_id = uuid.uuid4()
    inserted = await session.scalar(
        pg_insert(Signal)
        .values(
            id=signal_id,
            partner_id=partner.id,
            partner_signaal_id=signal_in.partner_signaal_id,
            gemeentecode=gemeentecode,
            household_key=key,
            soort=signal_in.soort,
            energiesoort=signal_in.energiesoort,
            signaaldatum=signal_in.signaaldatum,
            ontstaansdatum=signal_in.ontstaansdatum,
            achterstand_bedrag=signal_in.achterstand_bedrag,
            persoonsgegevens=signal_in.model_dump(
                mode="json", by_alias=True, include={"persoon", "adres", "contact", "klantnummer"}
            ),
            status=FORWARDED,
            reden=None,
            ontvangen_op=now,
        )
        .on_conflict_do_nothing(index_elements=["partner_id", "partner_signaal_id"])
        .returning(Signal.id)
    )
    if inserted is None:  # same partnerSignaalId again, also when two requests race
        existing = await session.scalar(
            select(Signal).where(
                Signal.partner_id == partner.id,
                Signal.partner_signaal_id == signal_in.partner_signaal_id,
            )
        )
        assert existing is not None
        return receipt_of(existing), False
    await outbox.stage(
        session,
        SIGNAL_RECEIVED,
        SignalReceived(
            gemeentecode=gemeentecode,
            household_key=key,
            signal_id=signal_id,
            partner_id=partner.id,
            partner_naam=partner.naam,
            creditor_id=partner.id,
            partner_signaal_id=signal_in.partner_signaal_id,
            soort=signal_in.soort,
            energiesoort=signal_in.energiesoort,
            signaaldatum=signal_in.signaaldatum,
            ontstaansdatum=signal_in.ontstaansdatum,
            achterstand_bedrag=signal_in.achterstand_bedrag,
            ontvangen_op=now,
        ),
    )
    return (
        Receipt(
            id=signal_id,
            partner_signaal_id=signal_in.partner_signaal_id,
            ontvangen_op=now,
            status=FORWARDED,
        ),
        True,
    )


async def receipt_for(
    session: AsyncSession, partner: PartnerIdentity, signal_id: uuid.UUID
) -> Receipt | None:
    """The receipt of one of the caller's own signals."""
    signal = await session.scalar(
        select(Signal).where(Signal.id == signal_id, Signal.partner_id == partner.id)
    )
    return receipt_of(signal) if signal else None


async def register_municipalities(session: AsyncSession) -> None:
    """Make sure the region's municipalities exist as tenants."""
    await session.execute(
        pg_insert(Municipality)
        .values([{"code": code, "naam": naam} for code, naam in DRENTHE.items()])
        .on_conflict_do_nothing(index_elements=["code"])
    )


async def municipality_codes(session: AsyncSession) -> frozenset[str]:
    return frozenset(await session.scalars(select(Municipality.code)))


async def add_partner(
    session: AsyncSession, *, naam: str, soort: str, kvk_nummer: str | None, now: dt.datetime
) -> tuple[Partner, str]:
    """Register a partner; the plain secret is returned once and stored only as a hash."""
    client_id, secret = new_client_credentials()
    partner = Partner(
        id=uuid.uuid4(),
        client_id=client_id,
        secret_hash=hash_secret(secret),
        naam=naam,
        soort=soort,
        kvk_nummer=kvk_nummer,
        actief=True,
        aangemaakt_op=now,
    )
    session.add(partner)
    await session.flush()
    return partner, secret
