"""Intake's use cases: orchestration around the pure rules, in one transaction each."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import TextClause, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.intake import domain
from services.intake.auth import PartnerIdentity, hash_secret, new_client_credentials
from services.intake.domain import Violation
from services.intake.models import (
    Address,
    BlacklistEntry,
    Municipality,
    Partner,
    PartnerFeedback,
    Signal,
    audit,
)
from services.intake.schemas import Receipt, SignalIn
from shared import audit as audit_trail
from shared.crypto import Vault, subject_id
from shared.events import (
    SIGNAL_BLOCKED,
    SIGNAL_RECEIVED,
    SIGNAL_WITHDRAWN,
    BlacklistChanged,
    Event,
    FeedbackSent,
    SignalBlocked,
    SignalReceived,
    SignalWithdrawn,
    Topic,
)
from shared.household import DwellingAddress, household_key
from shared.ids import new_uuids
from shared.outbox import Outbox
from shared.region import DRENTHE

FORWARDED = "doorgestuurd"
NOT_FORWARDED = "niet-doorgestuurd"
WITHDRAWN = "ingetrokken"


@dataclass(frozen=True)
class Accepted:
    """A signal stored: forwarded or not; `created` is False when it was delivered before."""

    receipt: Receipt
    created: bool


@dataclass(frozen=True)
class Refused:
    """A signal refused, with every rule it broke; nothing of it is stored."""

    violations: list[Violation]


@dataclass(frozen=True)
class Conflict(Refused):
    """The partnerSignaalId was delivered before with other content: refused (409), the
    stored signal unchanged; `fields` names what differs, never its values."""

    receipt: Receipt
    fields: list[str]


Outcome = Accepted | Refused


def receipt_of(signal: Signal | Mapping[str, Any]) -> Receipt:
    """The receipt of a stored signal, or of a row about to be stored."""
    field = signal.__getitem__ if isinstance(signal, Mapping) else signal.__getattribute__
    return Receipt(
        id=field("id"),
        partner_signaal_id=field("partner_signaal_id"),
        ontvangen_op=field("ontvangen_op"),
        status=field("status"),
        reden=field("reden"),
    )


def dwelling(signal_in: SignalIn) -> DwellingAddress:
    address = signal_in.adres
    return DwellingAddress(
        postcode=address.postcode,
        huisnummer=address.huisnummer,
        huisletter=address.huisletter,
        huisnummertoevoeging=address.huisnummertoevoeging,
    )


def _compact_postcode(postcode: str) -> str:
    return postcode.replace(" ", "").upper()


class PartnerDisabled(Exception):
    """The partner was disabled after its token was issued."""


# Where each address lies and whether its household is on that municipality's blacklist
# today (another municipality's entry never blocks it), whether the partner may still
# deliver and which kinds: one statement, one round trip (one row with the partner's
# columns also for no signals).
_DOOR_CONTEXT = (
    "WITH p AS (SELECT actief, soorten FROM partners WHERE id = :partner{lock}) "
    "SELECT q.postcode, q.huisnummer, q.household_key, a.gemeentecode, "
    "EXISTS (SELECT 1 FROM uitsluitingen u WHERE u.household_key = q.household_key "
    "AND u.gemeentecode = a.gemeentecode "
    "AND u.verwijderd_op IS NULL AND u.begin <= :today AND u.einde >= :today) AS uitgesloten, "
    "p.actief AS partner_actief, p.soorten AS partner_soorten "
    "FROM p LEFT JOIN (unnest(CAST(:postcodes AS text[]), CAST(:numbers AS int[]), "
    "CAST(:keys AS text[])) AS q(postcode, huisnummer, household_key) "
    "LEFT JOIN adressen a ON a.postcode = q.postcode AND a.huisnummer = q.huisnummer) ON true"
)
# A delivery's chunk holds the partner row (FOR SHARE) until it commits: disabling the
# partner waits for the chunks under way, and no chunk goes on after it (issue 9, item 7).
_DOOR_CONTEXTS = {
    False: text(_DOOR_CONTEXT.replace("{lock}", "")),
    True: text(_DOOR_CONTEXT.replace("{lock}", " FOR SHARE")),
}


@dataclass(frozen=True)
class DoorContext:
    municipalities: dict[tuple[str, int], str]
    blacklisted: set[str]
    partner_active: bool
    kinds: tuple[str, ...]


async def _door_context(
    session: AsyncSession,
    partner_id: uuid.UUID,
    addresses: Sequence[tuple[str, int]],
    keys: Sequence[str],
    today: dt.date,
    hold_partner: bool = False,
) -> DoorContext:
    rows = (
        await session.execute(
            _DOOR_CONTEXTS[hold_partner],
            {
                "postcodes": [p for p, _ in addresses],
                "numbers": [n for _, n in addresses],
                "keys": list(keys),
                "today": today,
                "partner": partner_id,
            },
        )
    ).all()
    return DoorContext(
        municipalities={(r.postcode, r.huisnummer): r.gemeentecode for r in rows if r.gemeentecode},
        blacklisted={r.household_key for r in rows if r.uitgesloten},
        partner_active=bool(rows and rows[0].partner_actief),
        kinds=tuple(rows[0].partner_soorten or ()) if rows else (),
    )


async def _last_blocked_arrears(
    session: AsyncSession, partner_id: uuid.UUID, keys: set[str]
) -> dict[str, Decimal]:
    if not keys:
        return {}
    rows = await session.execute(
        select(Signal.household_key, Signal.achterstand_bedrag)
        .where(
            Signal.partner_id == partner_id,
            Signal.household_key.in_(keys),
            Signal.status == NOT_FORWARDED,
        )
        .order_by(Signal.household_key, Signal.ontvangen_op.desc())
        .distinct(Signal.household_key)
    )
    return {row.household_key: row.achterstand_bedrag for row in rows}


async def accept_signals(
    session: AsyncSession,
    vault: Vault,
    outbox: Outbox,
    partner: PartnerIdentity,
    signals: Sequence[SignalIn],
    *,
    region: frozenset[str],
    household_secret: str,
    now: dt.datetime,
    levering_id: uuid.UUID | None = None,
    require_active_partner: bool = False,
    hold_partner: bool = False,
) -> list[Outcome]:
    """Judge each signal on its own; store and stage events for the good ones, in the
    caller's transaction. One set of statements for the whole list, so a delivery of
    10,000 signals costs a handful of round trips per thousand. With
    `require_active_partner`, raises PartnerDisabled if the partner was disabled; with
    `hold_partner`, the partner row stays share-locked until the transaction ends.

    A partnerSignaalId delivered before answers with its receipt when the content is the
    same, and is refused as a Conflict when it differs; a second line with the same id in
    one delivery is refused."""
    today = now.date()
    outcomes: list[Outcome | None] = [None] * len(signals)
    keys = [household_key(dwelling(s), household_secret) for s in signals]
    addresses = [(_compact_postcode(s.adres.postcode), s.adres.huisnummer) for s in signals]
    context = await _door_context(session, partner.id, addresses, keys, today, hold_partner)
    if require_active_partner and not context.partner_active:
        raise PartnerDisabled
    routed: dict[int, str] = {}
    for index, signal_in in enumerate(signals):
        violations = domain.check_signal(signal_in, today)
        kind = domain.check_kind(signal_in.soort, context.kinds)
        if kind is not None:
            violations.insert(0, kind)
        municipality = domain.route(
            signal_in.gemeentecode, context.municipalities.get(addresses[index]), region
        )
        if isinstance(municipality, Violation):
            violations.append(municipality)
        else:
            routed[index] = municipality
        if violations:
            outcomes[index] = Refused(violations)
    candidates = [i for i in range(len(signals)) if outcomes[i] is None]
    blacklisted = {keys[i] for i in candidates} & context.blacklisted
    last_blocked = await _last_blocked_arrears(session, partner.id, blacklisted)
    subjects = [
        subject_id(household_secret, domain.person_identity(signals[i].persoon, keys[i]))
        for i in candidates
    ]
    sealed = await vault.seal_many(
        [
            (subject, signals[i].model_dump_json(by_alias=True, include=PERSONAL_FIELDS).encode())
            for subject, i in zip(subjects, candidates, strict=True)
        ],
        PERSONAL_DATA_CONTEXT,
    )
    rows: list[dict[str, Any]] = []
    ids = new_uuids(2 * len(candidates))  # signal ids, then event ids: one random read
    signal_ids, event_ids = ids[: len(candidates)], ids[len(candidates) :]
    for signal_id, subject, sealed_text, i in zip(
        signal_ids, subjects, sealed, candidates, strict=True
    ):
        signal_in = signals[i]
        verdict = domain.door_verdict(
            keys[i] in blacklisted, signal_in.achterstand_bedrag, last_blocked.get(keys[i])
        )
        rows.append(
            {
                "id": signal_id,
                "partner_id": partner.id,
                "partner_signaal_id": signal_in.partner_signaal_id,
                "gemeentecode": routed[i],
                "household_key": keys[i],
                "soort": signal_in.soort,
                "energiesoort": signal_in.energiesoort,
                "signaaldatum": signal_in.signaaldatum,
                "ontstaansdatum": signal_in.ontstaansdatum,
                "achterstand_bedrag": signal_in.achterstand_bedrag,
                "aantal_termijnen": signal_in.aantal_termijnen_achterstand,
                "crisissignaal": signal_in.crisissignaal,
                "warme_overdracht": signal_in.warme_overdracht,
                "subject_id": subject,
                "persoonsgegevens": sealed_text,
                "status": verdict,
                "reden": None if verdict == FORWARDED else domain.NOT_FORWARDED_REASON,
                "ontvangen_op": now,
                "levering_id": levering_id,
                "vingerafdruk": json.dumps(fingerprint(signal_in, signal_id, household_secret)),
            }
        )
    # Signals and their events in one statement: atomic even without a transaction
    # around it, so the HTTP path can run in autocommit (fewer round trips).
    events = {
        row["id"]: _event_for(row, partner, event_id)
        for row, event_id in zip(rows, event_ids, strict=True)
    }
    created_ids = await _insert_signals_with_events(session, outbox, rows, events)
    earlier = await _existing(
        session, partner.id, [r["partner_signaal_id"] for r in rows if r["id"] not in created_ids]
    )
    for i, row in zip(candidates, rows, strict=True):
        if row["id"] in created_ids:
            outcomes[i] = Accepted(receipt_of(row), created=True)
            continue
        # same partnerSignaalId as an earlier delivery, or twice in this one
        stored = earlier[row["partner_signaal_id"]]
        differs = differing_fields(stored, signals[i], household_secret)
        if levering_id is not None and stored.levering_id == levering_id:
            outcomes[i] = Refused([domain.duplicate_line(differs)])
        elif differs:
            outcomes[i] = Conflict(
                domain.conflict_violations(differs, str(stored.id)), receipt_of(stored), differs
            )
        else:
            outcomes[i] = Accepted(receipt_of(stored), created=False)
    return [outcome for outcome in outcomes if outcome is not None]


_FINGERPRINT_CONTEXT = b"signaal.vingerafdruk|"


def fingerprint(signal_in: SignalIn, signal_id: uuid.UUID, secret: str) -> dict[str, str]:
    """A keyed digest of each delivered field (by its API name), salted with the signal's
    id: whether a repeat differs, field by field, without keeping the content readable,
    nor linkable from one signal to another."""
    keyed = _fingerprint_key(secret)
    content = signal_in.model_dump(mode="json", by_alias=True, exclude={"partner_signaal_id"})
    digests: dict[str, str] = {}
    for name, value in content.items():
        digest = keyed.copy()  # the key's pads are derived once per secret, not per field
        digest.update(
            f"{signal_id}|{name}|{json.dumps(value, sort_keys=True, separators=(',', ':'))}".encode()
        )
        digests[name] = digest.hexdigest()[:32]
    return digests


@functools.cache
def _fingerprint_key(secret: str) -> hmac.HMAC:
    return hmac.new(_FINGERPRINT_CONTEXT + secret.encode(), digestmod=hashlib.sha256)


def differing_fields(stored: Signal, signal_in: SignalIn, secret: str) -> list[str]:
    """The fields in which a repeated signal differs from the stored one (none for a signal
    stored before fingerprints were kept: answered as before). Only fields both
    fingerprints name are compared: a field SignalIn gained (or lost) since the signal was
    stored says nothing about a difference, so a resend of an older signal stays a repeat."""
    if not stored.vingerafdruk:
        return []
    return compare_fingerprints(stored.vingerafdruk, fingerprint(signal_in, stored.id, secret))


def compare_fingerprints(stored: dict[str, str], again: dict[str, str]) -> list[str]:
    """The names in both fingerprints whose digests differ, sorted."""
    return sorted(name for name in stored.keys() & again.keys() if stored[name] != again[name])


_SIGNAL_COLUMNS = {
    "id": "uuid",
    "partner_id": "uuid",
    "partner_signaal_id": "text",
    "gemeentecode": "text",
    "household_key": "text",
    "soort": "text",
    "energiesoort": "text",
    "signaaldatum": "date",
    "ontstaansdatum": "date",
    "achterstand_bedrag": "numeric",
    "aantal_termijnen": "int",
    "crisissignaal": "bool",
    "warme_overdracht": "bool",
    "subject_id": "uuid",
    "persoonsgegevens": "text",
    "status": "text",
    "reden": "text",
    "ontvangen_op": "timestamptz",
    "levering_id": "uuid",
    "vingerafdruk": "json",
}
_INSERT_SIGNALS_WITH_EVENTS = (
    f"WITH new AS (INSERT INTO signalen ({', '.join(_SIGNAL_COLUMNS)}) "
    "SELECT * FROM unnest("
    + ", ".join(
        f"CAST(CAST(:{c} AS text[]) AS json[])" if t == "json" else f"CAST(:{c} AS {t}[])"
        for c, t in _SIGNAL_COLUMNS.items()
    )
    + ") "
    "ON CONFLICT (partner_id, partner_signaal_id) DO NOTHING RETURNING id), "
    "staged AS (INSERT INTO {outbox} (topic, key, payload, headers) "
    "SELECT e.topic, e.key, e.payload, e.headers FROM unnest(CAST(:event_ids AS uuid[]), "
    "CAST(:topics AS text[]), CAST(:keys AS text[]), CAST(:payloads AS bytea[]), "
    "CAST(CAST(:headers AS text[]) AS json[])) WITH ORDINALITY AS e(id, topic, key, payload, headers, n) "
    "JOIN new ON new.id = e.id ORDER BY e.n) "
    "SELECT id FROM new"
)


async def _insert_signals_with_events(
    session: AsyncSession,
    outbox: Outbox,
    rows: list[dict[str, Any]],
    events: dict[uuid.UUID, tuple[Topic, Event]],
) -> set[uuid.UUID]:
    """Insert the signals and stage the events of the ones that were new, in one
    statement; the ids that were new (a repeated partnerSignaalId inserts nothing)."""
    if not rows:
        return set()
    # In key order, so that two transactions inserting the same partnerSignaalIds (two
    # chunks of a delivery at once) lock them in the same order and cannot deadlock. Their
    # events are staged in that order too, not in line order: signals that arrive together
    # make the same matches in any order (tests/unit/matching, the arrival-order property).
    rows = sorted(rows, key=lambda row: row["partner_signaal_id"])
    columns: dict[str, Any] = {column: [row[column] for row in rows] for column in _SIGNAL_COLUMNS}
    columns.update(outbox.columns([events[row["id"]] for row in rows]))
    columns["event_ids"] = [row["id"] for row in rows]
    statement = _insert_statement(outbox.tables.outbox.name)
    return set((await session.execute(statement, columns)).scalars())


@functools.cache
def _insert_statement(outbox_table: str) -> TextClause:
    """Built once: parsing a statement's parameters on every request costs more than it runs."""
    return text(_INSERT_SIGNALS_WITH_EVENTS.replace("{outbox}", outbox_table))


