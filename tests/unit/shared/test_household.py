"""The household key: spellings of one dwelling share a key, different dwellings never do.

All addresses are synthetic: postcode areas of Drenthe with made-up numbers, letters and
additions, tied to no person."""

import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.household import DwellingAddress, fold_name, household_key, normalise, same_place

SECRET = "test-secret"
D = DwellingAddress

# (id, a, b): two spellings of ONE dwelling, as partners deliver them.
MUST_MATCH = [
    ("postcode lower case with space", D("9401 ab", 12), D("9401AB", 12)),
    ("postcode padded", D(" 9401 AB ", 12), D("9401ab", 12)),
    ("postcode no-break space", D("7811\u00a0KL", 3), D("7811 KL", 3)),
    ("postcode hyphen", D("7811-kl", 3), D("7811KL", 3)),
    ("letter case", D("9411 AB", 12, "a"), D("9411AB", 12, "A")),
    ("letter with dot", D("9411AB", 12, "a."), D("9411AB", 12, "A")),
    ("letter in addition field", D("9411AB", 12, None, "A"), D("9411AB", 12, "A")),
    ("letter in addition field, hyphen", D("9411AB", 12, None, "-a"), D("9411AB", 12, "A")),
    ("letter and addition, space", D("7901 CD", 5, None, "A 2"), D("7901CD", 5, "A", "2")),
    ("letter and addition, hyphen", D("7901CD", 5, None, "a-2"), D("7901CD", 5, "A", "2")),
    ("letter and addition, slash", D("7901CD", 5, None, "A/2"), D("7901CD", 5, "A", "2")),
    ("letter and addition, joined", D("7901CD", 5, None, "A2"), D("7901CD", 5, "A", "2")),
    ("addition with leading hyphen", D("7901CD", 5, "A", "-2"), D("7901CD", 5, "a", "2")),
    ("addition padded", D("9402 EF", 40, None, " 2 "), D("9402EF", 40, None, "2")),
    ("addition leading zero", D("9402EF", 40, None, "02"), D("9402EF", 40, None, "2")),
    ("addition zero padded", D("9402EF", 40, "B", "0003"), D("9402EF", 40, "B", "3")),
    ("bis case and hyphen", D("9411AB", 12, None, "-bis"), D("9411AB", 12, None, "BIS")),
    ("bis with dots", D("9411AB", 12, None, "b.i.s."), D("9411AB", 12, None, "bis")),
    ("letter then bis", D("9411AB", 12, None, "A bis"), D("9411AB", 12, "A", "BIS")),
    ("huis spelled out", D("7741 GH", 88, None, "huis"), D("7741GH", 88, None, "hs")),
    ("hs with dots", D("7741GH", 88, None, "h.s."), D("7741GH", 88, None, "HS")),
    ("floor 1hg / 1 hoog", D("7741GH", 90, None, "1 hoog"), D("7741GH", 90, None, "1hg")),
    ("floor hyphen", D("7741GH", 90, None, "1-hoog"), D("7741GH", 90, None, "1HG")),
    ("floor ordinal e", D("7741GH", 90, None, "1e hoog"), D("7741GH", 90, None, "1hg")),
    ("floor ordinal ste", D("7741GH", 90, None, "1ste hoog"), D("7741GH", 90, None, "1 HG")),
    ("floor ordinal de", D("7741GH", 90, None, "2de hoog"), D("7741GH", 90, None, "2hg")),
    ("floor leading zero", D("7741GH", 90, None, "01hg"), D("7741GH", 90, None, "1hg")),
    ("letter then floor", D("7741GH", 90, None, "A 1 hoog"), D("7741GH", 90, "a", "1HG")),
    ("begane grond", D("7741GH", 92, None, "begane grond"), D("7741GH", 92, None, "bg")),
    ("empty addition", D("9401AB", 12, "", ""), D("9401AB", 12, None, None)),
    ("blank letter and addition", D("9401AB", 12, " ", " - "), D("9401AB", 12)),
]

