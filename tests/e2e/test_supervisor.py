"""`vroeg up` (what `make run` runs) brings a crashed service back: kill -9 each of the
five services in turn while 10,000 signals flow; every signal still ends in exactly one
case and appears exactly once in its partner's feedback feed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.outreach.settings import OutreachSettings
from services.registry import BY_NAME, SERVICES
from shared.db import drop_database
from shared.settings import ServiceSettings
from tests.support import fresh_households, poll, service_scalar, signal_for, token
from vroeg import stack as stack_mod

pytestmark = pytest.mark.e2e

SIGNALS = 10_000
TWO_CREDITOR_HOUSEHOLDS = 4_000  # 4,000 x 2 + 2,000 x 1 = 10,000 signals
HOUSEHOLDS = SIGNALS - TWO_CREDITOR_HOUSEHOLDS
DELIVERY_SIZE = 1_000
PREFIX = "SUP-"
# Outreach takes each match in its own round trips: ~25 signals/s on a loaded 2-core machine.
CASES_DEADLINE_S = 600
VROEG = Path(sys.executable).with_name("vroeg")


def free_port_range(count: int) -> int:
    """The first of `count` consecutive free ports."""
    while True:
        base = 20_000 + secrets.randbelow(30_000)
        if not any(stack_mod.port_open(base + i) for i in range(count)):
            return base


@dataclass
class Up:
    """A running `vroeg up` in a working directory of its own."""

    process: subprocess.Popen
    workdir: Path
    output: Path

    @property
    def state_dir(self) -> Path:
        return self.workdir / ".vroeg"

    def said(self) -> str:
        return self.output.read_text(encoding="utf-8", errors="replace")

    def supervised(self) -> dict:
        """What the supervisor last wrote about each service (it runs, or the test fails)."""
        try:
            report = json.loads((self.state_dir / "supervisor.json").read_text())
        except FileNotFoundError:
            raise AssertionError(f"vroeg up is not running:\n{self.said()}") from None
        return dict(report["services"])

    def alive(self) -> bool:
        return self.process.poll() is None


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A working directory outside pytest's rotated temporary tree (parallel runs on the
    machine may clean that up under a running stack)."""
    with tempfile.TemporaryDirectory(prefix="vroeg-up-") as path:
        yield Path(path)


@pytest.fixture
def vroeg_up(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Up]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VROEG_")}
    env.update(
        {
            "VROEG_KAFKA_PORT": str(stack_mod.free_port()),
            "VROEG_PORT_BASE": str(free_port_range(len(SERVICES))),
            "VROEG_DATABASE_PREFIX": f"s{secrets.token_hex(4)}",
            # A restarted intake takes over an interrupted delivery once its lease ends.
            "VROEG_DELIVERY_LEASE_S": "5",
            "PYTHONUNBUFFERED": "1",  # its lines as they are said
            "COLUMNS": "200",
        }
    )
    output = workdir / "vroeg-up.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [str(VROEG), "up"],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    up = Up(process, workdir, output)
    try:
        poll(
            lambda: "Press Ctrl-C to stop." in up.said() or not up.alive(),
            180,
            "vroeg up to start",
            interval_s=0.5,
        )
        assert up.alive(), up.said()
        # The test reads the stack's databases as an operator's CLI would: via runtime.env.
        runtime = (up.state_dir / "runtime.env").read_text().splitlines()
        for key, value in (line.split("=", 1) for line in runtime if "=" in line):
            monkeypatch.setenv(key, value)
        yield up
    finally:
        if up.alive():
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(60)
        if up.alive():
            process.kill()
            process.wait()
        for url in [
            *(spec.settings().database_url for spec in SERVICES),
            ServiceSettings().keystore_url,
        ]:
            with contextlib.suppress(Exception):
                asyncio.run(drop_database(url))


def deliveries(partners: list[dict]) -> list[tuple[dict, list[dict]]]:
    """10,000 signals in deliveries of 1,000, each from one partner."""
    homes = fresh_households(HOUSEHOLDS, 37)
    per_partner: dict[str, list[dict]] = {p["client_id"]: [] for p in partners}
    for index, home in enumerate(homes):
        for offset in range(2 if index < TWO_CREDITOR_HOUSEHOLDS else 1):
            partner = partners[(index + offset) % len(partners)]
            body = signal_for(home, partner, f"{PREFIX}{index:05d}-{offset}")
            per_partner[partner["client_id"]].append(body)
    by_id = {p["client_id"]: p for p in partners}
    batches = [
        (by_id[client_id], signals[start : start + DELIVERY_SIZE])
        for client_id, signals in per_partner.items()
        for start in range(0, len(signals), DELIVERY_SIZE)
    ]
    assert sum(len(b) for _, b in batches) == SIGNALS
    return batches


