"""Matching's edges: signals in (a batch at a time), matches out.

Per batch, in the consumer's transaction, a fixed number of statements whatever the batch
size or the history: lock the batch's households (in key order), read their open matches
and those matches' signals, apply the pure rules (services.matching.domain), write the
signals, matches and households back, and stage MatchCreated / MatchUpdated for the
matches that are (or were already) forwarded. A household's signals are handled in the
order they were published to its partition, so any number of replicas gives the same
matches as one.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.matching.domain import (
    MAX_EVENT_SIGNALS,
    MatchState,
    MatchVerdict,
    MunicipalityRules,
    SignalFact,
    carried_signals,
    classify,
    earliest_window_start,
    forwarded_at,
    is_due,
    match_household,
    month_index,
    remembered_months,
)
from services.matching.models import FORWARDED, HELD
from services.matching.settings import MatchingSettings
from shared.events import (
    MATCH_CREATED,
    MATCH_UPDATED,
    Event,
    MatchCreated,
    MatchedSignal,
    MatchUpdated,
    SignalReceived,
    SignalWithdrawn,
    Topic,
    utc_now,
)
from shared.ids import new_uuids
from shared.messaging import Received
from shared.outbox import Outbox

_SIGNAL_COLUMNS = {
    "signal_id": "uuid",
    "household_key": "text",
    "gemeentecode": "text",
    "match_id": "uuid",
    "partner_id": "uuid",
    "partner_naam": "text",
    "creditor_id": "uuid",
    "partner_signaal_id": "text",
    "soort": "text",
    "energiesoort": "text",
    "signaaldatum": "date",
    "achterstand_bedrag": "numeric",
    "ontvangen_op": "timestamptz",
    "ingetrokken_op": "timestamptz",
}
_MATCH_COLUMNS = {
    "id": "uuid",
    "household_key": "text",
    "gemeentecode": "text",
    "status": "text",
    "soort": "text",
    "version": "int",
    "aantal_schuldeisers": "int",
    "totaal_achterstand": "numeric",
    "geopend_op": "timestamptz",
    "doorsturen_op": "timestamptz",
    "doorgestuurd_op": "timestamptz",
    "regel": "text",
    "uitleg": "json",
}


def _unnest(columns: Mapping[str, str]) -> str:
    """unnest() arguments for column arrays; json travels as text (asyncpg's json[])."""
    return ", ".join(
        f"CAST(CAST(:{c} AS text[]) AS json[])" if t == "json" else f"CAST(:{c} AS {t}[])"
        for c, t in columns.items()
    )


_ADD_HOUSEHOLDS = text(
    "INSERT INTO households (key, gemeentecode, maanden) "
    "SELECT k, g, '{}' FROM unnest(CAST(:keys AS text[]), CAST(:gemeenten AS text[])) AS u(k, g) "
    "ON CONFLICT (key) DO NOTHING"
)
# Key order: two transactions that share households lock them in the same order.
_LOCK_HOUSEHOLDS = text(
    "SELECT key, gemeentecode, maanden FROM households "
    "WHERE key = ANY(CAST(:keys AS text[])) ORDER BY key FOR UPDATE"
)
# Known: matched already, or withdrawn before it arrived (the withdrawal overtook it).
_KNOWN_SIGNALS = text(
    "SELECT signal_id FROM signals WHERE signal_id = ANY(CAST(:ids AS uuid[])) UNION "
    "SELECT signal_id FROM withdrawn_signals WHERE signal_id = ANY(CAST(:ids AS uuid[]))"
)
_RECENT_MATCHES = text(
    "SELECT id, household_key, status, version, geopend_op, doorsturen_op, doorgestuurd_op "
    "FROM matches "
    "WHERE (household_key, gemeentecode) IN (SELECT * FROM unnest(CAST(:keys AS text[]), "
    "CAST(:gemeenten AS text[]))) AND doorsturen_op > :since "
    "ORDER BY id FOR UPDATE"
)
_MATCH_SIGNALS = text(
    f"SELECT {', '.join(_SIGNAL_COLUMNS)} FROM signals WHERE match_id = ANY(CAST(:ids AS uuid[]))"
)
_RULES = text(
    "SELECT gemeentecode, opeenvolgend_maanden, bundeling, bundeling_dagen FROM gemeente_regels "
    "WHERE gemeentecode = ANY(CAST(:gemeenten AS text[]))"
)
_INSERT_SIGNALS = text(
    f"INSERT INTO signals ({', '.join(_SIGNAL_COLUMNS)}) "
    # No ON CONFLICT: a signal already in another household's match must fail the batch
    # (redone record by record, where the known-signal check skips it), not count twice.
    f"SELECT * FROM unnest({_unnest(_SIGNAL_COLUMNS)})"
)
_UPSERT_MATCHES = text(
    f"INSERT INTO matches ({', '.join(_MATCH_COLUMNS)}) "
    f"SELECT * FROM unnest({_unnest(_MATCH_COLUMNS)}) "
    "ON CONFLICT (id) DO UPDATE SET status = excluded.status, soort = excluded.soort, "
    "version = excluded.version, aantal_schuldeisers = excluded.aantal_schuldeisers, "
    "totaal_achterstand = excluded.totaal_achterstand, doorgestuurd_op = excluded.doorgestuurd_op, "
    "regel = excluded.regel, uitleg = excluded.uitleg"
)
_UPDATE_HOUSEHOLDS = text(
    "UPDATE households h SET gemeentecode = u.gemeente, maanden = CAST(u.maanden AS int[]) "
    "FROM unnest(CAST(:keys AS text[]), CAST(:gemeenten AS text[]), CAST(:maanden AS text[])) "
    "AS u(key, gemeente, maanden) WHERE h.key = u.key"
)


@dataclass
class _Match:
    """A match while a batch is handled: the rules' view plus what the event needs."""

    state: MatchState
    household_key: str
    gemeentecode: str
    doorgestuurd_op: dt.datetime | None


def _fact(row: Mapping[str, Any]) -> SignalFact:
    return SignalFact(
        signal_id=row["signal_id"],
        creditor_id=row["creditor_id"],
        signaaldatum=row["signaaldatum"],
        achterstand_bedrag=row["achterstand_bedrag"],
        ontvangen_op=row["ontvangen_op"],
    )


def _signal_row(event: SignalReceived) -> dict[str, Any]:
    return {
        "signal_id": event.signal_id,
        "household_key": event.household_key,
        "gemeentecode": event.gemeentecode,
        "match_id": None,
        "partner_id": event.partner_id,
        "partner_naam": event.partner_naam,
        "creditor_id": event.creditor_id,
        "partner_signaal_id": event.partner_signaal_id,
        "soort": event.soort,
        "energiesoort": event.energiesoort,
        "signaaldatum": event.signaaldatum,
        "achterstand_bedrag": event.achterstand_bedrag,
        "ontvangen_op": event.ontvangen_op,
        "ingetrokken_op": None,
    }


def _matched(row: Mapping[str, Any]) -> MatchedSignal:
    return MatchedSignal.model_construct(
        signal_id=row["signal_id"],
        partner_id=row["partner_id"],
        partner_naam=row["partner_naam"],
        creditor_id=row["creditor_id"],
        partner_signaal_id=row["partner_signaal_id"],
        soort=row["soort"],
        energiesoort=row["energiesoort"],
        signaaldatum=row["signaaldatum"],
        achterstand_bedrag=row["achterstand_bedrag"],
    )


def rules_of(
    rows: Sequence[Any], gemeenten: Sequence[str], settings: MatchingSettings
) -> dict[str, MunicipalityRules]:
    """Each municipality's rules: its own row, or the regional defaults."""
    default = MunicipalityRules(opeenvolgend_maanden=settings.consecutive_window_months)
    rules = dict.fromkeys(gemeenten, default)
    for row in rows:
        rules[row.gemeentecode] = MunicipalityRules(
            opeenvolgend_maanden=row.opeenvolgend_maanden,
            bundeling=row.bundeling,
            bundeling_dagen=row.bundeling_dagen,
        )
    return rules


async def on_signals_received(
    session: AsyncSession,
    received: Sequence[Received],
    *,
    outbox: Outbox,
    settings: MatchingSettings,
) -> None:
    """Add a batch of signals to their households' matches and forward what is due."""
    first: dict[uuid.UUID, Received] = {}
    for item in received:
        first.setdefault(item.event.signal_id, item)
    if not first:
        return
    gemeente_of = {item.event.household_key: item.event.gemeentecode for item in first.values()}
    keys = sorted(gemeente_of)
    await session.execute(
        _ADD_HOUSEHOLDS, {"keys": keys, "gemeenten": [gemeente_of[k] for k in keys]}
    )
    # Lock first, then ask what is known: a replica that matched one of these signals under
    # another event id (a replayed intake event, during a rebalance) has committed by now.
    households = {row.key: row for row in await session.execute(_LOCK_HOUSEHOLDS, {"keys": keys})}
    known = set((await session.execute(_KNOWN_SIGNALS, {"ids": list(first)})).scalars())
    items = [item for signal_id, item in first.items() if signal_id not in known]
    if not items:
        return
    since = earliest_window_start(item.event.ontvangen_op for item in items)
    # A household's matches within its municipality only (an address that moved to another
    # municipality, by a boundary change, starts afresh there).
    recent = list(
        await session.execute(
            _RECENT_MATCHES,
            {"keys": keys, "gemeenten": [gemeente_of[k] for k in keys], "since": since},
        )
    )
    # The batch's time, read once its matches are locked: a held match that forward_due
    # forwarded meanwhile was forwarded before it, so no event of ours predates that one.
    now = utc_now()
    signal_rows: dict[uuid.UUID, dict[str, Any]] = {}
    matches: dict[uuid.UUID, _Match] = {}
    if recent:
        ids = [row.id for row in recent]
        for member in (await session.execute(_MATCH_SIGNALS, {"ids": ids})).mappings():
            signal_rows[member["signal_id"]] = dict(member)
        by_match: dict[uuid.UUID, list[SignalFact]] = {}
        for signal_row in signal_rows.values():
            if signal_row["ingetrokken_op"] is None:  # a withdrawn signal counts no more
                by_match.setdefault(signal_row["match_id"], []).append(_fact(signal_row))
        for row in recent:
            matches[row.id] = _Match(
                MatchState(
                    id=row.id,
                    geopend_op=row.geopend_op,
                    doorsturen_op=row.doorsturen_op,
                    signals=sorted(by_match.get(row.id, []), key=lambda f: str(f.signal_id)),
                    version=row.version,
                    forwarded=row.status == FORWARDED,
                ),
                row.household_key,
                gemeente_of[row.household_key],
                row.doorgestuurd_op,
            )
    recent_of: dict[str, list[MatchState]] = {}
    for match in matches.values():
        recent_of.setdefault(match.household_key, []).append(match.state)
    gemeenten = sorted(set(gemeente_of.values()))
    rules = rules_of(
        list(await session.execute(_RULES, {"gemeenten": gemeenten})), gemeenten, settings
    )

    by_household: dict[str, list[Received]] = {}
    for item in items:
        by_household.setdefault(item.event.household_key, []).append(item)
        signal_rows[item.event.signal_id] = _signal_row(item.event)
    touched: list[tuple[_Match, MatchVerdict]] = []
    cause: dict[uuid.UUID, dict[str, str]] = {}  # match id -> trace context of its last signal
    household_updates: list[tuple[str, list[int]]] = []
    for key, household_items in by_household.items():
        household = households[key]
        same_municipality = household.gemeentecode == gemeente_of[key]
        result = match_household(
            key,
            recent_of.get(key, []),
            household.maanden if same_municipality else [],
            [_fact(signal_rows[i.event.signal_id]) for i in household_items],
            rules[gemeente_of[key]],
        )
        for signal_id, match_id in result.assignments.items():
            signal_rows[signal_id]["match_id"] = match_id
        for item in household_items:
            cause[result.assignments[item.event.signal_id]] = item.trace_headers
        for state, verdict in result.matches:
            if state.id not in matches:
                matches[state.id] = _Match(state, key, gemeente_of[key], None)
            touched.append((matches[state.id], verdict))
        household_updates.append((key, result.months))

    members_of: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for signal_row in signal_rows.values():
        members_of.setdefault(signal_row["match_id"], []).append(signal_row)
    match_rows: list[dict[str, Any]] = []
    event_ids = iter(new_uuids(len(touched)))
    outgoing: list[tuple[Topic, Event]] = []
    contexts: list[dict[str, str]] = []
    for match, verdict in touched:
        state = match.state
        was_forwarded = state.forwarded
        if not was_forwarded and is_due(state, now):
            state.forwarded = True
        if state.forwarded and match.doorgestuurd_op is None:
            match.doorgestuurd_op = forwarded_at(state, now)
        match_rows.append(
            _match_row(
                match,
                verdict.soort,
                verdict.aantal_schuldeisers,
                verdict.totaal_achterstand,
                verdict.regel,
                verdict.uitleg,
            )
        )
        if state.forwarded:
            assert match.doorgestuurd_op is not None
            event = _match_event(
                MatchUpdated if was_forwarded else MatchCreated,
                match_rows[-1],
                match.doorgestuurd_op,
                verdict.uitleg,
                members_of[state.id],
                event_id=next(event_ids),
                now=now,
            )
            outgoing.append((MATCH_UPDATED if was_forwarded else MATCH_CREATED, event))
            contexts.append(cause[state.id])

    await session.execute(
        _UPSERT_MATCHES,
        {column: [row[column] for row in match_rows] for column in _MATCH_COLUMNS},
    )
    new_rows = [signal_rows[item.event.signal_id] for item in items]
    await session.execute(
        _INSERT_SIGNALS,
        {column: [row[column] for row in new_rows] for column in _SIGNAL_COLUMNS},
    )
    await session.execute(
        _UPDATE_HOUSEHOLDS,
        {
            "keys": [key for key, _ in household_updates],
            "gemeenten": [gemeente_of[key] for key, _ in household_updates],
            "maanden": ["{" + ",".join(map(str, m)) + "}" for _, m in household_updates],
        },
    )
    await outbox.stage_many(session, outgoing, contexts)


_ADD_WITHDRAWALS = text(
    "INSERT INTO withdrawn_signals (signal_id, household_key, ingetrokken_op) "
    "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:keys AS text[]), "
    "CAST(:at AS timestamptz[])) ON CONFLICT (signal_id) DO NOTHING"
)
_MARK_WITHDRAWN = text(
    "UPDATE signals s SET ingetrokken_op = u.at "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:at AS timestamptz[])) AS u(id, at) "
    "WHERE s.signal_id = u.id AND s.ingetrokken_op IS NULL RETURNING s.match_id"
)
_LOCK_MATCHES = text(
    "SELECT id, household_key, gemeentecode, status, version, geopend_op, doorsturen_op, "
    "doorgestuurd_op FROM matches WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR UPDATE"
)
# The months a household still has signals in, within its municipality (after a withdrawal).
_ACTIVE_MONTHS = text(
    "SELECT DISTINCT m.household_key, s.signaaldatum FROM signals s "
    "JOIN matches m ON m.id = s.match_id "
    "JOIN households h ON h.key = m.household_key AND h.gemeentecode = m.gemeentecode "
    "WHERE m.household_key = ANY(CAST(:keys AS text[])) AND s.ingetrokken_op IS NULL"
)
_SET_MONTHS = text(
    "UPDATE households h SET maanden = CAST(u.maanden AS int[]) "
    "FROM unnest(CAST(:keys AS text[]), CAST(:maanden AS text[])) AS u(key, maanden) "
    "WHERE h.key = u.key"
)


