"""The audit trail's pure rules: bounding, normalising, the hash chain and its check."""

from __future__ import annotations

import dataclasses
import datetime as dt
from types import SimpleNamespace

import pytest

from shared.audit import (
    ACTION_LENGTH,
    GENESIS_HASH,
    OBJECT_LENGTH,
    UNKNOWN_PATH,
    AuditEntry,
    bounded,
    chain_hash,
    http_action,
    verify_rows,
)

AT = dt.datetime(2026, 12, 1, 9, 30, 15, 123456, tzinfo=dt.UTC)


def entry(**changes: object) -> AuditEntry:
    base = AuditEntry(
        at=AT, actor="cli:beheer", action="uitsluitingen-gelezen", object="x", result="ok"
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def chain(entries: list[AuditEntry]) -> tuple[list[SimpleNamespace], SimpleNamespace]:
    rows, prev = [], GENESIS_HASH
    for record_id, e in enumerate(entries, start=1):
        digest = chain_hash(record_id, prev, e)
        rows.append(SimpleNamespace(id=record_id, prev_hash=prev, hash=digest, **vars_of(e)))
        prev = digest
    return rows, SimpleNamespace(last_id=len(rows), hash=prev)


def vars_of(e: AuditEntry) -> dict[str, object]:
    return dataclasses.asdict(e)


def test_an_unmatched_path_is_one_fixed_action_whatever_it_is() -> None:
    assert http_action("GET", None) == UNKNOWN_PATH
    assert http_action("POST", "/api/v1/signalen") == "POST /api/v1/signalen"


def test_a_long_or_unprintable_value_is_cut_to_its_column_and_made_printable() -> None:
    raw = "/api/" + "a\x00b\n" * 100
    action = http_action("X" * 500, raw)
    assert len(action) <= ACTION_LENGTH
    assert action.isprintable()
    normal = entry(
        action=raw, object="o\x00" * 300, actor="\x00", gemeentecode="GM01067"
    ).normalised()
    assert len(normal.action) <= ACTION_LENGTH and normal.action.isprintable()
    assert normal.object is not None and len(normal.object) <= OBJECT_LENGTH
    assert "\x00" not in normal.object and "\x00" not in normal.actor
    assert normal.gemeentecode == "GM0106"
    assert bounded("ab\tc", 10) == "ab?c"


def test_the_hash_covers_every_field_the_place_and_the_previous_hash() -> None:
    base = chain_hash(1, GENESIS_HASH, entry())
    assert base == chain_hash(1, GENESIS_HASH, entry())  # canonical: the same bytes each time
    same_moment_elsewhere = entry(at=AT.astimezone(dt.timezone(dt.timedelta(hours=1))))
    assert chain_hash(1, GENESIS_HASH, same_moment_elsewhere) == base
    for change in (
        {"actor": "cli:ander"},
        {"action": "zaken-lijst-gelezen"},
        {"object": None},
        {"result": "geweigerd"},
        {"gemeentecode": "GM1731"},
        {"reason": "beheer"},
        {"at": AT + dt.timedelta(microseconds=1)},
    ):
        assert chain_hash(1, GENESIS_HASH, entry(**change)) != base, change
    assert chain_hash(2, GENESIS_HASH, entry()) != base
    assert chain_hash(1, "f" * 64, entry()) != base


def test_a_whole_chain_verifies() -> None:
    rows, head = chain([entry(object=f"o{i}") for i in range(5)])
    assert verify_rows(rows, head) is None
    assert verify_rows([], None) is None


@pytest.mark.parametrize("field", ["actor", "action", "object", "result", "at"])
def test_a_changed_record_is_named(field: str) -> None:
    rows, head = chain([entry(object=f"o{i}") for i in range(5)])
    setattr(rows[2], field, AT + dt.timedelta(seconds=1) if field == "at" else "vervalst")
    broken = verify_rows(rows, head)
    assert broken is not None and broken.record_id == 3


def test_a_deleted_or_rehashed_record_is_named() -> None:
    rows, head = chain([entry(object=f"o{i}") for i in range(5)])
    missing = verify_rows(rows[:2] + rows[3:], head)
    assert missing is not None and missing.record_id == 3
    # rewriting a record together with its own hash breaks the link of the next one
    rows[1].actor = "vervalst"
    rows[1].hash = chain_hash(
        2,
        rows[1].prev_hash,
        AuditEntry(
            **{
                k: getattr(rows[1], k)
                for k in ("at", "actor", "action", "object", "result", "gemeentecode", "reason")
            }
        ),
    )
    rehashed = verify_rows(rows, head)
    assert rehashed is not None and rehashed.record_id == 3


def test_a_removed_tail_is_caught_by_the_head() -> None:
    rows, head = chain([entry(object=f"o{i}") for i in range(5)])
    broken = verify_rows(rows[:4], head)
    assert broken is not None and broken.record_id == 5


class _DriverError(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__("value quoted here")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "invalidated", "unavailable"),
    [
        ("08006", False, True),  # connection failure
        ("57P01", False, True),  # admin shutdown
        ("53300", False, True),  # too many connections
        (None, True, True),  # the connection was lost
        (None, False, False),  # the driver refused a value: the record is at fault
        ("22021", False, False),  # invalid byte sequence: the record is at fault
        ("23502", False, False),  # not null: the record is at fault
    ],
)
def test_only_an_unavailable_database_fails_the_waiting_calls(
    sqlstate: str | None, invalidated: bool, unavailable: bool
) -> None:
    from sqlalchemy.exc import DBAPIError

    from shared.audit import _database_unavailable

    error = DBAPIError("INSERT", None, _DriverError(sqlstate), connection_invalidated=invalidated)
    assert _database_unavailable(error) is unavailable
