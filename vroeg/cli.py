"""`vroeg`: the operator's command line."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from rich.console import Console
from rich.table import Table

from shared.events import SignalKind

app = typer.Typer(help="Vroegsignalering: regional platform for early signalling of arrears.")
partner_app = typer.Typer(help="Signal partners (creditor organisations).")
app.add_typer(partner_app, name="partner")
console = Console()

PARTNER_TYPES = get_args(SignalKind)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


@app.command()
def up(
    demo: Annotated[
        bool, typer.Option(help="Register demo partners and deliver demo signals.")
    ] = True,
    kafka_port: Annotated[int, typer.Option(envvar="VROEG_KAFKA_PORT")] = 9092,
    fresh: Annotated[
        bool,
        typer.Option(help="Start from empty databases (the embedded broker keeps nothing either)."),
    ] = True,
) -> None:
    """Start the whole system with embedded defaults; Ctrl-C stops everything."""
    from services.intake.settings import IntakeSettings
    from vroeg import demo as demo_data
    from vroeg import stack

    started = time.monotonic()
    log_dir = stack.STATE_DIR / "logs"

    def on_sigterm(_signo: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        broker = stack.start_broker(kafka_port, log_dir)
    except RuntimeError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    running: stack.Stack | None = None
    try:
        if asyncio.run(stack.machine_postgres_reachable()):
            postgres_url, postgres_kind = (
                stack.MACHINE_POSTGRES,
                "machine PostgreSQL 127.0.0.1:5432",
            )
        else:
            postgres_url = stack.embedded_postgres_url(stack.STATE_DIR / "pgdata")
            postgres_kind = "embedded PostgreSQL (.vroeg/pgdata)"
        env = {
            "VROEG_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_port}",
            "VROEG_POSTGRES_URL": postgres_url,
            "VROEG_OTEL_EXPORTER": os.environ.get("VROEG_OTEL_EXPORTER", "file"),
        }
        os.environ.update(env)
        stack.write_runtime_env(env)
        asyncio.run(
            stack.create_topics(env["VROEG_KAFKA_BOOTSTRAP"], IntakeSettings().kafka_partitions)
        )
        asyncio.run(stack.prepare_databases(stack.all_services(), fresh=fresh))
        running = stack.Stack(env=env, log_dir=log_dir)
        for spec in stack.all_services():
            running.start_service(spec)
        running.wait_ready(running.processes)
        console.print(
            f"[bold green]Vroegsignalering is up[/] in {time.monotonic() - started:.1f} s"
        )
        console.print(f"  broker      Tansu (Kafka protocol) 127.0.0.1:{kafka_port}")
        console.print(f"  database    {postgres_kind}")
        for name in running.processes:
            console.print(f"  {name:<11} {running.url(name)}  (docs: {running.url(name)}/docs)")
        console.print(f"  logs        {log_dir}/   traces: .vroeg/traces/spans.jsonl")
        if demo:
            credentials_file = stack.STATE_DIR / "demo-partners.json"
            partners = demo_data.register_demo_partners(credentials_file)
            sent = demo_data.post_demo_signals(
                running.url("intake"), partners, today=dt.date.today()
            )
            console.print(
                f"  demo        {len(partners)} partners, credentials in {credentials_file}"
            )
            console.print(
                f"              {sent} demo signals delivered; try: vroeg zaken --gemeente GM1731"
            )
        console.print("Press Ctrl-C to stop.")
        while all(p.alive() for p in running.processes.values()) and broker.alive():
            time.sleep(0.5)
        console.print("[red]A process exited; stopping.[/] See the logs.")
    except KeyboardInterrupt:
        console.print("Stopping…")
    finally:
        if running is not None:
            running.stop()
        broker.stop()
    console.print("Stopped; nothing left running.")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Health of each service, records per stage, consumer lag per group."""
    from services.intake.settings import IntakeSettings
    from vroeg.status import gather

    report = asyncio.run(gather(IntakeSettings().kafka_bootstrap))
    if as_json:
        _print_json(report)
        return
    table = Table("service", "url", "ready", "stage", "count", "outbox")
    for s in report["services"]:
        table.add_row(
            s["service"],
            s["url"],
            "ja" if s["ready"] else "[red]nee[/]",
            s["stage"],
            str(s["count"]),
            str(s["outbox_pending"]),
        )
    console.print(table)
    lag_table = Table("consumer group", "topic", "partition", "committed", "end", "lag")
    for lag in report["consumer_lag"]:
        lag_table.add_row(
            lag["group"],
            lag["topic"],
            str(lag["partition"]),
            str(lag["committed"]),
            str(lag["end"]),
            str(lag["lag"]),
        )
    console.print(lag_table)
    if report["consumer_lag_error"]:
        console.print(f"[red]{report['consumer_lag_error']}[/]")