# (id, a, b): two DIFFERENT dwellings; a shared key would merge two households.
MUST_NOT_MATCH = [
    ("other letter", D("9411AB", 12, "A"), D("9411AB", 12, "B")),
    ("other addition", D("9411AB", 12, None, "1"), D("9411AB", 12, None, "2")),
    ("other addition with letter", D("7901CD", 5, "A", "1"), D("7901CD", 5, "A", "2")),
    ("letter or none", D("9411AB", 12, "A"), D("9411AB", 12)),
    ("addition or none", D("9411AB", 12, None, "1"), D("9411AB", 12)),
    ("letter with or without addition", D("7901CD", 5, "A", "2"), D("7901CD", 5, "A")),
    ("other house number", D("9411AB", 12), D("9411AB", 14)),
    ("other postcode", D("9401AB", 12), D("9401AC", 12)),
    ("postcode digits swapped", D("9401AB", 12), D("9410AB", 12)),
    ("number and addition boundary", D("9411AB", 1, None, "2"), D("9411AB", 12)),
    ("number and addition boundary 2", D("9411AB", 12, None, "3"), D("9411AB", 123)),
    (
        "digits not joined over a separator",
        D("9402EF", 40, None, "2-1"),
        D("9402EF", 40, None, "21"),
    ),
    ("letter-addition order", D("7901CD", 5, "A", "2"), D("7901CD", 5, None, "2A")),
    ("letters swapped over fields", D("7901CD", 5, "A", "B"), D("7901CD", 5, "B", "A")),
    ("letter doubled in addition", D("7901CD", 5, "A", "A"), D("7901CD", 5, "A")),
    ("floor is not apartment number", D("7741GH", 90, None, "1hg"), D("7741GH", 90, None, "1")),
    ("other floor", D("7741GH", 90, None, "1hg"), D("7741GH", 90, None, "2hg")),
    ("roman is not arabic", D("7741GH", 90, None, "II"), D("7741GH", 90, None, "2")),
    ("roman is not floor", D("7741GH", 90, None, "I"), D("7741GH", 90, None, "1hg")),
    ("h is not hs", D("7741GH", 88, None, "h"), D("7741GH", 88, None, "hs")),
    ("bg is not hs", D("7741GH", 88, None, "bg"), D("7741GH", 88, None, "hs")),
    ("bis is not the number", D("9411AB", 12, None, "bis"), D("9411AB", 12)),
    ("bis is not letter b", D("9411AB", 12, None, "bis"), D("9411AB", 12, "B")),
]


def _params(rows: list[tuple[str, DwellingAddress, DwellingAddress]]) -> list[Any]:
    return [pytest.param(a, b, id=case) for case, a, b in rows]


@pytest.mark.parametrize(("a", "b"), _params(MUST_MATCH))
def test_spellings_of_one_dwelling_give_one_key(a: DwellingAddress, b: DwellingAddress) -> None:
    assert household_key(a, SECRET) == household_key(b, SECRET), (normalise(a), normalise(b))


@pytest.mark.parametrize(("a", "b"), _params(MUST_NOT_MATCH))
def test_different_dwellings_give_different_keys(a: DwellingAddress, b: DwellingAddress) -> None:
    assert household_key(a, SECRET) != household_key(b, SECRET), normalise(a)


def test_key_depends_on_the_regional_secret_and_hides_the_address() -> None:
    address = DwellingAddress("9411AB", 12)
    key = household_key(address, SECRET)
    assert key != household_key(address, "another-secret")
    assert "9411" not in key and len(key) == 64
    assert normalise(address) == "9411AB|12||"


def test_canonical_text_of_a_letter_given_in_the_addition_field() -> None:
    assert normalise(DwellingAddress("9411 ab", 12, None, "a-02")) == "9411AB|12|A|2"
    assert normalise(DwellingAddress("9411AB", 12, None, "1e hoog")) == "9411AB|12||1HG"
    # Only a single letter is a house letter; a longer run of letters stays the addition.
    assert normalise(DwellingAddress("9411AB", 12, None, "II-2")) == "9411AB|12||II2"


# --- properties -----------------------------------------------------------------------

SEPARATORS = st.sampled_from(["", " ", "-", "  ", " - "])


