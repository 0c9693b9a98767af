"""Intake's pure rules: which signals may be accepted."""

from __future__ import annotations

import datetime as dt
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from services.intake.schemas import Person, SignalIn


@dataclass(frozen=True)
class Violation:
    """One broken rule: the field (JSON path in camelCase) and the rule, in Dutch."""

    name: str
    reason: str


def check_signal(signal: SignalIn, today: dt.date) -> list[Violation]:
    """Rules beyond the field formats; an empty list means the signal may be accepted."""
    violations: list[Violation] = []
    if signal.signaaldatum > today:
        violations.append(
            Violation("signaaldatum", "De signaaldatum mag niet in de toekomst liggen.")
        )
    if signal.ontstaansdatum is not None:
        if signal.ontstaansdatum > today:
            violations.append(
                Violation("ontstaansdatum", "De ontstaansdatum mag niet in de toekomst liggen.")
            )
        if signal.ontstaansdatum > signal.signaaldatum:
            violations.append(
                Violation("ontstaansdatum", "De ontstaansdatum mag niet na de signaaldatum liggen.")
            )
    if signal.persoon.geboortedatum is not None and signal.persoon.geboortedatum > today:
        violations.append(
            Violation("persoon.geboortedatum", "De geboortedatum mag niet in de toekomst liggen.")
        )
    if signal.incassotraject.herinnering_verstuurd_op > today:
        violations.append(
            Violation(
                "incassotraject.herinneringVerstuurdOp",
                "De datum van de betalingsherinnering mag niet in de toekomst liggen.",
            )
        )
    violations.extend(check_collection_process(signal))
    return violations


def check_collection_process(signal: SignalIn) -> list[Violation]:
    """A creditor may only report after all four steps of the socially responsible
    collection process (Wgs, MvT; Landelijk Convenant Vroegsignalering §2.1)."""
    process = signal.incassotraject
    steps = {
        "persoonlijkContactGezocht": process.persoonlijk_contact_gezocht,
        "gewezenOpSchuldhulp": process.gewezen_op_schuldhulp,
        "aanbodGegevensDoorgeven": process.aanbod_gegevens_doorgeven,
    }
    violations = [
        Violation(
            f"incassotraject.{name}",
            "Deze stap van het maatschappelijk verantwoord incassotraject moet gezet zijn "
            "voordat u een signaal doorgeeft.",
        )
        for name, done in steps.items()
        if not done
    ]
    if process.herinnering_verstuurd_op > signal.signaaldatum:
        violations.append(
            Violation(
                "incassotraject.herinneringVerstuurdOp",
                "De betalingsherinnering moet vóór de signaaldatum verstuurd zijn.",
            )
        )
    return violations


def route(
    claimed: str | None, address_municipality: str | None, region: frozenset[str]
) -> str | Violation:
    """The municipality a signal goes to: the one the address lies in, never a guess.

    A `gemeentecode` the partner gives must agree with the address (partner-api.md).
    """
    if address_municipality is None or address_municipality not in region:
        return Violation(
            "adres",
            "Dit adres (postcode en huisnummer) ligt niet in een gemeente van deze regio of is "
            "onbekend; het signaal is niet aangenomen.",
        )
    if claimed is not None and claimed != address_municipality:
        return Violation(
            "gemeentecode",
            f"De gemeentecode past niet bij het adres: dit adres ligt in {address_municipality}.",
        )
    return address_municipality


Verdict = Literal["doorgestuurd", "niet-doorgestuurd"]

# What a partner may know about a signal that was not forwarded: never why (national
# practice, handbook domain.md 'Feedback to partners').
NOT_FORWARDED_REASON = (
    "De gemeente pakt signalen voor dit adres op dit moment niet op. Het signaal is "
    "ontvangen en bewaard, maar niet doorgestuurd."
)


def door_verdict(
    blacklisted: bool, arrears: Decimal, last_blocked_arrears: Decimal | None
) -> Verdict:
    """Whether a signal is forwarded to the municipality.

    A blacklisted household's signals are stopped (policy plan, annex 1: refusing
    cooperation puts the address on the blacklist), except that a signal whose arrears
    rose above the last stopped signal of the same creditor is always forwarded (national
    practice: 'Niet opgepakt: herhaalde melding' only while the arrears did not rise).
    """
    if not blacklisted:
        return "doorgestuurd"
    if last_blocked_arrears is not None and arrears > last_blocked_arrears:
        return "doorgestuurd"
    return "niet-doorgestuurd"


def _fold(text: str | None) -> str:
    decomposed = unicodedata.normalize("NFKD", text or "")
    return "".join(c for c in decomposed if c.isalnum() and not unicodedata.combining(c)).upper()


def person_identity(person: Person, household_key: str) -> str:
    """What identifies a person for their data key: the BSN where the partner has it,
    else surname and birth date within the household."""
    if person.bsn:
        return f"bsn|{person.bsn}"
    born = person.geboortedatum.isoformat() if person.geboortedatum else ""
    return f"naam|{household_key}|{_fold(person.voorvoegsel)}{_fold(person.achternaam)}|{born}"
