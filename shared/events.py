"""Event contracts between the services, and the one registry of topics.

Every event is a versioned, immutable pydantic model. The Kafka key of every event is
the pseudonymous household key, so all events of one household land on one partition
in order. Trace context rides in Kafka headers, never in the payload.

Events carry no readable personal data: no names, addresses, BSNs or contact details.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

GemeenteCode = Annotated[str, Field(pattern=r"^GM\d{4}$", examples=["GM1731"])]
HouseholdKey = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Amount = Annotated[Decimal, Field(max_digits=12, decimal_places=2)]
Sealed = Annotated[
    str, Field(pattern=r"^v1\.[A-Za-z0-9_\-=]+$", description="shared.crypto sealed text")
]

SignalKind = Literal[
    "Energie",
    "Huur",
    "Hypotheek",
    "CAK Zorgverzekeringen",
    "Zorg",
    "Water",
    "DUO",
    "Belastingdienst",
    "CAK Eigen bijdrage",
    "Dienst Toeslagen",
    "Overige",
]
EnergyKind = Literal["elektriciteit", "gas", "warmte"]
MatchKind = Literal["enkelvoudig", "meervoudig", "opeenvolgend"]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Event(BaseModel):
    """Fields every event carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: UUID = Field(default_factory=uuid4)
    schema_version: Literal[1] = 1
    occurred_at: dt.datetime = Field(default_factory=utc_now)
    gemeentecode: GemeenteCode
    household_key: HouseholdKey


class SignalReceived(Event):
    """Intake accepted a partner's signal and forwards it to matching."""

    event_type: Literal["SignalReceived"] = "SignalReceived"
    signal_id: UUID
    partner_id: UUID
    partner_naam: str
    creditor_id: UUID = Field(
        description="The creditor organisation. Electricity and gas of one supplier share it."
    )
    partner_signaal_id: str
    soort: SignalKind
    energiesoort: EnergyKind | None = None
    signaaldatum: dt.date
    ontstaansdatum: dt.date | None = None
    achterstand_bedrag: Amount
    ontvangen_op: dt.datetime
    subject_id: UUID = Field(description="Pseudonymous id of the person; names their data key.")
    persoonsgegevens: Sealed = Field(
        description="Name, address, BSN, birth date, contact, customer number: sealed with "
        "the person's data key (shared.crypto); unreadable once that key is destroyed."
    )


BlockReason = Literal["uitsluitingslijst"]


class SignalBlocked(Event):
    """Intake did not forward a signal (the address is on the blacklist); feedback tells
    the partner only that it was not forwarded."""

    event_type: Literal["SignalBlocked"] = "SignalBlocked"
    signal_id: UUID
    partner_id: UUID
    partner_signaal_id: str
    reden: BlockReason
    ontvangen_op: dt.datetime


BlacklistAction = Literal["toegevoegd", "verwijderd"]
BlacklistReason = Literal["weigert-medewerking", "onveilig-contact", "overig"]


class BlacklistChanged(Event):
    """Outreach (or an administrator) put a household on the blacklist or took it off."""

    event_type: Literal["BlacklistChanged"] = "BlacklistChanged"
    entry_id: UUID
    actie: BlacklistAction
    reden: BlacklistReason
    begin: dt.date
    einde: dt.date


class SignalWithdrawn(Event):
    """A partner withdrew one of its signals (paid before the municipality acted, or sent
    in error); matching recomputes the signal's match without it."""

    event_type: Literal["SignalWithdrawn"] = "SignalWithdrawn"
    signal_id: UUID
    partner_id: UUID
    partner_signaal_id: str
    ingetrokken_op: dt.datetime


class MatchedSignal(BaseModel):
    """One signal as it stands inside a match."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    signal_id: UUID
    partner_id: UUID
    partner_naam: str
    creditor_id: UUID
    partner_signaal_id: str
    soort: SignalKind
    energiesoort: EnergyKind | None = None
    signaaldatum: dt.date
    achterstand_bedrag: Amount


class _MatchState(Event):
    """The whole current state of a match: consumers keep the highest version they saw."""

    match_id: UUID
    version: int = Field(ge=1)
    soort: MatchKind
    aantal_schuldeisers: int = Field(ge=0, description="0 once every signal was withdrawn.")
    totaal_achterstand: Amount
    doorgestuurd_op: dt.datetime = Field(
        description="Forwarded to case handling: the clock starts."
    )
    regel: str = Field(description="Which rule made the match what it is, in plain Dutch.")
    uitleg: dict[str, Any] = Field(
        default_factory=dict,
        description="Why, for the caseworker and the audit: the rule and its source, the "
        "signals it counted (ids only), the month or earlier months that decided it.",
    )
    signalen: tuple[MatchedSignal, ...] = Field(
        description="The match's signals, bounded (services.matching.domain.MAX_EVENT_SIGNALS): "
        "always the ones the totals count (the latest per creditor), then the newest others."
    )
    aantal_signalen: int = Field(
        0, ge=0, description="How many signals the match holds, withdrawn ones not counted."
    )
    ingetrokken: tuple[UUID, ...] = Field(
        (), description="Signals of the match that their partner withdrew (ids only)."
    )


class MatchCreated(_MatchState):
    """Matching forwarded a new match (or single signal) to case handling."""

    event_type: Literal["MatchCreated"] = "MatchCreated"


class MatchUpdated(_MatchState):
    """A forwarded match gained a signal; its kind and totals were recomputed."""

    event_type: Literal["MatchUpdated"] = "MatchUpdated"


class CaseSignalRef(BaseModel):
    """Which partner signal a case answers: what feedback needs to tell the partner."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    signal_id: UUID
    partner_id: UUID
    partner_signaal_id: str


