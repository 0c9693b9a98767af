"""Repeats: a resent signal compared with the stored one, and duplicate lines within one
delivery (the pure parts, without infrastructure)."""

from __future__ import annotations

import json
import pathlib
import uuid
from types import SimpleNamespace
from typing import Any

from services.intake.deliveries import PartnerSlots, first_lines
from services.intake.handlers import differing_fields, fingerprint
from services.intake.schemas import SignalIn

_EXAMPLE = pathlib.Path(__file__).parents[3] / "docs" / "examples" / "signaal.json"
_SECRET = "test-secret"


def _signal(**changes: Any) -> SignalIn:
    return SignalIn.model_validate({**json.loads(_EXAMPLE.read_text()), **changes})


def test_a_field_added_to_signalin_later_does_not_turn_a_resend_into_a_conflict() -> None:
    signal = _signal()
    signal_id = uuid.uuid4()
    stored_print = fingerprint(signal, signal_id, _SECRET)
    # Stored before SignalIn had these fields: the stored fingerprint does not name them.
    older = {name: digest for name, digest in stored_print.items() if name != "soort"}
    stored = SimpleNamespace(id=signal_id, vingerafdruk=older)
    assert differing_fields(stored, signal, _SECRET) == []  # type: ignore[arg-type]


def test_a_field_both_fingerprints_name_is_still_compared() -> None:
    signal = _signal()
    signal_id = uuid.uuid4()
    stored_print = fingerprint(signal, signal_id, _SECRET)
    older = {name: digest for name, digest in stored_print.items() if name != "soort"}
    stored = SimpleNamespace(id=signal_id, vingerafdruk=older)
    changed = _signal(achterstandBedrag="999.99")
    assert differing_fields(stored, changed, _SECRET) == ["achterstandBedrag"]  # type: ignore[arg-type]


def test_lines_without_a_usable_id_are_never_duplicates_of_each_other() -> None:
    lines: list[Any] = [
        {"partnerSignaalId": ""},
        {"partnerSignaalId": ""},
        {"soort": "Energie"},
        {"partnerSignaalId": 12},
        {"partnerSignaalId": "a\x00b"},
        {"partnerSignaalId": "ok-1"},
    ]
    assert first_lines(lines) == {"ok-1": (6, lines[5])}


def test_long_ids_that_share_their_first_100_characters_are_distinct() -> None:
    one, other = "x" * 100 + "1", "x" * 100 + "2"
    lines: list[Any] = [{"partnerSignaalId": one}, {"partnerSignaalId": other}]
    assert first_lines(lines) == {one: (1, lines[0]), other: (2, lines[1])}


def test_reading_slots_bound_each_partner_on_its_own_and_free_on_release() -> None:
    slots = PartnerSlots(per_partner=2)
    one, other = uuid.uuid4(), uuid.uuid4()
    assert slots.try_take(one) and slots.try_take(one)
    assert not slots.try_take(one)  # a third upload of the same partner: refused
    assert slots.try_take(other)  # another partner is not held up
    slots.release(one)
    assert slots.try_take(one)
    for partner in (one, one, other):
        slots.release(partner)
    assert len(slots) == 0  # no entry is kept for a partner with nothing being read
