import pytest

from shared.household import DwellingAddress, household_key, normalise

SECRET = "test-secret"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (DwellingAddress("9411 AB", 12, "A", "2"), DwellingAddress("9411ab", 12, "a", "2")),
        (DwellingAddress("9411AB", 12, None, "bis"), DwellingAddress(" 9411 ab ", 12, None, "BIS")),
        (
            DwellingAddress("9411AB", 12, None, "2-hoog"),
            DwellingAddress("9411AB", 12, None, "2 HOOG"),
        ),
    ],
)
def test_spellings_of_one_dwelling_give_one_key(a: DwellingAddress, b: DwellingAddress) -> None:
    assert household_key(a, SECRET) == household_key(b, SECRET)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (DwellingAddress("9411AB", 12, None, "1"), DwellingAddress("9411AB", 12, None, "2")),
        (DwellingAddress("9411AB", 12, "A", None), DwellingAddress("9411AB", 12, None, None)),
        (DwellingAddress("9411AB", 12), DwellingAddress("9411AB", 14)),
    ],
)
def test_different_dwellings_give_different_keys(a: DwellingAddress, b: DwellingAddress) -> None:
    assert household_key(a, SECRET) != household_key(b, SECRET)


def test_key_depends_on_the_regional_secret_and_hides_the_address() -> None:
    address = DwellingAddress("9411AB", 12)
    key = household_key(address, SECRET)
    assert key != household_key(address, "another-secret")
    assert "9411" not in key and len(key) == 64
    assert normalise(address) == "9411AB|12||"
