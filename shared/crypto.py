"""Per-person envelope encryption with crypto-shredding.

Every person (a data subject) has a data key of their own; it is stored only wrapped by
the regional master key, in the key store (its own database, like a vault: no service
owns it). Personal data is sealed with the person's data key wherever it goes: intake's
tables and every event payload field that holds it. Destroying the person's key makes
every copy unreadable at once, the Kafka log included (ADR 0004).

Sealed text: ``v1.`` + base64url(subject id (16) | key id (8) | nonce (12) | AES-256-GCM
ciphertext), with subject, key id and a context label bound as associated data, so a
ciphertext cannot be moved to another person or another field unnoticed.

A destroyed key stays destroyed, and every process refuses it from the moment of
destruction (ADR 0013). Each destruction is recorded for good in the key store
(`person_key_destructions`: subject, key id, time; rows are only ever added), and is
announced with PostgreSQL NOTIFY in its own transaction. A person whose key was destroyed
and who later has new data (a new signal: each one needs an answer) gets a new key under
a new key id, so what was sealed before stays unreadable and says so (KeyDestroyed): only
the current key id of a subject ever opens anything. Sealing always takes the subject's
current key from the key store, never from a cache, so nothing new is sealed under a
destroyed key. Every Vault listens on a connection of its own and evicts the named keys
from its cache; a cached key is used (to open) only while that listener has proven
healthy within `key_cache_listener_stale_s`, so a missed notification (a broken or
stalled connection) never leaves a destroyed key usable: the Vault then reads the key
store before every use.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import asyncpg
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import Field, SecretStr, model_validator
from sqlalchemy import (
    Column,
    DateTime,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import UUID as PgUUID
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import new_metadata
from shared.settings import DEVELOPMENT_SECRET_PREFIX, ServiceSettings

PREFIX = "v1."
_NONCE = 12
_KEY_ID = 8

metadata: MetaData = new_metadata()
person_keys = Table(
    "person_keys",
    metadata,
    Column("subject_id", PgUUID(as_uuid=True), primary_key=True),
    Column("key_id", LargeBinary(8), nullable=False),
    Column("wrapped_key", LargeBinary, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("destroyed_at", DateTime(timezone=True), nullable=True),
)
# Every destruction, for good: a row is only ever added (a re-keyed person's earlier
# destructions stay), so what was destroyed and when stays on record.
person_key_destructions = Table(
    "person_key_destructions",
    metadata,
    Column("subject_id", PgUUID(as_uuid=True), nullable=False),
    Column("key_id", LargeBinary(8), nullable=False),
    Column("destroyed_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("subject_id", "key_id"),
)


# One statement for any number of subjects (column arrays joined with unnest). A live key
# is kept (every row comes back, so the no-op update); a destroyed one is never revived:
# the subject gets the new key under its new key id instead, and the destroyed key id
# stays recorded in person_key_destructions. Concurrent callers agree on one key: the
# row lock makes the later one see the key the first one stored.
_FIRST_IF_DESTROYED = "CASE WHEN person_keys.wrapped_key IS NULL THEN {new} ELSE {old} END"
_UPSERT_KEYS = text(
    "INSERT INTO person_keys (subject_id, key_id, wrapped_key) "
    "SELECT * FROM unnest(CAST(:subjects AS uuid[]), CAST(:key_ids AS bytea[]), "
    "CAST(:wrapped AS bytea[])) "
    "ON CONFLICT (subject_id) DO UPDATE SET "
    "key_id = "
    + _FIRST_IF_DESTROYED.format(new="excluded.key_id", old="person_keys.key_id")
    + ", wrapped_key = COALESCE(person_keys.wrapped_key, excluded.wrapped_key)"
    ", created_at = "
    + _FIRST_IF_DESTROYED.format(new="now()", old="person_keys.created_at")
    + ", destroyed_at = "
    + _FIRST_IF_DESTROYED.format(new="NULL", old="person_keys.destroyed_at")
    + " RETURNING subject_id, key_id, wrapped_key"
)

# Destruction, its record and its announcement in one transaction: listeners hear of it
# on commit. The tombstone row is only ever inserted, never updated nor deleted.
DESTROYED_CHANNEL = "person_keys_destroyed"
_DESTROY_KEYS = text(
    "WITH gone AS ("
    "UPDATE person_keys SET wrapped_key = NULL, destroyed_at = :now "
    "WHERE subject_id = ANY(CAST(:subjects AS uuid[])) AND wrapped_key IS NOT NULL "
    "RETURNING subject_id, key_id, destroyed_at) "
    "INSERT INTO person_key_destructions (subject_id, key_id, destroyed_at) "
    "SELECT subject_id, key_id, destroyed_at FROM gone "
    "RETURNING subject_id"
)
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")
# A NOTIFY payload holds under 8000 bytes; 36 characters and a comma per subject.
_SUBJECTS_PER_NOTIFICATION = 200

log = structlog.get_logger(__name__)


class KeyDestroyed(Exception):
    """The data was sealed under a key that is destroyed (or no longer the person's key):
    it is gone for good. `subjects` names the subjects of that data."""

    def __init__(self, subjects: Iterable[uuid.UUID]) -> None:
        self.subjects = frozenset(subjects)
        super().__init__(", ".join(sorted(str(subject) for subject in self.subjects)))


class TamperedCiphertext(Exception):
    """The sealed text does not open under its subject and context."""


def master_key_from_text(text: str) -> bytes:
    """The 256-bit master key: base64 of 32 bytes, or (development) any text, hashed."""
    try:
        raw = base64.b64decode(text, validate=True)
        if len(raw) == 32:
            return raw
    except ValueError:
        pass
    return hashlib.sha256(text.encode()).digest()


def subject_id(pseudonym_secret: str, identity: str) -> uuid.UUID:
    """A stable pseudonymous id for a person, from what identifies them."""
    digest = hmac.new(pseudonym_secret.encode(), b"subject|" + identity.encode(), hashlib.sha256)
    return uuid.UUID(bytes=digest.digest()[:16])


@dataclass(frozen=True)
class DataKey:
    key_id: bytes
    key: bytes


def _aad(subject: uuid.UUID, key_id: bytes, context: str) -> bytes:
    return subject.bytes + key_id + context.encode()


def seal_with(data_key: DataKey, subject: uuid.UUID, plaintext: bytes, context: str) -> str:
    """AES-GCM under the person's data key with a fresh random 96-bit nonce: safe for up to
    2^32 seals under one key (NIST SP 800-38D, 8.3); one person's key seals a handful."""
    return _seal(data_key, subject, plaintext, context, os.urandom(_NONCE))


def _seal(
    data_key: DataKey, subject: uuid.UUID, plaintext: bytes, context: str, nonce: bytes
) -> str:
    ciphertext = AESGCM(data_key.key).encrypt(
        nonce, plaintext, _aad(subject, data_key.key_id, context)
    )
    raw = subject.bytes + data_key.key_id + nonce + ciphertext
    return PREFIX + base64.urlsafe_b64encode(raw).decode()


def _parts(sealed: str) -> tuple[uuid.UUID, bytes, bytes, bytes]:
    if not sealed.startswith(PREFIX):
        raise TamperedCiphertext("not a sealed value")
    raw = base64.urlsafe_b64decode(sealed[len(PREFIX) :])
    key_end = 16 + _KEY_ID
    return (
        uuid.UUID(bytes=raw[:16]),
        raw[16:key_end],
        raw[key_end : key_end + _NONCE],
        raw[key_end + _NONCE :],
    )


def subject_of(sealed: str) -> uuid.UUID:
    return _parts(sealed)[0]


def key_id_of(sealed: str) -> bytes:
    """The id of the data key the text was sealed under."""
    return _parts(sealed)[1]


def open_with(data_key: DataKey, sealed: str, context: str) -> bytes:
    subject, key_id, nonce, ciphertext = _parts(sealed)
    if key_id != data_key.key_id:
        raise KeyDestroyed([subject])  # sealed under an earlier key, destroyed since
    try:
        return AESGCM(data_key.key).decrypt(nonce, ciphertext, _aad(subject, key_id, context))
    except InvalidTag:
        raise TamperedCiphertext("sealed value does not match its subject or context") from None


class PersonalDataSettings(ServiceSettings):
    """Settings of a service that seals or opens personal data (its settings derive from it)."""

    master_key: SecretStr = Field(
        SecretStr(DEVELOPMENT_SECRET_PREFIX + "master-key"),
        description="Regional master key (base64 of 32 bytes) that wraps every person's data "
        "key. Keep it in a secret store, apart from the databases.",
    )
    key_cache_ttl_s: float = Field(
        30.0,
        gt=0,
        description="How long an unwrapped data key is cached. A destroyed key is evicted from "
        "every process's cache by a notification at once, whatever this time.",
    )
    key_cache_listener_interval_s: float = Field(
        0.2,
        gt=0,
        description="How often the key-destruction listener proves its connection healthy "
        "(one `SELECT 1`).",
    )
    key_cache_listener_stale_s: float = Field(
        1.0,
        gt=0,
        description="Cached keys are used only while the listener proved healthy within this "
        "time; else the key store is read before every use. Bounds how long a destroyed key "
        "can be used after a missed notification.",
    )

    @model_validator(mode="after")
    def master_key_is_256_bits(self) -> PersonalDataSettings:
        """In production the master key must be real key material, not a passphrase."""
        if self.environment == "production":
            try:
                raw = base64.b64decode(self.master_key.get_secret_value(), validate=True)
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise ValueError(
                    "master_key must be base64 of 32 random bytes (openssl rand -base64 32)"
                )
        return self


def make_vault(settings: PersonalDataSettings, engine: AsyncEngine) -> Vault:
    return Vault(
        engine,
        master_key_from_text(settings.master_key.get_secret_value()),
        cache_ttl_s=settings.key_cache_ttl_s,
        listener_interval_s=settings.key_cache_listener_interval_s,
        listener_stale_s=settings.key_cache_listener_stale_s,
    )


class Vault:
    """Seals and opens personal data with per-person keys kept in the key store.

    Keys are cached only while a listener for key destructions runs and is healthy; it
    starts with the first use on the running event loop (`close` stops it).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        master_key: bytes,
        *,
        cache_ttl_s: float = 30.0,
        listener_interval_s: float = 0.2,
        listener_stale_s: float = 1.0,
    ) -> None:
        self._engine = engine
        self._master = AESGCM(master_key)
        self._cache: dict[uuid.UUID, tuple[DataKey, float]] = {}
        self._cache_ttl_s = cache_ttl_s
        self._listener_interval_s = listener_interval_s
        self._listener_stale_s = listener_stale_s
        self._listener: asyncio.Task[None] | None = None
        self._listener_pid: int | None = None
        self._healthy_until = 0.0  # monotonic time up to which cached keys may be used
        self._evictions = 0  # bumped by every notification: a racing read is not cached

    def _wrap(self, subject: uuid.UUID, data_key: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._master.encrypt(nonce, data_key, b"wrap|" + subject.bytes)

    def _unwrap(self, subject: uuid.UUID, wrapped: bytes) -> bytes:
        return self._master.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], b"wrap|" + subject.bytes)

    # -- the key cache and the destruction listener ------------------------------------

    @property
    def listening(self) -> bool:
        """Whether the cache may be used now: the listener proved healthy recently."""
        return time.monotonic() < self._healthy_until

    @property
    def listener_backend_pid(self) -> int | None:
        """The key store's backend process of the listener connection (for operators)."""
        return self._listener_pid

    def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(), name="key-destruction-listener"
            )

    async def _listen(self) -> None:
        """Keep a LISTEN connection to the key store; prove it healthy every interval."""
        dsn = self._engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(dsn, timeout=self._listener_stale_s * 5)
                await conn.add_listener(DESTROYED_CHANNEL, self._on_destroyed)
                self._listener_pid = conn.get_server_pid()
                # Whatever was destroyed while nobody listened: forget every cached key.
                self._forget_all()
                while not conn.is_closed():
                    started = time.monotonic()
                    await self._prove_healthy(conn)
                    # Notifications committed before `started` arrived before this answer.
                    self._healthy_until = started + self._listener_stale_s
                    await asyncio.sleep(self._listener_interval_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the key store is away: use no cache until it is back
                log.warning("key_destruction_listener_down", error=type(exc).__name__)
            finally:
                self._healthy_until = 0.0
                self._listener_pid = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=1)
            await asyncio.sleep(self._listener_interval_s)

    async def _prove_healthy(self, conn: asyncpg.Connection) -> None:
        """One round trip on the listener connection. While it hangs, the cache goes
        stale on its own (`listening` turns false), whatever the timeout does."""
        await conn.fetchval("SELECT 1", timeout=self._listener_stale_s)

    def _on_destroyed(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._evictions += 1
        try:
            subjects = [uuid.UUID(part) for part in payload.split(",") if part]
        except ValueError:
            self._forget_all()  # not ours to read: forget everything rather than guess
            return
        for subject in subjects:
            self._cache.pop(subject, None)

    def _forget_all(self) -> None:
        self._evictions += 1
        self._cache.clear()

    async def close(self) -> None:
        """Stop the listener (its connection closes); the cache is not used after."""
        self._healthy_until = 0.0
        self._cache.clear()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    def _cached(self, subject: uuid.UUID) -> DataKey | None:
        if not self.listening:
            return None
        hit = self._cache.get(subject)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def _remember(self, subject: uuid.UUID, data_key: DataKey, evictions_before: int) -> None:
        if evictions_before != self._evictions:
            return  # a destruction was announced while this key was read: do not keep it
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[subject] = (data_key, time.monotonic() + self._cache_ttl_s)

    # -- sealing, opening, destroying --------------------------------------------------

    async def data_keys(self, subjects: Iterable[uuid.UUID]) -> dict[uuid.UUID, DataKey]:
        """Each subject's current data key, in one key-store round trip: created where a
        subject has no live key (a new subject, or one whose key was destroyed: a new key
        under a new key id; the destroyed one stays destroyed). Never taken from the
        cache, so a key destroyed a moment ago is never used to seal new data."""
        self._ensure_listener()
        wanted = sorted(set(subjects))
        if not wanted:
            return {}
        evictions_before = self._evictions
        key_ids = [os.urandom(_KEY_ID) for _ in wanted]
        wrapped_keys = [self._wrap(s, AESGCM.generate_key(256)) for s in wanted]
        # One statement needs no transaction around it: autocommit saves two round trips.
        async with self._engine.connect() as raw:
            conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
            rows = (
                await conn.execute(
                    _UPSERT_KEYS,
                    {"subjects": wanted, "key_ids": key_ids, "wrapped": wrapped_keys},
                )
            ).all()
        keys: dict[uuid.UUID, DataKey] = {}
        for subject, key_id, wrapped in rows:
            keys[subject] = DataKey(key_id, self._unwrap(subject, wrapped))
            self._remember(subject, keys[subject], evictions_before)
        return keys

    async def seal_many(self, items: Sequence[tuple[uuid.UUID, bytes]], context: str) -> list[str]:
        """Seal (subject, plaintext) pairs under each subject's current key (one key-store
        round trip); a subject whose key was destroyed gets a new one."""
        keys = await self.data_keys(subject for subject, _ in items)
        nonces = os.urandom(_NONCE * len(items))  # one read of the random source for all
        return [
            _seal(keys[subject], subject, plaintext, context, nonces[_NONCE * i : _NONCE * (i + 1)])
            for i, (subject, plaintext) in enumerate(items)
        ]

    async def seal(self, subject: uuid.UUID, plaintext: bytes, context: str) -> str:
        return (await self.seal_many([(subject, plaintext)], context))[0]

    async def open(self, sealed: str, context: str) -> bytes:
        """The plaintext; raises KeyDestroyed once the key it was sealed under is gone
        (also after the person got a new key: only the current key id opens)."""
        self._ensure_listener()
        subject, sealed_key_id = subject_of(sealed), key_id_of(sealed)
        data_key = self._cached(subject)
        if data_key is None or data_key.key_id != sealed_key_id:
            # Not cached, or sealed under another key than the cached one (the person may
            # have been re-keyed since): the key store decides.
            evictions_before = self._evictions
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(person_keys.c.key_id, person_keys.c.wrapped_key).where(
                            person_keys.c.subject_id == subject
                        )
                    )
                ).first()
            if row is None or row.wrapped_key is None:
                raise KeyDestroyed([subject])
            data_key = DataKey(row.key_id, self._unwrap(subject, row.wrapped_key))
            self._remember(subject, data_key, evictions_before)
        return open_with(data_key, sealed, context)  # KeyDestroyed unless the current key

    async def destroy(self, subjects: Iterable[uuid.UUID], now: dt.datetime) -> int:
        """Destroy the live data keys of these subjects (crypto-shredding), record each
        destruction in person_key_destructions and announce it to every process; how
        many were live. A destroyed key stays destroyed; a later key of the same person
        (new data after this) is destroyed by a later call, with a record of its own."""
        wanted = sorted(set(subjects))
        self._evictions += 1
        for subject in wanted:
            self._cache.pop(subject, None)
        async with self._engine.begin() as conn:
            gone = [
                str(row.subject_id)
                for row in await conn.execute(_DESTROY_KEYS, {"subjects": wanted, "now": now})
            ]
            for start in range(0, len(gone), _SUBJECTS_PER_NOTIFICATION):
                payload = ",".join(gone[start : start + _SUBJECTS_PER_NOTIFICATION])
                await conn.execute(_NOTIFY, {"channel": DESTROYED_CHANNEL, "payload": payload})
        return len(gone)
