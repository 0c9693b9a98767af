"""`vroeg deadletter`: the records a consumer could not process, and their replay (ADR 0011).

A dead letter is a record of the `deadletter` topic: the original record's bytes, with
headers naming the original topic, partition and offset, the event id and type, the
consuming group and the reason. Its id here is `<partition>:<offset>` in that topic.

A replay clears the consuming service's inbox mark ('deadlettered') of the event and
re-publishes the original record to its topic, in that order and inside one database
transaction that commits only after the broker acknowledged: the consuming service then
processes the event once. A second replay, or a replay of an event processed since,
finds no mark and is refused; should a re-published record arrive anyway (the mark's
removal did not commit), the inbox drops it. Every consumer group of the topic receives
the replayed record; the groups that processed the event before drop it in their inbox.
A dead letter of the outbox relay (`dlq.group` outbox-relay: a row it could not publish)
was never consumed: its replay re-publishes it to its topic and clears no inbox, the
consumers dedupe by event id. One without payload (too large: metadata only) is refused.
Every replay is audited before it starts ('aangevraagd') and with its result after.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # the Kafka and database libraries load when a command runs, not with the CLI
    from shared.settings import ServiceSettings

app = typer.Typer(help="Dead letters: records a consumer could not process (replay is audited).")
console = Console()

READ_TIMEOUT_S = 15.0  # longest a listing reads the dead-letter topic
REPLAY_HEADER = "vroeg.replay_of"  # the dead letter a re-published record comes from
RELAY_GROUP = "outbox-relay"  # `dlq.group` of a row the outbox relay could not publish


@dataclass(frozen=True)
class DeadLetter:
    """What an operator may see of a dead letter: ids, places and the reason, no payload."""

    id: str
    topic: str
    partition: int | None
    offset: int | None
    event_id: str | None
    event_type: str | None
    group: str
    reason: str
    at: dt.datetime


@dataclass(frozen=True)
class _Stored:
    letter: DeadLetter
    key: bytes | None
    payload: bytes
    headers: dict[str, str]


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _letter(record: object) -> _Stored:
    headers = {k: v.decode("utf-8", "replace") for k, v in record.headers or ()}  # type: ignore[attr-defined]
    letter = DeadLetter(
        id=f"{record.partition}:{record.offset}",  # type: ignore[attr-defined]
        topic=headers.get("dlq.topic", "?"),
        partition=_int(headers.get("dlq.partition")),
        offset=_int(headers.get("dlq.offset")),
        event_id=headers.get("dlq.event_id"),
        event_type=headers.get("event_type"),
        group=headers.get("dlq.group", "?"),
        reason=headers.get("dlq.reason", "?"),
        at=dt.datetime.fromtimestamp(record.timestamp / 1000, dt.UTC),  # type: ignore[attr-defined]
    )
    key = headers["dlq.key"].encode() if "dlq.key" in headers else record.key  # type: ignore[attr-defined]
    return _Stored(letter, key, record.value or b"", headers)  # type: ignore[attr-defined]


async def _read_all(settings: ServiceSettings) -> list[_Stored]:
    """Every record of the dead-letter topic, read from the start to the high watermark."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from shared.events import DEAD_LETTER
    from shared.messaging import kafka_client_args

    consumer = AIOKafkaConsumer(**kafka_client_args(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # metadata of every topic
        numbers = consumer.partitions_for_topic(DEAD_LETTER.name) or set()
        partitions = [TopicPartition(DEAD_LETTER.name, n) for n in sorted(numbers)]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: list[_Stored] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_TIMEOUT_S
        pending = set(partitions)
        while pending:
            if loop.time() > deadline:
                raise TimeoutError("the dead-letter topic could not be read to its end")
            batches = await consumer.getmany(*pending, timeout_ms=300)
            for records in batches.values():
                found.extend(_letter(record) for record in records)
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    pending.discard(tp)
        return sorted(found, key=lambda stored: stored.letter.at)
    finally:
        await consumer.stop()


async def dead_letters(settings: ServiceSettings) -> list[DeadLetter]:
    return [stored.letter for stored in await _read_all(settings)]


@dataclass(frozen=True)
class ReplayResult:
    done: bool
    message: str  # plain Dutch, for the operator


GroupDatabase = Callable[[str], str | None]


def service_database_of_group(group: str) -> str | None:
    """The database of the service whose consumer group this is."""
    from vroeg.stack import all_services

    for spec in all_services():
        settings = spec.settings()
        if settings.consumer_group == group:
            return settings.database_url
    return None


async def replay(
    settings: ServiceSettings,
    dead_letter_id: str,
    *,
    database_of_group: GroupDatabase = service_database_of_group,
    actor: str,
    audit_database_url: str | None = None,
) -> ReplayResult:
    """Replay one dead letter (see the module docstring); audited whatever the outcome:
    the request before anything happens, the result after, so no replay goes unaudited."""
    database_url = audit_database_url or _intake_database_url()
    subject = f"deadletter {dead_letter_id}"
    await audit(
        database_url, actor=actor, action="deadletter.replay", object=subject, result="aangevraagd"
    )
    try:
        result = await _replay(settings, dead_letter_id, database_of_group)
    except Exception:
        await audit(
            database_url, actor=actor, action="deadletter.replay", object=subject, result="mislukt"
        )
        raise
    await audit(
        database_url,
        actor=actor,
        action="deadletter.replay",
        object=subject,
        result="opnieuw-aangeboden" if result.done else "geweigerd",
    )
    return result


async def _replay(
    settings: ServiceSettings, dead_letter_id: str, database_of_group: GroupDatabase
) -> ReplayResult:
    stored = {s.letter.id: s for s in await _read_all(settings)}.get(dead_letter_id)
    if stored is None:
        return ReplayResult(False, f"Dead letter {dead_letter_id} bestaat niet.")
    letter = stored.letter
    if letter.group == RELAY_GROUP:
        return await _replay_relay_letter(settings, stored, dead_letter_id)
    if letter.event_id is None:
        return ReplayResult(
            False,
            f"Dead letter {dead_letter_id} is geen leesbare gebeurtenis: opnieuw aanbieden "
            "zou hem opnieuw afkeuren.",
        )
    from sqlalchemy import text

    from shared.db import make_engine, make_session_factory

    database_url = database_of_group(letter.group)
    if database_url is None:
        return ReplayResult(False, f"Consumer group {letter.group} hoort bij geen dienst.")
    engine = make_engine(database_url, pool_size=1)
    try:
        async with make_session_factory(engine)() as session, session.begin():
            cleared = await session.scalar(
                text(
                    "DELETE FROM inbox WHERE event_id = :event_id AND outcome = 'deadlettered' "
                    "RETURNING event_id"
                ),
                {"event_id": uuid.UUID(letter.event_id)},
            )
            if cleared is None:
                return ReplayResult(
                    False,
                    f"Gebeurtenis {letter.event_id} staat niet (meer) als dead letter bij "
                    f"{letter.group}: al verwerkt of al opnieuw aangeboden.",
                )
            await _publish(settings, stored, dead_letter_id)  # the mark goes once acknowledged
    finally:
        await engine.dispose()
    return ReplayResult(
        True, f"Gebeurtenis {letter.event_id} opnieuw aangeboden op {letter.topic}."
    )


async def _replay_relay_letter(
    settings: ServiceSettings, stored: _Stored, dead_letter_id: str
) -> ReplayResult:
    """A row the outbox relay could not publish: no consumer saw it, so no inbox holds a
    mark. Re-published to its topic as it was staged; a consumer that got it after all
    (a second replay) drops it by its event id."""
    if not stored.payload:
        return ReplayResult(
            False,
            f"Dead letter {dead_letter_id} heeft geen inhoud: het bericht was te groot om "
            "te bewaren, alleen de gegevens eromheen staan erin. Opnieuw aanbieden kan niet; "
            "de dienst moet de gebeurtenis opnieuw maken.",
        )
    await _publish(settings, stored, dead_letter_id)
    event = stored.letter.event_id or "zonder id"
    return ReplayResult(True, f"Gebeurtenis {event} opnieuw aangeboden op {stored.letter.topic}.")


async def _publish(settings: ServiceSettings, stored: _Stored, dead_letter_id: str) -> None:
    from aiokafka import AIOKafkaProducer

    from shared.messaging import kafka_client_args

    headers = {k: v for k, v in stored.headers.items() if not k.startswith("dlq.")}
    headers[REPLAY_HEADER] = dead_letter_id
    producer = AIOKafkaProducer(**kafka_client_args(settings), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            stored.letter.topic,
            stored.payload,
            key=stored.key,
            headers=[(k, v.encode()) for k, v in headers.items()],
        )
    finally:
        await producer.stop()


def _intake_database_url() -> str:
    from services.intake.settings import IntakeSettings

    return IntakeSettings().database_url


async def audit(database_url: str, *, actor: str, action: str, object: str, result: str) -> None:
    """One record in intake's hash-chained audit trail (the operator's log of the region)."""
    from services.intake.models import audit as intake_audit
    from shared import audit as audit_trail
    from shared.db import make_engine, make_session_factory

    engine = make_engine(database_url, pool_size=1)
    try:
        async with make_session_factory(engine)() as session, session.begin():
            await audit_trail.record(
                session, intake_audit, actor=actor, action=action, object_=object, result=result
            )
    finally:
        await engine.dispose()


def _actor() -> str:
    return f"cli:{os.environ.get('USER', 'onbekend')}"


@app.command("list")
def list_dead_letters(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Dead letters, oldest first: where they came from and why (no payload contents)."""
    from shared.settings import ServiceSettings

    letters = asyncio.run(dead_letters(ServiceSettings()))
    if as_json:
        typer.echo(json.dumps([asdict(letter) for letter in letters], indent=2, default=str))
        return
    table = Table("id", "topic", "partitie:offset", "event", "type", "group", "reden", "tijd")
    for letter in letters:
        table.add_row(
            letter.id,
            letter.topic,
            f"{letter.partition}:{letter.offset}",
            letter.event_id or "-",
            letter.event_type or "-",
            letter.group,
            letter.reason,
            letter.at.isoformat(timespec="seconds"),
        )
    console.print(table)


@app.command("replay")
def replay_dead_letter(
    dead_letter_id: Annotated[str, typer.Argument(help="The id from `vroeg deadletter list`.")],
) -> None:
    """Offer a dead letter to its consumer once more (audited)."""
    from shared.settings import ServiceSettings

    result = asyncio.run(replay(ServiceSettings(), dead_letter_id, actor=_actor()))
    console.print(result.message)
    if not result.done:
        raise typer.Exit(1)
