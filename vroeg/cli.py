"""`vroeg`: the operator's command line."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, get_args

import asyncpg
import httpx
import typer
from rich.console import Console
from rich.table import Table

from shared.events import SignalKind
from vroeg.audit_cmd import audit_app
from vroeg.deadletter import app as deadletter_app

app = typer.Typer(help="Vroegsignalering: regional platform for early signalling of arrears.")
partner_app = typer.Typer(help="Signal partners (creditor organisations).")
blacklist_app = typer.Typer(help="The blacklist at the door (audited).")
addresses_app = typer.Typer(help="The region's address table (routing to municipalities).")
app.add_typer(partner_app, name="partner")
app.add_typer(blacklist_app, name="blacklist")
rules_app = typer.Typer(help="Each municipality's matching rules (consecutive window, bundling).")
app.add_typer(rules_app, name="matchregels")
app.add_typer(addresses_app, name="adressen")
app.add_typer(audit_app, name="audit")
app.add_typer(deadletter_app, name="deadletter")
console = Console()

PARTNER_TYPES = get_args(SignalKind)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _show(
    rows: list[dict[str, Any]], as_json: bool, columns: dict[str, Callable[[dict], str]]
) -> None:
    """Rows as JSON, or as a table of these columns (header: how to show a row's cell)."""
    if as_json:
        _print_json(rows)
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*(cell(row) for cell in columns.values()))
    console.print(table)