PERSONAL_FIELDS = {"persoon", "adres", "contact", "klantnummer"}
PERSONAL_DATA_CONTEXT = "signaal.persoonsgegevens"


async def _existing(
    session: AsyncSession, partner_id: uuid.UUID, partner_signaal_ids: list[str]
) -> dict[str, Signal]:
    if not partner_signaal_ids:
        return {}
    found = await session.scalars(
        select(Signal).where(
            Signal.partner_id == partner_id, Signal.partner_signaal_id.in_(set(partner_signaal_ids))
        )
    )
    return {signal.partner_signaal_id: signal for signal in found}


def _event_for(row: dict, partner: PartnerIdentity, event_id: uuid.UUID) -> tuple[Topic, Event]:
    if row["status"] == FORWARDED:
        return SIGNAL_RECEIVED, SignalReceived(
            event_id=event_id,
            gemeentecode=row["gemeentecode"],
            household_key=row["household_key"],
            signal_id=row["id"],
            partner_id=partner.id,
            partner_naam=partner.naam,
            creditor_id=partner.id,
            partner_signaal_id=row["partner_signaal_id"],
            soort=row["soort"],
            energiesoort=row["energiesoort"],
            signaaldatum=row["signaaldatum"],
            ontstaansdatum=row["ontstaansdatum"],
            achterstand_bedrag=row["achterstand_bedrag"],
            ontvangen_op=row["ontvangen_op"],
            subject_id=row["subject_id"],
            persoonsgegevens=row["persoonsgegevens"],
        )
    return SIGNAL_BLOCKED, SignalBlocked(
        event_id=event_id,
        gemeentecode=row["gemeentecode"],
        household_key=row["household_key"],
        signal_id=row["id"],
        partner_id=partner.id,
        partner_signaal_id=row["partner_signaal_id"],
        reden="uitsluitingslijst",
        ontvangen_op=row["ontvangen_op"],
    )


