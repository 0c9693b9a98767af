import datetime as dt
import io
import uuid
from decimal import Decimal

import pytest

from services.intake.addresses import (
    UnreadableAddressFile,
    cbs_csv,
    municipality_code,
    read_cbs_rows,
)
from services.intake.deliveries import UnreadableDelivery, parse_csv, parse_json, unflatten
from services.intake.domain import Violation, door_verdict, person_identity, route
from services.intake.gateway import RateLimiter
from services.intake.schemas import Person

REGION = frozenset({"GM1731", "GM0106"})


def test_route_takes_the_municipality_of_the_address() -> None:
    assert route(None, "GM1731", REGION) == "GM1731"
    assert route("GM1731", "GM1731", REGION) == "GM1731"


def test_route_never_guesses_an_unknown_or_outside_address() -> None:
    unknown = route("GM1731", None, REGION)
    outside = route(None, "GM0363", REGION)
    assert isinstance(unknown, Violation) and unknown.name == "adres"
    assert isinstance(outside, Violation) and outside.name == "adres"


def test_route_refuses_a_municipality_code_that_contradicts_the_address() -> None:
    wrong = route("GM0106", "GM1731", REGION)
    assert isinstance(wrong, Violation)
    assert wrong.name == "gemeentecode" and "GM1731" in wrong.reason


def test_blacklisted_household_is_stopped_unless_its_arrears_rose() -> None:
    assert door_verdict(False, Decimal("10"), None) == "doorgestuurd"
    assert door_verdict(True, Decimal("500"), None) == "niet-doorgestuurd"
    assert door_verdict(True, Decimal("500"), Decimal("500")) == "niet-doorgestuurd"
    assert door_verdict(True, Decimal("499.99"), Decimal("500")) == "niet-doorgestuurd"
    assert door_verdict(True, Decimal("500.01"), Decimal("500")) == "doorgestuurd"


def test_person_identity_prefers_the_bsn_and_ignores_spelling_otherwise() -> None:
    with_bsn = Person(achternaam="Berg", bsn="999990019")
    assert person_identity(with_bsn, "k") == "bsn|999990019"
    a = Person(achternaam="Bérg", voorvoegsel="van der", geboortedatum=dt.date(1980, 5, 17))
    b = Person(achternaam="berg", voorvoegsel="Van Der", geboortedatum=dt.date(1980, 5, 17))
    assert person_identity(a, "k") == person_identity(b, "k")
    assert person_identity(a, "k") != person_identity(a, "other-household")


def test_rate_limiter_allows_a_burst_then_asks_to_wait() -> None:
    limiter = RateLimiter(per_second=2, burst=3)
    partner = uuid.uuid4()
    assert [limiter.allow(partner, now=0.0) for _ in range(3)] == [None, None, None]
    wait = limiter.allow(partner, now=0.0)
    assert wait == pytest.approx(0.5)
    assert limiter.allow(partner, now=0.5) is None  # one token back after half a second
    assert limiter.allow(uuid.uuid4(), now=0.5) is None  # other partners have their own bucket


def test_csv_with_bom_and_semicolons_nests_dotted_columns() -> None:
    body = (
        "\ufeffpartnerSignaalId;soort;adres.postcode;adres.huisnummer;incassotraject.persoonlijkContactGezocht;contact.email\n"
        "A-1;Huur;9411 AB;12;ja;\n"
    ).encode()
    [line] = parse_csv(body)
    assert line == {
        "partnerSignaalId": "A-1",
        "soort": "Huur",
        "adres": {"postcode": "9411 AB", "huisnummer": "12"},
        "incassotraject": {"persoonlijkContactGezocht": True},
    }


def test_csv_with_commas_and_without_bom() -> None:
    lines = parse_csv(b"partnerSignaalId,soort\nA-1,Huur\nA-2,Water\n")
    assert [line["partnerSignaalId"] for line in lines] == ["A-1", "A-2"]


@pytest.mark.parametrize(
    ("body", "reader"),
    [
        (b"{}", parse_json),
        (b"not json", parse_json),
        (b"a;b\n1;2\n", parse_csv),
        (b"\xff\xfe", parse_csv),
    ],
)
def test_unreadable_files_are_refused_as_a_whole(body: bytes, reader) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnreadableDelivery):
        reader(body)


def test_unflatten_leaves_out_empty_cells() -> None:
    assert unflatten({"persoon.bsn": "", "persoon.achternaam": "Berg"}) == {
        "persoon": {"achternaam": "Berg"}
    }


def test_cbs_address_file_keeps_only_the_region() -> None:
    text = "PC6;Huisnummer;Buurt2024;Wijk2024;Gemeente2024\n9411AB;12;17310000;173100;1731\n1011AB;1;3630000;36300;363\n"
    rows = list(read_cbs_rows(io.StringIO(text), REGION))
    assert rows == [("9411AB", 12, "GM1731")]
    assert list(read_cbs_rows(io.StringIO(cbs_csv(rows)), REGION)) == rows


def test_municipality_codes_in_either_spelling() -> None:
    assert municipality_code("1731") == municipality_code("GM1731") == "GM1731"
    assert municipality_code("106") == "GM0106"
    with pytest.raises(UnreadableAddressFile):
        municipality_code("Assen")
