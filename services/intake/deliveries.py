"""Deliveries (leveringen): a batch of signals as a JSON array or a CSV file, stored at
once (sealed) and then processed in chunks by a worker, each signal judged on its own.

A crash mid-delivery loses nothing: the file stays (sealed) until every line has a
receipt or an error, and a processed chunk is never processed twice (its lines are
recorded in the same transaction as its signals; partnerSignaalId makes a redo harmless).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import csv
import datetime as dt
import io
import json
import os
import re
import uuid
from collections import Counter
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.intake import domain, handlers
from services.intake.auth import PartnerIdentity
from services.intake.models import Delivery, DeliveryLine, Partner
from services.intake.problems import params_from_validation
from services.intake.schemas import SignalIn, has_invalid_characters
from services.intake.settings import IntakeSettings
from shared.crypto import Vault
from shared.events import utc_now
from shared.outbox import Outbox
from shared.telemetry import error_fields

log = structlog.get_logger(__name__)

RECEIVED, PROCESSING, PROCESSED = "ontvangen", "in-verwerking", "verwerkt"
DELIVERY_CONTEXT = "levering.inhoud"
PARTNER_DISABLED = {
    "name": "partner",
    "code": "partner-uitgezet",
    "reason": "Uw organisatie is als partner uitgezet voordat deze regel verwerkt was; de "
    "regel is niet aangenomen.",
}


_INSERT_LINES = text(
    "INSERT INTO levering_regels (levering_id, regel, partner_signaal_id, signal_id, status, "
    "fouten) SELECT * FROM unnest(CAST(:levering AS uuid[]), CAST(:regel AS int[]), "
    "CAST(:ref AS text[]), CAST(:signal AS uuid[]), CAST(:status AS text[]), "
    "CAST(CAST(:fouten AS text[]) AS json[])) ON CONFLICT DO NOTHING RETURNING status"
)


class UnreadableDelivery(ValueError):
    """The file as a whole cannot be read; the message says why, in Dutch."""


_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _json_lines(text: str) -> list[Any]:
    """The elements of a JSON array one by one: each is parsed in C, and between them
    the interpreter may switch threads, so a large file parsed in a worker thread does
    not hold the event loop's thread for the whole file (the GIL)."""
    at = _WHITESPACE.match(text, 0).end()  # type: ignore[union-attr]
    if not text.startswith("[", at):
        _DECODER.decode(text)  # valid JSON but no array, or not JSON: say which below
        raise UnreadableDelivery("Een levering in JSON is een lijst (array) van signalen.")
    lines: list[Any] = []
    at = _WHITESPACE.match(text, at + 1).end()  # type: ignore[union-attr]
    if text.startswith("]", at):
        end = at + 1
    else:
        while True:
            line, at = _DECODER.raw_decode(text, at)
            if not isinstance(line, dict):
                raise UnreadableDelivery(
                    f"Regel {len(lines) + 1} is geen signaal: elk element van de lijst is "
                    "een object."
                )
            lines.append(line)
            at = _WHITESPACE.match(text, at).end()  # type: ignore[union-attr]
            if text.startswith(",", at):
                at = _WHITESPACE.match(text, at + 1).end()  # type: ignore[union-attr]
                continue
            if text.startswith("]", at):
                end = at + 1
                break
            raise json.JSONDecodeError("expected , or ]", text, at)
    if _WHITESPACE.match(text, end).end() != len(text):  # type: ignore[union-attr]
        raise json.JSONDecodeError("extra data", text, end)
    return lines


def parse_json(body: bytes) -> list[Any]:
    try:
        # as json.loads(bytes) reads it: UTF-8 (with or without BOM), UTF-16 or UTF-32
        return _json_lines(body.decode(json.detect_encoding(body), "surrogatepass"))
    except UnreadableDelivery:
        raise
    except (ValueError, UnicodeError):  # JSONDecodeError, or a number over the digit limit
        raise UnreadableDelivery("De body is geen geldige JSON in UTF-8.") from None
    except RecursionError:  # the parser's own depth bound (sys.getrecursionlimit)
        raise UnreadableDelivery(
            "De JSON is te diep genest; een signaal is hoogstens drie niveaus diep."
        ) from None


_TRUE = {"true", "ja", "1", "waar", "yes"}
_FALSE = {"false", "nee", "0", "onwaar", "no"}


