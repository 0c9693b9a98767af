"""Intake's pure rules: which signals may be accepted."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from services.intake.schemas import SignalIn


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
