"""Issue #4: three matching replicas sharing `signal.received` make exactly the matches one
replica makes, also when one of the three is killed (SIGKILL) mid-stream and the consumer
group rebalances.

One synthetic stream of SignalReceived events (households with single, multiple and
consecutive matches, several matches per household, a few redeliveries and replays) is
published once, keyed by household, to a Tansu broker of this test's own (so no other
test's events, and no running outreach, share its topics). Two consumer groups read it
from the earliest offset, each into a matching database of its own (their own database
prefixes, so their own groups): run B is three replicas with batches of 64, each batch split
into three concurrent transactions (consumer lanes), that match the stream while it is
published, one of which is killed (SIGKILL) after part of it; run A is one replica with one
lane, started on the whole stream as a backlog, so in batches of 500. Both must agree with
each other, and with the pure rules (services.matching.domain) applied one signal at a
time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import random
import secrets
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text

from services.matching.domain import (
    MatchState,
    MunicipalityRules,
    SignalFact,
    classify,
    month_index,
    place_signals,
    remembered_months,
)
from services.matching.settings import MatchingSettings
from services.registry import BY_NAME
from shared.db import drop_database, ensure_database, make_engine, upgrade_to_head
from shared.events import DEAD_LETTER, SIGNAL_RECEIVED, SignalReceived, encode_event
from shared.region import DRENTHE
from tests.conftest import Infra
from tests.support import apoll
from vroeg import stack as stack_mod
from vroeg.stack import Stack
from vroeg.status import end_offsets

pytestmark = pytest.mark.integration

MATCHING = BY_NAME["matching"]
SIGNALS = 3000
REPLICAS = 3
PARTITIONS = 6
SESSION_TIMEOUT_MS = 6000  # a dead replica's partitions move after this
FIRST_PART, KILL_AT, SECOND_PART = 0.40, 0.30, 0.70  # fractions of the stream

# (partner naam, soort, energiesoort choices, creditor): electricity and gas of one supplier
# are one creditor, so they count once.
PARTNERS = [
    ("Energieleverancier Noord (test)", "Energie", ("elektriciteit", "gas"), "energie"),
    ("Woningstichting Drenthe (test)", "Huur", (None,), "huur"),
    ("Waterbedrijf Groningen-Drenthe (test)", "Water", (None,), "water"),
    ("CAK (test)", "CAK Zorgverzekeringen", (None,), "cak"),
    ("Zorgverzekeraar Noord (test)", "Zorg", (None,), "zorg"),
    ("Hypotheekbank (test)", "Hypotheek", (None,), "hypotheek"),
]
START = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)  # months in the past: forwarded at once


@dataclass(frozen=True)
class Published:
    events: list[SignalReceived]  # in publishing order (a household's in its order)
    keys: list[str]

    @property
    def signal_ids(self) -> set[uuid.UUID]:
        return {e.signal_id for e in self.events}

    @property
    def event_ids(self) -> set[uuid.UUID]:
        return {e.event_id for e in self.events}


def synthetic_stream(run: str, rng: random.Random) -> Published:
    """Households with one to three episodes of one to three signals each: one creditor
    (single), several in one month (multiple), an episode within four weeks of the last
    (joins the open match) or one to three months later (a new, consecutive match)."""
    partners = [
        (uuid.uuid5(uuid.NAMESPACE_URL, f"{run}/{naam}"), naam, soort, energie, creditor)
        for naam, soort, energie, creditor in PARTNERS
    ]
    creditor_ids = {c: uuid.uuid5(uuid.NAMESPACE_URL, f"{run}/creditor/{c}") for *_, c in PARTNERS}
    gemeenten = sorted(DRENTHE)
    timed: list[tuple[dt.datetime, SignalReceived]] = []
    keys: list[str] = []
    while len(timed) < SIGNALS:
        key = hashlib.sha256(f"{run}/household/{len(keys)}".encode()).hexdigest()
        keys.append(key)
        gemeente = rng.choice(gemeenten)
        moment = START + dt.timedelta(days=rng.uniform(0, 45))
        for _episode in range(rng.choices((1, 2, 3), (45, 35, 20))[0]):
            for _signal in range(rng.choices((1, 2, 3), (50, 35, 15))[0]):
                partner_id, naam, soort, energie, creditor = rng.choice(partners)
                received = moment + dt.timedelta(days=rng.uniform(0, 6), seconds=len(timed))
                amount = Decimal(rng.randint(5_000, 250_000)) / 100
                timed.append(
                    (
                        received,
                        SignalReceived(
                            gemeentecode=gemeente,
                            household_key=key,
                            signal_id=uuid.uuid4(),
                            partner_id=partner_id,
                            partner_naam=naam,
                            creditor_id=creditor_ids[creditor],
                            partner_signaal_id=f"REPL-{len(timed):05d}",
                            soort=soort,
                            energiesoort=rng.choice(energie),
                            # Mostly a few days before receipt; one in ten reported one
                            # to two and a half months late (an earlier month than a match
                            # opened before it), which once made a kind depend on batch
                            # boundaries.
                            signaaldatum=received.date()
                            - dt.timedelta(
                                days=rng.randint(35, 75)
                                if rng.random() < 0.1
                                else rng.randint(0, 5)
                            ),
                            achterstand_bedrag=amount,
                            ontvangen_op=received,
                            subject_id=uuid.uuid4(),
                            # matching never opens it; it only has to look like sealed text
                            persoonsgegevens="v1." + secrets.token_urlsafe(48),
                        ),
                    )
                )
            # within four weeks (joins the open match) or 1-3 months on (a new match)
            moment += dt.timedelta(days=rng.choice((rng.uniform(8, 20), rng.uniform(32, 95))))
    timed.sort(key=lambda pair: pair[0])
    events = [event for _, event in timed]
    # What a real stream also holds: a relay that published twice (same event id) and an
    # intake event replayed under a new event id (same signal). Both come after the
    # original, in the household's partition.
    for index in rng.sample(range(len(events) - 100), 40):
        original = events[index]
        copy = original if index % 2 else original.model_copy(update={"event_id": uuid.uuid4()})
        events.insert(index + rng.randint(1, 60), copy)
    return Published(events, keys)


def expected_matches(stream: Sequence[SignalReceived]) -> dict[uuid.UUID, dict[str, Any]]:
    """The pure rules applied one signal at a time, in stream order: match id -> kind,
    creditors, total arrears and signal ids."""
    rules = MunicipalityRules(opeenvolgend_maanden=MatchingSettings().consecutive_window_months)
    matches: dict[str, list[MatchState]] = {}
    months: dict[str, list[int]] = {}
    seen: set[uuid.UUID] = set()
    result: dict[uuid.UUID, dict[str, Any]] = {}
    for event in stream:
        if event.signal_id in seen:
            continue
        seen.add(event.signal_id)
        key = event.household_key
        fact = SignalFact(
            event.signal_id,
            event.creditor_id,
            event.signaaldatum,
            event.achterstand_bedrag,
            event.ontvangen_op,
        )
        household = matches.setdefault(key, [])
        step = place_signals(key, household, [fact], rules)
        known = {m.id for m in household}
        household.extend(m for m in step.matches if m.id not in known)
        history = [*months.get(key, []), month_index(event.signaaldatum)]
        months[key] = remembered_months(history, max(history))
        for match in step.matches:
            verdict = classify(match.signals, set(months[key]), rules.opeenvolgend_maanden)
            result[match.id] = {
                "household_key": key,
                "soort": verdict.soort,
                "aantal_schuldeisers": verdict.aantal_schuldeisers,
                "totaal_achterstand": verdict.totaal_achterstand,
                "signals": {s.signal_id for s in match.signals},
            }
    return result


# --- the run's own broker and databases ------------------------------------------------


@contextlib.contextmanager
def private_broker(log_dir: Path) -> Iterator[str]:
    broker = stack_mod.start_broker(stack_mod.free_port(), log_dir)
    try:
        yield broker.args[broker.args.index("--listener-url") + 1].removeprefix("tcp://")
    finally:
        broker.stop()


def database_url(infra: Infra, prefix: str) -> str:
    return MatchingSettings(postgres_url=infra.postgres_url, database_prefix=prefix).database_url


async def prepare(url: str) -> None:
    await drop_database(url)
    await ensure_database(url)
    await asyncio.to_thread(upgrade_to_head, MATCHING.migrations, url)


async def rows(url: str, sql: str, **params: object) -> list[dict[str, Any]]:
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return [dict(row) for row in (await conn.execute(text(sql), params)).mappings()]
    finally:
        await engine.dispose()


async def count(url: str, sql: str, **params: object) -> int:
    [row] = await rows(url, sql, **params)
    return int(next(iter(row.values())))


async def done(url: str, stream: Published) -> bool:
    """Every signal matched and every event (copies included) through the inbox."""
    ours = {"keys": stream.keys}
    signals = await count(
        url, "SELECT count(*) FROM signals WHERE household_key = ANY(:keys)", **ours
    )
    inbox = await count(
        url, "SELECT count(*) FROM inbox WHERE event_id = ANY(:ids)", ids=list(stream.event_ids)
    )
    return signals == len(stream.signal_ids) and inbox == len(stream.event_ids)


async def snapshot(url: str, keys: list[str]) -> dict[str, Any]:
    """What matching decided for these households.

    Everything decided is compared, `version` included: it counts the signals a match took
    in, not how often it was written, so batch boundaries (500 for one replica, 64 for
    three that rebalance) change nothing.
    """
    matches = await rows(
        url,
        "SELECT id, household_key, gemeentecode, status, soort, version, aantal_schuldeisers, "
        "totaal_achterstand, geopend_op, doorsturen_op, doorgestuurd_op, regel, "
        "CAST(uitleg AS text) AS uitleg FROM matches WHERE household_key = ANY(:keys)",
        keys=keys,
    )
    members = await rows(
        url,
        "SELECT signal_id, match_id FROM signals WHERE household_key = ANY(:keys)",
        keys=keys,
    )
    households = await rows(
        url,
        "SELECT key, gemeentecode, maanden FROM households WHERE key = ANY(:keys)",
        keys=keys,
    )
    return {
        "matches": {m.pop("id"): m | {"uitleg": json.loads(m["uitleg"])} for m in matches},
        "membership": {m["signal_id"]: m["match_id"] for m in members},
        "households": {h["key"]: (h["gemeentecode"], h["maanden"]) for h in households},
    }


async def group_members(bootstrap: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_consumer_groups([group])
        [group_state] = described.groups  # error, group, state, protocol type, protocol, members
        return len(group_state[5]) if group_state[2] == "Stable" else -1
    finally:
        await admin.close()


async def dead_letters(bootstrap: str) -> int:
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        partitions = [
            TopicPartition(DEAD_LETTER.name, p)
            for p in reader.partitions_for_topic(DEAD_LETTER.name) or ()
        ]
        assert partitions, "the dead-letter topic exists"
        return sum((await end_offsets(bootstrap, partitions)).values())
    finally:
        await reader.stop()


def processed_by(stack: Stack, name: str) -> float:
    """Events this replica processed (its own Prometheus counter)."""
    body = httpx.get(f"{stack.url(name)}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("vroeg_events_consumed_total{")
        and f'topic="{SIGNAL_RECEIVED.name}"' in line
        and 'outcome="processed"' in line
    )


async def publish(producer: AIOKafkaProducer, events: Sequence[SignalReceived]) -> set[int]:
    """Keyed by household, in order; the partitions written to."""
    sent = [
        await producer.send(
            SIGNAL_RECEIVED.name, encode_event(e), key=e.household_key.encode("ascii")
        )
        for e in events
    ]
    return {metadata.partition for metadata in await asyncio.gather(*sent)}


def start_run(
    infra: Infra,
    bootstrap: str,
    prefix: str,
    replicas: int,
    batch: int,
    log_dir: Path,
    *,
    lanes: int,
) -> Stack:
    run = Stack(
        env={
            "VROEG_KAFKA_BOOTSTRAP": bootstrap,
            "VROEG_POSTGRES_URL": infra.postgres_url,
            "VROEG_DATABASE_PREFIX": prefix,
            "VROEG_OTEL_EXPORTER": "none",
            "VROEG_CONSUMER_BATCH_SIZE": str(batch),
            "VROEG_CONSUMER_LANES": str(lanes),
            "VROEG_CONSUMER_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        },
        log_dir=log_dir / prefix,
    )
    for replica in range(1, replicas + 1):
        run.start_service(MATCHING, name=f"matching-{replica}", port=stack_mod.free_port())
    return run


# --- the test ---------------------------------------------------------------------------


async def test_three_replicas_one_killed_make_the_matches_one_replica_makes(
    infra: Infra, tmp_path: Path
) -> None:
    run_id = secrets.token_hex(3)
    stream = synthetic_stream(run_id, random.Random(4))
    total = len(stream.signal_ids)
    expected = expected_matches(stream.events)
    kinds = {m["soort"] for m in expected.values()}
    per_household = [sum(m["household_key"] == k for m in expected.values()) for k in stream.keys]
    assert kinds == {"enkelvoudig", "meervoudig", "opeenvolgend"}, "the stream covers each kind"
    assert sum(n >= 2 for n in per_household) > 100, "households with several matches"

    one, three = f"rep{run_id}a", f"rep{run_id}b"
    url_one, url_three = database_url(infra, one), database_url(infra, three)
    group_three = MatchingSettings(database_prefix=three).consumer_group
    assert (
        group_three == f"{three}-matching" != MatchingSettings(database_prefix=one).consumer_group
    )

    first = int(len(stream.events) * FIRST_PART)
    second = int(len(stream.events) * SECOND_PART)
    runs: list[Stack] = []
    with private_broker(tmp_path) as bootstrap:
        try:
            await stack_mod.create_topics(bootstrap, partitions=PARTITIONS)
            for url in (url_one, url_three):  # one at a time: alembic's context is global
                await prepare(url)
            run_three = start_run(infra, bootstrap, three, REPLICAS, 64, tmp_path, lanes=3)
            runs.append(run_three)
            await asyncio.to_thread(run_three.wait_ready, list(run_three.processes))
            await apoll(
                lambda: _members_are(bootstrap, group_three, REPLICAS),
                30,
                "three replicas in one stable group",
            )

            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
            await producer.start()
            try:
                await publish(producer, stream.events[:first])
                await apoll(
                    lambda: _matched_at_least(url_three, stream, int(total * KILL_AT)),
                    60,
                    "the three replicas to match part of the stream",
                )
                await publish(producer, stream.events[first:second])
                victim = run_three.processes["matching-2"]
                victim_processed = await asyncio.to_thread(processed_by, run_three, victim.name)
                victim.kill()  # SIGKILL: no leave-group, no offset commit, maybe mid-batch
                matched_at_kill = await count(url_three, "SELECT count(*) FROM signals")
                # The rest of the stream lands on every partition, the victim's too: those
                # records can only be matched once the group gave its partitions away.
                rest = await publish(producer, stream.events[second:])
            finally:
                await producer.stop()
            # One replica on the whole stream at once: other batch boundaries than run B's.
            run_one = start_run(infra, bootstrap, one, 1, 500, tmp_path, lanes=1)
            runs.append(run_one)
            await asyncio.to_thread(run_one.wait_ready, list(run_one.processes))
            assert victim.process is not None and victim.process.returncode == -9
            assert victim_processed > 0, "the killed replica was matching signals"
            assert matched_at_kill < total, "the kill came mid-stream"
            assert rest == set(range(PARTITIONS))

            await apoll(lambda: done(url_one, stream), 60, "one replica to match every signal")
            await apoll(lambda: done(url_three, stream), 60, "two survivors to match the rest")
            await apoll(
                lambda: _members_are(bootstrap, group_three, REPLICAS - 1),
                30,
                "the group to have rebalanced to the two survivors",
            )
            survivors = [n for n in run_three.processes if n != victim.name]
            for name in survivors:
                assert run_three.processes[name].alive(), f"{name} survived"

            a = await snapshot(url_one, stream.keys)
            b = await snapshot(url_three, stream.keys)
            assert_consistent(a, stream, expected)
            assert_consistent(b, stream, expected)
            assert_same_matches(a, b)
            for url in (url_one, url_three):
                assert (
                    await count(url, "SELECT count(*) FROM inbox WHERE outcome <> 'processed'") == 0
                )
            assert await dead_letters(bootstrap) == 0
        finally:
            for run in runs:
                run.stop()
            for url in (url_one, url_three):
                with contextlib.suppress(Exception):
                    await drop_database(url)


async def _members_are(bootstrap: str, group: str, expected: int) -> bool:
    return await group_members(bootstrap, group) == expected


async def _matched_at_least(url: str, stream: Published, least: int) -> bool:
    return (
        await count(
            url, "SELECT count(*) FROM signals WHERE household_key = ANY(:k)", k=stream.keys
        )
        >= least
    )


def assert_consistent(
    snap: dict[str, Any], stream: Published, expected: dict[uuid.UUID, dict[str, Any]]
) -> None:
    """Every signal in exactly one match, as the pure rules put it, with their verdicts."""
    membership: dict[uuid.UUID, uuid.UUID] = snap["membership"]
    matches: dict[uuid.UUID, dict[str, Any]] = snap["matches"]
    assert set(membership) == stream.signal_ids  # one row per signal: at most one match
    assert set(membership.values()) == set(matches)  # no match without signals
    members: dict[uuid.UUID, set[uuid.UUID]] = {}
    for signal_id, match_id in membership.items():
        members.setdefault(match_id, set()).add(signal_id)
    for match_id, match in matches.items():
        assert {uuid.UUID(s) for s in match["uitleg"]["signalen"]} == members[match_id]
        assert match["status"] == "doorgestuurd"
    decided = {
        match_id: {
            "household_key": m["household_key"],
            "soort": m["soort"],
            "aantal_schuldeisers": m["aantal_schuldeisers"],
            "totaal_achterstand": m["totaal_achterstand"],
            "signals": members[match_id],
        }
        for match_id, m in matches.items()
    }
    assert decided == expected


def assert_same_matches(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["membership"] == b["membership"]
    assert a["households"] == b["households"]
    assert a["matches"].keys() == b["matches"].keys()
    differing = [i for i in a["matches"] if a["matches"][i] != b["matches"][i]]
    assert not differing, (
        f"{len(differing)} matches differ, e.g. {a['matches'][differing[0]]} "
        f"vs {b['matches'][differing[0]]}"
    )
