"""The pseudonymous household key: a keyed hash of the normalised address.

Matching, partitioning and the blacklist work on this key only, so no service but the
ones that contact a resident ever needs a readable address.

What identifies a dwelling
--------------------------
The key is built from postcode, house number, house letter and house-number addition
only. Street and place names are left out on purpose: a postcode with a house number
(and letter and addition, where the dwelling has them) is unique in the Netherlands,
so a differently spelled street or place must never split one household over two keys.
`same_place` compares street or place names for a consistency check beside the key.

Sources for the rules below:

- Catalogus Basisregistraties Adressen en Gebouwen (BAG catalogue, Ministerie van VROM,
  2009; attribute numbers as there, the later Catalogus BAG 2018 keeps the meaning),
  object Nummeraanduiding:
  *huisnummer* (11.20) is a whole number 1-99999; *huisletter* (11.30) is a single
  character added to the house number by the municipality; *huisnummertoevoeging*
  (11.40) is a further addition of at most four letters or digits to the house number
  or to number plus letter; *postcode* (11.60) is the code PostNL gives to a combination
  of street and house number. Letter and addition are letters and digits only, so a
  space, hyphen or slash in partner data is notation, not part of the address.
- PostNL postcode format: four digits (the first not 0) and two capital letters, written
  with one space ("9411 AB"); with the house number (and letter and addition) it
  identifies one delivery address.

Rules (decision record: docs/adr/0006-household-key.md)
--------------------------------------------------------
Unified, because they are spellings of one BAG value:

1. Case, diacritics, surrounding spaces and separators (space, hyphen, slash, dot,
   underscore, ...) in postcode, letter and addition. In the addition a separator only
   matters between two runs of digits or two runs of letters ("2-1" is not "21"), never
   between a letter and a digit ("A2", "A-2", "A 2" are one value).
2. A single letter at the start of the addition field while the letter field is empty is
   the house letter: partners without a letter field put it there ("12", "A" or "12",
   "a-2" for 12A and 12A-2).
3. Leading zeros in a run of digits ("02" is "2"): spreadsheets drop them, so the same
   dwelling arrives both ways.
4. Spelled-out and abbreviated forms of the same word: "huis"/"hs", "begane grond"/"bg"
   and floor markings "1 hoog"/"1-hoog"/"1e hoog"/"1ste hoog"/"1hg". "bis" in any case
   or punctuation ("b.i.s.") stays "BIS".

Deliberately not unified, because they may be different dwellings:

- A floor marking and a bare number ("1hg" and "1"): in many municipalities "12-1" is
  apartment 1, not the first floor.
- Roman and Arabic numerals ("II" and "2"): "I" is also a valid house letter, and a
  Roman numeral gives no certainty about the floor either.
- "h" (Amsterdam-style "huis" addition) and "hs"/"huis": a one-letter addition is read
  as the house letter H (rule 2), and merging the two would join 12H with 12-hs.
- "bg" and "hs", though both often mean the ground floor: different words, possibly
  different dwellings.
- A letter repeated in both fields (letter "A", addition "A-2"): kept as written.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from dataclasses import dataclass
from itertools import pairwise


@dataclass(frozen=True)
class DwellingAddress:
    """The parts of an address that identify one dwelling."""

    postcode: str
    huisnummer: int
    huisletter: str | None = None
    huisnummertoevoeging: str | None = None


def _ascii_upper(text: str | None) -> str:
    """Upper case without diacritics; compatibility forms (no-break space, full-width
    digits) become their plain equivalents."""
    decomposed = unicodedata.normalize("NFKD", text or "")
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).upper()


def _runs(text: str | None) -> list[str]:
    """Maximal runs of letters or of digits; everything else is a separator."""
    return re.findall(r"[A-Z]+|[0-9]+", _ascii_upper(text))


def _fold(text: str | None) -> str:
    """Upper case, no diacritics, only letters and digits."""
    return "".join(_runs(text))


# Spellings of one addition word (rule 4), compared with separators removed.
_WORDS = {"HS": "HS", "HUIS": "HS", "BG": "BG", "BEGANEGROND": "BG", "BIS": "BIS"}
# "1hg", "1 hoog", "1e hoog", "1ste hoog", "2de hoog" (runs joined with one space).
_FLOOR = re.compile(r"([0-9]+) (?:(?:E|DE|STE) ?)?(?:HOOG|HG)")


def _addition(runs: list[str]) -> str:
    """The canonical text of an addition given as runs of letters or digits."""
    if not runs:
        return ""
    if all(run.isalpha() for run in runs) and "".join(runs) in _WORDS:
        return _WORDS["".join(runs)]
    floor = _FLOOR.fullmatch(" ".join(runs))
    if floor:
        return f"{int(floor.group(1))}HG"
    runs = [str(int(run)) if run.isdigit() else run for run in runs]
    text = runs[0]
    for before, run in pairwise(runs):
        # Keep a separator only where dropping it would join two runs of one kind.
        text += ("-" if before.isdigit() == run.isdigit() else "") + run
    return text


def _letter_and_addition(address: DwellingAddress) -> tuple[str, str]:
    letter = _fold(address.huisletter)
    runs = _runs(address.huisnummertoevoeging)
    if letter or not runs:
        return letter, _addition(runs)
    whole = _addition(runs)
    if whole in _WORDS.values():
        return "", whole  # "h.s." is the word "hs", not letter H with addition S
    if len(runs[0]) == 1 and runs[0].isalpha():
        return runs[0], _addition(runs[1:])
    return "", whole


def normalise(address: DwellingAddress) -> str:
    """A canonical text for one dwelling; equal for spellings of the same dwelling."""
    postcode = _fold(address.postcode)
    letter, addition = _letter_and_addition(address)
    return f"{postcode}|{address.huisnummer}|{letter}|{addition}"


def household_key(address: DwellingAddress, secret: str) -> str:
    """HMAC-SHA256 of the normalised address under the regional secret, hex encoded."""
    return hmac.new(secret.encode(), normalise(address).encode(), hashlib.sha256).hexdigest()


# Abbreviations at the end of a word in street names, as in "Hoofdstr." or "Stationsln".
_NAME_SUFFIXES = (("STR", "STRAAT"), ("LN", "LAAN"))
_NAME_WORDS = {"BURG": "BURGEMEESTER"}


def fold_name(name: str | None) -> str:
    """A street or place name for comparison: no case, diacritics, spaces or punctuation,
    and the abbreviations "str." (straat), "ln." (laan) and "burg." (burgemeester)
    written out. Never part of the household key."""
    words = []
    for word in _runs(name):
        word = _NAME_WORDS.get(word, word)
        for short, full in _NAME_SUFFIXES:
            if word.endswith(short):
                word = word[: -len(short)] + full
                break
        words.append(word)
    return "".join(words)


def same_place(a: str | None, b: str | None) -> bool:
    """Whether two spellings name the same street or place (see `fold_name`)."""
    return fold_name(a) == fold_name(b)
