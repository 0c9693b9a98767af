"""The audit trail: who did what to which object, when, for which municipality, and how
it ended. One module for every service (ADR 0009).

- Records are bounded and normalised before they are stored: printable characters only,
  each field cut to its column, an HTTP action is METHOD + route template (an unmatched
  path is the fixed action `onbekend pad`), so nothing from outside can make a record
  unwritable.
- Each service database holds one hash chain: a record stores the previous record's hash
  and its own, sha256 over a canonical encoding. Writers are serialised on the chain's
  head row (SELECT ... FOR UPDATE), so two replicas never fork it; `verify` names the
  first broken record.
- `record` writes in the caller's transaction (an operator's change and its audit record
  commit together). `AuditTrail` is the group commit of the partner API: a response is
  sent only after its record committed, and concurrent requests share one INSERT.
- A record that still cannot be written is logged (type and SQLSTATE only) and set aside
  in `audit_rejected`, never blocking the records after it.

Never personal data: actors, routes, ids and outcomes only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import structlog
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.events import utc_now
from shared.telemetry import error_fields, sqlstate_of

log = structlog.get_logger(__name__)

# Column widths: the bounds every record is cut to before it is stored.
ACTOR_LENGTH = 200
ACTION_LENGTH = 100
OBJECT_LENGTH = 200
RESULT_LENGTH = 40
GEMEENTECODE_LENGTH = 6
REASON_LENGTH = 1000  # a caseworker's "why": bounded when recorded, stored as text
HASH_LENGTH = 64  # hex sha256
METHOD_LENGTH = 16  # longer than any HTTP method in use

UNKNOWN_PATH = "onbekend pad"
GENESIS_HASH = "0" * HASH_LENGTH  # the "previous hash" of a chain's first record
HEAD_ID = 1  # the chain head is one row per service database

# SQLSTATE classes of an unavailable database ("try again later"), not of a bad record.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")


@dataclass(frozen=True)
class AuditTables:
    log: Table
    head: Table
    rejected: Table


def add_audit_tables(metadata: MetaData) -> AuditTables:
    """The audit tables every service keeps in its own database."""
    log_table = Table(
        "audit_log",
        metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=False),
        Column("at", DateTime(timezone=True), nullable=False),
        Column("actor", String(ACTOR_LENGTH), nullable=False),
        Column("action", String(ACTION_LENGTH), nullable=False),
        Column("object", String(OBJECT_LENGTH)),
        Column("gemeentecode", String(GEMEENTECODE_LENGTH)),
        Column("result", String(RESULT_LENGTH), nullable=False),
        Column("reason", Text),
        Column("prev_hash", String(HASH_LENGTH), nullable=False),
        Column("hash", String(HASH_LENGTH), nullable=False),
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_gemeentecode", "gemeentecode"),
    )
    head = Table(
        "audit_chain",
        metadata,
        Column("id", SmallInteger, primary_key=True, autoincrement=False),
        Column("last_id", BigInteger, nullable=False),
        Column("hash", String(HASH_LENGTH), nullable=False),
    )
    rejected = Table(
        "audit_rejected",
        metadata,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("error", String(100), nullable=False),
        Column("record", Text, nullable=False),
    )
    return AuditTables(log=log_table, head=head, rejected=rejected)


# --- bounding and normalising ---------------------------------------------------------


def bounded(value: object, limit: int) -> str:
    """Printable characters only (others become '?'), at most `limit` of them."""
    text_ = str(value)
    if len(text_) <= limit and text_.isprintable():  # the usual case, at C speed
        return text_
    cleaned = "".join(c if c.isprintable() else "?" for c in text_[:limit])
    return cleaned[:limit]


def http_action(method: str, route_template: str | None) -> str:
    """METHOD + route template; a path that matched no route is one fixed action, so an
    anonymous caller cannot choose what is written."""
    if route_template is None:
        return UNKNOWN_PATH
    return bounded(f"{bounded(method, METHOD_LENGTH)} {route_template}", ACTION_LENGTH)


@dataclass(frozen=True)
class AuditEntry:
    at: dt.datetime
    actor: str
    action: str
    object: str | None
    result: str
    gemeentecode: str | None = None
    reason: str | None = None

    @classmethod
    def stored(cls, row: Any) -> AuditEntry:
        """The entry as a row of audit_log holds it (what its hash was made over)."""
        return cls(
            at=row.at,
            actor=row.actor,
            action=row.action,
            object=row.object,
            result=row.result,
            gemeentecode=row.gemeentecode,
            reason=row.reason,
        )

    def normalised(self) -> AuditEntry:
        def maybe(value: str | None, limit: int) -> str | None:
            return None if value is None else bounded(value, limit)

        return replace(
            self,
            at=self.at.astimezone(dt.UTC),
            actor=bounded(self.actor, ACTOR_LENGTH) or "onbekend",
            action=bounded(self.action, ACTION_LENGTH) or UNKNOWN_PATH,
            object=maybe(self.object, OBJECT_LENGTH),
            result=bounded(self.result, RESULT_LENGTH),
            gemeentecode=maybe(self.gemeentecode, GEMEENTECODE_LENGTH),
            reason=maybe(self.reason, REASON_LENGTH),
        )


def canonical(record_id: int, prev_hash: str, entry: AuditEntry) -> bytes:
    """The bytes a record's hash is taken over: its place in the chain, the previous hash
    and every field, as a compact JSON array (UTF-8, microsecond UTC time)."""
    fields = [
        record_id,
        prev_hash,
        entry.at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
        entry.actor,
        entry.action,
        entry.object,
        entry.gemeentecode,
        entry.result,
        entry.reason,
    ]
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


def chain_hash(record_id: int, prev_hash: str, entry: AuditEntry) -> str:
    return hashlib.sha256(canonical(record_id, prev_hash, entry)).hexdigest()


# --- writing --------------------------------------------------------------------------


@functools.cache
def _statements(tables: AuditTables) -> dict[str, Any]:
    log_name, head_name = tables.log.name, tables.head.name
    return {
        "head": text(f"SELECT last_id, hash FROM {head_name} WHERE id = {HEAD_ID} FOR UPDATE"),
        "start": text(
            f"INSERT INTO {head_name} (id, last_id, hash) VALUES ({HEAD_ID}, 0, '{GENESIS_HASH}') "
            "ON CONFLICT (id) DO NOTHING"
        ),
        "insert": text(
            f"INSERT INTO {log_name} (id, at, actor, action, object, gemeentecode, result, "
            "reason, prev_hash, hash) SELECT * FROM unnest(CAST(:ids AS bigint[]), "
            "CAST(:ats AS timestamptz[]), CAST(:actors AS text[]), CAST(:actions AS text[]), "
            "CAST(:objects AS text[]), CAST(:gemeentecodes AS text[]), "
            "CAST(:results AS text[]), CAST(:reasons AS text[]), "
            "CAST(:prev_hashes AS text[]), CAST(:hashes AS text[]))"
        ),
        "advance": text(
            f"UPDATE {head_name} SET last_id = :last_id, hash = :hash WHERE id = {HEAD_ID}"
        ),
    }


async def append(session: AsyncSession, tables: AuditTables, entries: Sequence[AuditEntry]) -> None:
    """Add normalised entries to the chain inside the caller's open transaction; the head
    row stays locked until that transaction ends."""
    if not entries:
        return
    statements = _statements(tables)
    head = (await session.execute(statements["head"])).first()
    if head is None:  # a database made without the migration's head row
        await session.execute(statements["start"])
        head = (await session.execute(statements["head"])).one()
    last_id, prev = int(head.last_id), str(head.hash)
    columns: dict[str, list[Any]] = {
        name: []
        for name in (
            "ids",
            "ats",
            "actors",
            "actions",
            "objects",
            "gemeentecodes",
            "results",
            "reasons",
            "prev_hashes",
            "hashes",
        )
    }
    for entry in entries:
        last_id += 1
        digest = chain_hash(last_id, prev, entry)
        for name, value in zip(
            columns,
            (
                last_id,
                entry.at,
                entry.actor,
                entry.action,
                entry.object,
                entry.gemeentecode,
                entry.result,
                entry.reason,
                prev,
                digest,
            ),
            strict=True,
        ):
            columns[name].append(value)
        prev = digest
    await session.execute(statements["insert"], columns)
    await session.execute(statements["advance"], {"last_id": last_id, "hash": prev})


async def record(
    session: AsyncSession,
    tables: AuditTables,
    *,
    actor: str,
    action: str,
    object_: str | None,
    result: str,
    gemeentecode: str | None = None,
    reason: str | None = None,
    at: dt.datetime | None = None,
) -> None:
    """Audit an operator's action or read in the same transaction as the action itself.

    The action's own changes are flushed first, so its row locks are taken before the
    chain's head: the head is then held only from here to the commit (make this the last
    statement of the transaction), and never while the action waits for another lock."""
    await session.flush()
    entry = AuditEntry(
        at=at or utc_now(),
        actor=actor,
        action=action,
        object=object_,
        result=result,
        gemeentecode=gemeentecode,
        reason=reason,
    )
    await append(session, tables, [entry.normalised()])


def _database_unavailable(exc: BaseException) -> bool:
    """True for an error that says "the database is not there", not "this record is bad"."""
    if isinstance(exc, OSError | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        # No SQLSTATE on a live connection is the driver refusing a value (a client-side
        # DataError or InterfaceError): the record is at fault, not the database.
        sqlstate = sqlstate_of(exc)
        return sqlstate is not None and sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
    return False


class AuditUnavailable(Exception):
    """The audit record could not be committed because the database is unavailable."""


class AuditTrail:
    """Group commit of audit records: `write` returns once the record is committed (or set
    aside); records that arrive while a commit is under way share the next one."""

    def __init__(
        self, session_factory: async_sessionmaker, tables: AuditTables, *, max_batch: int = 1000
    ) -> None:
        self.session_factory = session_factory
        self.tables = tables
        self.max_batch = max_batch
        self._queue: list[tuple[AuditEntry, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self.committed_batches = 0

    async def write(self, entry: AuditEntry) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((entry.normalised(), future))
        self._wake.set()
        await future

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                await self._commit(batch)

    async def close(self) -> None:
        """Commit what is queued (on shutdown, after the server stopped taking requests)."""
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[AuditEntry, asyncio.Future[None]]]) -> None:
        try:
            await self._append([entry for entry, _ in batch])
        except Exception as exc:
            if _database_unavailable(exc):
                log.warning("audit commit failed: database unavailable", **error_fields(exc))
                _settle(batch, AuditUnavailable())
                return
            await self._one_by_one(batch)
            return
        self.committed_batches += 1
        _settle(batch, None)

    async def _one_by_one(self, batch: list[tuple[AuditEntry, asyncio.Future[None]]]) -> None:
        """A batch with a record the database refuses: each record on its own, the refused
        ones set aside, the rest kept."""
        for entry, future in batch:
            try:
                await self._append([entry])
            except Exception as exc:
                if _database_unavailable(exc):
                    log.warning("audit commit failed: database unavailable", **error_fields(exc))
                    _settle([(entry, future)], AuditUnavailable())
                    continue
                await set_aside(self.session_factory, self.tables, entry, exc)
            _settle([(entry, future)], None)

    async def _append(self, entries: list[AuditEntry]) -> None:
        async with self.session_factory() as session, session.begin():
            await append(session, self.tables, entries)


def _settle(
    batch: Iterable[tuple[AuditEntry, asyncio.Future[None]]], error: BaseException | None
) -> None:
    for _, future in batch:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


async def set_aside(
    session_factory: async_sessionmaker, tables: AuditTables, entry: AuditEntry, exc: BaseException
) -> None:
    """Keep a record the chain refused in the rejected side path; log only what kind of
    error it was (a database error's message can quote the values)."""
    fields = error_fields(exc)
    error = bounded(" ".join(filter(None, (fields["error"], fields.get("sqlstate")))), 100)
    document = json.dumps({**asdict(entry), "at": entry.at.isoformat()}, ensure_ascii=False)
    try:
        async with session_factory() as session, session.begin():
            await session.execute(insert(tables.rejected).values(error=error, record=document))
    except Exception as second:
        log.error("audit record lost: neither chained nor set aside", **error_fields(second))
        return
    log.error("audit record set aside in audit_rejected", **fields)


# --- reading and verifying ------------------------------------------------------------


@dataclass(frozen=True)
class ChainBreak:
    record_id: int | None  # None: the chain's records are whole but its head disagrees
    reason: str


class ChainChecker:
    """Checks a chain record by record (in id order), then against its head row."""

    def __init__(self) -> None:
        self.expected_id = 1
        self.prev = GENESIS_HASH

    def feed(self, row: Any) -> ChainBreak | None:
        if row.id != self.expected_id:
            return ChainBreak(self.expected_id, f"record {self.expected_id} ontbreekt")
        if row.prev_hash != self.prev:
            return ChainBreak(row.id, "vorige hash klopt niet")
        entry = AuditEntry.stored(row)
        if chain_hash(row.id, self.prev, entry) != row.hash:
            return ChainBreak(row.id, "inhoud gewijzigd (hash klopt niet)")
        self.prev, self.expected_id = row.hash, self.expected_id + 1
        return None

    def finish(self, head: Any | None) -> ChainBreak | None:
        last_id = self.expected_id - 1
        head_id, head_hash = (int(head.last_id), head.hash) if head else (0, GENESIS_HASH)
        if head_id != last_id or head_hash != self.prev:
            return ChainBreak(
                None if head_id <= last_id else last_id + 1,
                f"kop van de keten wijst naar record {head_id}, laatste record is {last_id}",
            )
        return None


def verify_rows(rows: Iterable[Any], head: Any | None) -> ChainBreak | None:
    """Check a chain (rows in id order, each with the table's columns) against its head
    row; the first broken record, or None when the chain is whole."""
    checker = ChainChecker()
    for row in rows:
        if broken := checker.feed(row):
            return broken
    return checker.finish(head)


async def _rows(session: AsyncSession, tables: AuditTables, batch: int) -> AsyncIterator[Any]:
    after = 0
    while True:
        rows = (
            await session.execute(
                select(tables.log)
                .where(tables.log.c.id > after)
                .order_by(tables.log.c.id)
                .limit(batch)
            )
        ).all()
        for row in rows:
            yield row
        if len(rows) < batch:
            return
        after = rows[-1].id


async def verify(
    session: AsyncSession, tables: AuditTables, batch: int = 5000
) -> ChainBreak | None:
    """Walk a service's chain in pages; the first broken record, or None. Call it first
    in its transaction: it reads one snapshot (rows and head agree)."""
    await session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
    checker = ChainChecker()
    async for row in _rows(session, tables, batch):
        if broken := checker.feed(row):
            return broken
    head = (await session.execute(select(tables.head).where(tables.head.c.id == HEAD_ID))).first()
    return checker.finish(head)


# --- the partner API's middleware -----------------------------------------------------

_UNAVAILABLE_BODY = json.dumps(
    {
        "type": "about:blank",
        "title": "Tijdelijk niet beschikbaar",
        "status": 503,
        "detail": "Deze aanroep kon niet in het auditspoor worden vastgelegd, dus het antwoord "
        "wordt niet gegeven. Probeer het later opnieuw; een signaal met hetzelfde "
        "partnerSignaalId wordt nooit dubbel opgeslagen.",
    },
    ensure_ascii=False,
).encode()


def route_template(scope: Scope) -> str | None:
    """The template of the route that served the call, or that would have, when a guard
    answered before routing (413, 415); None for a path no route matches."""
    route = scope.get("route")
    if route is not None:
        return getattr(route, "path", None)
    return _matching_template(
        getattr(getattr(scope.get("app"), "router", None), "routes", ()), scope
    )


def _matching_template(routes: Iterable[Any], scope: Scope) -> str | None:
    for candidate in routes:
        included = getattr(candidate, "original_router", None)  # FastAPI's include_router
        if included is not None:
            found = _matching_template(included.routes, scope)
            if found is not None:
                return found
            continue
        match, _ = candidate.matches(scope)
        if match is not Match.NONE:
            return getattr(candidate, "path", None)
    return None


class AuditHttpCalls:
    """Records every audited HTTP call (partner or 'anoniem', METHOD + route template,
    status, object) and sends the response only after the record committed."""

    def __init__(
        self,
        app: ASGIApp,
        trail_of: Callable[[], AuditTrail | None],
        audited: Callable[[str], bool],
        timeout_s: float,
        retry_after_s: int,
    ) -> None:
        self.app = app
        self.trail_of = trail_of
        self.audited = audited
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        trail = self.trail_of()
        if scope["type"] != "http" or trail is None or not self.audited(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        status = 500
        held: list[Message] = []

        async def hold(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            held.append(message)

        try:
            await self.app(scope, receive, hold)
        except BaseException:
            await self._write(trail, scope, status)  # the error handler outside answers 500
            raise
        if await self._write(trail, scope, status):
            for message in held:
                await send(message)
        else:
            await self._unavailable(send)

    async def _write(self, trail: AuditTrail, scope: Scope, status: int) -> bool:
        """The call's record, committed (or set aside); False if that failed."""
        state = scope.get("state", {})
        entry = AuditEntry(
            at=utc_now(),
            actor=f"partner:{state['partner_id']}" if "partner_id" in state else "anoniem",
            action=http_action(scope["method"], route_template(scope)),
            object=state.get("audit_object"),
            result=str(status),
        )
        try:
            await asyncio.wait_for(trail.write(entry), self.timeout_s)
        except (AuditUnavailable, TimeoutError):
            return False
        return True

    async def _unavailable(self, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(_UNAVAILABLE_BODY)).encode()),
                    (b"retry-after", str(self.retry_after_s).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _UNAVAILABLE_BODY})


# --- migrations (each service's `..._audit_chain.py` calls these) ---------------------


def migration_create_chain_tables(op: Any) -> None:
    """The chain's head (starting at the genesis hash) and the rejected side path."""
    import sqlalchemy as sa

    op.create_table(
        "audit_chain",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=HASH_LENGTH), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain")),
    )
    op.execute(
        f"INSERT INTO audit_chain (id, last_id, hash) VALUES ({HEAD_ID}, 0, '{GENESIS_HASH}')"
    )
    op.create_table(
        "audit_rejected",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("error", sa.String(length=100), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_rejected")),
    )


def migration_create_log(op: Any) -> None:
    """A service's audit_log where there was none, with its chain tables."""
    import sqlalchemy as sa

    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=ACTOR_LENGTH), nullable=False),
        sa.Column("action", sa.String(length=ACTION_LENGTH), nullable=False),
        sa.Column("object", sa.String(length=OBJECT_LENGTH), nullable=True),
        sa.Column("gemeentecode", sa.String(length=GEMEENTECODE_LENGTH), nullable=True),
        sa.Column("result", sa.String(length=RESULT_LENGTH), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("prev_hash", sa.String(length=HASH_LENGTH), nullable=False),
        sa.Column("hash", sa.String(length=HASH_LENGTH), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_at"), "audit_log", ["at"], unique=False)
    op.create_index(op.f("ix_audit_log_gemeentecode"), "audit_log", ["gemeentecode"], unique=False)
    migration_create_chain_tables(op)


def migration_drop_log(op: Any) -> None:
    op.drop_table("audit_rejected")
    op.drop_table("audit_chain")
    op.drop_index(op.f("ix_audit_log_gemeentecode"), table_name="audit_log")
    op.drop_index(op.f("ix_audit_log_at"), table_name="audit_log")
    op.drop_table("audit_log")


def migration_chain_existing(op: Any) -> None:
    """Bring an existing audit_log (identity ids, no hashes) onto the chain: ids from 1 in
    the old order, every record hashed, the head at the last one."""
    import sqlalchemy as sa

    op.execute("ALTER TABLE audit_log ALTER COLUMN id DROP IDENTITY IF EXISTS")
    op.execute("ALTER TABLE audit_log ALTER COLUMN id TYPE bigint")
    op.add_column("audit_log", sa.Column("prev_hash", sa.String(length=HASH_LENGTH)))
    op.add_column("audit_log", sa.Column("hash", sa.String(length=HASH_LENGTH)))
    migration_create_chain_tables(op)
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT id, at, actor, action, object, gemeentecode, result, reason "
            "FROM audit_log ORDER BY id"
        )
    ).all()
    op.execute("UPDATE audit_log SET id = -id")  # out of the way of the new numbers
    prev, updates = GENESIS_HASH, []
    for new_id, row in enumerate(rows, start=1):
        entry = AuditEntry.stored(row)  # as stored: the hash must match what verify reads
        digest = chain_hash(new_id, prev, entry)
        updates.append({"old": -row.id, "new": new_id, "prev": prev, "hash": digest})
        prev = digest
    if updates:
        bind.execute(
            sa.text(
                "UPDATE audit_log SET id = :new, prev_hash = :prev, hash = :hash WHERE id = :old"
            ),
            updates,
        )
        bind.execute(
            sa.text(f"UPDATE audit_chain SET last_id = :last, hash = :hash WHERE id = {HEAD_ID}"),
            {"last": len(updates), "hash": prev},
        )
    op.alter_column("audit_log", "prev_hash", nullable=False)
    op.alter_column("audit_log", "hash", nullable=False)


def migration_unchain_existing(op: Any) -> None:
    """Back to identity ids without hashes (the records stay)."""
    op.drop_table("audit_rejected")
    op.drop_table("audit_chain")
    op.drop_column("audit_log", "hash")
    op.drop_column("audit_log", "prev_hash")
    op.execute("ALTER TABLE audit_log ALTER COLUMN id TYPE integer")
    op.execute("ALTER TABLE audit_log ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY")
    op.execute(
        "SELECT setval(pg_get_serial_sequence('audit_log', 'id'), COALESCE(max(id), 0) + 1, false) "
        "FROM audit_log"
    )