async def on_signals_withdrawn(
    session: AsyncSession,
    received: Sequence[Received],
    *,
    outbox: Outbox,
    settings: MatchingSettings,
) -> None:
    """Take withdrawn signals out of their matches: each match's kind and totals are
    recomputed without them, and a forwarded match tells case handling (MatchUpdated).
    A withdrawal that comes before its signal is kept; the signal is then never matched."""
    events: dict[uuid.UUID, SignalWithdrawn] = {}
    contexts: dict[uuid.UUID, dict[str, str]] = {}
    for item in received:
        events.setdefault(item.event.signal_id, item.event)
        contexts.setdefault(item.event.signal_id, item.trace_headers)
    if not events:
        return
    gemeente_of = {e.household_key: e.gemeentecode for e in events.values()}
    keys = sorted(gemeente_of)
    # The households first, added and then locked in key order, as a batch of signals does.
    # Adding comes first: a batch that is adding a new household right now (its row not yet
    # committed) makes this insert wait until it commits, so the lock below finds the row
    # and what follows sees that batch's signals. A lock alone finds no row, locks nothing,
    # and the batch would commit its signal as counted although it was withdrawn.
    await session.execute(
        _ADD_HOUSEHOLDS, {"keys": keys, "gemeenten": [gemeente_of[k] for k in keys]}
    )
    await session.execute(_LOCK_HOUSEHOLDS, {"keys": keys})
    ids = list(events)
    at = [events[i].ingetrokken_op for i in ids]
    await session.execute(
        _ADD_WITHDRAWALS, {"ids": ids, "keys": [events[i].household_key for i in ids], "at": at}
    )
    match_ids = sorted(
        set((await session.execute(_MARK_WITHDRAWN, {"ids": ids, "at": at})).scalars())
    )
    if not match_ids:
        return  # not matched yet (or withdrawn before): the withdrawal waits for its signal
    matches = list(await session.execute(_LOCK_MATCHES, {"ids": match_ids}))
    members: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for member in (await session.execute(_MATCH_SIGNALS, {"ids": match_ids})).mappings():
        members.setdefault(member["match_id"], []).append(dict(member))
    affected = sorted({row.household_key for row in matches})
    months: dict[str, set[int]] = {key: set() for key in affected}
    for row in await session.execute(_ACTIVE_MONTHS, {"keys": affected}):
        months[row.household_key].add(month_index(row.signaaldatum))
    remembered = {k: remembered_months(m, max(m)) if m else [] for k, m in months.items()}
    gemeenten = sorted({row.gemeentecode for row in matches})
    rules = rules_of(
        list(await session.execute(_RULES, {"gemeenten": gemeenten})), gemeenten, settings
    )
    now = utc_now()
    match_rows: list[dict[str, Any]] = []
    outgoing: list[tuple[Topic, Event]] = []
    causes: list[dict[str, str]] = []
    for row, event_id in zip(matches, new_uuids(len(matches)), strict=True):
        rows = members.get(row.id, [])
        active = sorted(
            (_fact(r) for r in rows if r["ingetrokken_op"] is None), key=lambda f: str(f.signal_id)
        )
        state = MatchState(
            id=row.id,
            geopend_op=row.geopend_op,
            doorsturen_op=row.doorsturen_op,
            signals=active,
            version=row.version + 1,
            forwarded=row.status == FORWARDED,
        )
        verdict = classify(
            active, remembered[row.household_key], rules[row.gemeentecode].opeenvolgend_maanden
        )
        match = _Match(state, row.household_key, row.gemeentecode, row.doorgestuurd_op)
        match_rows.append(
            _match_row(
                match,
                verdict.soort,
                verdict.aantal_schuldeisers,
                verdict.totaal_achterstand,
                verdict.regel,
                verdict.uitleg,
            )
        )
        if state.forwarded and row.doorgestuurd_op is not None:
            outgoing.append(
                (
                    MATCH_UPDATED,
                    _match_event(
                        MatchUpdated,
                        match_rows[-1],
                        row.doorgestuurd_op,
                        verdict.uitleg,
                        rows,
                        event_id=event_id,
                        now=now,
                    ),
                )
            )
            withdrawn_here = [r["signal_id"] for r in rows if r["signal_id"] in events]
            causes.append(contexts[withdrawn_here[0]] if withdrawn_here else {})
    await session.execute(
        _UPSERT_MATCHES,
        {column: [r[column] for r in match_rows] for column in _MATCH_COLUMNS},
    )
    await session.execute(
        _SET_MONTHS,
        {
            "keys": affected,
            "maanden": ["{" + ",".join(map(str, remembered[k])) + "}" for k in affected],
        },
    )
    await outbox.stage_many(session, outgoing, causes)


