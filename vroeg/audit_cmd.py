"""`vroeg audit`: the audit trail of every service, for the privacy officer, and
`vroeg audit verify`: is each service's hash chain whole?"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

audit_app = typer.Typer(help="The audit trail of every service (for the privacy officer).")
console = Console()


def _since(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            "geen ISO-tijd; bijvoorbeeld 2026-12-01 of 2026-12-01T09:30:00+01:00",
            param_hint="--sinds",
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


async def _each_service(work: Any) -> list[Any]:
    """`work(service, session, tables)` on every service database that exists."""
    import asyncpg

    from services.registry import SERVICES
    from shared.audit import add_audit_tables
    from shared.db import make_engine, make_session_factory, new_metadata

    tables = add_audit_tables(new_metadata())
    results = []
    for spec in SERVICES:
        engine = make_engine(spec.settings().database_url, pool_size=1)
        try:
            async with make_session_factory(engine)() as session, session.begin():
                results.append(await work(spec.name, session, tables))
        except asyncpg.InvalidCatalogNameError:
            console.print(f"[yellow]De database van {spec.name} bestaat (nog) niet.[/]")
        finally:
            await engine.dispose()
    return results


async def read_records(gemeente: str | None, since: dt.datetime | None) -> list[dict[str, Any]]:
    """Every service's audit records, filtered, newest last."""
    from sqlalchemy import select

    async def read(service: str, session: Any, tables: Any) -> list[dict[str, Any]]:
        log = tables.log
        query = select(log).order_by(log.c.at, log.c.id)
        if gemeente is not None:
            query = query.where(log.c.gemeentecode == gemeente)
        if since is not None:
            query = query.where(log.c.at >= since)
        return [
            {
                "service": service,
                "id": row.id,
                "at": row.at.isoformat(),
                "actor": row.actor,
                "action": row.action,
                "object": row.object,
                "gemeentecode": row.gemeentecode,
                "result": row.result,
                "reason": row.reason,
            }
            for row in await session.execute(query)
        ]

    per_service = await _each_service(read)
    records = [record for records in per_service for record in records]
    records.sort(key=lambda r: (dt.datetime.fromisoformat(r["at"]), r["service"], r["id"]))
    return records


async def verify_chains() -> list[dict[str, Any]]:
    from shared.audit import verify

    async def check(service: str, session: Any, tables: Any) -> dict[str, Any]:
        broken = await verify(session, tables)
        return {
            "service": service,
            "ok": broken is None,
            "record": broken.record_id if broken else None,
            "reden": broken.reason if broken else None,
        }

    return list(await _each_service(check))


@audit_app.callback(invoke_without_command=True)
def audit_list(
    ctx: typer.Context,
    gemeente: Annotated[str | None, typer.Option(help="Only this municipality (CBS code).")] = None,
    sinds: Annotated[
        str | None, typer.Option(help="Only records from this moment (ISO time; UTC if no zone).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Audit records of every service, newest last."""
    if ctx.invoked_subcommand is not None:
        return
    records = asyncio.run(read_records(gemeente, _since(sinds)))
    if as_json:
        typer.echo(json.dumps(records, indent=2, ensure_ascii=False))
        return
    table = Table("at", "service", "actor", "action", "object", "gemeente", "result", "reason")
    for r in records:
        table.add_row(
            r["at"],
            r["service"],
            r["actor"],
            r["action"],
            r["object"] or "",
            r["gemeentecode"] or "",
            r["result"],
            r["reason"] or "",
        )
    console.print(table)


@audit_app.command("verify")
def audit_verify(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Check each service's hash chain; names the first broken record. Exit code 1 if any
    chain is broken."""
    results = asyncio.run(verify_chains())
    if as_json:
        typer.echo(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for r in results:
            if r["ok"]:
                console.print(f"{r['service']:<10} keten heel")
            else:
                where = f"record {r['record']}" if r["record"] is not None else "de kop"
                console.print(
                    f"[red]{r['service']:<10} keten gebroken bij {where}: {r['reden']}[/]"
                )
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)