async def receipt_for(
    session: AsyncSession, partner: PartnerIdentity, signal_id: uuid.UUID
) -> Receipt | None:
    """The receipt of one of the caller's own signals."""
    signal = await session.scalar(
        select(Signal).where(Signal.id == signal_id, Signal.partner_id == partner.id)
    )
    return receipt_of(signal) if signal else None


async def withdraw_signal(
    session: AsyncSession,
    outbox: Outbox,
    partner: PartnerIdentity,
    signal_id: uuid.UUID,
    *,
    now: dt.datetime,
) -> Receipt | None:
    """A partner withdraws one of its own signals (paid before the municipality acted, or
    sent in error), in the caller's transaction: the signal is marked withdrawn, matching
    is told through the outbox (a forwarded signal only: a stopped one never reached it),
    and the partner's feed says so. Withdrawing again answers the same; another partner's
    signal does not exist for this one (None)."""
    signal = await session.scalar(
        select(Signal)
        .where(Signal.id == signal_id, Signal.partner_id == partner.id)
        .with_for_update()
    )
    if signal is None:
        return None
    if signal.status == WITHDRAWN:
        return receipt_of(signal)
    was_forwarded = signal.status == FORWARDED
    signal.status = WITHDRAWN
    signal.reden = domain.WITHDRAWN_REASON
    signal.ingetrokken_op = now
    [event_id] = new_uuids(1)
    if was_forwarded:
        await outbox.stage(
            session,
            SIGNAL_WITHDRAWN,
            SignalWithdrawn(
                event_id=event_id,
                occurred_at=now,
                gemeentecode=signal.gemeentecode,
                household_key=signal.household_key,
                signal_id=signal.id,
                partner_id=partner.id,
                partner_signaal_id=signal.partner_signaal_id,
                ingetrokken_op=now,
            ),
        )
    # The feed entry is written here, with the change (one transaction): the partner's own
    # act needs no round trip through feedback (partner-api.md, terugkoppelingen). Under
    # the feed's lock, as every feed insert, so the partners' cursor never skips it.
    await session.execute(_FEED_LOCK)
    session.add(
        PartnerFeedback(
            event_id=event_id,
            partner_id=partner.id,
            signal_id=signal.id,
            partner_signaal_id=signal.partner_signaal_id,
            status=WITHDRAWN,
            toelichting=domain.WITHDRAWN_REASON,
            datum=now,
        )
    )
    await session.flush()
    return receipt_of(signal)