@app.command()
def up(
    demo: Annotated[
        bool, typer.Option(help="Register demo partners and deliver demo signals.")
    ] = True,
    kafka_port: Annotated[int, typer.Option(envvar="VROEG_KAFKA_PORT")] = 9092,
    port_base: Annotated[
        int | None,
        typer.Option(
            envvar="VROEG_PORT_BASE",
            help="Give the services the ports from this one on (intake first), instead of "
            "each service's default (8001 ... 8005).",
        ),
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option(help="Start from empty databases (the embedded broker keeps nothing either)."),
    ] = True,
) -> None:
    """Start the whole system with embedded defaults; a service that dies is restarted;
    Ctrl-C stops everything."""
    from services.intake.settings import IntakeSettings
    from vroeg import demo as demo_data
    from vroeg import stack

    started = time.monotonic()
    log_dir = stack.STATE_DIR / "logs"
    supervisor_settings = stack.SupervisorSettings()

    def on_sigterm(_signo: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    # Ctrl-C stops the stack also where the shell started us with SIGINT ignored (`cmd &`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        broker = stack.start_broker(kafka_port, log_dir)
    except RuntimeError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    running: stack.Stack | None = None
    failed = False
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
            # This installation's own development secrets (.vroeg/secrets.env, never shown).
            **stack.development_secrets(stack.SECRETS_FILE, make_new=fresh),
        }
        if "VROEG_DATABASE_PREFIX" in os.environ:  # so that other terminals find the same
            env["VROEG_DATABASE_PREFIX"] = os.environ["VROEG_DATABASE_PREFIX"]
        os.environ.update(env)
        stack.write_runtime_env(env)
        asyncio.run(
            stack.create_topics(env["VROEG_KAFKA_BOOTSTRAP"], IntakeSettings().kafka_partitions)
        )
        asyncio.run(stack.prepare_databases(stack.all_services(), fresh=fresh))
        running = stack.Stack(env=env, log_dir=log_dir)
        for index, spec in enumerate(stack.all_services()):
            running.start_service(spec, port=None if port_base is None else port_base + index)
        running.wait_ready(running.processes)
        console.print(
            f"[bold green]Vroegsignalering is up[/] in {time.monotonic() - started:.1f} s"
        )
        console.print(f"  broker      Tansu (Kafka protocol) 127.0.0.1:{kafka_port}")
        console.print(f"  database    {postgres_kind}")
        for name in running.processes:
            console.print(f"  {name:<11} {running.url(name)}  (docs: {running.url(name)}/docs)")
        console.print(f"  logs        {log_dir}/   traces: .vroeg/traces/spans.jsonl")
        console.print(f"  secrets     {stack.SECRETS_FILE} (development only, this installation)")
        supervisor = stack.Supervisor(
            running,
            {spec.name: spec for spec in stack.all_services()},
            broker,
            stack.RestartPolicy.from_settings(supervisor_settings),
            say=lambda line: console.print(line, highlight=False),
            state_file=stack.SUPERVISOR_STATE_FILE,
            poll_interval_s=supervisor_settings.poll_interval_s,
        )
        # Supervise from here on: a service that crashes while the demo data is delivered
        # is restarted like any other, and the delivery waits for it and goes on.
        stopping = threading.Event()
        if demo:
            intake_url = running.url("intake")

            def intake_ready() -> bool:
                try:
                    return httpx.get(f"{intake_url}/health/ready", timeout=0.5).status_code == 200
                except httpx.HTTPError:
                    return False

            def deliver_demo() -> None:
                try:
                    tell_demo()
                finally:  # the last line of the start-up text, as the README shows it
                    if not stopping.is_set():
                        console.print("Press Ctrl-C to stop.")

            def tell_demo() -> None:
                try:
                    credentials_file = stack.STATE_DIR / "demo-partners.json"
                    partners = demo_data.register_demo_partners(credentials_file)
                    addresses = demo_data.load_demo_addresses(
                        stack.STATE_DIR / "demo-adressen.csv", demo_data.demo_households()
                    )
                    sent = stack.deliver_when_ready(
                        lambda: demo_data.post_demo_signals(
                            intake_url, partners, today=dt.date.today()
                        ),
                        intake_ready,
                        stopping=stopping,
                    )
                except Exception as exc:  # the stack goes on; the demo data is not complete
                    if not stopping.is_set():
                        console.print(
                            f"[red]  demo        not delivered ({type(exc).__name__}); "
                            "the services keep running[/]",
                            highlight=False,
                        )
                    return
                if stopping.is_set():
                    return
                if sent is None:
                    console.print(
                        "[red]  demo        not delivered: intake did not come back in time[/]",
                        highlight=False,
                    )
                    return
                console.print(
                    f"  demo        {len(partners)} partners, credentials in {credentials_file}"
                )
                console.print(
                    f"              {addresses} demo addresses in the region's address table"
                )
                console.print(
                    f"              {sent} demo signals delivered; "
                    "try: vroeg zaken --gemeente GM1731"
                )

            threading.Thread(target=deliver_demo, name="demo-delivery", daemon=True).start()
        else:
            console.print("Press Ctrl-C to stop.")
        try:
            supervisor.run()
        finally:
            stopping.set()
    except stack.StackFailed as exc:
        failed = True
        console.print(f"[red]{exc}[/]", highlight=False)
        console.print("[red]Stopping everything.[/]")
    except KeyboardInterrupt:
        console.print("Stopping…")
    finally:
        if running is not None:
            running.stop()
        broker.stop()
        with contextlib.suppress(FileNotFoundError):
            stack.SUPERVISOR_STATE_FILE.unlink()
    console.print("Stopped; nothing left running.")
    if failed:
        raise typer.Exit(1)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Health of each service, restarts under `vroeg up`, records per stage, consumer lag."""
    from services.intake.settings import IntakeSettings
    from vroeg.status import gather

    report = asyncio.run(gather(IntakeSettings().kafka_bootstrap))
    if as_json:
        _print_json(report)
        return
    table = Table("service", "url", "ready", "restarts", "stage", "count", "outbox")
    for s in report["services"]:
        table.add_row(
            s["service"],
            s["url"],
            "ja" if s["ready"] else "[red]nee[/]",
            "" if s["restarts"] is None else str(s["restarts"]),
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


@contextlib.asynccontextmanager
async def _transaction(database_url: str) -> AsyncIterator[Any]:
    """One transaction on a service's database, for an operator command."""
    from shared.db import make_engine, make_session_factory

    engine = make_engine(database_url, pool_size=1)
    try:
        async with make_session_factory(engine)() as session, session.begin():
            yield session
    except asyncpg.InvalidCatalogNameError:
        name = database_url.rsplit("/", 1)[-1]
        console.print(f"Database {name} does not exist yet: run `vroeg up` or `vroeg migrate`.")
        raise typer.Exit(1) from None
    finally:
        await engine.dispose()


