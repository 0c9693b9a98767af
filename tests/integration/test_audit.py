"""The audit trail against real PostgreSQL (and the running stack): it cannot be stopped
from outside, a call is answered only after its record committed, a refused record is
set aside, two writers never fork the chain, and `vroeg audit` / `verify` see it all."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import uuid

import httpx
import pytest
from sqlalchemy import text

from services.intake.models import audit as intake_audit
from services.matching.settings import MatchingSettings
from services.outreach.models import audit as outreach_audit
from services.outreach.settings import OutreachSettings
from services.retention.models import audit as retention_audit
from services.retention.settings import RetentionSettings
from shared.audit import AuditEntry, AuditTrail, record, verify
from shared.db import make_engine, make_session_factory
from shared.events import utc_now
from tests.support import (
    add_partner,
    bearer,
    fresh_households,
    intake_scalar,
    service_scalar,
    signal_for,
    vroeg_cli,
)
from vroeg.stack import Stack

pytestmark = pytest.mark.integration


def test_no_path_stops_the_trail_and_every_answered_call_is_already_recorded(
    running_stack: Stack,
) -> None:
    partner = add_partner("Woonstichting Auditspoor (test)", "Huur")
    home = fresh_households(1, seed=61)[0]
    marker = uuid.uuid4().hex
    since = utc_now()
    with httpx.Client(base_url=running_stack.url("intake")) as client:
        long_path = client.get(f"/api/{marker}" + "x" * 300)
        nul_path = client.get(f"/api/{marker}%00")
        wrong_type = client.post(
            "/api/v1/signalen", content=b"x", headers={"Content-Type": "text/plain"}
        )
        headers = bearer(client, partner)
        signal = client.post(
            "/api/v1/signalen", json=signal_for(home, partner, "AUDIT-PATH"), headers=headers
        )
    assert long_path.status_code == nul_path.status_code == 404
    assert wrong_type.status_code == 415
    assert signal.status_code == 201
    # No polling: the answer came after the record committed.
    receipt = signal.json()["id"]
    assert (
        intake_scalar(
            "SELECT count(*) FROM audit_log WHERE object = :o AND action = 'POST /api/v1/signalen' "
            "AND result = '201'",
            o=f"signaal:{receipt}",
        )
        == 1
    )
    assert (
        intake_scalar(
            "SELECT count(*) FROM audit_log WHERE action = 'onbekend pad' AND actor = 'anoniem' "
            "AND result = '404' AND at >= :since",
            since=since,
        )
        == 2
    )
    assert (
        intake_scalar("SELECT count(*) FROM audit_log WHERE action LIKE :m", m=f"%{marker}%") == 0
    )
    assert (  # refused before routing, still under its route
        intake_scalar(
            "SELECT count(*) FROM audit_log WHERE action = 'POST /api/v1/signalen' "
            "AND result = '415' AND at >= :since",
            since=since,
        )
        == 1
    )


def test_concurrent_calls_share_commits_and_none_is_answered_unrecorded(
    running_stack: Stack,
) -> None:
    calls = 60
    before = intake_scalar("SELECT last_id FROM audit_chain")

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=running_stack.url("intake")) as client:
            answers = await asyncio.gather(
                *(client.get(f"/api/v1/signalen/{uuid.uuid4()}") for _ in range(calls))
            )
        return [a.status_code for a in answers]

    statuses = asyncio.run(burst())
    assert all(s == 401 for s in statuses)
    recorded = intake_scalar(
        "SELECT count(*) FROM audit_log WHERE id > :b AND action = 'GET /api/v1/signalen/{signaal_id}' "
        "AND result = '401'",
        b=before,
    )
    assert recorded == calls


async def _with_trail(database_url: str, tables, work):  # type: ignore[no-untyped-def]
    engine = make_engine(database_url, pool_size=4)
    trail = AuditTrail(make_session_factory(engine), tables)
    writer = asyncio.create_task(trail.run())
    try:
        return await work(trail, make_session_factory(engine))
    finally:
        writer.cancel()
        await engine.dispose()


def _entry(object_: str) -> AuditEntry:
    return AuditEntry(
        at=utc_now(), actor="test", action="test-schrijven", object=object_, result="ok"
    )


def test_a_record_the_database_refuses_is_set_aside_and_the_rest_is_kept(infra) -> None:  # type: ignore[no-untyped-def]
    url = RetentionSettings().database_url
    marker = uuid.uuid4().hex[:12]
    poison = f"gif:{marker}"

    async def work(trail: AuditTrail, sessions) -> None:  # type: ignore[no-untyped-def]
        async with sessions() as session, session.begin():
            await session.execute(
                text(
                    "CREATE OR REPLACE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
                    f"IF NEW.object = '{poison}' THEN RAISE EXCEPTION 'refused'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            await session.execute(
                text(
                    "CREATE TRIGGER refuse_poison BEFORE INSERT ON audit_log "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
                )
            )
        try:
            await asyncio.gather(
                *(trail.write(_entry(f"{marker}:{i}")) for i in range(3)),
                trail.write(_entry(poison)),
                *(trail.write(_entry(f"{marker}:{i}")) for i in range(3, 6)),
            )
            await trail.write(_entry(f"{marker}:after"))  # the trail goes on
        finally:
            async with sessions() as session, session.begin():
                await session.execute(text("DROP TRIGGER refuse_poison ON audit_log"))
                await session.execute(text("DROP FUNCTION refuse_poison()"))
        async with sessions() as session, session.begin():
            assert await verify(session, retention_audit) is None

    asyncio.run(_with_trail(url, retention_audit, work))
    kept = service_scalar(
        url, "SELECT count(*) FROM audit_log WHERE object LIKE :m", m=f"{marker}:%"
    )
    assert kept == 7
    assert service_scalar(url, "SELECT count(*) FROM audit_log WHERE object = :p", p=poison) == 0
    rejected = service_scalar(
        url, "SELECT error FROM audit_rejected WHERE record LIKE :p", p=f"%{poison}%"
    )
    assert rejected is not None and "P0001" in rejected


def test_two_writers_never_fork_the_chain(infra) -> None:  # type: ignore[no-untyped-def]
    url = MatchingSettings().database_url
    from services.matching.models import audit as matching_audit

    async def work(trail: AuditTrail, sessions) -> None:  # type: ignore[no-untyped-def]
        async def other(trail2: AuditTrail, sessions2) -> None:  # type: ignore[no-untyped-def]
            async def in_transaction(i: int) -> None:
                async with sessions2() as session, session.begin():
                    await record(
                        session,
                        matching_audit,
                        actor="test",
                        action="test",
                        object_=f"t{i}",
                        result="ok",
                    )

            await asyncio.gather(
                *(trail.write(_entry(f"a{i}")) for i in range(100)),
                *(trail2.write(_entry(f"b{i}")) for i in range(100)),
                *(in_transaction(i) for i in range(20)),
            )

        await _with_trail(url, matching_audit, other)
        async with sessions() as session, session.begin():
            assert await verify(session, matching_audit) is None

    asyncio.run(_with_trail(url, matching_audit, work))
    assert (
        service_scalar(url, "SELECT count(*) - count(DISTINCT prev_hash) FROM audit_log") == 0
    )  # no two records share a predecessor: no fork


def _vroeg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vroeg.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
        check=False,
    )


def test_verify_names_the_first_tampered_record(infra) -> None:  # type: ignore[no-untyped-def]
    url = RetentionSettings().database_url

    async def write() -> list[int]:
        engine = make_engine(url, pool_size=1)
        try:
            async with make_session_factory(engine)() as session, session.begin():
                for i in range(3):
                    await record(
                        session,
                        retention_audit,
                        actor="test",
                        action="test",
                        object_=f"v{i}",
                        result="ok",
                    )
                return list(
                    (
                        await session.execute(
                            text("SELECT id FROM audit_log ORDER BY id DESC LIMIT 3")
                        )
                    ).scalars()
                )[::-1]
        finally:
            await engine.dispose()

    ids = asyncio.run(write())
    assert _vroeg("audit", "verify").returncode == 0
    original = service_scalar(url, "SELECT actor FROM audit_log WHERE id = :i", i=ids[1])

    def tamper(actor: str) -> None:
        async def change() -> None:
            engine = make_engine(url, pool_size=1)
            try:
                async with engine.begin() as conn:
                    await conn.execute(
                        text("UPDATE audit_log SET actor = :a WHERE id = :i"),
                        {"a": actor, "i": ids[1]},
                    )
            finally:
                await engine.dispose()

        asyncio.run(change())

    tamper("iemand-anders")
    try:
        result = _vroeg("audit", "verify", "--json")
        assert result.returncode == 1
        report = {r["service"]: r for r in json.loads(result.stdout)}
        assert report["retention"]["ok"] is False
        assert report["retention"]["record"] == ids[1]
        assert report["intake"]["ok"] is True
    finally:
        tamper(original)
    assert _vroeg("audit", "verify").returncode == 0


def test_vroeg_audit_shows_every_services_records_newest_last(running_stack: Stack) -> None:
    since = utc_now().isoformat()
    gemeente = "GM1690"
    vroeg_cli("blacklist", "list", "--gemeente", gemeente)
    vroeg_cli("zaken", "--gemeente", gemeente, "--reden", "controle")
    vroeg_cli("matchregels", "set", gemeente, "--opeenvolgend", "2")
    records = json.loads(vroeg_cli("audit", "--gemeente", gemeente, "--sinds", since, "--json"))
    assert [(r["service"], r["action"]) for r in records] == [
        ("intake", "uitsluitingen-gelezen"),
        ("outreach", "zaken-lijst-gelezen"),
        ("matching", "matchregels-gezet"),
    ]
    for r in records:
        assert {"at", "actor", "action", "object", "gemeentecode", "result"} <= r.keys()
        assert r["gemeentecode"] == gemeente and r["actor"].startswith("cli:")
    assert records[1]["reason"] == "controle"
    assert [r["at"] for r in records] == sorted(r["at"] for r in records)
    later = (dt.datetime.fromisoformat(records[-1]["at"]) + dt.timedelta(seconds=1)).isoformat()
    assert json.loads(vroeg_cli("audit", "--gemeente", gemeente, "--sinds", later, "--json")) == []
    assert service_scalar(OutreachSettings().database_url, "SELECT count(*) FROM audit_chain") == 1


def test_the_migration_chains_existing_records_and_goes_back(infra) -> None:  # type: ignore[no-untyped-def]
    from alembic import command

    from services.registry import BY_NAME
    from shared.db import alembic_config, drop_database, ensure_database
    from shared.settings import ServiceSettings

    def run(name: str, old: str, insert_old: str) -> None:
        spec = BY_NAME[name]
        url = spec.settings(database_prefix=f"{ServiceSettings().database_prefix}mig").database_url
        config = alembic_config(spec.migrations, url)

        async def sql(statement: str) -> None:
            engine = make_engine(url, pool_size=1)
            try:
                async with engine.begin() as conn:
                    await conn.execute(text(statement))
            finally:
                await engine.dispose()

        async def check() -> None:
            engine = make_engine(url, pool_size=1)
            try:
                async with make_session_factory(engine)() as session, session.begin():
                    assert await verify(session, tables) is None
                    ids = (
                        await session.execute(text("SELECT id FROM audit_log ORDER BY id"))
                    ).scalars()
                    assert list(ids) == [1, 2, 3]
            finally:
                await engine.dispose()

        async def verified() -> None:
            engine = make_engine(url, pool_size=1)
            try:
                async with make_session_factory(engine)() as session, session.begin():
                    assert await verify(session, tables) is None
            finally:
                await engine.dispose()

        tables = intake_audit if name == "intake" else outreach_audit
        asyncio.run(drop_database(url))
        asyncio.run(ensure_database(url))
        try:
            command.upgrade(config, old)
            asyncio.run(sql(insert_old))
            asyncio.run(sql("DELETE FROM audit_log WHERE id = 2"))  # a gap, as identity leaves
            asyncio.run(sql(insert_old))
            command.upgrade(config, "head")
            asyncio.run(check())
            command.downgrade(config, old)
            asyncio.run(sql(insert_old))  # the old writer works again
            command.upgrade(config, "head")
            asyncio.run(verified())
        finally:
            asyncio.run(drop_database(url))

    run(
        "intake",
        "0003",
        "INSERT INTO audit_log (at, actor, action, object, result, gemeentecode) "
        "VALUES (now(), 'anoniem', 'GET /api/v1/x', NULL, '404', NULL), "
        "(now(), 'cli:a', 'uitsluitingen-gelezen', 'uitsluitingen:GM0106', '0', 'GM0106')",
    )
    run(
        "outreach",
        "0002",
        "INSERT INTO audit_log (at, actor, action, object, gemeentecode, reason) "
        "VALUES (now(), 'cli:a', 'zaken-lijst-gelezen', 'zaken:GM1731:2', 'GM1731', 'beheer'), "
        "(now(), 'cli:b', 'zaken-lijst-gelezen', 'zaken:GM1731:0', 'GM1731', 'controle')",
    )


def test_sigkill_loses_no_answered_call(infra, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from services.registry import BY_NAME
    from vroeg.stack import free_port

    partner = add_partner("Woonstichting Harde Stop (test)", "Huur")
    home = fresh_households(1, seed=62)[0]
    replica = Stack(env={**infra.env, "VROEG_OTEL_EXPORTER": "none"}, log_dir=tmp_path)
    process = replica.start_service(BY_NAME["intake"], name="intake-kill", port=free_port())
    try:
        replica.wait_ready(["intake-kill"])
        url = replica.url("intake-kill")
        with httpx.Client(base_url=url) as client:
            headers = bearer(client, partner)
        answered: list[str] = []

        async def load() -> None:
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as client:

                async def one_client(c: int) -> None:
                    for i in range(1000):
                        if not process.alive():
                            return
                        try:
                            response = await client.post(
                                "/api/v1/signalen", json=signal_for(home, partner, f"KILL-{c}-{i}")
                            )
                        except httpx.HTTPError:
                            return  # the process is gone
                        answered.append(response.json()["id"])
                        if len(answered) >= 100 and process.alive():
                            process.kill()  # SIGKILL while the other clients are mid-call

                await asyncio.gather(*(one_client(c) for c in range(20)))

        asyncio.run(load())
    finally:
        replica.stop()
    assert len(answered) >= 100
    recorded = intake_scalar(
        "SELECT count(*) FROM audit_log WHERE object = ANY(CAST(:o AS text[]))",
        o=[f"signaal:{receipt}" for receipt in answered],
    )
    assert recorded == len(answered)


def test_partner_add_disable_and_enable_are_audited(infra) -> None:  # type: ignore[no-untyped-def]
    since = utc_now()
    partner = add_partner("Energieleverancier Beheer (test)", "Energie")
    vroeg_cli("partner", "disable", partner["client_id"])
    vroeg_cli("partner", "enable", partner["client_id"])
    unknown = _vroeg("partner", "disable", "bestaat-niet")
    assert unknown.returncode == 1
    partner_id = intake_scalar(
        "SELECT CAST(id AS text) FROM partners WHERE client_id = :c", c=partner["client_id"]
    )
    trail = json.loads(vroeg_cli("audit", "--sinds", since.isoformat(), "--json"))
    mine = [
        (r["action"], r["result"])
        for r in trail
        if r["object"] in (f"partner:{partner_id}", "partner:bestaat-niet")
    ]
    assert mine == [
        ("partner-toegevoegd", "ok"),
        ("partner-uitgezet", "ok"),
        ("partner-aangezet", "ok"),
        ("partner-uitgezet", "onbekend"),
    ]
    assert all(r["actor"].startswith("cli:") for r in trail if r["action"].startswith("partner-"))
