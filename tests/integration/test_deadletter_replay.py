"""`vroeg deadletter list|replay` on the real broker and PostgreSQL: a dead letter is
listed without its payload, a replay has the consuming service process the event once,
a second replay is refused and changes nothing, and every replay is audited."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import text

from services.feedback.settings import FeedbackSettings
from services.intake.settings import IntakeSettings
from shared.db import make_engine
from shared.events import OutreachDue, encode_event
from shared.settings import ServiceSettings
from tests.conftest import Infra
from tests.integration.test_messaging import Harness, due_event
from tests.support import apoll, vroeg_cli
from vroeg import deadletter

pytestmark = pytest.mark.integration


async def test_a_replayed_dead_letter_is_processed_once_and_a_second_replay_is_refused(
    infra: Infra,
) -> None:
    broken = True
    processed: list[uuid.UUID] = []
    bad, good = due_event(), due_event()

    async def handle(session: object, event: OutreachDue) -> None:
        if event.event_id == bad.event_id and broken:
            raise ValueError("a rule the handler no longer breaks after the fix")
        processed.append(event.event_id)

    settings = ServiceSettings()
    actor = f"test:{uuid.uuid4().hex[:8]}"
    async with Harness(infra, handle) as harness:
        groups = {harness.consumer.group_id: harness.settings.database_url}
        await harness.publish(encode_event(bad), key=bad.household_key.encode())
        await harness.publish(encode_event(good), key=good.household_key.encode())
        await harness.dead_letters(expected=1)
        [letter] = [
            letter
            for letter in await deadletter.dead_letters(settings)
            if letter.topic == harness.topic.name
        ]
        assert letter.event_id == str(bad.event_id)
        assert letter.event_type == "OutreachDue"
        assert letter.group == harness.consumer.group_id
        assert (letter.partition, letter.offset) == (0, 0)
        assert letter.reason == "handler error: ValueError"

        broken = False  # the fix is deployed: now the replay
        done = await deadletter.replay(
            settings, letter.id, database_of_group=groups.get, actor=actor
        )
        assert done.done, done.message

        async def bad_processed() -> bool:
            return await harness.inbox_outcome(bad.event_id) == "processed"

        await apoll(bad_processed, 30, "the replayed event processed")
        again = await deadletter.replay(
            settings, letter.id, database_of_group=groups.get, actor=actor
        )
        assert not again.done
        assert "al verwerkt" in again.message
        # the replayed record was consumed and committed; nothing came after it
        await apoll(lambda: harness.committed_is(3), 30, "the replayed record committed")
        unknown = await deadletter.replay(
            settings, "0:999999999", database_of_group=groups.get, actor=actor
        )
        assert not unknown.done and "bestaat niet" in unknown.message
    assert processed.count(bad.event_id) == 1
    assert processed.count(good.event_id) == 1
    engine = make_engine(IntakeSettings().database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            audit = (
                await conn.execute(
                    text(
                        "SELECT action, object, result FROM audit_log WHERE actor = :actor "
                        "ORDER BY id"
                    ),
                    {"actor": actor},
                )
            ).all()
    finally:
        await engine.dispose()
    assert [tuple(row) for row in audit] == [
        ("deadletter.replay", f"deadletter {letter.id}", "opnieuw-aangeboden"),
        ("deadletter.replay", f"deadletter {letter.id}", "geweigerd"),
        ("deadletter.replay", "deadletter 0:999999999", "geweigerd"),
    ]


async def test_an_unreadable_dead_letter_is_not_replayed(infra: Infra) -> None:
    async def ignore(session: object, event: OutreachDue) -> None:
        return None

    async with Harness(infra, ignore) as harness:
        await harness.publish(b'{"not": "an event"}')
        await harness.dead_letters(expected=1)
        [letter] = [
            letter
            for letter in await deadletter.dead_letters(ServiceSettings())
            if letter.topic == harness.topic.name
        ]
        result = await deadletter.replay(
            ServiceSettings(), letter.id, database_of_group=lambda group: None, actor="test"
        )
    assert letter.event_id is None
    assert not result.done and "geen leesbare gebeurtenis" in result.message


def test_the_command_line_lists_dead_letters_without_their_payload(infra: Infra) -> None:
    listed = json.loads(vroeg_cli("deadletter", "list", "--json"))
    assert isinstance(listed, list)
    for letter in listed:
        assert set(letter) == {
            "id",
            "topic",
            "partition",
            "offset",
            "event_id",
            "event_type",
            "group",
            "reason",
            "at",
        }


def test_each_service_group_maps_to_its_database(infra: Infra) -> None:
    feedback = FeedbackSettings()
    assert deadletter.service_database_of_group(feedback.consumer_group) == feedback.database_url
    assert deadletter.service_database_of_group("someone-else") is None
