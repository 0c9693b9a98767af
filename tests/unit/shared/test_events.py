import datetime as dt
import uuid
from decimal import Decimal

import pytest
from pydantic import ValidationError

from shared.events import (
    DEAD_LETTER,
    MATCH_CREATED,
    SIGNAL_RECEIVED,
    TOPICS,
    ForeignEventType,
    MatchCreated,
    MatchedSignal,
    SignalReceived,
    decode_event,
    encode_event,
)
from shared.outbox import Outbox

KEY = "ab" * 32
PERSONAL_FIELD_WORDS = (
    "bsn",
    "naam_persoon",
    "achternaam",
    "voorletters",
    "straat",
    "postcode",
    "huisnummer",
    "geboortedatum",
    "email",
    "telefoon",
    "adres",
)


def signal() -> SignalReceived:
    partner = uuid.uuid4()
    return SignalReceived(
        gemeentecode="GM1731",
        household_key=KEY,
        signal_id=uuid.uuid4(),
        partner_id=partner,
        partner_naam="Woonstichting (test)",
        creditor_id=partner,
        partner_signaal_id="WS-1",
        soort="Huur",
        signaaldatum=dt.date(2026, 11, 2),
        achterstand_bedrag=Decimal("734.50"),
        ontvangen_op=dt.datetime(2026, 11, 2, 10, tzinfo=dt.UTC),
        subject_id=uuid.uuid4(),
        persoonsgegevens="v1.c2VhbGVk",
    )


def test_events_round_trip_through_their_bytes() -> None:
    event = signal()
    assert decode_event(encode_event(event)) == event


def test_decoding_picks_the_event_type_from_the_payload() -> None:
    event = signal()
    created = MatchCreated(
        gemeentecode="GM1731",
        household_key=KEY,
        match_id=uuid.uuid4(),
        version=1,
        soort="enkelvoudig",
        aantal_schuldeisers=1,
        totaal_achterstand=Decimal("734.50"),
        doorgestuurd_op=event.ontvangen_op,
        regel="Enkelvoudig",
        signalen=(MatchedSignal(**event.model_dump(include=set(MatchedSignal.model_fields))),),
    )
    assert isinstance(decode_event(encode_event(created)), MatchCreated)


def test_unknown_fields_and_bad_municipality_codes_are_refused() -> None:
    payload = encode_event(signal()).replace(b'"gemeentecode":"GM1731"', b'"gemeentecode":"1731"')
    with pytest.raises(ValidationError):
        decode_event(payload)
    with pytest.raises(ValidationError):
        decode_event(encode_event(signal())[:-1] + b',"extra":1}')


def test_no_event_carries_readable_personal_data() -> None:
    """Personal data travels only sealed (the one field persoonsgegevens, shared.crypto)."""
    for topic in TOPICS:
        for event_type in topic.events:
            properties = event_type.model_json_schema()["properties"]
            names = " ".join(name for name in properties if name != "persoonsgegevens").lower()
            assert not [word for word in PERSONAL_FIELD_WORDS if word in names], event_type
            if "persoonsgegevens" in properties:
                assert properties["persoonsgegevens"]["pattern"].startswith("^v1")


def test_topic_names_are_unique_and_include_the_agreed_four() -> None:
    names = [t.name for t in TOPICS]
    assert len(names) == len(set(names))
    assert {"signal.received", "match.created", "outreach.due", "feedback.sent"} <= set(names)


def test_each_topic_knows_its_event_types() -> None:
    assert SIGNAL_RECEIVED.event_types == {"SignalReceived"}
    assert SIGNAL_RECEIVED.accepts(signal())
    assert SIGNAL_RECEIVED.check(signal()) == "signal.received"
    for topic in TOPICS:
        assert len(topic.event_types) == len(topic.events), topic.name


def test_staging_an_event_on_a_foreign_topic_raises_at_once() -> None:
    with pytest.raises(ForeignEventType, match="SignalReceived does not belong on topic match"):
        MATCH_CREATED.check(signal())
    with pytest.raises(ForeignEventType):
        Outbox.columns([(MATCH_CREATED, signal())])  # every stage goes through the columns
    with pytest.raises(ForeignEventType, match="raw records only"):
        Outbox.columns([(DEAD_LETTER, signal())])
    assert Outbox.columns([(SIGNAL_RECEIVED, signal())])["topics"] == ["signal.received"]