def _cell(value: str) -> Any:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return value.strip()


def check_header(fieldnames: list[str]) -> None:
    """Column names nest with dots (adres.postcode); refuse a header that cannot be read
    as one signal: an empty name part, a column twice, or a column that is both a field
    and a group (adres and adres.postcode)."""
    paths = [tuple(name.strip().split(".")) for name in fieldnames]
    for index, path in enumerate(paths, start=1):
        if any(part == "" for part in path):
            raise UnreadableDelivery(f"Kolom {index} van de kopregel heeft een lege veldnaam.")
    seen = set(paths)
    if len(seen) != len(paths):
        raise UnreadableDelivery("De kopregel noemt een kolom twee keer.")
    for path in paths:
        if any(path[:depth] in seen for depth in range(1, len(path))):
            raise UnreadableDelivery(
                "De kopregel noemt een veld en ook velden daarbinnen (zoals adres en "
                "adres.postcode)."
            )


def unflatten(row: dict[str, str]) -> dict[str, Any]:
    """CSV columns named like the JSON fields, nested with dots (adres.postcode); empty
    cells are left out, as if the field was absent."""
    result: dict[str, Any] = {}
    for column, value in row.items():
        if column is None or value is None or value.strip() == "":
            continue
        target = result
        *parents, leaf = column.strip().split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = _cell(value)
    return result


def parse_csv(body: bytes) -> list[Any]:
    """UTF-8 with or without BOM, `;` or `,` as separator, a header line with field names."""
    try:
        text = (
            body.decode("utf-8-sig") if body.startswith(codecs.BOM_UTF8) else body.decode("utf-8")
        )
    except UnicodeDecodeError:
        raise UnreadableDelivery("Het CSV-bestand is niet in UTF-8.") from None
    first_line = text.splitlines()[0] if text else ""
    delimiter = ";" if first_line.count(";") >= first_line.count(",") else ","
    # newline="": the csv module sees every line ending (\n, \r\n, a lone \r) itself.
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        if not reader.fieldnames or "partnerSignaalId" not in [
            f.strip() for f in reader.fieldnames
        ]:
            raise UnreadableDelivery(
                "Het CSV-bestand mist een kopregel met de veldnamen (zoals partnerSignaalId)."
            )
        check_header(list(reader.fieldnames))
        return [unflatten(row) for row in reader]
    except csv.Error:
        # A cell over the csv module's limit (csv.field_size_limit()), or a broken quote.
        raise UnreadableDelivery(
            f"Regel {reader.line_num + 1} van het CSV-bestand is niet te lezen: een cel is langer "
            f"dan {csv.field_size_limit()} tekens of een aanhalingsteken sluit niet."
        ) from None


def parse(body: bytes, media_type: str) -> list[Any]:
    if media_type == "text/csv":
        return parse_csv(body)
    return parse_json(body)


async def parse_off_loop(body: bytes, media_type: str) -> list[Any]:
    """Parsing a file of up to max_delivery_bytes takes a while: not on the event loop,
    where every other partner's request waits for it."""
    return await asyncio.to_thread(parse, body, media_type)


class PartnerSlots:
    """How many deliveries of each partner this replica is reading and parsing at once.

    A delivery counts as in flight only once it is stored; the slot bounds the ones
    before that (up to max_delivery_bytes each, read and parsed), so parallel uploads of
    one partner are refused before their bodies are read. Not a wait: no free slot, 429."""

    def __init__(self, per_partner: int) -> None:
        self.per_partner = per_partner
        self._busy: Counter[uuid.UUID] = Counter()

    def try_take(self, partner_id: uuid.UUID) -> bool:
        if self._busy[partner_id] >= self.per_partner:
            return False
        self._busy[partner_id] += 1
        return True

    def release(self, partner_id: uuid.UUID) -> None:
        self._busy[partner_id] -= 1
        if self._busy[partner_id] <= 0:
            del self._busy[partner_id]

    def __len__(self) -> int:
        return len(self._busy)


async def in_flight(session: AsyncSession, partner_id: uuid.UUID) -> int:
    """The partner's deliveries not yet processed. Locks the partner's row until the
    transaction ends, so that two deliveries at the same moment count each other."""
    await session.execute(select(Partner.id).where(Partner.id == partner_id).with_for_update())
    return int(
        await session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.partner_id == partner_id, Delivery.status != PROCESSED)
        )
        or 0
    )