async def register_municipalities(session: AsyncSession) -> None:
    """Make sure the region's municipalities exist as tenants."""
    await session.execute(
        pg_insert(Municipality)
        .values([{"code": code, "naam": naam} for code, naam in DRENTHE.items()])
        .on_conflict_do_nothing(index_elements=["code"])
    )


async def municipality_codes(session: AsyncSession) -> frozenset[str]:
    return frozenset(await session.scalars(select(Municipality.code)))


AGREEMENTS = ("convenant", "eigen")


async def add_partner(
    session: AsyncSession,
    *,
    naam: str,
    soort: str,
    kvk_nummer: str | None,
    now: dt.datetime,
    soorten: Sequence[str] = (),
    afspraak: str = "convenant",
    afspraak_sinds: dt.date | None = None,
    signaal_na_dagen: int | None = None,
) -> tuple[Partner, str]:
    """Register a partner; the plain secret is returned once and stored only as a hash.

    `soorten`: the kinds of arrears it may report (its own type when empty); the agreement
    it signals under (the national convenant or an own one), from when, and after how many
    days of arrears (policy plan, phase 1: each partner's agreement is recorded)."""
    if afspraak not in AGREEMENTS:
        raise ValueError(f"afspraak moet {' of '.join(AGREEMENTS)} zijn")
    if signaal_na_dagen is not None and signaal_na_dagen < 1:
        raise ValueError("signaal_na_dagen moet minstens 1 zijn")
    client_id, secret = new_client_credentials()
    partner = Partner(
        id=uuid.uuid4(),
        client_id=client_id,
        secret_hash=hash_secret(secret),
        naam=naam,
        soort=soort,
        soorten=list(dict.fromkeys([soort, *soorten])),
        afspraak=afspraak,
        afspraak_sinds=afspraak_sinds or now.date(),
        signaal_na_dagen=signaal_na_dagen,
        kvk_nummer=kvk_nummer,
        actief=True,
        aangemaakt_op=now,
    )
    session.add(partner)
    await session.flush()
    return partner, secret


