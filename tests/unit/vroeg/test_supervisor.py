"""The supervisor's restart policy and its reactions to a dead process (real child
processes, a controlled clock), a delivery that goes on across a restart, and the
installation's development secrets."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from services.registry import BY_NAME, ServiceSpec
from shared.settings import DEVELOPMENT_SECRET_PREFIX
from vroeg import stack as stack_mod
from vroeg.stack import ManagedProcess, RestartPolicy, StackFailed, Supervisor

POLICY = RestartPolicy(backoff_s=0.5, backoff_max_s=4.0, give_up_crashes=3, window_s=60.0)


def test_backoff_doubles_per_recent_crash_up_to_its_cap() -> None:
    policy = RestartPolicy(backoff_s=0.5, backoff_max_s=4.0, give_up_crashes=10, window_s=60.0)
    delays = [policy.delay([float(t) for t in range(n)], now=float(n)) for n in range(1, 7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_gives_up_only_after_k_crashes_within_the_window() -> None:
    assert POLICY.delay([0.0, 1.0], now=1.0) == 1.0
    assert POLICY.delay([0.0, 1.0, 2.0], now=2.0) is None
    # Crashes spread out over more than the window never add up to giving up.
    assert POLICY.delay([0.0, 61.0, 122.0], now=122.0) == 0.5


@dataclass
class FakeStack:
    """Stack's surface the supervisor uses, with `sleep` children standing in for services."""

    log_dir: Path
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        return "http://127.0.0.1:9"  # nothing listens: "ready again" is never claimed

    def start_service(self, spec: ServiceSpec, **_: object) -> ManagedProcess:
        process = ManagedProcess(
            spec.name,
            [sys.executable, "-c", "import time; time.sleep(60)"],
            dict(os.environ),
            self.log_dir / f"{spec.name}.log",
        ).start()
        self.processes[spec.name] = process
        self.started.append(spec.name)
        return process

    def stop(self) -> None:
        for process in self.processes.values():
            process.kill()


@pytest.fixture
def fake_stack(tmp_path: Path) -> Iterator[FakeStack]:
    running = FakeStack(tmp_path)
    for name in ("intake", "matching"):
        running.start_service(BY_NAME[name])
    running.started.clear()
    yield running
    running.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def supervisor_for(running: FakeStack, tmp_path: Path, clock: Clock, said: list[str]) -> Supervisor:
    specs: Mapping[str, ServiceSpec] = BY_NAME
    return Supervisor(
        running,  # type: ignore[arg-type]
        specs,
        None,
        POLICY,
        said.append,
        state_file=tmp_path / "supervisor.json",
        clock=clock,
    )


def test_a_killed_service_is_restarted_after_its_backoff_and_counted(
    fake_stack: FakeStack, tmp_path: Path
) -> None:
    clock, said = Clock(), list[str]()
    supervisor = supervisor_for(fake_stack, tmp_path, clock, said)
    first_pid = fake_stack.processes["intake"].pid
    fake_stack.processes["intake"].kill()  # SIGKILL, as the OOM killer would
    supervisor.check()
    assert said == ["intake stopped unexpectedly (exit -9); restart 1 in 0.5 s"]
    clock.now += 0.4
    supervisor.check()
    assert fake_stack.started == []  # not before the backoff has passed
    assert len(said) == 1  # and the wait is not counted as another crash
    clock.now += 0.1
    supervisor.check()
    assert fake_stack.started == ["intake"]
    assert fake_stack.processes["intake"].alive()
    assert fake_stack.processes["matching"].alive()  # the others were never touched
    state = json.loads((tmp_path / "supervisor.json").read_text())["services"]
    assert state["intake"]["restarts"] == 1
    assert state["intake"]["last_exit"] == -9
    assert state["intake"]["pid"] not in (first_pid, None)
    assert state["matching"]["restarts"] == 0


def test_repeated_crashes_in_a_short_time_stop_the_stack(
    fake_stack: FakeStack, tmp_path: Path
) -> None:
    clock, said = Clock(), list[str]()
    supervisor = supervisor_for(fake_stack, tmp_path, clock, said)
    for restart in (1, 2):
        fake_stack.processes["matching"].kill()
        supervisor.check()
        clock.now += 10
        supervisor.check()
        assert fake_stack.started.count("matching") == restart
    fake_stack.processes["matching"].kill()
    with pytest.raises(StackFailed, match=r"matching stopped unexpectedly \(exit -9\), 3 times"):
        supervisor.check()
    assert said[2] == "matching stopped unexpectedly (exit -9); restart 2 in 1.0 s"