def _match_row(
    match: _Match,
    soort: str,
    aantal: int,
    totaal: Any,
    regel: str,
    uitleg: dict[str, Any],
) -> dict[str, Any]:
    state = match.state
    return {
        "id": state.id,
        "household_key": match.household_key,
        "gemeentecode": match.gemeentecode,
        "status": FORWARDED if state.forwarded else HELD,
        "soort": soort,
        "version": state.version,
        "aantal_schuldeisers": aantal,
        "totaal_achterstand": totaal,
        "geopend_op": state.geopend_op,
        "doorsturen_op": state.doorsturen_op,
        "doorgestuurd_op": match.doorgestuurd_op,
        "regel": regel,
        "uitleg": json.dumps(uitleg),
    }


def _match_event(
    kind: type[MatchCreated] | type[MatchUpdated],
    row: Mapping[str, Any],
    doorgestuurd_op: dt.datetime,
    uitleg: dict[str, Any],
    members: Iterable[Mapping[str, Any]],
    *,
    event_id: uuid.UUID,
    now: dt.datetime,
) -> MatchCreated | MatchUpdated:
    """A match's state as an event, from its `matches` row and its signals' rows (withdrawn
    ones too): bounded, whatever the number of signals (domain.MAX_EVENT_SIGNALS)."""
    rows = {r["signal_id"]: r for r in members}
    active = [_fact(r) for r in rows.values() if r["ingetrokken_op"] is None]
    withdrawn = sorted(
        (r for r in rows.values() if r["ingetrokken_op"] is not None),
        key=lambda r: (r["ingetrokken_op"], str(r["signal_id"])),
    )[-MAX_EVENT_SIGNALS:]
    # Built from validated events and the rules' own results: constructed without a second
    # validation (consumers validate every event they decode).
    return kind.model_construct(
        event_id=event_id,
        schema_version=1,
        occurred_at=now,
        event_type=kind.model_fields["event_type"].default,
        gemeentecode=row["gemeentecode"],
        household_key=row["household_key"],
        match_id=row["id"],
        version=row["version"],
        soort=row["soort"],
        aantal_schuldeisers=row["aantal_schuldeisers"],
        totaal_achterstand=row["totaal_achterstand"],
        doorgestuurd_op=doorgestuurd_op,
        regel=row["regel"],
        uitleg=uitleg,
        signalen=tuple(
            _matched(rows[f.signal_id])
            for f in sorted(
                carried_signals(active), key=lambda f: (f.signaaldatum, str(f.signal_id))
            )
        ),
        aantal_signalen=len(active),
        ingetrokken=tuple(r["signal_id"] for r in withdrawn),
    )