async def on_blacklist_changed(
    session: AsyncSession, event: BlacklistChanged, *, outbox: Outbox
) -> None:
    """Keep the blacklist at the door in step with outreach's decisions (audited here too,
    so the door's trail shows every entry that stops signals)."""
    if event.actie == "verwijderd":
        removed = await session.execute(
            update(BlacklistEntry)
            .where(
                BlacklistEntry.id == event.entry_id,
                BlacklistEntry.gemeentecode == event.gemeentecode,
                BlacklistEntry.verwijderd_op.is_(None),
            )
            .values(verwijderd_op=event.occurred_at)
        )
        changed = bool(removed.rowcount)  # type: ignore[attr-defined]
    else:
        added = await session.execute(
            pg_insert(BlacklistEntry)
            .values(
                id=event.entry_id,
                household_key=event.household_key,
                gemeentecode=event.gemeentecode,
                reden=event.reden,
                toelichting=None,
                begin=event.begin,
                einde=event.einde,
                bron="outreach",
                ingevoerd_door="outreach",
                ingevoerd_op=event.occurred_at,
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        changed = bool(added.rowcount)  # type: ignore[attr-defined]
    if changed:  # a redelivered event is not audited twice
        await audit_trail.record(
            session,
            audit,
            actor="outreach",
            action=f"uitsluiting-{event.actie}",
            object_=f"uitsluiting:{event.entry_id}",
            result="ok",
            gemeentecode=event.gemeentecode,
            at=event.occurred_at,
        )


@dataclass(frozen=True)
class BlacklistRefusal:
    """Why an operator's blacklist change was refused: the option and the rule, in Dutch."""

    field: str
    reason: str


async def add_to_blacklist(
    session: AsyncSession,
    *,
    address: DwellingAddress,
    gemeentecode: str,
    reden: str,
    toelichting: str | None,
    begin: dt.date,
    einde: dt.date,
    actor: str,
    household_secret: str,
    now: dt.datetime,
) -> BlacklistEntry | BlacklistRefusal:
    """An administrator puts an address of their own municipality on the blacklist;
    audited (a refusal too), never without an end."""
    refusal: BlacklistRefusal | None = None
    if gemeentecode not in DRENTHE:
        refusal = BlacklistRefusal("gemeente", f"gemeente {gemeentecode} hoort niet bij deze regio")
    else:
        lies_in = await session.scalar(
            select(Address.gemeentecode).where(
                Address.postcode == _compact_postcode(address.postcode),
                Address.huisnummer == address.huisnummer,
            )
        )
        if lies_in is None:
            refusal = BlacklistRefusal(
                "postcode/huisnummer",
                "dit adres staat niet in de adrestabel van de regio; alleen een bekend adres "
                "kan worden uitgesloten",
            )
        elif lies_in != gemeentecode:
            # Tenant isolation: a municipality blocks only its own residents' signals.
            refusal = BlacklistRefusal(
                "gemeente",
                f"dit adres ligt niet in gemeente {gemeentecode}; een gemeente sluit alleen "
                "adressen in de eigen gemeente uit",
            )
    if refusal is not None:
        await audit_trail.record(
            session,
            audit,
            actor=actor,
            action="uitsluiting-toevoegen",
            object_=None,
            result="geweigerd",
            gemeentecode=gemeentecode,
            at=now,
        )
        return refusal
    entry = BlacklistEntry(
        id=uuid.uuid4(),
        household_key=household_key(address, household_secret),
        gemeentecode=gemeentecode,
        reden=reden,
        toelichting=toelichting,
        begin=begin,
        einde=einde,
        bron="beheer",
        ingevoerd_door=actor,
        ingevoerd_op=now,
    )
    session.add(entry)
    await session.flush()
    await audit_trail.record(
        session,
        audit,
        actor=actor,
        action="uitsluiting-toegevoegd",
        object_=f"uitsluiting:{entry.id}",
        result="ok",
        gemeentecode=gemeentecode,
        at=now,
    )
    return entry


async def list_blacklist(
    session: AsyncSession, gemeentecode: str, *, actor: str, today: dt.date, now: dt.datetime
) -> list[BlacklistEntry]:
    """The active entries of one municipality; the read is audited."""
    entries = list(
        await session.scalars(
            select(BlacklistEntry)
            .where(
                BlacklistEntry.gemeentecode == gemeentecode,
                BlacklistEntry.verwijderd_op.is_(None),
                BlacklistEntry.einde >= today,
            )
            .order_by(BlacklistEntry.einde)
        )
    )
    await audit_trail.record(
        session,
        audit,
        actor=actor,
        action="uitsluitingen-gelezen",
        object_=f"uitsluitingen:{gemeentecode}",
        result=f"{len(entries)} gelezen",
        gemeentecode=gemeentecode,
        at=now,
    )
    return entries


async def remove_from_blacklist(
    session: AsyncSession,
    entry_id: uuid.UUID,
    *,
    gemeentecode: str,
    actor: str,
    now: dt.datetime,
) -> bool:
    """Take an active entry of the operator's own municipality off the blacklist; an
    entry of another municipality is refused as if it did not exist (audited either way)."""
    entry = await session.get(BlacklistEntry, entry_id, with_for_update=True)
    found = entry is not None and entry.verwijderd_op is None and entry.gemeentecode == gemeentecode
    if entry is not None and found:
        entry.verwijderd_op = now
    await audit_trail.record(
        session,
        audit,
        actor=actor,
        action="uitsluiting-verwijderd" if found else "uitsluiting-verwijderen",
        object_=f"uitsluiting:{entry_id}",
        result="ok" if found else "geweigerd",
        gemeentecode=gemeentecode,
        at=now,
    )
    return found


async def set_partner_active(
    session: AsyncSession, client_id: str, active: bool, *, actor: str, now: dt.datetime
) -> Partner | None:
    """Enable or disable a partner; a disabled partner's tokens stop working at once."""
    partner = await session.scalar(select(Partner).where(Partner.client_id == client_id))
    action = "partner-aangezet" if active else "partner-uitgezet"
    if partner is None:
        await audit_trail.record(
            session,
            audit,
            actor=actor,
            action=action,
            object_=f"partner:{client_id}",
            result="onbekend",
            at=now,
        )
        return None
    partner.actief = active
    partner.gewijzigd_op = now
    await audit_trail.record(
        session,
        audit,
        actor=actor,
        action=action,
        object_=f"partner:{partner.id}",
        result="ok",
        at=now,
    )
    return partner


async def import_addresses(session: AsyncSession, rows: Sequence[tuple[str, int, str]]) -> int:
    """Load (postcode, house number, municipality) rows into the region's address table."""
    count = 0
    for start in range(0, len(rows), 5000):
        chunk = rows[start : start + 5000]
        statement = pg_insert(Address).values(
            [{"postcode": p, "huisnummer": n, "gemeentecode": g} for p, n, g in chunk]
        )
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=["postcode", "huisnummer"],
                set_={"gemeentecode": statement.excluded.gemeentecode},
            )
        )
        count += len(chunk)
    return count


