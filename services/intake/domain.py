"""Intake's pure rules: which signals may be accepted."""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from services.intake.schemas import Person, SignalIn


@dataclass(frozen=True)
class Violation:
    """One broken rule: the field (JSON path in camelCase) and the rule, in Dutch."""

    name: str
    reason: str
    code: str = "regel"


# The code of a refusal for a kind of arrears the partner is not registered for (403).
NOT_REGISTERED = "niet-aangemeld"


def check_kind(soort: str, registered: Sequence[str]) -> Violation | None:
    """A partner reports only the kinds of arrears it is registered for (its agreement:
    Landelijk Convenant Vroegsignalering, each creditor signals its own arrears; a water
    company no rent)."""
    if soort in registered:
        return None
    return Violation(
        "soort",
        f"U bent niet aangemeld voor signalen van soort {soort}; u mag signalen melden van "
        f"soort {', '.join(registered) or '(geen)'}.",
        NOT_REGISTERED,
    )


def conflict_violations(fields: Sequence[str], signal_id: str) -> list[Violation]:
    """A partnerSignaalId delivered before with other content: name each field that
    differs (never its value); the stored signal stays as it was."""
    return [
        Violation(
            name,
            "Dit veld verschilt van het signaal dat u eerder met dit partnerSignaalId leverde; "
            "het opgeslagen signaal is niet gewijzigd. Wilt u corrigeren: trek het signaal in "
            f"(DELETE /api/v1/signalen/{signal_id}) en lever het opnieuw met een nieuw "
            "partnerSignaalId.",
            "afwijkend",
        )
        for name in fields
    ]


def duplicate_line(fields: Sequence[str], first_line: int | None = None) -> Violation:
    """A partnerSignaalId twice in one delivery: the later line is refused."""
    where = f" (regel {first_line})" if first_line is not None else ""
    differs = f" en verschilt daarvan in {', '.join(fields)}" if fields else ""
    return Violation(
        "partnerSignaalId",
        f"Dit partnerSignaalId staat al op een eerdere regel van deze levering{where}"
        f"{differs}; deze regel is niet aangenomen.",
        "dubbel",
    )


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


# What a partner is told of a signal it withdrew (receipt and feed): no more than that
# (partner-api.md: the feed tells what happened to each of the partner's own signals).
WITHDRAWN_REASON = "U heeft dit signaal ingetrokken; de gemeente neemt het niet meer mee."


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