def unbroken_run(line_numbers: list[int], after: int) -> int:
    """How many of these processed line numbers (ascending) follow `after` without a gap.

    Chunks of a delivery commit in any order; while lines are still coming, a page holds
    only this run, so that a partner's cursor never jumps over a line that comes later."""
    count = 0
    while count < len(line_numbers) and line_numbers[count] == after + count + 1:
        count += 1
    return count


def line_receipt(line: DeliveryLine, receipts: dict[uuid.UUID, dict]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "regel": line.regel,
        "partnerSignaalId": line.partner_signaal_id,
        "status": line.status,
    }
    if line.signal_id is not None:
        entry["ontvangstbevestiging"] = receipts.get(line.signal_id)
    if line.fouten:
        entry["fouten"] = line.fouten
    return entry


class DeliveryWorker:
    """Processes stored deliveries; replicas share the work through short leases."""

    def __init__(
        self,
        settings: IntakeSettings,
        session_factory: async_sessionmaker,
        vault: Vault,
        outbox: Outbox,
        region: frozenset[str],
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.vault = vault
        self.outbox = outbox
        self.region = region
        self.name = f"{os.uname().nodename}:{os.getpid()}"
        self._wake = asyncio.Event()
        self._first_lines: dict[uuid.UUID, dict[str, tuple[int, Any]]] = {}

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                claimed = await self._claim()
                if claimed is not None:
                    await self.process(claimed)
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("delivery processing failed; will retry", **error_fields(exc))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), timeout=self.settings.delivery_poll_interval_s
                )

    async def _claim(self) -> uuid.UUID | None:
        now = utc_now()
        async with self.session_factory() as session, session.begin():
            candidate = await session.scalar(
                select(Delivery.id)
                .where(
                    Delivery.status != PROCESSED,
                    (Delivery.lease_tot.is_(None)) | (Delivery.lease_tot < now),
                )
                .order_by(Delivery.ontvangen_op)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if candidate is None:
                return None
            await session.execute(
                update(Delivery)
                .where(Delivery.id == candidate)
                .values(verwerker=self.name, lease_tot=now + self._lease, status=PROCESSING)
            )
            return candidate

    @property
    def _lease(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.settings.delivery_lease_s)

    async def process(self, delivery_id: uuid.UUID) -> None:
        """Process the lines of a delivery that have no result yet, a chunk per transaction,
        a few chunks at once. Resuming after a crash skips exactly the committed chunks:
        a chunk's line results commit with its signals."""
        async with self.session_factory() as session:
            delivery = await session.get(Delivery, delivery_id)
            assert delivery is not None and delivery.inhoud is not None
            partner_row = await session.get(Partner, delivery.partner_id)
            assert partner_row is not None
            done = set(
                await session.scalars(
                    select(DeliveryLine.regel).where(DeliveryLine.levering_id == delivery_id)
                )
            )
            raw = await self.vault.open(delivery.inhoud.decode(), DELIVERY_CONTEXT)
            media_type, count = delivery.formaat, delivery.aantal
        partner = PartnerIdentity(id=partner_row.id, naam=partner_row.naam, soort=partner_row.soort)
        lines: list[Any]
        try:
            lines = await parse_off_loop(
                raw, "text/csv" if media_type == "csv" else "application/json"
            )
        except UnreadableDelivery as exc:
            # Taken at the door under older rules: every line is refused with the reason,
            # and the delivery ends, instead of failing at every lease.
            log.warning("stored delivery unreadable; its lines are refused")
            lines = [exc] * count
        self._first_lines[delivery_id] = first_lines(lines)
        todo = [(n, line) for n, line in enumerate(lines, start=1) if n not in done]
        size = self.settings.delivery_chunk_size
        chunks = [todo[start : start + size] for start in range(0, len(todo), size)]
        slots = asyncio.Semaphore(self.settings.delivery_parallel_chunks)

        async def one(chunk: list[tuple[int, Any]]) -> None:
            async with slots:
                await self._process_chunk(delivery_id, partner, chunk)

        async with asyncio.TaskGroup() as group:
            for chunk in chunks:
                group.create_task(one(chunk))
        async with self.session_factory() as session, session.begin():
            await session.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id)
                .values(status=PROCESSED, afgerond_op=utc_now(), inhoud=None, lease_tot=None)
            )
        self._first_lines.pop(delivery_id, None)
        await self.vault.destroy([delivery_id], utc_now())  # the sealed file is gone for good
        log.info("delivery processed", levering_id=str(delivery_id), lines=len(lines))

    async def _process_chunk(
        self,
        delivery_id: uuid.UUID,
        partner: PartnerIdentity,
        chunk: list[tuple[int, Any]],
    ) -> None:
        """A chunk in one transaction. Should the database refuse a value of one line (a
        data error, never a lost connection), the chunk is split until that line stands
        alone, and it alone is refused: a poison line never holds the delivery."""
        try:
            await self._write_chunk(delivery_id, partner, chunk, unstorable=frozenset())
        except Exception as exc:
            if not _is_data_error(exc):
                raise
            if len(chunk) == 1:
                log.warning("delivery line refused by the database", **error_fields(exc))
                await self._write_chunk(
                    delivery_id, partner, chunk, unstorable=frozenset({chunk[0][0]})
                )
                return
            half = len(chunk) // 2
            await self._process_chunk(delivery_id, partner, chunk[:half])
            await self._process_chunk(delivery_id, partner, chunk[half:])

    async def _write_chunk(
        self,
        delivery_id: uuid.UUID,
        partner: PartnerIdentity,
        chunk: list[tuple[int, Any]],
        *,
        unstorable: frozenset[int],
    ) -> None:
        now = utc_now()
        parsed: list[tuple[int, SignalIn]] = []
        refused: dict[int, list[dict[str, str]]] = {}
        references: dict[int, str | None] = {}
        first = self._first_lines.get(delivery_id, {})
        for number, line in chunk:
            references[number] = _reference(line)
            if number in unstorable:
                references[number] = None
                refused[number] = [UNSTORABLE]
                continue
            if isinstance(line, UnreadableDelivery):
                refused[number] = [{"name": "body", "code": "bestand", "reason": str(line)}]
                continue
            earlier = first.get(_full_reference(line) or "", (number, line))
            if earlier[0] < number:  # the id stood on an earlier line of this delivery
                violation = domain.duplicate_line(differing_keys(earlier[1], line), earlier[0])
                refused[number] = [
                    {"name": violation.name, "code": violation.code, "reason": violation.reason}
                ]
                continue
            try:
                parsed.append((number, SignalIn.model_validate(line)))
            except ValidationError as exc:
                refused[number] = params_from_validation(exc.errors())
        async with self.session_factory() as session, session.begin():
            try:
                outcomes = await handlers.accept_signals(
                    session,
                    self.vault,
                    self.outbox,
                    partner,
                    [signal for _, signal in parsed],
                    region=self.region,
                    household_secret=self.settings.household_key_secret.get_secret_value(),
                    now=now,
                    levering_id=delivery_id,
                    require_active_partner=True,
                    hold_partner=True,
                )
            except handlers.PartnerDisabled:
                # The partner was disabled: its queued lines stop here, each told why.
                refused.update({number: [PARTNER_DISABLED] for number, _ in parsed})
                parsed, outcomes = [], []
            rows = []
            for (number, _signal), outcome in zip(parsed, outcomes, strict=True):
                if isinstance(outcome, handlers.Refused):
                    refused[number] = [
                        {"name": v.name, "code": v.code, "reason": v.reason}
                        for v in outcome.violations
                    ]
                    continue
                rows.append(
                    {
                        "levering_id": delivery_id,
                        "regel": number,
                        "partner_signaal_id": outcome.receipt.partner_signaal_id,
                        "signal_id": outcome.receipt.id,
                        "status": outcome.receipt.status,
                        "fouten": None,
                    }
                )
            rows.extend(
                {
                    "levering_id": delivery_id,
                    "regel": number,
                    "partner_signaal_id": references[number],
                    "signal_id": None,
                    "status": "geweigerd",
                    "fouten": errors,
                }
                for number, errors in refused.items()
            )
            # Count what this transaction wrote: if another replica took the delivery over
            # (an expired lease) and did this chunk too, its lines are not counted twice.
            written = Counter[str]()
            if rows:
                result = await session.execute(
                    _INSERT_LINES,
                    {
                        "levering": [r["levering_id"] for r in rows],
                        "regel": [r["regel"] for r in rows],
                        "ref": [r["partner_signaal_id"] for r in rows],
                        "signal": [r["signal_id"] for r in rows],
                        "status": [r["status"] for r in rows],
                        "fouten": [json.dumps(r["fouten"]) if r["fouten"] else None for r in rows],
                    },
                )
                written.update(result.scalars())
            await session.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id)
                .values(
                    aantal_verwerkt=Delivery.aantal_verwerkt + written.total(),
                    aantal_doorgestuurd=Delivery.aantal_doorgestuurd + written["doorgestuurd"],
                    aantal_niet_doorgestuurd=Delivery.aantal_niet_doorgestuurd
                    + written["niet-doorgestuurd"],
                    aantal_geweigerd=Delivery.aantal_geweigerd + written["geweigerd"],
                    lease_tot=utc_now() + self._lease,
                )
            )
        self.outbox.wake()