class OutreachDue(Event):
    """Outreach opened (or extended) a case; the help offer is due by `termijn`."""

    event_type: Literal["OutreachDue"] = "OutreachDue"
    case_id: UUID
    match_id: UUID
    doorgestuurd_op: dt.datetime
    termijn: dt.date
    signalen: tuple[CaseSignalRef, ...]


FeedbackStatus = Literal["in-behandeling", "niet-doorgestuurd"]


class FeedbackSent(Event):
    """Feedback told a partner what happened to one of its signals (terugkoppeling).

    Only what the partner may know: never why a signal was not picked up. More statuses
    (help accepted, not picked up) come with outreach's outcomes.
    """

    event_type: Literal["FeedbackSent"] = "FeedbackSent"
    signal_id: UUID
    partner_id: UUID
    partner_signaal_id: str
    status: FeedbackStatus
    toelichting: str


AnyEvent = Annotated[
    SignalReceived
    | SignalBlocked
    | SignalWithdrawn
    | BlacklistChanged
    | MatchCreated
    | MatchUpdated
    | OutreachDue
    | FeedbackSent,
    Field(discriminator="event_type"),
]
_EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


def decode_event(payload: bytes) -> AnyEvent:
    """Parse an event from its JSON bytes; raises pydantic.ValidationError on bad input."""
    return _EVENT_ADAPTER.validate_json(payload)


def encode_event(event: Event) -> bytes:
    return event.model_dump_json().encode()


class ForeignEventType(TypeError):
    """An event staged on, or received from, a topic it does not belong to."""


@dataclass(frozen=True)
class Topic:
    """A topic and the event types that belong on it: the registry is the contract."""

    name: str
    events: tuple[type[Event], ...]
    purpose: str

    @property
    def event_types(self) -> frozenset[str]:
        """The `event_type` names that belong on this topic."""
        return frozenset(event.model_fields["event_type"].default for event in self.events)

    def accepts(self, event: Event) -> bool:
        return type(event) in self.events

    def check(self, event: Event) -> str:
        """This topic's name, once `event` is found to belong on it; staging a foreign type
        is a programming error and raises at once."""
        if not self.accepts(event):
            raise ForeignEventType(
                f"{type(event).__name__} does not belong on topic {self.name} "
                f"(expected {', '.join(sorted(self.event_types)) or 'raw records only'})"
            )
        return self.name


SIGNAL_RECEIVED = Topic("signal.received", (SignalReceived,), "intake → matching, retention")
SIGNAL_BLOCKED = Topic("signal.blocked", (SignalBlocked,), "intake → feedback, retention")
# A topic of its own (ADR 0012): consumers of signal.received need not know withdrawals;
# matching keeps a withdrawal that overtakes its signal.
SIGNAL_WITHDRAWN = Topic("signal.withdrawn", (SignalWithdrawn,), "intake → matching")
BLACKLIST_CHANGED = Topic("blacklist.changed", (BlacklistChanged,), "outreach → intake")
MATCH_CREATED = Topic("match.created", (MatchCreated,), "matching → outreach, retention")
MATCH_UPDATED = Topic("match.updated", (MatchUpdated,), "matching → outreach, retention")
OUTREACH_DUE = Topic("outreach.due", (OutreachDue,), "outreach → feedback, retention")
FEEDBACK_SENT = Topic("feedback.sent", (FeedbackSent,), "feedback → intake (the partner's feed)")
DEAD_LETTER = Topic("deadletter", (), "messages a consumer could not process, with the reason")

TOPICS: tuple[Topic, ...] = (
    SIGNAL_RECEIVED,
    SIGNAL_BLOCKED,
    SIGNAL_WITHDRAWN,
    BLACKLIST_CHANGED,
    MATCH_CREATED,
    MATCH_UPDATED,
    OUTREACH_DUE,
    FEEDBACK_SENT,
    DEAD_LETTER,
)
TOPICS_BY_NAME: dict[str, Topic] = {topic.name: topic for topic in TOPICS}
