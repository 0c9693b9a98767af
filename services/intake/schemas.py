"""The partner API's request and response bodies (contract: partner-api.md)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from stdnum.exceptions import ValidationError as StdnumError
from stdnum.nl import bsn as bsn_rules
from stdnum.nl import postcode as postcode_rules

from services.intake.problems import Rule
from shared.events import EnergyKind, GemeenteCode, SignalKind

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


def _valid_bsn(value: str) -> str:
    if not bsn_rules.is_valid(value):
        raise Rule("Dit is geen geldig BSN: het voldoet niet aan de elfproef.")
    return value


def _valid_postcode(value: str) -> str:
    try:
        return str(postcode_rules.validate(value))
    except StdnumError:
        raise Rule("Dit is geen geldige Nederlandse postcode (zoals 9411 AB).") from None


Bsn = Annotated[str, StringConstraints(pattern=r"^\d{9}$"), AfterValidator(_valid_bsn)]
Postcode = Annotated[str, StringConstraints(max_length=7), AfterValidator(_valid_postcode)]


def has_invalid_characters(value: str) -> bool:
    """NUL and lone surrogates are text no database, file or answer can hold (PostgreSQL
    refuses NUL in text; UTF-8 has no surrogates): invalid input everywhere."""
    return "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value)


INVALID_CHARACTERS = Rule(
    "De tekst bevat een ongeldig teken (het NUL-teken of een losse surrogaat); "
    "stuur gewone tekst in UTF-8."
)


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    @field_validator("*", mode="before")
    @classmethod
    def no_invalid_characters(cls, value: object) -> object:
        if isinstance(value, str) and has_invalid_characters(value):
            raise INVALID_CHARACTERS
        return value


class CollectionProcess(ApiModel):
    """The four steps of the socially responsible collection process (Wgs MvT; convenant 2.1)."""

    herinnering_verstuurd_op: dt.date = Field(examples=["2026-10-01"])
    persoonlijk_contact_gezocht: bool = Field(examples=[True])
    gewezen_op_schuldhulp: bool = Field(examples=[True])
    aanbod_gegevens_doorgeven: bool = Field(examples=[True])


class Person(ApiModel):
    """The resident. The BSN is optional (health insurers have it, landlords do not)."""

    bsn: Bsn | None = Field(None, examples=["999990019"])
    voorletters: Annotated[str, StringConstraints(max_length=20)] | None = Field(
        None, examples=["J."]
    )
    voorvoegsel: Annotated[str, StringConstraints(max_length=20)] | None = Field(
        None, examples=["van der"]
    )
    achternaam: Text = Field(examples=["Berg"])
    geboortedatum: dt.date | None = Field(None, examples=["1980-05-17"])


class Address(ApiModel):
    """The dwelling; postcode and house number route the signal to its municipality."""

    straatnaam: Text = Field(examples=["Brinkstraat"])
    huisnummer: int = Field(ge=1, le=99999, examples=[12])
    huisletter: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]$")] | None = Field(
        None, examples=["A"]
    )
    # As partners' systems write it ("2", "A-2", "1 hoog", "bis"): the household key unifies
    # the spellings of one dwelling (shared/household.py, ADR 0006).
    huisnummertoevoeging: (
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ./\-]{0,15}$")] | None
    ) = Field(None, examples=["2"])
    postcode: Postcode = Field(examples=["9411 AB"])
    woonplaats: Text = Field(examples=["Beilen"])


class Contact(ApiModel):
    telefoonnummer: Annotated[str, StringConstraints(pattern=r"^\+?[0-9 \-]{8,20}$")] | None = (
        Field(None, examples=["0612345678"])
    )
    email: (
        Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
        | None
    ) = Field(None, examples=["j.berg@example.nl"])


class SignalIn(ApiModel):
    """One signal as a partner delivers it (a full example: docs/examples/signaal.json)."""

    partner_signaal_id: Annotated[
        str, StringConstraints(min_length=1, max_length=100, pattern=r"^[\w.\-/:]+$")
    ] = Field(examples=["WS-2026-000123"], description="Your own id; unique per partner.")
    soort: SignalKind = Field(examples=["Energie"])
    energiesoort: EnergyKind | None = Field(
        None, examples=["gas"], description="Required for soort Energie, refused otherwise."
    )
    signaaldatum: dt.date = Field(examples=["2026-11-02"])
    ontstaansdatum: dt.date | None = Field(None, examples=["2026-09-01"])
    achterstand_bedrag: Annotated[
        Decimal,
        Field(gt=0, max_digits=12, decimal_places=2),
        WithJsonSchema({"type": "string", "pattern": r"^\d{1,10}(\.\d{1,2})?$"}),
    ] = Field(
        examples=["734.50"], description="Euros as text, at most two decimals, greater than zero."
    )
    aantal_termijnen_achterstand: int | None = Field(None, ge=0, le=120, examples=[2])
    klantnummer: Annotated[str, StringConstraints(max_length=50)] | None = Field(
        None, examples=["K-99812"]
    )
    crisissignaal: bool = Field(False, examples=[False])
    warme_overdracht: bool = Field(False, examples=[False])
    incassotraject: CollectionProcess
    persoon: Person
    adres: Address
    contact: Contact | None = None
    gemeentecode: GemeenteCode | None = Field(
        None, description="Optional: derived from the address; refused when it contradicts it."
    )

    @model_validator(mode="after")
    def energy_kind_only_for_energy(self) -> SignalIn:
        if self.soort == "Energie" and self.energiesoort is None:
            raise Rule("energiesoort is verplicht bij soort Energie")
        if self.soort != "Energie" and self.energiesoort is not None:
            raise Rule("energiesoort mag alleen bij soort Energie")
        return self


ReceiptStatus = Literal["doorgestuurd", "niet-doorgestuurd", "ingetrokken"]


class Receipt(ApiModel):
    """What the partner gets back for one signal."""

    id: UUID
    partner_signaal_id: str
    ontvangen_op: dt.datetime
    status: ReceiptStatus
    reden: str | None = None


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int


class DeliveryReceipt(ApiModel):
    """What the partner gets back at once for a delivery."""

    id: UUID
    status: str
    aantal: int
    ontvangen_op: dt.datetime


class DeliveryLineResult(ApiModel):
    regel: int
    partner_signaal_id: str | None = None
    status: Literal["doorgestuurd", "niet-doorgestuurd", "geweigerd"]
    ontvangstbevestiging: Receipt | None = None
    fouten: list[dict[str, str]] | None = None


class DeliveryStatus(ApiModel):
    """A delivery's progress and each signal's receipt or errors."""

    id: UUID
    status: Literal["ontvangen", "in-verwerking", "verwerkt"]
    ontvangen_op: dt.datetime
    afgerond_op: dt.datetime | None = None
    aantal: int
    aantal_verwerkt: int
    aantal_doorgestuurd: int
    aantal_niet_doorgestuurd: int
    aantal_geweigerd: int
    signalen: list[DeliveryLineResult] = Field(
        description="The processed lines after `vanaf`, in line order, at most `aantal`."
    )
    volgende: int | None = Field(
        None,
        description="Ask again with vanaf=<volgende> for the next lines; null when this page "
        "holds the last processed line.",
    )


class FeedbackItem(ApiModel):
    """What the municipality tells a partner about one of its signals."""

    volgnummer: int = Field(description="Cursor: ask again with vanaf=<volgnummer>.")
    signaal_id: UUID
    partner_signaal_id: str
    status: Literal["in-behandeling", "niet-doorgestuurd", "ingetrokken"]
    toelichting: str
    verstuurd_op: dt.datetime


class FeedbackPage(ApiModel):
    terugkoppelingen: list[FeedbackItem]
    volgende: int | None = Field(
        None, description="The cursor for the next page; null when there is nothing newer yet."
    )