def feed_ids(client: httpx.Client, partner: dict, bearer: str) -> list[str]:
    """Every partnerSignaalId of ours in the partner's feedback feed, page by page."""
    ids: list[str] = []
    cursor = 0
    while True:
        page = client.get(
            "/api/v1/terugkoppelingen",
            params={"vanaf": cursor, "aantal": 1000},
            headers={"Authorization": f"Bearer {bearer}"},
        )
        assert page.status_code == 200, page.text
        body = page.json()
        ids += [
            item["partnerSignaalId"]
            for item in body["terugkoppelingen"]
            if item["partnerSignaalId"].startswith(PREFIX)
        ]
        if body["volgende"] is None:
            return ids
        cursor = body["volgende"]


def test_kill_9_each_service_in_turn_under_vroeg_up_loses_and_doubles_nothing(
    vroeg_up: Up,
) -> None:
    # This installation's own development secrets: private, and never on the console.
    secrets_file = vroeg_up.state_dir / "secrets.env"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    made = dict(line.split("=", 1) for line in secrets_file.read_text().splitlines())
    assert {"VROEG_MASTER_KEY", "VROEG_HOUSEHOLD_KEY_SECRET", "VROEG_TOKEN_SIGNING_KEY"} <= set(
        made
    )
    assert not any(value in vroeg_up.said() for value in made.values())
    partners = json.loads((vroeg_up.state_dir / "demo-partners.json").read_text())
    batches = deliveries(partners)
    intake_url = vroeg_up.supervised()["intake"]["url"]
    rounds = [batches[i :: len(SERVICES)] for i in range(len(SERVICES))]

    with httpx.Client(base_url=intake_url, timeout=60) as client:
        tokens = {p["client_id"]: token(client, p) for p in partners}
        for spec, round_batches in zip(SERVICES, rounds, strict=True):
            for partner, signals in round_batches:
                response = client.post(
                    "/api/v1/leveringen",
                    json=signals,
                    headers={"Authorization": f"Bearer {tokens[partner['client_id']]}"},
                )
                assert response.status_code == 202, response.text
            victim = vroeg_up.supervised()[spec.name]
            os.kill(victim["pid"], signal.SIGKILL)  # as the OOM killer would: no shutdown

            def back(name: str = spec.name, old_pid: int = victim["pid"]) -> bool:
                assert vroeg_up.alive(), vroeg_up.said()
                state = vroeg_up.supervised()[name]
                return state["pid"] != old_pid and state["state"] == "ready"

            poll(back, 60, f"{spec.name} to be restarted and ready", interval_s=0.2)

        said = vroeg_up.said()
        for spec in SERVICES:
            assert f"{spec.name} stopped unexpectedly (exit -9); restart 1 in 0.5 s" in said, said
        status = subprocess.run(
            [str(VROEG), "status", "--json"],
            cwd=vroeg_up.workdir,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert {s["service"]: s["restarts"] for s in json.loads(status.stdout)["services"]} == {
            spec.name: 1 for spec in SERVICES
        }

        outreach_db = OutreachSettings().database_url
        ours = f"partner_signaal_id LIKE '{PREFIX}%'"

        def progress() -> str:
            """How far the signals are, stage by stage (for a failure message)."""
            stages = {
                "intake": ("signalen", BY_NAME["intake"]),
                "matching": ("signals", BY_NAME["matching"]),
                "outreach": ("zaak_signalen", BY_NAME["outreach"]),
            }
            counts = {
                stage: service_scalar(
                    spec.settings().database_url, f"SELECT count(*) FROM {table} WHERE {ours}"
                )
                for stage, (table, spec) in stages.items()
            }
            unfinished = service_scalar(
                BY_NAME["intake"].settings().database_url,
                "SELECT count(*) FROM leveringen WHERE status <> 'verwerkt'",
            )
            return f"{counts}, deliveries unfinished: {unfinished}"

        def all_in_cases() -> bool:
            assert vroeg_up.alive(), vroeg_up.said()
            count = service_scalar(outreach_db, f"SELECT count(*) FROM zaak_signalen WHERE {ours}")
            return bool(count >= SIGNALS)

        try:
            poll(all_in_cases, CASES_DEADLINE_S, "every signal in a case", interval_s=1.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; so far {progress()}") from None
        # Every signal in exactly one case: as many rows as signals, none twice.
        assert (
            service_scalar(
                outreach_db,
                f"SELECT count(DISTINCT partner_signaal_id) FROM zaak_signalen WHERE {ours}",
            )
            == service_scalar(outreach_db, f"SELECT count(*) FROM zaak_signalen WHERE {ours}")
            == SIGNALS
        )

        def every_signal_fed_back() -> list[str] | None:
            ids = [i for p in partners for i in feed_ids(client, p, tokens[p["client_id"]])]
            return ids if len(ids) >= SIGNALS else None

        fed_back = poll(every_signal_fed_back, 120, "every signal in a feed", interval_s=1.0)
        assert len(fed_back) == len(set(fed_back)) == SIGNALS  # each exactly once

    vroeg_up.process.send_signal(signal.SIGTERM)  # Ctrl-C / SIGTERM still stop everything
    assert vroeg_up.process.wait(60) == 0
    assert "Stopped; nothing left running." in vroeg_up.said()
