"""The region's address table from the CBS file 'buurt, wijk en gemeente bij postcode en
huisnummer' (one row per postcode and house number, with the municipality's code)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import TextIO


class UnreadableAddressFile(ValueError):
    pass


def _column(names: list[str], *candidates: str, prefix: str | None = None) -> int:
    lowered = [name.strip().strip('"').lower() for name in names]
    for candidate in candidates:
        if candidate in lowered:
            return lowered.index(candidate)
    if prefix is not None:
        for index, name in enumerate(lowered):
            if name.startswith(prefix):
                return index
    raise UnreadableAddressFile(f"column {'/'.join(candidates)} not found in {names}")


def municipality_code(value: str) -> str:
    """CBS writes the municipality as a number (1731) or as a code (GM1731)."""
    value = value.strip().strip('"').upper()
    digits = value.removeprefix("GM")
    if not digits.isdigit():
        raise UnreadableAddressFile(f"not a municipality code: {value!r}")
    return f"GM{int(digits):04d}"


def read_cbs_rows(handle: TextIO, region: Iterable[str]) -> Iterator[tuple[str, int, str]]:
    """(postcode, house number, municipality) for the addresses in the region."""
    wanted = set(region)
    sample = handle.read(4096)
    handle.seek(0)
    delimiter = ";" if sample.count(";") >= sample.count(",") else ","
    reader = csv.reader(handle, delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise UnreadableAddressFile("empty file")
    postcode_at = _column(header, "pc6", "postcode")
    number_at = _column(header, "huisnummer", "huisnr")
    municipality_at = _column(header, "gemeentecode", "gemeente", prefix="gemeente")
    for row in reader:
        if not row:
            continue
        code = municipality_code(row[municipality_at])
        if code in wanted:
            yield row[postcode_at].replace(" ", "").upper(), int(row[number_at]), code


def cbs_csv(rows: Iterable[tuple[str, int, str]]) -> str:
    """Rows written in the CBS file's layout (used for the demo table)."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\n")
    writer.writerow(["PC6", "Huisnummer", "Buurt2024", "Wijk2024", "Gemeente2024"])
    for postcode, number, code in rows:
        digits = code.removeprefix("GM")
        writer.writerow([postcode, number, f"{digits}0000", f"{digits}00", int(digits)])
    return out.getvalue()
