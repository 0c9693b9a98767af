"""Ids for new rows and events, in bulk: time-ordered UUIDs (version 7, RFC 9562 §5.7).

The first 48 bits are the Unix time in milliseconds, the other 74 free bits random. Ids
made one after another land next to each other in a btree, so inserting them touches the
newest index pages (kept in memory) instead of a random page of a large index, and so do
the lookups of recent ids (matching's "is this signal known?"). One read of the system's
random source serves many ids, where `uuid.uuid4()` reads it once per id (a system call
each, costly in a batch).

An id reveals when it was made, to the millisecond: nothing a receipt does not already
say (`ontvangen_op`). Ids are never secrets; access goes by token and tenant.
"""

from __future__ import annotations

import os
import time
import uuid

_VERSION_MASK = 0xF << 76
_VERSION_7 = 0x7 << 76
_VARIANT_MASK = 0x3 << 62
_VARIANT_RFC = 0x2 << 62


def new_uuids(count: int, *, now_ms: int | None = None) -> list[uuid.UUID]:
    """`count` distinct version 7 UUIDs of this millisecond (or of `now_ms`)."""
    millis = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    prefix = (millis & 0xFFFF_FFFF_FFFF) << 80
    raw = os.urandom(10 * count)
    ids = []
    for i in range(count):
        value = prefix | int.from_bytes(raw[10 * i : 10 * (i + 1)], "big")
        value = (value & ~_VERSION_MASK) | _VERSION_7
        value = (value & ~_VARIANT_MASK) | _VARIANT_RFC
        ids.append(uuid.UUID(int=value))
    return ids


def millis_of(value: uuid.UUID) -> int:
    """The Unix time in milliseconds a version 7 UUID was made at."""
    return value.int >> 80
