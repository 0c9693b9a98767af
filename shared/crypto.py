"""Per-person envelope encryption with crypto-shredding.

Every person (a data subject) has a data key of their own; it is stored only wrapped by
the regional master key, in the key store (its own database, like a vault: no service
owns it). Personal data is sealed with the person's data key wherever it goes: intake's
tables and every event payload field that holds it. Destroying the person's key makes
every copy unreadable at once, the Kafka log included (ADR 0004).

Sealed text: ``v1.`` + base64url(subject id (16) | key id (8) | nonce (12) | AES-256-GCM
ciphertext), with subject, key id and a context label bound as associated data, so a
ciphertext cannot be moved to another person or another field unnoticed. A person whose
key was destroyed and who later has new data gets a new key with a new key id, so what
was sealed before stays unreadable and says so (KeyDestroyed).
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
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import Field, SecretStr, model_validator
from sqlalchemy import Column, DateTime, LargeBinary, MetaData, Table, func, select, text, update
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


# One statement for any number of subjects (column arrays joined with unnest). A live key
# is kept; a destroyed one is never revived: new data gets a new key under a new key id.
_UPSERT_KEYS = text(
    "INSERT INTO person_keys (subject_id, key_id, wrapped_key) "
    "SELECT * FROM unnest(CAST(:subjects AS uuid[]), CAST(:key_ids AS bytea[]), "
    "CAST(:wrapped AS bytea[])) "
    "ON CONFLICT (subject_id) DO UPDATE SET "
    "key_id = CASE WHEN person_keys.wrapped_key IS NULL THEN EXCLUDED.key_id "
    "ELSE person_keys.key_id END, "
    "wrapped_key = COALESCE(person_keys.wrapped_key, EXCLUDED.wrapped_key), destroyed_at = NULL "
    "RETURNING subject_id, key_id, wrapped_key"
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


def open_with(data_key: DataKey, sealed: str, context: str) -> bytes:
    subject, key_id, nonce, ciphertext = _parts(sealed)
    if key_id != data_key.key_id:
        raise KeyDestroyed(str(subject))  # sealed under an earlier key, destroyed since
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
        description="How long an unwrapped data key is cached; a destroyed key stops "
        "working everywhere within this time.",
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
    )


class Vault:
    """Seals and opens personal data with per-person keys kept in the key store."""

    def __init__(
        self, engine: AsyncEngine, master_key: bytes, *, cache_ttl_s: float = 30.0
    ) -> None:
        self._engine = engine
        self._master = AESGCM(master_key)
        self._cache: dict[uuid.UUID, tuple[DataKey, float]] = {}
        self._cache_ttl_s = cache_ttl_s

    def _wrap(self, subject: uuid.UUID, data_key: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._master.encrypt(nonce, data_key, b"wrap|" + subject.bytes)

    def _unwrap(self, subject: uuid.UUID, wrapped: bytes) -> bytes:
        return self._master.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], b"wrap|" + subject.bytes)

    def _cached(self, subject: uuid.UUID) -> DataKey | None:
        hit = self._cache.get(subject)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def _remember(self, subject: uuid.UUID, data_key: DataKey) -> None:
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[subject] = (data_key, time.monotonic() + self._cache_ttl_s)

    async def data_keys(self, subjects: Iterable[uuid.UUID]) -> dict[uuid.UUID, DataKey]:
        """Each subject's data key, created where a subject has none (or had it destroyed)."""
        wanted = set(subjects)
        keys = {s: k for s in wanted if (k := self._cached(s)) is not None}
        missing = sorted(wanted - set(keys))
        if missing:
            key_ids = [os.urandom(_KEY_ID) for _ in missing]
            wrapped_keys = [self._wrap(s, AESGCM.generate_key(256)) for s in missing]
            # One statement needs no transaction around it: autocommit saves two round trips.
            async with self._engine.connect() as raw:
                conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
                rows = (
                    await conn.execute(
                        _UPSERT_KEYS,
                        {"subjects": missing, "key_ids": key_ids, "wrapped": wrapped_keys},
                    )
                ).all()
            for subject, key_id, wrapped in rows:
                keys[subject] = DataKey(key_id, self._unwrap(subject, wrapped))
                self._remember(subject, keys[subject])
        return keys

    async def seal_many(self, items: Sequence[tuple[uuid.UUID, bytes]], context: str) -> list[str]:
        """Seal (subject, plaintext) pairs in one key-store round trip at most."""
        keys = await self.data_keys(subject for subject, _ in items)
        nonces = os.urandom(_NONCE * len(items))  # one read of the random source for all
        return [
            _seal(keys[subject], subject, plaintext, context, nonces[_NONCE * i : _NONCE * (i + 1)])
            for i, (subject, plaintext) in enumerate(items)
        ]

    async def seal(self, subject: uuid.UUID, plaintext: bytes, context: str) -> str:
        return (await self.seal_many([(subject, plaintext)], context))[0]

    async def open(self, sealed: str, context: str) -> bytes:
        """The plaintext; raises KeyDestroyed once the person's key is gone."""
        subject = subject_of(sealed)
        data_key = self._cached(subject)
        if data_key is None:
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(person_keys.c.key_id, person_keys.c.wrapped_key).where(
                            person_keys.c.subject_id == subject
                        )
                    )
                ).first()
            if row is None or row.wrapped_key is None:
                raise KeyDestroyed(str(subject))
            data_key = DataKey(row.key_id, self._unwrap(subject, row.wrapped_key))
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