def _intake_url() -> str:
    from services.intake.settings import IntakeSettings

    return IntakeSettings().database_url


def _actor() -> str:
    return f"cli:{os.environ.get('USER', 'onbekend')}"


@partner_app.command("add")
def partner_add(
    naam: Annotated[str, typer.Option(help="Name of the organisation.")],
    type_: Annotated[str, typer.Option("--type", help="DDAS partner type, e.g. Huur, Energie.")],
    kvk: Annotated[str | None, typer.Option(help="KvK number (8 digits).")] = None,
    soort: Annotated[
        list[str] | None,
        typer.Option(
            "--soort",
            help="Another kind of arrears it may report besides its type (repeatable), e.g. "
            "a housing corporation that also supplies heat: --type Huur --soort Energie.",
        ),
    ] = None,
    afspraak: Annotated[
        str, typer.Option(help="Its agreement: convenant (the national one) or eigen.")
    ] = "convenant",
    afspraak_sinds: Annotated[
        str | None, typer.Option(help="The agreement holds from this date (YYYY-MM-DD; today).")
    ] = None,
    signaal_na_dagen: Annotated[
        int | None,
        typer.Option(help="After how many days of arrears it signals, as its agreement says."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Register a partner; prints its client_id and client_secret once."""
    if type_ not in PARTNER_TYPES:
        raise typer.BadParameter(
            f"unknown type; one of: {', '.join(PARTNER_TYPES)}", param_hint="--type"
        )
    for extra in soort or []:
        if extra not in PARTNER_TYPES:
            raise typer.BadParameter(
                f"unknown kind {extra!r}; one of: {', '.join(PARTNER_TYPES)}", param_hint="--soort"
            )
    if afspraak not in ("convenant", "eigen"):
        raise typer.BadParameter("convenant or eigen", param_hint="--afspraak")
    try:
        since = dt.date.fromisoformat(afspraak_sinds) if afspraak_sinds else None
    except ValueError:
        raise typer.BadParameter("a date as YYYY-MM-DD", param_hint="--afspraak-sinds") from None
    if signaal_na_dagen is not None and signaal_na_dagen < 1:
        raise typer.BadParameter("at least 1", param_hint="--signaal-na-dagen")
    if kvk is not None and not (kvk.isdigit() and len(kvk) == 8):
        raise typer.BadParameter("a KvK number has 8 digits", param_hint="--kvk")
    from services.intake import handlers
    from services.intake.models import audit
    from shared import audit as audit_trail
    from shared.events import utc_now

    async def add() -> dict[str, str]:
        async with _transaction(_intake_url()) as session:
            partner, secret = await handlers.add_partner(
                session,
                naam=naam,
                soort=type_,
                kvk_nummer=kvk,
                now=utc_now(),
                soorten=soort or [],
                afspraak=afspraak,
                afspraak_sinds=since,
                signaal_na_dagen=signaal_na_dagen,
            )
            await audit_trail.record(
                session,
                audit,
                actor=_actor(),
                action="partner-toegevoegd",
                object_=f"partner:{partner.id}",
                result="ok",
            )
            return {"client_id": partner.client_id, "client_secret": secret}

    credentials = asyncio.run(add())
    if as_json:
        _print_json(credentials)
    else:
        console.print(f"client_id:     {credentials['client_id']}")
        console.print(
            f"client_secret: {credentials['client_secret']}  (shown once; stored as a hash)"
        )


@partner_app.command("list")
def partner_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every partner: name, type, the kinds it may report, its agreement, client_id,
    whether it may deliver."""
    from sqlalchemy import select

    from services.intake.models import Partner

    async def read() -> list[dict[str, Any]]:
        async with _transaction(_intake_url()) as session:
            partners = await session.scalars(select(Partner).order_by(Partner.naam))
            return [
                {
                    "naam": p.naam,
                    "type": p.soort,
                    "kvk": p.kvk_nummer,
                    "soorten": list(p.soorten),
                    "afspraak": p.afspraak,
                    "afspraak_sinds": p.afspraak_sinds.isoformat(),
                    "signaal_na_dagen": p.signaal_na_dagen,
                    "client_id": p.client_id,
                    "actief": p.actief,
                }
                for p in partners
            ]

    _show(
        asyncio.run(read()),
        as_json,
        {
            "naam": lambda p: p["naam"],
            "type": lambda p: p["type"],
            "kvk": lambda p: p["kvk"] or "",
            "soorten": lambda p: ", ".join(p["soorten"]),
            "afspraak": lambda p: (
                f"{p['afspraak']} sinds {p['afspraak_sinds']}"
                + (f", na {p['signaal_na_dagen']} dagen" if p["signaal_na_dagen"] else "")
            ),
            "client_id": lambda p: p["client_id"],
            "actief": lambda p: "ja" if p["actief"] else "nee",
        },
    )


def _set_partner_active(client_id: str, active: bool) -> None:
    from services.intake import handlers
    from shared.events import utc_now

    async def change() -> bool:
        async with _transaction(_intake_url()) as session:
            partner = await handlers.set_partner_active(
                session, client_id, active, actor=_actor(), now=utc_now()
            )
            return partner is not None

    if not asyncio.run(change()):
        console.print(f"[red]No partner with client_id {client_id}[/]")
        raise typer.Exit(1)
    console.print(
        f"Partner {client_id} {'enabled' if active else 'disabled: its tokens stop working at once'}."
    )


@partner_app.command("disable")
def partner_disable(client_id: str) -> None:
    """Stop a partner: its tokens are refused from the next request on."""
    _set_partner_active(client_id, False)


@partner_app.command("enable")
def partner_enable(client_id: str) -> None:
    """Let a disabled partner deliver again."""
    _set_partner_active(client_id, True)


BLACKLIST_REASONS = ("weigert-medewerking", "onveilig-contact", "overig")


def _matching_url() -> str:
    from services.matching.settings import MatchingSettings

    return MatchingSettings().database_url


@rules_app.command("list")
def rules_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The matching rules of every municipality of the region."""
    from services.matching.rules import list_rules
    from services.matching.settings import MatchingSettings

    settings = MatchingSettings()

    async def read() -> list[dict[str, Any]]:
        async with _transaction(settings.database_url) as session:
            return await list_rules(session, settings)

    _show(
        asyncio.run(read()),
        as_json,
        {
            "gemeente": lambda r: r["gemeentecode"],
            "naam": lambda r: r["gemeente"],
            "opeenvolgend (maanden)": lambda r: str(r["opeenvolgendMaanden"]),
            "bundeling": lambda r: (
                r["bundeling"] + (f" {r['bundelingDagen']}" if r["bundeling"] == "dagen" else "")
            ),
            "bron": lambda r: r["bron"],
        },
    )


@rules_app.command("set")
def rules_set(
    gemeente: Annotated[str, typer.Argument(help="CBS code, e.g. GM1731.")],
    opeenvolgend: Annotated[
        int, typer.Option(help="Months looked back for a consecutive match (1-6).")
    ] = 3,
    bundeling: Annotated[
        str, typer.Option(help="geen | einde-maand | dagen (hold new matches before forwarding).")
    ] = "geen",
    dagen: Annotated[int, typer.Option(help="Days to hold, with --bundeling dagen.")] = 0,
) -> None:
    """Set a municipality's matching rules; signals matched from now on follow them."""
    from services.matching.domain import MunicipalityRules
    from services.matching.rules import set_rules
    from shared.events import utc_now

    try:
        rules = MunicipalityRules(opeenvolgend, bundeling, dagen)  # type: ignore[arg-type]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    async def store() -> None:
        async with _transaction(_matching_url()) as session:
            await set_rules(session, gemeente, rules, actor=_actor(), now=utc_now())

    try:
        asyncio.run(store())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="GEMEENTE") from None
    console.print(f"Matching rules of {gemeente} set: {rules}")


@blacklist_app.command("add")
def blacklist_add(
    gemeente: Annotated[str, typer.Option(help="CBS code, e.g. GM1731.")],
    postcode: Annotated[str, typer.Option()],
    huisnummer: Annotated[int, typer.Option()],
    tot: Annotated[dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="Last day (YYYY-MM-DD).")],
    reden: Annotated[str, typer.Option(help=f"One of: {', '.join(BLACKLIST_REASONS)}.")],
    huisletter: Annotated[str | None, typer.Option()] = None,
    toevoeging: Annotated[str | None, typer.Option()] = None,
    toelichting: Annotated[
        str | None, typer.Option(help="Why, for colleagues (no personal data).")
    ] = None,
) -> None:
    """Put an address on the blacklist until a date (audited)."""
    if reden not in BLACKLIST_REASONS:
        raise typer.BadParameter(f"one of: {', '.join(BLACKLIST_REASONS)}", param_hint="--reden")
    from services.intake import handlers
    from services.intake.settings import IntakeSettings
    from shared.events import utc_now
    from shared.household import DwellingAddress

    settings = IntakeSettings()
    now = utc_now()
    if tot.date() < now.date():
        raise typer.BadParameter("the end date lies in the past", param_hint="--tot")

    async def add() -> str | handlers.BlacklistRefusal:
        async with _transaction(settings.database_url) as session:
            entry = await handlers.add_to_blacklist(
                session,
                address=DwellingAddress(postcode, huisnummer, huisletter, toevoeging),
                gemeentecode=gemeente,
                reden=reden,
                toelichting=toelichting,
                begin=now.date(),
                einde=tot.date(),
                actor=_actor(),
                household_secret=settings.household_key_secret.get_secret_value(),
                now=now,
            )
            return entry if isinstance(entry, handlers.BlacklistRefusal) else str(entry.id)

    added = asyncio.run(add())
    if isinstance(added, handlers.BlacklistRefusal):
        console.print(f"[red]Geweigerd (--{added.field.replace('/', ', --')}): {added.reason}.[/]")
        raise typer.Exit(1)
    console.print(f"On the blacklist until {tot.date()}: entry {added}")


@blacklist_app.command("list")
def blacklist_list(
    gemeente: Annotated[str, typer.Option(help="CBS code, e.g. GM1731.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Active blacklist entries of one municipality (the read is audited)."""
    from services.intake import handlers
    from shared.events import utc_now

    async def read() -> list[dict[str, Any]]:
        now = utc_now()
        async with _transaction(_intake_url()) as session:
            entries = await handlers.list_blacklist(
                session, gemeente, actor=_actor(), today=now.date(), now=now
            )
            return [
                {
                    "id": str(e.id),
                    "reden": e.reden,
                    "toelichting": e.toelichting,
                    "begin": e.begin.isoformat(),
                    "einde": e.einde.isoformat(),
                    "bron": e.bron,
                    "ingevoerdDoor": e.ingevoerd_door,
                }
                for e in entries
            ]

    _show(
        asyncio.run(read()),
        as_json,
        {
            "id": lambda e: e["id"],
            "reden": lambda e: e["reden"],
            "begin": lambda e: e["begin"],
            "einde": lambda e: e["einde"],
            "bron": lambda e: e["bron"],
            "ingevoerd door": lambda e: e["ingevoerdDoor"],
            "toelichting": lambda e: e["toelichting"] or "",
        },
    )


@blacklist_app.command("remove")
def blacklist_remove(
    entry_id: str,
    gemeente: Annotated[str, typer.Option(help="CBS code of your municipality, e.g. GM1731.")],
) -> None:
    """Take an entry of your municipality off the blacklist (audited)."""
    import uuid

    from services.intake import handlers
    from shared.events import utc_now

    try:
        entry = uuid.UUID(entry_id)
    except ValueError:
        raise typer.BadParameter(
            "geen geldig uitsluitingsnummer (UUID)", param_hint="ENTRY_ID"
        ) from None

    async def remove() -> bool:
        async with _transaction(_intake_url()) as session:
            return await handlers.remove_from_blacklist(
                session, entry, gemeentecode=gemeente, actor=_actor(), now=utc_now()
            )

    if not asyncio.run(remove()):
        console.print(f"[red]Geen actieve uitsluiting {entry_id} in gemeente {gemeente}.[/]")
        raise typer.Exit(1)
    console.print(f"Entry {entry_id} removed.")


@addresses_app.command("import")
def addresses_import(path: Path) -> None:
    """Load the CBS file 'buurt, wijk en gemeente bij postcode en huisnummer' (CSV); only
    the region's addresses are kept."""
    from services.intake.addresses import read_cbs_rows
    from shared.region import DRENTHE
    from vroeg.addresses import import_address_rows

    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(read_cbs_rows(handle, DRENTHE))

    loaded = asyncio.run(import_address_rows(rows))
    console.print(f"{loaded} addresses of the region loaded from {path}.")


@app.command()
def zaken(
    gemeente: Annotated[str, typer.Option(help="CBS code of the municipality, e.g. GM1731.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
    reden: Annotated[str, typer.Option(help="Why you look (goes into the audit log).")] = "beheer",
) -> None:
    """Cases of one municipality, nearest deadline first (the read is audited)."""
    from services.outreach import handlers
    from services.outreach.settings import OutreachSettings
    from shared.events import utc_now

    async def read() -> list[dict]:
        async with _transaction(OutreachSettings().database_url) as session:
            cases = await handlers.list_cases(
                session, gemeente, actor=_actor(), reason=reden, now=utc_now()
            )
            return [handlers.case_summary(case) for case in cases]

    _show(
        asyncio.run(read()),
        as_json,
        {
            "termijn": lambda c: c["termijn"],
            "soort": lambda c: c["soort"],
            "schuldeisers": lambda c: str(c["aantalSchuldeisers"]),
            "achterstand": lambda c: f"€ {c['totaalAchterstand']}",
            "signalen": lambda c: ", ".join(
                f"{s['partner']} ({s['soort']})" for s in c["signalen"]
            ),
            "zaak": lambda c: c["id"],
        },
    )


@app.command()
def lever(
    bestand: Annotated[Path, typer.Argument(help="A .csv or .json file of signals.")],
    partner: Annotated[str, typer.Option(help="Your client_id.")],
    secret: Annotated[str, typer.Option(envvar="VROEG_CLIENT_SECRET", help="Your client_secret.")],
    url: Annotated[str, typer.Option(help="The partner API.")] = "http://127.0.0.1:8001",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the final status as JSON.")
    ] = False,
) -> None:
    """Deliver a file of signals (partner side), with progress until every signal has a
    receipt or an error."""
    import httpx
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    media_type = "text/csv" if bestand.suffix.lower() == ".csv" else "application/json"
    size = bestand.stat().st_size
    with (
        httpx.Client(base_url=url, timeout=120) as client,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=as_json,
        ) as progress,
    ):
        token = client.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, auth=(partner, secret)
        )
        if token.status_code != 200:
            console.print(f"[red]Login refused: {token.json().get('detail', token.text)}[/]")
            raise typer.Exit(1)
        headers = {
            "Authorization": f"Bearer {token.json()['access_token']}",
            "Content-Type": media_type,
        }
        upload = progress.add_task("uploaden", total=size)

        def chunks() -> Any:
            with bestand.open("rb") as handle:
                while block := handle.read(256 * 1024):
                    progress.advance(upload, len(block))
                    yield block

        response = client.post(
            "/api/v1/leveringen", content=chunks(), headers={**headers, "Content-Length": str(size)}
        )
        if response.status_code != 202:
            console.print(
                f"[red]Delivery refused ({response.status_code}): {response.json().get('detail')}[/]"
            )
            raise typer.Exit(1)
        delivery = response.json()
        processing = progress.add_task("verwerken", total=delivery["aantal"])
        while True:
            status = client.get(f"/api/v1/leveringen/{delivery['id']}", headers=headers).json()
            progress.update(processing, completed=status["aantalVerwerkt"])
            if status["status"] == "verwerkt":
                break
            time.sleep(0.5)  # polling interval of a progress display
    if as_json:
        _print_json(status)
        return
    console.print(
        f"Levering {status['id']}: {status['aantalDoorgestuurd']} doorgestuurd, "
        f"{status['aantalNietDoorgestuurd']} niet doorgestuurd, {status['aantalGeweigerd']} geweigerd."
    )
    for line in status["signalen"]:
        if line["status"] == "geweigerd":
            reasons = "; ".join(f"{e['name']}: {e['reason']}" for e in line["fouten"])
            console.print(f"  regel {line['regel']} ({line['partnerSignaalId']}): {reasons}")


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