_DUE = text(
    "SELECT id, household_key, gemeentecode, version, geopend_op, doorsturen_op, soort, "
    "aantal_schuldeisers, totaal_achterstand, regel, uitleg FROM matches "
    # a held match whose every signal was withdrawn is never forwarded
    "WHERE status = 'gebundeld' AND doorsturen_op <= :now AND aantal_schuldeisers > 0 "
    "ORDER BY doorsturen_op, id "
    "LIMIT :limit FOR UPDATE SKIP LOCKED"
)
_FORWARD = text(
    "UPDATE matches SET status = :forwarded, doorgestuurd_op = :now "
    "WHERE id = ANY(CAST(:ids AS uuid[]))"
)


async def forward_due(
    session: AsyncSession, *, outbox: Outbox, now: dt.datetime, limit: int = 500
) -> int:
    """Forward the held (bundled) matches whose bundling period has ended; the four-week
    clock starts at the end of the period. Replicas share the work (SKIP LOCKED); a match
    that a batch is changing right now waits for the next round."""
    due = list(await session.execute(_DUE, {"now": now, "limit": limit}))
    if not due:
        return 0
    ids = [row.id for row in due]
    members: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for member in (await session.execute(_MATCH_SIGNALS, {"ids": ids})).mappings():
        members.setdefault(member["match_id"], []).append(dict(member))
    # the clock starts now: at the end of the bundling period, or later if this round is late
    await session.execute(_FORWARD, {"forwarded": FORWARDED, "ids": ids, "now": now})
    events: list[tuple[Topic, Event]] = [
        (
            MATCH_CREATED,
            _match_event(
                MatchCreated,
                dict(row._mapping),
                now,
                row.uitleg,
                members[row.id],
                event_id=event_id,
                now=now,
            ),
        )
        for row, event_id in zip(due, new_uuids(len(due)), strict=True)
    ]
    await outbox.stage_many(session, events)
    return len(due)