# Feed inserts one transaction at a time (held until commit), so that a row's id, the
# partners' cursor, is taken after every earlier row committed: see ADR 0010.
_FEED_LOCK = text("SELECT pg_advisory_xact_lock(hashtext('vroeg.intake.terugkoppelingen'))")


async def on_feedback_sent(session: AsyncSession, event: FeedbackSent) -> None:
    """Add what feedback told to the partner's feed.

    Ids are handed out at insert, rows become visible at commit: without the lock a
    replica's later id could commit first, a partner paging with `vanaf` past it would
    never see the earlier one. Under the lock the ids of the uncommitted rows are always
    above every committed one."""
    await session.execute(_FEED_LOCK)
    await session.execute(
        pg_insert(PartnerFeedback)
        .values(
            event_id=event.event_id,
            partner_id=event.partner_id,
            signal_id=event.signal_id,
            partner_signaal_id=event.partner_signaal_id,
            status=event.status,
            toelichting=event.toelichting,
            datum=event.occurred_at,
        )
        .on_conflict_do_nothing(index_elements=["event_id"])
    )


async def feedback_page(
    session: AsyncSession, partner: PartnerIdentity, after: int, limit: int
) -> list[PartnerFeedback]:
    """The partner's feedback after a cursor, oldest first."""
    return list(
        await session.scalars(
            select(PartnerFeedback)
            .where(PartnerFeedback.partner_id == partner.id, PartnerFeedback.id > after)
            .order_by(PartnerFeedback.id)
            .limit(limit)
        )
    )
