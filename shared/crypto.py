"""Per-person envelope encryption with crypto-shredding.

Every person (a data subject) has a data key of their own; it is stored only wrapped by
the regional master key, in the key store (its own database, like a vault: no service
owns it). Personal data is sealed with the person's data key wherever it goes: intake's
tables and every event payload field that holds it. Destroying the person's key makes
every copy unreadable at once, the Kafka log included (ADR 0004).

Sealed text: ``v1.`` + base64url(subject id (16) | nonce (12) | AES-256-GCM ciphertext),
with the subject id and a context label bound as associated data, so a ciphertext cannot
be moved to another person or another field unnoticed.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import time
import uuid
from collections.abc import Iterable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import Field, SecretStr
from sqlalchemy import Column, DateTime, LargeBinary, MetaData, Table, func, select, update
from sqlalchemy.dialects.postgresql import UUID as PgUUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import new_metadata
from shared.settings import DEVELOPMENT_SECRET_PREFIX, ServiceSettings

PREFIX = "v1."
_NONCE = 12

metadata: MetaData = new_metadata()
person_keys = Table(
    "person_keys",
    metadata,
    Column("subject_id", PgUUID(as_uuid=True), primary_key=True),
    Column("wrapped_key", LargeBinary, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("destroyed_at", DateTime(timezone=True), nullable=True),
)


class KeyDestroyed(Exception):
    """The person's data key was destroyed: the data is gone for good."""


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


def _aad(subject: uuid.UUID, context: str) -> bytes:
    return subject.bytes + context.encode()


def seal_with(data_key: bytes, subject: uuid.UUID, plaintext: bytes, context: str) -> str:
    nonce = os.urandom(_NONCE)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, _aad(subject, context))
    return PREFIX + base64.urlsafe_b64encode(subject.bytes + nonce + ciphertext).decode()


def subject_of(sealed: str) -> uuid.UUID:
    if not sealed.startswith(PREFIX):
        raise TamperedCiphertext("not a sealed value")
    raw = base64.urlsafe_b64decode(sealed[len(PREFIX) :])
    return uuid.UUID(bytes=raw[:16])


def open_with(data_key: bytes, sealed: str, context: str) -> bytes:
    raw = base64.urlsafe_b64decode(sealed[len(PREFIX) :])
    subject, nonce, ciphertext = (
        uuid.UUID(bytes=raw[:16]),
        raw[16 : 16 + _NONCE],
        raw[16 + _NONCE :],
    )
    try:
        return AESGCM(data_key).decrypt(nonce, ciphertext, _aad(subject, context))
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
        description="How long an unwrapped data key is cached; a destroyed key stops "
        "working everywhere within this time.",
    )


def make_vault(settings: PersonalDataSettings, engine: AsyncEngine) -> Vault:
    return Vault(
        engine,
        master_key_from_text(settings.master_key.get_secret_value()),
        cache_ttl_s=settings.key_cache_ttl_s,
    )


class Vault:
    """Seals and opens personal data with per-person keys kept in the key store."""

    def __init__(
        self, engine: AsyncEngine, master_key: bytes, *, cache_ttl_s: float = 30.0
    ) -> None:
        self._engine = engine
        self._master = AESGCM(master_key)
        self._cache: dict[uuid.UUID, tuple[bytes, float]] = {}
        self._cache_ttl_s = cache_ttl_s

    def _wrap(self, subject: uuid.UUID, data_key: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._master.encrypt(nonce, data_key, b"wrap|" + subject.bytes)

    def _unwrap(self, subject: uuid.UUID, wrapped: bytes) -> bytes:
        return self._master.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], b"wrap|" + subject.bytes)

    def _cached(self, subject: uuid.UUID) -> bytes | None:
        hit = self._cache.get(subject)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def _remember(self, subject: uuid.UUID, data_key: bytes) -> None:
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[subject] = (data_key, time.monotonic() + self._cache_ttl_s)

    async def data_keys(self, subjects: Iterable[uuid.UUID]) -> dict[uuid.UUID, bytes]:
        """Each subject's data key, created where a subject has none (or had it destroyed)."""
        wanted = set(subjects)
        keys = {s: k for s in wanted if (k := self._cached(s)) is not None}
        missing = sorted(wanted - set(keys))
        if missing:
            fresh = [
                {"subject_id": s, "wrapped_key": self._wrap(s, AESGCM.generate_key(256))}
                for s in missing
            ]
            proposed = pg_insert(person_keys).values(fresh)
            upsert = proposed.on_conflict_do_update(
                index_elements=["subject_id"],
                # A destroyed key is never revived: new data gets a new key.
                set_={
                    "wrapped_key": func.coalesce(
                        person_keys.c.wrapped_key, proposed.excluded.wrapped_key
                    ),
                    "destroyed_at": None,
                },
            ).returning(person_keys.c.subject_id, person_keys.c.wrapped_key)
            async with self._engine.begin() as conn:
                rows = (await conn.execute(upsert)).all()
            for subject, wrapped in rows:
                keys[subject] = self._unwrap(subject, wrapped)
                self._remember(subject, keys[subject])
        return keys

    async def seal_many(self, items: Sequence[tuple[uuid.UUID, bytes]], context: str) -> list[str]:
        """Seal (subject, plaintext) pairs in one key-store round trip at most."""
        keys = await self.data_keys(subject for subject, _ in items)
        return [
            seal_with(keys[subject], subject, plaintext, context) for subject, plaintext in items
        ]

    async def seal(self, subject: uuid.UUID, plaintext: bytes, context: str) -> str:
        return (await self.seal_many([(subject, plaintext)], context))[0]

    async def open(self, sealed: str, context: str) -> bytes:
        """The plaintext; raises KeyDestroyed once the person's key is gone."""
        subject = subject_of(sealed)
        data_key = self._cached(subject)
        if data_key is None:
            async with self._engine.connect() as conn:
                wrapped = await conn.scalar(
                    select(person_keys.c.wrapped_key).where(person_keys.c.subject_id == subject)
                )
            if wrapped is None:
                raise KeyDestroyed(str(subject))
            data_key = self._unwrap(subject, wrapped)
            self._remember(subject, data_key)
        return open_with(data_key, sealed, context)

    async def destroy(self, subjects: Iterable[uuid.UUID], now: dt.datetime) -> int:
        """Destroy the data keys of these subjects (crypto-shredding); how many were live."""
        wanted = list(set(subjects))
        for subject in wanted:
            self._cache.pop(subject, None)
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(person_keys)
                .where(person_keys.c.subject_id.in_(wanted), person_keys.c.wrapped_key.is_not(None))
                .values(wrapped_key=None, destroyed_at=now)
            )
        return int(result.rowcount or 0)
