"""Intake benchmark: the partner gateway alone (broker + PostgreSQL + one intake process).

    .venv/bin/python -m bench.intake [--clients 50] [--requests 3000] [--delivery 10000]

Prints, measured in one run on this machine:
- single-signal POST throughput and p50/p99 latency with N concurrent clients;
- time to accept (202) and publish (all signal.received events in Kafka) a delivery of
  10,000 signals;
- the raw broker's produce rate (acks=all) for the same number of messages of the same
  size, and the ratio.
The load generator (Python, httpx) shares the machine's two cores with the server: the
figures are a floor, not a ceiling. Downstream services are not started, so they do not
compete for the cores either.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer

from bench import kafka
from bench.cpu import cpu_seconds, machine_busy, postgres_cpu
from services.intake import handlers
from services.intake.settings import IntakeSettings
from services.registry import BY_NAME
from shared.db import make_engine, make_session_factory
from shared.events import SIGNAL_RECEIVED, utc_now
from vroeg import stack
from vroeg.demo import DemoHousehold, households, signal_body


async def setup(homes: list[DemoHousehold]) -> dict[str, str]:
    engine = make_engine(IntakeSettings().database_url, pool_size=1)
    try:
        async with make_session_factory(engine)() as session, session.begin():
            await handlers.register_municipalities(session)
            await handlers.import_addresses(
                session,
                [(h.postcode.replace(" ", ""), h.huisnummer, h.gemeentecode) for h in homes],
            )
            partner, secret = await handlers.add_partner(
                session, naam="Bench Woonstichting", soort="Huur", kvk_nummer=None, now=utc_now()
            )
            return {
                "client_id": partner.client_id,
                "client_secret": secret,
                "soort": "Huur",
                "id": str(partner.id),
            }
    finally:
        await engine.dispose()


def unique_homes(count: int) -> list[DemoHousehold]:
    letters = "ABCDEFGHJKLMNPRTVXZ"
    homes = households(count, random.Random(99))
    return [
        DemoHousehold(
            **{
                **h.__dict__,
                "postcode": f"{h.postcode[:4]} {letters[(i // 999) % 19]}{letters[(i // 999 // 19) % 19]}",
                "huisnummer": i % 999 + 1,
            }
        )
        for i, h in enumerate(homes)
    ]


async def bearer(client: httpx.AsyncClient, partner: dict[str, str]) -> dict[str, str]:
    response = await client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(partner["client_id"], partner["client_secret"]),
    )
    response.raise_for_status()
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def token_for(url: str, partner: dict[str, str]) -> str:
    async with httpx.AsyncClient(base_url=url) as client:
        return (await bearer(client, partner))["Authorization"].removeprefix("Bearer ")


async def single_posts(
    url: str, partner: dict[str, str], homes: list[DemoHousehold], clients: int, total: int
) -> tuple[float, list[float]]:
    run = uuid.uuid4().hex[:6]
    bodies = [
        signal_body(
            homes[i % len(homes)],
            partner_signaal_id=f"S-{run}-{i}",
            soort="Huur",
            amount="250.00",
            signaaldatum=dt.date.today(),
        )
        for i in range(total)
    ]
    latencies: list[float] = []
    async with httpx.AsyncClient(
        base_url=url, timeout=60, limits=httpx.Limits(max_connections=clients)
    ) as client:
        headers = await bearer(client, partner)
        queue: asyncio.Queue = asyncio.Queue()
        for body in bodies:
            queue.put_nowait(body)

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                started = time.perf_counter()
                response = await client.post("/api/v1/signalen", json=body, headers=headers)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 201:
                    raise SystemExit(f"unexpected {response.status_code}: {response.text[:300]}")

        await client.get("/health/live")
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return total / elapsed, latencies


def wrk_posts(
    url: str, token: str, home: DemoHousehold, clients: int, seconds: int, intake_pids: list[int]
) -> dict[str, float] | None:
    """The same single-signal POSTs from wrk (a native load generator, so the client takes
    little of the two cores), when wrk is installed (Debian package `wrk`); with the CPU
    time intake, PostgreSQL and wrk spent per request."""
    if shutil.which("wrk") is None:
        return None
    before = _cpu_sample(intake_pids)
    body = signal_body(
        home, partner_signaal_id="@ID@", soort="Huur", amount="250.00", signaaldatum=dt.date.today()
    )
    script = Path(__file__).with_name("signal_post.lua")
    completed = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        env={**os.environ, "BENCH_SIGNAL_TEMPLATE": json.dumps(body), "BENCH_TOKEN": token},
        capture_output=True,
        text=True,
        check=True,
    )
    cpu = {name: value - before[name] for name, value in _cpu_sample(intake_pids).items()}
    out = completed.stdout
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw refusals:\n{out}")

    def ms(label: str) -> float:
        value = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        assert value is not None, out
        return float(value[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[value[2]]

    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rate is not None, out
    requests = re.search(r"(\d+) requests in", out)
    assert requests is not None, out
    per_request = {f"{name}_ms": 1000 * value / int(requests[1]) for name, value in cpu.items()}
    return {
        **per_request,
        "machine_share": cpu["machine"] / (seconds * (os.cpu_count() or 1)),
        "rate": float(rate[1]),
        "p50": ms("50%"),
        "p75": ms("75%"),
        "p90": ms("90%"),
        "p99": ms("99%"),
    }


def print_wrk(label: str, figures: dict[str, float]) -> None:
    print(f"{label}: {figures['rate']:8.0f} signals/s")
    print(
        f"  latency p50 {figures['p50']:.1f} ms   p75 {figures['p75']:.1f} ms   "
        f"p90 {figures['p90']:.1f} ms   p99 {figures['p99']:.1f} ms   (target p99 < 50 ms)"
    )
    print(
        f"  CPU per request: intake {figures['intake_ms']:.2f} ms, PostgreSQL "
        f"{figures['postgres_ms']:.2f} ms, wrk {figures['wrk_ms']:.2f} ms; machine busy "
        f"{figures['machine_share']:.0%} of its {os.cpu_count()} cores"
    )


def _cpu_sample(intake_pids: list[int]) -> dict[str, float]:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has exited
    return {
        "intake": sum(cpu_seconds(pid) for pid in intake_pids),
        "postgres": postgres_cpu(IntakeSettings().database_name)["postgres"],
        "wrk": children.ru_utime + children.ru_stime,
        "machine": machine_busy(),
    }


async def count_events(
    consumer: AIOKafkaConsumer, partner_id: str, expected: int, started: float
) -> tuple[float, int]:
    seen = 0
    size = 0
    marker = f'"partner_id":"{partner_id}"'.encode()
    try:
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                ours = [
                    r
                    for r in records
                    if marker in r.value and b'"partner_signaal_id":"D-' in r.value
                ]
                seen += len(ours)
                size += sum(len(r.value) for r in ours)
        return time.perf_counter() - started, size // max(seen, 1)
    finally:
        await consumer.stop()


async def delivery(
    url: str, bootstrap: str, partner: dict[str, str], homes: list[DemoHousehold], size: int
) -> dict[str, float]:
    bodies = [
        signal_body(
            homes[i % len(homes)],
            partner_signaal_id=f"D-{i}",
            soort="Huur",
            amount="300.00",
            signaaldatum=dt.date.today(),
        )
        for i in range(size)
    ]
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        headers = await bearer(client, partner)
        consumer = await kafka.reader(bootstrap, SIGNAL_RECEIVED.name)
        started = time.perf_counter()
        events = asyncio.create_task(count_events(consumer, partner["id"], size, started))
        response = await client.post("/api/v1/leveringen", json=bodies, headers=headers)
        accepted = time.perf_counter() - started
        if response.status_code != 202:
            raise SystemExit(f"delivery refused: {response.status_code} {response.text[:300]}")
        location = response.headers["Location"]
        progress = f"{location}?aantal=0"  # the progress only, not the lines
        while (await client.get(progress, headers=headers)).json()["status"] != "verwerkt":  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # polling interval of the measurement
        processed = time.perf_counter() - started
        published, event_size = await events
    return {
        "accepted": accepted,
        "processed": processed,
        "published": published,
        "bytes": len(response.request.content),
        "event_size": event_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--delivery", type=int, default=10_000)
    parser.add_argument("--wrk-seconds", type=int, default=10)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    port = stack.free_port()
    bootstrap = f"127.0.0.1:{port}"
    os.environ.update(
        {
            "VROEG_KAFKA_BOOTSTRAP": bootstrap,
            "VROEG_DATABASE_PREFIX": "benchintake",
            "VROEG_OTEL_EXPORTER": "none",
            # Capacity is measured here, not the per-partner rate limit (tested elsewhere).
            "VROEG_RATE_LIMIT_PER_S": "1000000",
            "VROEG_RATE_LIMIT_BURST": "1000000",
            # a second replica on the same port later: the kernel spreads the connections
            "VROEG_HTTP_SHARED_PORT": "true",
        }
    )
    broker = stack.start_broker(port, workdir)
    running = stack.Stack(env={}, log_dir=workdir)
    try:
        asyncio.run(stack.create_topics(bootstrap, IntakeSettings().kafka_partitions))
        asyncio.run(stack.prepare_databases([BY_NAME["intake"]], fresh=True))
        homes = unique_homes(max(args.delivery, 1000))
        partner = asyncio.run(setup(homes))
        running.start_service(BY_NAME["intake"], port=stack.free_port())
        running.wait_ready(["intake"])
        url = running.url("intake")
        rate, latencies = asyncio.run(
            single_posts(url, partner, homes, args.clients, args.requests)
        )
        native = wrk_posts(
            url,
            asyncio.run(token_for(url, partner)),
            homes[0],
            args.clients,
            args.wrk_seconds,
            [running.processes["intake"].pid],
        )
        result = asyncio.run(delivery(url, bootstrap, partner, homes, args.delivery))
        event_size = int(result["event_size"])
        _, raw = asyncio.run(kafka.produce(bootstrap, args.delivery, event_size))
        scaled = None
        if native is not None:  # the same load on two replicas sharing the port
            running.start_service(BY_NAME["intake"], name="intake-2", port=running.ports["intake"])
            running.wait_ready(["intake-2"])
            scaled = wrk_posts(
                url,
                asyncio.run(token_for(url, partner)),
                homes[0],
                args.clients,
                args.wrk_seconds,
                [running.processes[name].pid for name in ("intake", "intake-2")],
            )
    finally:
        running.stop()
        broker.stop()
    quantiles = statistics.quantiles(latencies, n=100)
    published_rate = args.delivery / result["published"]
    print(
        f"single POST, {args.clients} clients (Python httpx), {args.requests} signals: {rate:8.0f} signals/s"
    )
    print(
        f"  latency p50 {quantiles[49] * 1000:.1f} ms   p99 {quantiles[98] * 1000:.1f} ms   (target p99 < 50 ms)"
    )
    if native is None:
        print("  (install wrk for the same load from a native client)")
    for label, figures in (("", native), (", 2 intake replicas on one port", scaled)):
        if figures is not None:
            print_wrk(
                f"single POST, {args.clients} clients, wrk for {args.wrk_seconds} s{label}", figures
            )
    print(f"delivery of {args.delivery} signals ({result['bytes'] / 1e6:.1f} MB JSON):")
    print(f"  accepted (202)            {result['accepted']:6.2f} s")
    print(f"  every line judged         {result['processed']:6.2f} s")
    print(
        f"  every event in Kafka      {result['published']:6.2f} s   (target < 3 s)  {published_rate:.0f} signals/s"
    )
    print(f"raw broker produce, {args.delivery} x {event_size} B, acks=all: {raw:8.0f} msg/s")
    print(f"ratio delivery publish rate / raw produce rate: {published_rate / raw:.3f}")


if __name__ == "__main__":
    main()
