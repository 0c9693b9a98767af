"""What `vroeg status` reports: health per service, records per stage, consumer lag."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text

from services.registry import SERVICES
from shared.db import make_engine

# The table that counts a service's stage of the flow.
STAGE_TABLES = {
    "intake": ("signalen", "signalen ontvangen"),
    "matching": ("matches", "matches"),
    "outreach": ("zaken", "zaken"),
    "feedback": ("partner_signalen", "signalen met terugkoppeling"),
    "retention": ("archiefstukken", "archiefstukken"),
}


@dataclass(frozen=True)
class ServiceStatus:
    service: str
    url: str
    ready: bool
    stage: str
    count: int | None
    outbox_pending: int | None


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
    try:
        async with engine.connect() as conn:
            count = int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())
            pending = int((await conn.execute(text("SELECT count(*) FROM outbox"))).scalar_one())
    except Exception:
        count = pending = None
    finally:
        await engine.dispose()
    return ServiceStatus(name, url, ready, stage, count, pending)


async def consumer_lag(bootstrap: str) -> list[GroupLag]:
    """Committed offset against end offset per group, topic and partition (broker side)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        groups = [g[0] for g in await admin.list_consumer_groups()]
        lags: list[GroupLag] = []
        for group in sorted(groups):
            offsets = await admin.list_consumer_group_offsets(group)
            if not offsets:
                continue
            ends = await consumer.end_offsets(list(offsets))
            for tp, meta in sorted(
                offsets.items(), key=lambda item: (item[0].topic, item[0].partition)
            ):
                lags.append(GroupLag(group, tp.topic, tp.partition, meta.offset, ends.get(tp, 0)))
        return lags
    finally:
        await consumer.stop()
        await admin.close()


async def gather(bootstrap: str) -> dict:
    services = await asyncio.gather(
        *(
            _service_status(
                spec.name,
                f"http://127.0.0.1:{spec.settings().http_port}",
                spec.settings().database_url,
            )
            for spec in SERVICES
        )
    )
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


__all__ = ["GroupLag", "ServiceStatus", "TopicPartition", "consumer_lag", "gather"]
