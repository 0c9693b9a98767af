"""Random (version 4) UUIDs in bulk: one read of the system's random source for many ids,
where `uuid.uuid4()` reads it once per id (a system call each, costly in a batch)."""

from __future__ import annotations

import os
import uuid


def new_uuids(count: int) -> list[uuid.UUID]:
    raw = os.urandom(16 * count)
    return [uuid.UUID(bytes=raw[16 * i : 16 * (i + 1)], version=4) for i in range(count)]
