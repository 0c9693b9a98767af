"""`vroeg deadletter list|replay` on the real broker and PostgreSQL: a dead letter is
listed without its payload, a replay has the consuming service process the event once,
a second replay is refused and changes nothing, and every replay is audited."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from sqlalchemy import text

from services.feedback.settings import FeedbackSettings
from services.intake.settings import IntakeSettings
from shared.db import make_engine
from shared.events import DEAD_LETTER, OutreachDue, encode_event
from shared.messaging import make_producer
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
    # each replay audited before it starts and with its result after
    assert [tuple(row) for row in audit] == [
        ("deadletter.replay", f"deadletter {letter.id}", "aangevraagd"),
        ("deadletter.replay", f"deadletter {letter.id}", "opnieuw-aangeboden"),
        ("deadletter.replay", f"deadletter {letter.id}", "aangevraagd"),
        ("deadletter.replay", f"deadletter {letter.id}", "geweigerd"),
        ("deadletter.replay", "deadletter 0:999999999", "aangevraagd"),
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


async def test_the_command_line_lists_dead_letters_without_their_payload(infra: Infra) -> None:
    async def ignore(session: object, event: OutreachDue) -> None:
        return None

    marker = f"geheim-{uuid.uuid4().hex}"
    async with Harness(infra, ignore) as harness:
        await harness.publish(json.dumps({"not": "an event", "bsn": marker}).encode())
        await harness.dead_letters(expected=1)
        [letter] = [
            letter
            for letter in await deadletter.dead_letters(ServiceSettings())
            if letter.topic == harness.topic.name
        ]
    output = await asyncio.to_thread(vroeg_cli, "deadletter", "list", "--json")
    listed = {entry["id"]: entry for entry in json.loads(output)}
    assert letter.id in listed
    assert set(listed[letter.id]) == {
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
    assert marker not in output


async def publish_relay_letter(payload: bytes, headers: dict[str, str], key: bytes) -> None:
    """A dead letter as the outbox relay writes it (a row it could not publish)."""
    producer = make_producer(ServiceSettings())
    await producer.start()
    try:
        await producer.send_and_wait(
            DEAD_LETTER.name,
            payload,
            key=key,
            headers=[(name, value.encode()) for name, value in headers.items()],
        )
    finally:
        await producer.stop()


async def test_a_dead_letter_of_the_relay_is_replayed_to_its_topic(infra: Infra) -> None:
    processed: list[uuid.UUID] = []

    async def handle(session: object, event: OutreachDue) -> None:
        processed.append(event.event_id)

    event, oversized = due_event(), due_event()
    settings = ServiceSettings()
    async with Harness(infra, handle) as harness:
        for staged, payload in ((event, encode_event(event)), (oversized, b"")):
            await publish_relay_letter(
                payload,
                {
                    "event_type": "OutreachDue",
                    "dlq.event_id": str(staged.event_id),
                    "dlq.reason": "outbox: bericht te groot (9 bytes)",
                    "dlq.topic": harness.topic.name,
                    "dlq.group": "outbox-relay",
                    "dlq.outbox_id": "1",
                },
                staged.household_key.encode(),
            )

        async def both_listed() -> list[deadletter.DeadLetter] | None:
            found = [
                letter
                for letter in await deadletter.dead_letters(settings)
                if letter.topic == harness.topic.name
            ]
            return found if len(found) == 2 else None

        letters = await apoll(both_listed, 30, "the relay's dead letters")
        by_event = {letter.event_id: letter for letter in letters}
        done = await deadletter.replay(
            settings,
            by_event[str(event.event_id)].id,
            database_of_group=lambda group: None,  # no service database: no inbox to clear
            actor="test",
        )
        assert done.done, done.message
        await apoll(lambda: event.event_id in processed, 30, "the replayed event processed")
        empty = await deadletter.replay(
            settings,
            by_event[str(oversized.event_id)].id,
            database_of_group=lambda group: None,
            actor="test",
        )
    assert not empty.done and "geen inhoud" in empty.message
    assert processed == [event.event_id]


def test_the_operator_tools_hand_the_kafka_security_to_every_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`vroeg status` builds its admin and consumer clients with the TLS/SASL settings."""
    from vroeg import status

    made: list[dict[str, object]] = []

    class Refused(Exception):
        pass

    def client(**kwargs: object) -> object:
        made.append(kwargs)
        raise Refused

    monkeypatch.setattr(status, "AIOKafkaAdminClient", client)
    monkeypatch.setattr(status, "AIOKafkaConsumer", client)
    monkeypatch.setattr(
        status,
        "kafka_client_args",
        lambda settings: {"bootstrap_servers": "x:1", "security_protocol": "SASL_SSL"},
    )
    with pytest.raises(Refused):
        asyncio.run(status.consumer_lag("broker:9093"))
    with pytest.raises(Refused):
        asyncio.run(status.end_offsets("broker:9093", []))
    assert [(c["bootstrap_servers"], c["security_protocol"]) for c in made] == [
        ("broker:9093", "SASL_SSL"),
        ("broker:9093", "SASL_SSL"),
    ]


def test_each_service_group_maps_to_its_database(infra: Infra) -> None:
    feedback = FeedbackSettings()
    assert deadletter.service_database_of_group(feedback.consumer_group) == feedback.database_url
    assert deadletter.service_database_of_group("someone-else") is None