@partner_app.command("add")
def partner_add(
    naam: Annotated[str, typer.Option(help="Name of the organisation.")],
    type_: Annotated[str, typer.Option("--type", help="DDAS partner type, e.g. Huur, Energie.")],
    kvk: Annotated[str | None, typer.Option(help="KvK number (8 digits).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Register a partner; prints its client_id and client_secret once."""
    if type_ not in PARTNER_TYPES:
        raise typer.BadParameter(
            f"unknown type; one of: {', '.join(PARTNER_TYPES)}", param_hint="--type"
        )
    from services.intake import handlers
    from services.intake.settings import IntakeSettings
    from shared.db import make_engine, make_session_factory
    from shared.events import utc_now

    async def add() -> dict[str, str]:
        engine = make_engine(IntakeSettings().database_url, pool_size=1)
        try:
            async with make_session_factory(engine)() as session, session.begin():
                partner, secret = await handlers.add_partner(
                    session, naam=naam, soort=type_, kvk_nummer=kvk, now=utc_now()
                )
                return {"client_id": partner.client_id, "client_secret": secret}
        finally:
            await engine.dispose()

    credentials = asyncio.run(add())
    if as_json:
        _print_json(credentials)
    else:
        console.print(f"client_id:     {credentials['client_id']}")
        console.print(
            f"client_secret: {credentials['client_secret']}  (shown once; stored as a hash)"
        )


@app.command()
def zaken(
    gemeente: Annotated[str, typer.Option(help="CBS code of the municipality, e.g. GM1731.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
    reden: Annotated[str, typer.Option(help="Why you look (goes into the audit log).")] = "beheer",
) -> None:
    """Cases of one municipality, nearest deadline first (the read is audited)."""
    from services.outreach import handlers
    from services.outreach.settings import OutreachSettings
    from shared.db import make_engine, make_session_factory
    from shared.events import utc_now

    async def read() -> list[dict]:
        engine = make_engine(OutreachSettings().database_url, pool_size=1)
        try:
            async with make_session_factory(engine)() as session, session.begin():
                cases = await handlers.list_cases(
                    session,
                    gemeente,
                    actor=f"cli:{os.environ.get('USER', 'onbekend')}",
                    reason=reden,
                    now=utc_now(),
                )
                return [handlers.case_summary(case) for case in cases]
        finally:
            await engine.dispose()

    cases = asyncio.run(read())
    if as_json:
        _print_json(cases)
        return
    table = Table("termijn", "soort", "schuldeisers", "achterstand", "signalen", "zaak")
    for case in cases:
        table.add_row(
            case["termijn"],
            case["soort"],
            str(case["aantalSchuldeisers"]),
            f"€ {case['totaalAchterstand']}",
            ", ".join(f"{s['partner']} ({s['soort']})" for s in case["signalen"]),
            case["id"],
        )
    console.print(table)


@app.command()
def migrate() -> None:
    """Create each service's database if needed and migrate it to the newest schema."""
    from vroeg import stack

    asyncio.run(stack.prepare_databases(stack.all_services()))
    console.print("Databases migrated.")


@app.command("asyncapi")
def asyncapi(out: Annotated[Path, typer.Option()] = Path("docs/asyncapi.json")) -> None:
    """Write the AsyncAPI document of every topic and event."""
    from vroeg.contracts import asyncapi_document

    out.write_text(json.dumps(asyncapi_document(), indent=2, ensure_ascii=False) + "\n")
    console.print(f"Wrote {out}")


if __name__ == "__main__":
    app()
