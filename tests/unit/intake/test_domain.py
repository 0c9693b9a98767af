import datetime as dt

import pytest
from pydantic import ValidationError

from services.intake.domain import check_signal
from services.intake.schemas import SignalIn
from vroeg.demo import households, signal_body

TODAY = dt.date(2026, 11, 27)


def body(**changes: object) -> dict:
    import random

    home = households(1, random.Random(1))[0]
    data = signal_body(
        home,
        partner_signaal_id="T-1",
        soort="Huur",
        amount="734.50",
        signaaldatum=dt.date(2026, 11, 2),
    )
    data.update(changes)
    return data


def test_a_complete_signal_breaks_no_rule() -> None:
    assert check_signal(SignalIn.model_validate(body()), TODAY) == []


def test_signal_date_in_the_future_is_refused() -> None:
    violations = check_signal(SignalIn.model_validate(body(signaaldatum="2026-12-01")), TODAY)
    assert [v.name for v in violations] == ["signaaldatum"]


def test_arrears_cannot_start_after_the_signal() -> None:
    violations = check_signal(SignalIn.model_validate(body(ontstaansdatum="2026-11-03")), TODAY)
    assert [v.name for v in violations] == ["ontstaansdatum"]


@pytest.mark.parametrize(
    "step", ["persoonlijkContactGezocht", "gewezenOpSchuldhulp", "aanbodGegevensDoorgeven"]
)
def test_every_step_of_the_collection_process_is_required(step: str) -> None:
    data = body()
    data["incassotraject"] = {**data["incassotraject"], step: False}
    violations = check_signal(SignalIn.model_validate(data), TODAY)
    assert [v.name for v in violations] == [f"incassotraject.{step}"]
    assert "incassotraject" in violations[0].reason


def test_energy_kind_is_required_for_energy_and_refused_otherwise() -> None:
    with pytest.raises(ValidationError, match="energiesoort is verplicht"):
        SignalIn.model_validate(body(soort="Energie"))
    with pytest.raises(ValidationError, match="energiesoort mag alleen"):
        SignalIn.model_validate(body(energiesoort="gas"))


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"extra_forbidden|Extra inputs"):
        SignalIn.model_validate(body(achterstandbedrag="1.00"))