def test_a_delivery_during_which_the_service_crashes_goes_on_after_its_restart(
    fake_stack: FakeStack, tmp_path: Path
) -> None:
    """As `vroeg up` delivers the demo data: alongside the supervisor, not before it."""
    clock, said = Clock(), list[str]()
    supervisor = supervisor_for(fake_stack, tmp_path, clock, said)
    attempts: list[int] = []

    def deliver() -> int:
        attempts.append(fake_stack.processes["intake"].pid)
        if len(attempts) == 1:
            fake_stack.processes["intake"].kill()  # intake dies halfway through the delivery
        if not fake_stack.started:
            raise httpx.ConnectError("connection refused")
        return 24

    def ready() -> bool:
        return "intake" in fake_stack.started and fake_stack.processes["intake"].alive()

    stopping, result = threading.Event(), list[int | None]()
    delivery = threading.Thread(
        target=lambda: result.append(
            stack_mod.deliver_when_ready(deliver, ready, stopping=stopping, poll_s=0.01)
        )
    )
    delivery.start()
    deadline = time.monotonic() + 10
    try:
        while delivery.is_alive() and time.monotonic() < deadline:
            supervisor.check()  # the supervisor's loop, on the controlled clock
            clock.now += 0.1
            delivery.join(0.01)
    finally:
        stopping.set()
        delivery.join(5)
    assert result == [24]
    assert said[0] == "intake stopped unexpectedly (exit -9); restart 1 in 0.5 s"
    assert fake_stack.started == ["intake"]
    assert len(attempts) == 2 and attempts[1] != attempts[0]  # delivered to the new process


def test_a_delivery_gives_up_at_its_deadline_and_raises_what_no_restart_cures() -> None:
    def refused() -> int:
        raise httpx.ConnectError("connection refused")

    stopping = threading.Event()
    assert (
        stack_mod.deliver_when_ready(
            refused, lambda: True, stopping=stopping, deadline_s=0.05, poll_s=0.01
        )
        is None
    )
    request = httpx.Request("POST", "http://127.0.0.1:9/api/v1/signalen")

    def bad_request() -> int:
        response = httpx.Response(400, request=request)
        raise httpx.HTTPStatusError("400", request=request, response=response)

    with pytest.raises(httpx.HTTPStatusError):
        stack_mod.deliver_when_ready(bad_request, lambda: True, stopping=stopping)
    stopping.set()
    assert stack_mod.deliver_when_ready(refused, lambda: True, stopping=stopping) is None


def test_development_secrets_are_fresh_private_kept_and_never_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in stack_mod.development_secret_names():
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / ".vroeg" / "secrets.env"
    first = stack_mod.development_secrets(path)
    assert {"VROEG_MASTER_KEY", "VROEG_HOUSEHOLD_KEY_SECRET", "VROEG_TOKEN_SIGNING_KEY"} <= set(
        first
    )
    assert not any(value.startswith(DEVELOPMENT_SECRET_PREFIX) for value in first.values())
    assert len(base64.b64decode(first["VROEG_MASTER_KEY"], validate=True)) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stack_mod.development_secrets(path) == first  # reused on the next run
    other = stack_mod.development_secrets(tmp_path / "elsewhere" / "secrets.env")
    assert not set(other.values()) & set(first.values())  # per installation
    monkeypatch.setenv("VROEG_TOKEN_SIGNING_KEY", "the operator's own")
    assert "VROEG_TOKEN_SIGNING_KEY" not in stack_mod.development_secrets(path)


def test_development_secrets_narrow_a_wider_existing_file_to_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in stack_mod.development_secret_names():
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / ".vroeg" / "secrets.env"
    first = stack_mod.development_secrets(path)
    path.chmod(0o644)  # widened by hand, or copied with a loose umask; nothing is missing
    assert stack_mod.development_secrets(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_kept_databases_of_an_installation_without_secrets_keep_the_development_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `vroeg up --no-fresh` where an older version ran: new secrets would make the kept
    # data unreadable (another master key) and re-key every household.
    for name in stack_mod.development_secret_names():
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / ".vroeg" / "secrets.env"
    assert stack_mod.development_secrets(path, make_new=False) == {}
    assert not path.exists()
    made = stack_mod.development_secrets(path)  # a fresh start makes them
    assert stack_mod.development_secrets(path, make_new=False) == made  # and keeps them