def first_lines(lines: list[Any]) -> dict[str, tuple[int, Any]]:
    """For each partnerSignaalId, the first line it stands on (and that line): a later
    line with the same id is refused, whichever chunk commits first. Ids are compared in
    full; a line without a usable id is no duplicate of anything (validation refuses it
    for the id itself)."""
    first: dict[str, tuple[int, Any]] = {}
    for number, line in enumerate(lines, start=1):
        reference = _full_reference(line)
        if reference is not None:
            first.setdefault(reference, (number, line))
    return first


def differing_keys(first: Any, again: Any) -> list[str]:
    """The top-level fields in which two lines differ (names only)."""
    if not isinstance(first, dict) or not isinstance(again, dict):
        return []
    return sorted(k for k in first.keys() | again.keys() if first.get(k) != again.get(k))


UNSTORABLE = {
    "name": "body",
    "code": "opslag",
    "reason": "Dit signaal kon niet worden opgeslagen: een waarde past niet (controleer "
    "tekens en getallen). De andere signalen van de levering zijn wel verwerkt.",
}


def _is_data_error(exc: BaseException) -> bool:
    """A value the database (SQLSTATE class 22, data exception) or the driver (text it
    cannot encode) refuses: redoing it fails again, unlike a lost connection."""
    seen: BaseException | None = exc
    for _ in range(5):  # the exception, SQLAlchemy's wrapper, the driver's error
        if seen is None:
            return False
        if isinstance(seen, UnicodeError) or str(getattr(seen, "sqlstate", "")).startswith("22"):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


