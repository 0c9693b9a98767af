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
import uuid
from collections import Counter
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.intake import domain, handlers
from services.intake.auth import PartnerIdentity
from services.intake.models import Delivery, DeliveryLine, Partner
from services.intake.problems import params_from_validation
from services.intake.schemas import SignalIn
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


def parse_json(body: bytes) -> list[Any]:
    try:
        lines = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UnreadableDelivery("De body is geen geldige JSON.") from None
    if not isinstance(lines, list):
        raise UnreadableDelivery("Een levering in JSON is een lijst (array) van signalen.")
    return lines


_TRUE = {"true", "ja", "1", "waar", "yes"}
_FALSE = {"false", "nee", "0", "onwaar", "no"}


def _cell(value: str) -> Any:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return value.strip()


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
    first_line = text.split("\n", 1)[0]
    delimiter = ";" if first_line.count(";") >= first_line.count(",") else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    if not reader.fieldnames or "partnerSignaalId" not in [f.strip() for f in reader.fieldnames]:
        raise UnreadableDelivery(
            "Het CSV-bestand mist een kopregel met de veldnamen (zoals partnerSignaalId)."
        )
    return [unflatten(row) for row in reader]


def parse(body: bytes, media_type: str) -> list[Any]:
    if media_type == "text/csv":
        return parse_csv(body)
    return parse_json(body)


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
            media_type = delivery.formaat
        partner = PartnerIdentity(id=partner_row.id, naam=partner_row.naam, soort=partner_row.soort)
        lines = parse(raw, "text/csv" if media_type == "csv" else "application/json")
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
        now = utc_now()
        parsed: list[tuple[int, SignalIn]] = []
        refused: dict[int, list[dict[str, str]]] = {}
        references: dict[int, str | None] = {}
        first = self._first_lines.get(delivery_id, {})
        for number, line in chunk:
            references[number] = _reference(line)
            earlier = first.get(references[number] or "", (number, line))
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
    line with the same id is refused, whichever chunk commits first."""
    first: dict[str, tuple[int, Any]] = {}
    for number, line in enumerate(lines, start=1):
        reference = _reference(line)
        if reference is not None:
            first.setdefault(reference, (number, line))
    return first


def differing_keys(first: Any, again: Any) -> list[str]:
    """The top-level fields in which two lines differ (names only)."""
    if not isinstance(first, dict) or not isinstance(again, dict):
        return []
    return sorted(k for k in first.keys() | again.keys() if first.get(k) != again.get(k))


def _reference(line: Any) -> str | None:
    if isinstance(line, dict) and isinstance(line.get("partnerSignaalId"), str):
        return str(line["partnerSignaalId"])[:100]
    return None


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
