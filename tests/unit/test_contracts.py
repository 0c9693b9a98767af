import json
from pathlib import Path

from vroeg.contracts import asyncapi_document

ROOT = Path(__file__).resolve().parents[2]


def test_the_published_asyncapi_document_matches_the_event_models() -> None:
    published = json.loads((ROOT / "docs" / "asyncapi.json").read_text())
    assert published == asyncapi_document(), "run `vroeg asyncapi` and commit docs/asyncapi.json"


def test_every_topic_with_events_documents_their_fields() -> None:
    schemas = asyncapi_document()["components"]["schemas"]
    assert {"SignalReceived", "MatchCreated", "MatchUpdated", "OutreachDue"} <= set(schemas)
    assert "household_key" in schemas["SignalReceived"]["properties"]
