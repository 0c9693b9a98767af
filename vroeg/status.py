"""What `vroeg status` reports: health and restarts per service, records per stage,
consumer lag."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text

from services.registry import SERVICES
from shared.db import make_engine
from shared.events import TOPICS
from shared.messaging import kafka_client_args
from shared.settings import ServiceSettings
from vroeg.stack import SUPERVISOR_STATE_FILE, read_supervisor_state

# The table that counts a service's stage of the flow.
STAGE_TABLES = {
    "intake": ("signalen", "signalen ontvangen"),
    "matching": ("matches", "matches"),
    "outreach": ("zaken", "zaken"),
    "feedback": ("partner_signalen", "signalen met terugkoppeling"),
    "retention": ("archiefstukken", "archiefstukken"),
}


def _client_args(bootstrap: str) -> dict[str, Any]:
    """The clients' keyword arguments: the configured TLS/SASL security, this bootstrap."""
    return {**kafka_client_args(ServiceSettings()), "bootstrap_servers": bootstrap}


@dataclass(frozen=True)
class ServiceStatus:
    service: str
    url: str
    ready: bool
    stage: str
    count: int | None
    outbox_pending: int | None
    restarts: int | None = None  # under `vroeg up`: restarts after a crash
    last_exit: int | None = None


@dataclass(frozen=True)
class GroupLag:
    group: str
    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(self.end - max(self.committed, 0), 0)


async def _service_status(name: str, url: str, database_url: str) -> ServiceStatus:
    async with httpx.AsyncClient(timeout=2) as client:
        try:
            ready = (await client.get(f"{url}/health/ready")).status_code == 200
        except httpx.HTTPError:
            ready = False
    table, stage = STAGE_TABLES[name]
    engine = make_engine(database_url, pool_size=1)
    count: int | None
    pending: int | None
    try:
        async with engine.connect() as conn:
            count = int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())
            pending = int((await conn.execute(text("SELECT count(*) FROM outbox"))).scalar_one())
    except Exception:
        count = pending = None
    finally:
        await engine.dispose()
    return ServiceStatus(name, url, ready, stage, count, pending)


async def end_offsets(
    bootstrap: str, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """The high watermark of each partition, read from a fetch of its last batch.

    ListOffsets of the embedded Tansu build answers the last batch's base offset + 1,
    not the end; a fetch's high watermark is right on Tansu and Apache Kafka alike.
    """
    consumer = AIOKafkaConsumer(**_client_args(bootstrap), enable_auto_commit=False)
    await consumer.start()
    try:
        reported = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, max(reported[tp] - 1, 0))
        pending = {tp for tp in partitions if reported[tp] > 0}
        deadline = asyncio.get_running_loop().time() + 10
        while pending and asyncio.get_running_loop().time() < deadline:
            await consumer.getmany(*pending, timeout_ms=500, max_records=1)
            pending = {tp for tp in pending if consumer.highwater(tp) is None}
        return {tp: consumer.highwater(tp) or reported[tp] for tp in partitions}
    finally:
        await consumer.stop()


async def consumer_lag(bootstrap: str) -> list[GroupLag]:
    """Committed offset against end offset per group, topic and partition (broker side)."""
    admin = AIOKafkaAdminClient(**_client_args(bootstrap), request_timeout_ms=5000)
    await admin.start()
    try:
        groups = sorted(g[0] for g in await admin.list_consumer_groups())
        existing = set(await admin.list_topics())
        described = await admin.describe_topics([t.name for t in TOPICS if t.name in existing])
    finally:
        await admin.close()
    partitions = [
        TopicPartition(topic["topic"], p["partition"])
        for topic in described
        for p in sorted(topic["partitions"], key=lambda p: p["partition"])
    ]
    ends = await end_offsets(bootstrap, partitions)
    lags: list[GroupLag] = []
    for group in groups:
        reader = AIOKafkaConsumer(
            **_client_args(bootstrap), group_id=group, enable_auto_commit=False
        )
        await reader.start()
        try:
            for tp in partitions:
                committed = await reader.committed(tp)
                if committed is not None:
                    lags.append(GroupLag(group, tp.topic, tp.partition, committed, ends[tp]))
        finally:
            await reader.stop()
    return lags


async def gather(bootstrap: str, supervisor_state: Path = SUPERVISOR_STATE_FILE) -> dict:
    supervised = (read_supervisor_state(supervisor_state) or {}).get("services", {})
    services = await asyncio.gather(
        *(
            _service_status(
                spec.name,
                supervised.get(spec.name, {}).get(
                    "url", f"http://127.0.0.1:{spec.settings().http_port}"
                ),
                spec.settings().database_url,
            )
            for spec in SERVICES
        )
    )
    services = [
        replace(
            s,
            restarts=supervised.get(s.service, {}).get("restarts"),
            last_exit=supervised.get(s.service, {}).get("last_exit"),
        )
        for s in services
    ]
    try:
        lags = await asyncio.wait_for(consumer_lag(bootstrap), timeout=15)
        lag_error = None
    except Exception as exc:
        lags, lag_error = [], f"broker not reachable ({type(exc).__name__})"
    return {
        "services": [asdict(s) for s in services],
        "consumer_lag": [{**asdict(lag), "lag": lag.lag} for lag in lags],
        "consumer_lag_error": lag_error,
    }