def _full_reference(line: Any) -> str | None:
    """The line's partnerSignaalId in full, if it is a usable one: a non-empty string
    without NUL or a lone surrogate. Otherwise None (the line is refused for its id)."""
    reference = line.get("partnerSignaalId") if isinstance(line, dict) else None
    if not isinstance(reference, str) or not reference.strip():
        return None
    if has_invalid_characters(reference):
        return None
    return reference


def _reference(line: Any) -> str | None:
    """The line's partnerSignaalId as the partner sent it, if it can be stored: with a NUL
    or a lone surrogate (the line is refused for it) the line is known by its number."""
    reference = line.get("partnerSignaalId") if isinstance(line, dict) else None
    if not isinstance(reference, str) or has_invalid_characters(reference):
        return None
    return reference[:100]


async def store_delivery(
    session: AsyncSession,
    vault: Vault,
    partner: PartnerIdentity,
    body: bytes,
    media_type: str,
    lines: int,
    now: dt.datetime,
) -> Delivery:
    """Keep the delivered file, sealed under a key of its own, until it is processed."""
    delivery_id = uuid.uuid4()
    sealed = await vault.seal(delivery_id, body, DELIVERY_CONTEXT)
    delivery = Delivery(
        id=delivery_id,
        partner_id=partner.id,
        formaat="csv" if media_type == "text/csv" else "json",
        status=RECEIVED,
        ontvangen_op=now,
        aantal=lines,
        aantal_verwerkt=0,
        aantal_doorgestuurd=0,
        aantal_niet_doorgestuurd=0,
        aantal_geweigerd=0,
        inhoud=sealed.encode(),
    )
    session.add(delivery)
    await session.flush()
    return delivery
