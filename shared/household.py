"""The pseudonymous household key: a keyed hash of the normalised address.

Matching, partitioning and the blacklist work on this key only, so no service but the
ones that contact a resident ever needs a readable address.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class DwellingAddress:
    """The parts of an address that identify one dwelling."""

    postcode: str
    huisnummer: int
    huisletter: str | None = None
    huisnummertoevoeging: str | None = None


def _fold(text: str | None) -> str:
    """Upper case, no diacritics, only letters and digits."""
    if not text:
        return ""
    decomposed = unicodedata.normalize("NFKD", text)
    ascii_only = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return re.sub(r"[^0-9A-Z]", "", ascii_only.upper())


def normalise(address: DwellingAddress) -> str:
    """A canonical text for one dwelling; equal for spellings of the same dwelling."""
    postcode = _fold(address.postcode)
    letter = _fold(address.huisletter)
    addition = _fold(address.huisnummertoevoeging)
    return f"{postcode}|{address.huisnummer}|{letter}|{addition}"


def household_key(address: DwellingAddress, secret: str) -> str:
    """HMAC-SHA256 of the normalised address under the regional secret, hex encoded."""
    return hmac.new(secret.encode(), normalise(address).encode(), hashlib.sha256).hexdigest()