@st.composite
def bag_addresses(draw: st.DrawFn) -> DwellingAddress:
    """A valid address as the BAG writes it (PostNL postcode, letter, addition AN4)."""
    digits = draw(st.integers(min_value=1000, max_value=9999))
    letters = draw(st.text(string.ascii_uppercase, min_size=2, max_size=2))
    letter = draw(st.none() | st.sampled_from(string.ascii_uppercase))
    addition = draw(st.none() | st.from_regex(r"[A-Z0-9]{1,4}", fullmatch=True))
    number = draw(st.integers(min_value=1, max_value=99999))
    return DwellingAddress(f"{digits}{letters}", number, letter, addition)


def _recase(draw: st.DrawFn, text: str) -> str:
    return "".join(ch.lower() if draw(st.booleans()) else ch for ch in text)


def _respace(draw: st.DrawFn, text: str) -> str:
    """Separators around the text and between a letter and a digit, never inside a run of
    letters or of digits (there a separator means something)."""
    out = draw(SEPARATORS)
    for i, ch in enumerate(text):
        if i and ch.isdigit() != text[i - 1].isdigit():
            out += draw(SEPARATORS)
        out += ch
    return out + draw(SEPARATORS)


@st.composite
def spelled(draw: st.DrawFn, address: DwellingAddress) -> DwellingAddress:
    """The same dwelling as a partner might type it."""
    postcode = _respace(draw, _recase(draw, address.postcode))
    letter = address.huisletter
    addition = address.huisnummertoevoeging or ""
    # Partners without a letter field write the letter in front of the addition.
    if letter and (not addition or addition[0].isdigit()) and draw(st.booleans()):
        letter, addition = None, letter + addition
    return DwellingAddress(
        postcode,
        address.huisnummer,
        _respace(draw, _recase(draw, letter)) if letter else draw(st.sampled_from([None, ""])),
        _respace(draw, _recase(draw, addition)) if addition else None,
    )


@given(st.data(), bag_addresses())
def test_case_space_and_hyphen_perturbations_keep_the_key(
    data: st.DataObject, address: DwellingAddress
) -> None:
    variant = data.draw(spelled(address))
    assert household_key(variant, SECRET) == household_key(address, SECRET), (
        normalise(variant),
        normalise(address),
    )


@given(bag_addresses(), st.integers(min_value=1, max_value=99999), st.integers(0, 5))
def test_another_postcode_or_number_never_shares_the_key(
    address: DwellingAddress, number: int, position: int
) -> None:
    other_number = DwellingAddress(
        address.postcode, number, address.huisletter, address.huisnummertoevoeging
    )
    if number != address.huisnummer:
        assert household_key(other_number, SECRET) != household_key(address, SECRET)
    changed = list(address.postcode)
    changed[position] = next(c for c in ("12" if position < 4 else "YZ") if c != changed[position])
    other_postcode = DwellingAddress(
        "".join(changed), address.huisnummer, address.huisletter, address.huisnummertoevoeging
    )
    assert household_key(other_postcode, SECRET) != household_key(address, SECRET)


# --- street and place names (consistency check, never part of the key) ------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Brinkstraat", "BRINKSTRAAT"),
        ("Brinkstr.", "Brinkstraat"),
        ("Brink straat", "Brinkstraat"),
        ("Eikenln", "Eikenlaan"),
        ("Burg. de Vriesstraat", "Burgemeester De Vriesstraat"),
        ("Émmen", "Emmen"),
        ("Nieuw-Buinen", "Nieuw Buinen"),
        ("'t Haantje", "T HAANTJE"),
    ],
)
def test_spellings_of_one_name_are_the_same_place(a: str, b: str) -> None:
    assert same_place(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Brinkstraat", "Brinklaan"),
        ("Eext", "Exloo"),
        ("Nieuw-Buinen", "Buinen"),
        ("Stationsstraat", "Stationsplein"),
    ],
)
def test_different_names_are_not_the_same_place(a: str, b: str) -> None:
    assert not same_place(a, b)


def test_fold_name_ignores_case_diacritics_and_punctuation() -> None:
    assert fold_name("Kerkpad Zuidzijde") == fold_name("kérkpad-zuidzijde") == "KERKPADZUIDZIJDE"
    assert fold_name(None) == ""
