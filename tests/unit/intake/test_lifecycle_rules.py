"""The pure rules of a signal's lifecycle at intake: registered kinds, conflicts named by
field, duplicate lines, and the keyed fingerprints that tell a repeat from a correction."""

import uuid

from services.intake import domain
from services.intake.deliveries import differing_keys, first_lines
from services.intake.handlers import fingerprint
from services.intake.schemas import SignalIn
from tests.unit.intake.test_domain import body

SECRET = "test-secret"


def test_a_kind_the_partner_is_not_registered_for_is_refused_naming_soort() -> None:
    assert domain.check_kind("Energie", ["Huur", "Energie"]) is None
    violation = domain.check_kind("Huur", ["Water"])
    assert violation is not None
    assert (violation.name, violation.code) == ("soort", domain.NOT_REGISTERED)
    assert "Huur" in violation.reason and "Water" in violation.reason


def test_a_conflict_names_each_field_and_how_to_correct_but_no_value() -> None:
    signal_id = str(uuid.uuid4())
    violations = domain.conflict_violations(["achterstandBedrag", "persoon"], signal_id)
    assert [v.name for v in violations] == ["achterstandBedrag", "persoon"]
    assert all(signal_id in v.reason and "nieuw partnerSignaalId" in v.reason for v in violations)


def test_the_same_content_gives_the_same_fingerprint_and_a_change_shows_by_field() -> None:
    signal_id = uuid.uuid4()
    original = SignalIn.model_validate(body())
    again = SignalIn.model_validate(body())
    assert fingerprint(original, signal_id, SECRET) == fingerprint(again, signal_id, SECRET)
    changed = SignalIn.model_validate(body(achterstandBedrag="1.00"))
    first, second = (
        fingerprint(original, signal_id, SECRET),
        fingerprint(changed, signal_id, SECRET),
    )
    assert sorted(k for k in first if first[k] != second[k]) == ["achterstandBedrag"]
    assert "partnerSignaalId" not in first


def test_a_fingerprint_keeps_no_content_and_does_not_link_two_signals() -> None:
    signal = SignalIn.model_validate(body())
    one, other = (
        fingerprint(signal, uuid.uuid4(), SECRET),
        fingerprint(signal, uuid.uuid4(), SECRET),
    )
    assert set(one.values()).isdisjoint(other.values())
    assert signal.persoon.achternaam not in str(one)


def test_the_first_line_of_an_id_wins_and_the_later_one_names_it() -> None:
    lines = [
        {"partnerSignaalId": "A", "x": 1},
        {"partnerSignaalId": "B"},
        {"partnerSignaalId": "A", "x": 2},
    ]
    first = first_lines(lines)
    assert (first["A"][0], first["B"][0]) == (1, 2)
    assert differing_keys(lines[0], lines[2]) == ["x"]
    violation = domain.duplicate_line(["x"], 1)
    assert violation.name == "partnerSignaalId" and "regel 1" in violation.reason
