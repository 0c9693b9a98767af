"""Pipeline benchmark: start-up time, end-to-end latency of one signal, throughput of a
2,000-signal stream, and the raw broker's rate for the same messages in the same run.

    .venv/bin/python -m bench.pipeline [--signals 2000] [--clients 20] [--latency-samples 20]

It starts its own stack (`vroeg up --no-demo`) on a free broker port with its own
database prefix (`bench_*`), so it never touches the development databases; the services
use their default ports 8001-8005, which must be free. Timings on these 2-core machines
are noisy: read the ratios, and the figures behind them, from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid

import httpx
from sqlalchemy import text

from bench import kafka
from services.outreach.settings import OutreachSettings
from shared.db import make_engine
from vroeg.addresses import address_rows, import_address_rows
from vroeg.demo import households, signal_body
from vroeg.stack import free_port

PREFIX = "bench"


def start_stack(env: dict[str, str]) -> tuple[subprocess.Popen, float, float]:
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "vroeg.cli", "up", "--no-demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if match := re.search(r"is up in ([\d.]+) s", line):
            return process, time.monotonic() - started, float(match.group(1))
        if process.poll() is not None:
            break
    raise SystemExit("the stack did not come up; run `vroeg up` to see why")


def stop_stack(process: subprocess.Popen) -> float:
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    return time.monotonic() - started


def add_partner(env: dict[str, str], naam: str, soort: str) -> dict[str, str]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vroeg.cli",
            "partner",
            "add",
            "--naam",
            naam,
            "--type",
            soort,
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {**json.loads(out), "soort": soort}


async def cases_containing(prefix: str) -> int:
    engine = make_engine(OutreachSettings().database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(
                text("SELECT count(*) FROM zaak_signalen WHERE partner_signaal_id LIKE :p"),
                {"p": f"{prefix}%"},
            )
            return int(result.scalar_one())
    finally:
        await engine.dispose()


async def wait_for_cases(prefix: str, expected: int, timeout_s: float = 300) -> float:
    deadline = time.monotonic() + timeout_s
    while await cases_containing(prefix) < expected:
        if time.monotonic() > deadline:
            raise SystemExit(
                f"timed out waiting for {expected} signals with prefix {prefix} in cases"
            )
        await asyncio.sleep(0.02)
    return time.monotonic()


async def bearer(client: httpx.AsyncClient, partner: dict[str, str]) -> str:
    response = await client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(partner["client_id"], partner["client_secret"]),
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


async def latency(partner: dict[str, str], samples: int) -> list[float]:
    homes = households(samples, random.Random(7))
    results = []
    async with httpx.AsyncClient(base_url="http://127.0.0.1:8001", timeout=30) as client:
        headers = {"Authorization": f"Bearer {await bearer(client, partner)}"}
        for index, home in enumerate(homes):
            ref = f"LAT-{uuid.uuid4().hex[:8]}-{index}"
            body = signal_body(
                home,
                partner_signaal_id=ref,
                soort=partner["soort"],
                amount="500.00",
                signaaldatum=dt.date.today(),
            )
            started = time.monotonic()
            (await client.post("/api/v1/signalen", json=body, headers=headers)).raise_for_status()
            results.append(await wait_for_cases(ref, 1) - started)
    return results


async def stream(
    partners: list[dict[str, str]], count: int, clients: int
) -> tuple[float, float, int]:
    homes = households(count, random.Random(8))
    run = uuid.uuid4().hex[:6]
    queue: asyncio.Queue = asyncio.Queue()
    for index in range(count):
        partner = partners[index % len(partners)]
        home = homes[index * 2 // 3]  # a third of the households get two creditors
        queue.put_nowait(
            (
                partner,
                signal_body(
                    home,
                    partner_signaal_id=f"TP-{run}-{index:05d}",
                    soort=partner["soort"],
                    amount="321.00",
                    signaaldatum=dt.date.today(),
                ),
            )
        )
    payload_size = len(json.dumps(queue._queue[0][1]))  # type: ignore[attr-defined]
    async with httpx.AsyncClient(
        base_url="http://127.0.0.1:8001", timeout=60, limits=httpx.Limits(max_connections=clients)
    ) as client:
        tokens = {p["client_id"]: await bearer(client, p) for p in partners}

        async def worker() -> None:
            while not queue.empty():
                partner, body = queue.get_nowait()
                response = await client.post(
                    "/api/v1/signalen",
                    json=body,
                    headers={"Authorization": f"Bearer {tokens[partner['client_id']]}"},
                )
                response.raise_for_status()

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(clients)))
        accepted = time.monotonic()
    finished = await wait_for_cases(f"TP-{run}-", count)
    return accepted - started, finished - started, payload_size


async def raw_broker(bootstrap: str, count: int, size: int) -> tuple[float, float]:
    """The same number of messages of the same size, produced (acks=all) and consumed."""
    topic, produced = await kafka.produce(bootstrap, count, size)
    return produced, await kafka.consume_rate(bootstrap, topic, count)


async def measure(args: argparse.Namespace, env: dict[str, str]) -> dict:
    # The bench's households lie in the region's address table, as after a CBS import.
    homes = households(args.latency_samples, random.Random(7)) + households(
        args.signals, random.Random(8)
    )
    await import_address_rows(address_rows(homes))
    partners = [
        add_partner(env, f"Bench {soort}", soort)
        for soort in ("Huur", "Water", "CAK Zorgverzekeringen")
    ]
    latencies = await latency(partners[0], args.latency_samples)
    accept_s, end_to_end_s, size = await stream(partners, args.signals, args.clients)
    produce_rate, consume_rate = await raw_broker(env["VROEG_KAFKA_BOOTSTRAP"], args.signals, size)
    return {
        "latency_p50_ms": statistics.median(latencies) * 1000,
        "latency_max_ms": max(latencies) * 1000,
        "accept_s": accept_s,
        "end_to_end_s": end_to_end_s,
        "payload_bytes": size,
        "raw_produce_rate": produce_rate,
        "raw_consume_rate": consume_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signals", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--latency-samples", type=int, default=20)
    args = parser.parse_args()
    port = free_port()
    env = {
        **os.environ,
        "VROEG_DATABASE_PREFIX": PREFIX,
        "VROEG_KAFKA_PORT": str(port),
        "VROEG_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
        "VROEG_OTEL_EXPORTER": "none",
    }
    os.environ.update({k: env[k] for k in ("VROEG_DATABASE_PREFIX", "VROEG_KAFKA_BOOTSTRAP")})
    process, wall_startup_s, reported_startup_s = start_stack(env)
    try:
        figures = asyncio.run(measure(args, env))
    finally:
        stop_s = stop_stack(process)
    pipeline_rate = args.signals / figures["end_to_end_s"]
    print(
        f"start-up (vroeg up, wall clock to 'up')   {wall_startup_s:8.1f} s  (reported {reported_startup_s:.1f} s)"
    )
    print(f"shutdown after Ctrl-C                      {stop_s:8.1f} s")
    print(
        f"one signal, POST to case listed: p50       {figures['latency_p50_ms']:8.0f} ms  "
        f"(max {figures['latency_max_ms']:.0f} ms, {args.latency_samples} samples)"
    )
    print(
        f"{args.signals} signals, {args.clients} clients: all accepted  {figures['accept_s']:8.2f} s  "
        f"({args.signals / figures['accept_s']:.0f} signals/s over HTTP)"
    )
    print(
        f"{args.signals} signals: all in cases                {figures['end_to_end_s']:8.2f} s  "
        f"({pipeline_rate:.0f} signals/s end to end)"
    )
    print(
        f"raw broker, {args.signals} x {figures['payload_bytes']} B: produce  "
        f"{figures['raw_produce_rate']:8.0f} msg/s, consume {figures['raw_consume_rate']:.0f} msg/s"
    )
    print(
        f"ratio pipeline / raw produce               {pipeline_rate / figures['raw_produce_rate']:8.3f}"
    )
    print(
        f"ratio pipeline / raw consume               {pipeline_rate / figures['raw_consume_rate']:8.3f}"
    )


if __name__ == "__main__":
    main()
