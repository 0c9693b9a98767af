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
    model_validator,
)
from pydantic.alias_generators import to_camel
from stdnum.exceptions import ValidationError as StdnumError
from stdnum.nl import bsn as bsn_rules
from stdnum.nl import postcode as postcode_rules

from shared.events import EnergyKind, GemeenteCode, SignalKind

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


def _valid_bsn(value: str) -> str:
    if not bsn_rules.is_valid(value):
        raise ValueError("Dit is geen geldig BSN: het voldoet niet aan de elfproef.")
    return value


def _valid_postcode(value: str) -> str:
    try:
        return str(postcode_rules.validate(value))
    except StdnumError:
        raise ValueError("Dit is geen geldige Nederlandse postcode (zoals 9411 AB).") from None


Bsn = Annotated[str, StringConstraints(pattern=r"^\d{9}$"), AfterValidator(_valid_bsn)]
Postcode = Annotated[str, StringConstraints(max_length=7), AfterValidator(_valid_postcode)]


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class CollectionProcess(ApiModel):
    """The four steps of the socially responsible collection process (Wgs MvT; convenant 2.1)."""

    herinnering_verstuurd_op: dt.date
    persoonlijk_contact_gezocht: bool
    gewezen_op_schuldhulp: bool
    aanbod_gegevens_doorgeven: bool


class Person(ApiModel):
    bsn: Bsn | None = None
    voorletters: Annotated[str, StringConstraints(max_length=20)] | None = None
    voorvoegsel: Annotated[str, StringConstraints(max_length=20)] | None = None
    achternaam: Text
    geboortedatum: dt.date | None = None


class Address(ApiModel):
    straatnaam: Text
    huisnummer: int = Field(ge=1, le=99999)
    huisletter: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]$")] | None = None
    huisnummertoevoeging: (
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]{1,4}$")] | None
    ) = None
    postcode: Postcode
    woonplaats: Text


class Contact(ApiModel):
    telefoonnummer: Annotated[str, StringConstraints(pattern=r"^\+?[0-9 \-]{8,20}$")] | None = None
    email: (
        Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
        | None
    ) = None


class SignalIn(ApiModel):
    """One signal as a partner delivers it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "partnerSignaalId": "WS-2026-000123",
                    "soort": "Energie",
                    "energiesoort": "gas",
                    "signaaldatum": "2026-11-02",
                    "ontstaansdatum": "2026-09-01",
                    "achterstandBedrag": "734.50",
                    "aantalTermijnenAchterstand": 2,
                    "klantnummer": "K-99812",
                    "crisissignaal": False,
                    "warmeOverdracht": False,
                    "incassotraject": {
                        "herinneringVerstuurdOp": "2026-10-01",
                        "persoonlijkContactGezocht": True,
                        "gewezenOpSchuldhulp": True,
                        "aanbodGegevensDoorgeven": True,
                    },
                    "persoon": {
                        "bsn": "999990019",
                        "voorletters": "J.",
                        "voorvoegsel": "van der",
                        "achternaam": "Berg",
                        "geboortedatum": "1980-05-17",
                    },
                    "adres": {
                        "straatnaam": "Brinkstraat",
                        "huisnummer": 12,
                        "huisletter": "A",
                        "huisnummertoevoeging": "2",
                        "postcode": "9411 AB",
                        "woonplaats": "Beilen",
                    },
                    "contact": {"telefoonnummer": "0612345678", "email": "j.berg@example.nl"},
                    "gemeentecode": "GM1731",
                }
            ]
        }
    )

    partner_signaal_id: Annotated[
        str, StringConstraints(min_length=1, max_length=100, pattern=r"^[\w.\-/:]+$")
    ]
    soort: SignalKind
    energiesoort: EnergyKind | None = None
    signaaldatum: dt.date
    ontstaansdatum: dt.date | None = None
    achterstand_bedrag: Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=2)]
    aantal_termijnen_achterstand: int | None = Field(None, ge=0, le=120)
    klantnummer: Annotated[str, StringConstraints(max_length=50)] | None = None
    crisissignaal: bool = False
    warme_overdracht: bool = False
    incassotraject: CollectionProcess
    persoon: Person
    adres: Address
    contact: Contact | None = None
    gemeentecode: GemeenteCode | None = None

    @model_validator(mode="after")
    def energy_kind_only_for_energy(self) -> SignalIn:
        if self.soort == "Energie" and self.energiesoort is None:
            raise ValueError("energiesoort is verplicht bij soort Energie")
        if self.soort != "Energie" and self.energiesoort is not None:
            raise ValueError("energiesoort mag alleen bij soort Energie")
        return self


ReceiptStatus = Literal["doorgestuurd", "niet-doorgestuurd"]


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
    signalen: list[DeliveryLineResult]
