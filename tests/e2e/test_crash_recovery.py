"""Kill -9 the matching process while 2,000 signals stream through: every signal still
ends in exactly one case, none lost, none doubled."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import text

from services.feedback.settings import FeedbackSettings
from services.matching.settings import MatchingSettings
from services.outreach.settings import OutreachSettings
from services.registry import BY_NAME
from shared.db import make_engine
from tests.support import add_partner, apoll, fresh_households, signal_for, token
from vroeg.stack import Stack

pytestmark = pytest.mark.e2e

SIGNALS = 2000
TWO_CREDITOR_HOUSEHOLDS = 700  # 700 x 2 + 600 x 1 = 2,000 signals in 1,300 households
HOUSEHOLDS = SIGNALS - TWO_CREDITOR_HOUSEHOLDS


async def scalar(database_url: str, sql: str, **params: object) -> int:
    engine = make_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text(sql), params)).scalar_one())
    finally:
        await engine.dispose()


async def test_kill_9_matching_mid_stream_loses_and_doubles_nothing(running_stack: Stack) -> None:
    partners = [
        add_partner(f"Crashtest {soort} (test)", soort)
        for soort in ("Huur", "Water", "CAK Zorgverzekeringen", "Energie")
    ]
    homes = await asyncio.to_thread(fresh_households, HOUSEHOLDS, 21)
    deliveries = []
    for index, home in enumerate(homes):
        creditors = 2 if index < TWO_CREDITOR_HOUSEHOLDS else 1
        for offset in range(creditors):
            partner = partners[(index + offset) % len(partners)]
            deliveries.append((partner, signal_for(home, partner, f"CRASH-{index:04d}-{offset}")))
    assert len(deliveries) == SIGNALS

    matching = running_stack.processes["matching"]
    killed_pid = matching.pid
    accepted = 0
    queue: asyncio.Queue = asyncio.Queue()
    for delivery in deliveries:
        queue.put_nowait(delivery)

    async with httpx.AsyncClient(base_url=running_stack.url("intake"), timeout=30) as client:
        with httpx.Client(base_url=running_stack.url("intake")) as sync_client:
            tokens = {p["client_id"]: token(sync_client, p) for p in partners}

        async def worker() -> None:
            nonlocal accepted
            while not queue.empty():
                partner, body = queue.get_nowait()
                response = await client.post(
                    "/api/v1/signalen",
                    json=body,
                    headers={"Authorization": f"Bearer {tokens[partner['client_id']]}"},
                )
                assert response.status_code == 201, response.text
                accepted += 1
                if accepted == 600:
                    matching.kill()  # SIGKILL: no shutdown, no offset commit, mid-batch
                if accepted == 1200:
                    running_stack.start_service(BY_NAME["matching"])

        await asyncio.gather(*(worker() for _ in range(20)))
    assert matching.process is not None and matching.process.returncode == -9
    await asyncio.to_thread(running_stack.wait_ready, ["matching"])
    assert running_stack.processes["matching"].pid != killed_pid

    outreach_db = OutreachSettings().database_url
    ours = "partner_signaal_id LIKE 'CRASH-%'"

    async def all_signals_in_cases() -> bool:
        return (
            await scalar(outreach_db, f"SELECT count(*) FROM zaak_signalen WHERE {ours}") == SIGNALS
        )

    await apoll(all_signals_in_cases, 180, "all 2,000 signals in cases")

    # Exactly one case per household, and every signal in exactly one case.
    cases = await scalar(
        outreach_db,
        f"SELECT count(DISTINCT case_id) FROM zaak_signalen WHERE {ours}",
    )
    households_with_more_than_one_case = await scalar(
        outreach_db,
        f"""SELECT count(*) FROM (
              SELECT z.household_key FROM zaken z
              WHERE z.id IN (SELECT case_id FROM zaak_signalen WHERE {ours})
              GROUP BY z.household_key HAVING count(*) > 1) doubled""",
    )
    multiple_cases = await scalar(
        outreach_db,
        f"""SELECT count(*) FROM zaken WHERE soort = 'meervoudig'
              AND id IN (SELECT case_id FROM zaak_signalen WHERE {ours})""",
    )
    assert cases == HOUSEHOLDS
    assert households_with_more_than_one_case == 0
    assert multiple_cases == TWO_CREDITOR_HOUSEHOLDS

    matching_db = MatchingSettings().database_url
    assert await scalar(matching_db, f"SELECT count(*) FROM signals WHERE {ours}") == SIGNALS
    assert (
        await scalar(matching_db, f"SELECT count(DISTINCT match_id) FROM signals WHERE {ours}")
        == HOUSEHOLDS
    )

    async def feedback_has_all() -> bool:
        return (
            await scalar(
                FeedbackSettings().database_url,
                f"SELECT count(*) FROM partner_signalen WHERE {ours}",
            )
            == SIGNALS
        )

    await apoll(feedback_has_all, 60, "feedback to know every signal")
    for database_url in (matching_db, outreach_db):
        assert (
            await scalar(database_url, "SELECT count(*) FROM inbox WHERE outcome <> 'processed'")
            == 0
        )
