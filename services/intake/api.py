"""The partner API's HTTP routes (contract: partner-api.md)."""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Header, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.intake import deliveries, domain, handlers
from services.intake.auth import (
    CurrentPartner,
    PartnerIdentity,
    client_secret_matches,
    confirm_active,
    is_client_id,
    issue_token,
)
from services.intake.models import Delivery, DeliveryLine, Partner, Signal
from services.intake.problems import Problem, invalid_input, printable
from services.intake.schemas import (
    DeliveryReceipt,
    DeliveryStatus,
    FeedbackItem,
    FeedbackPage,
    Receipt,
    SignalIn,
    TokenResponse,
)
from shared.events import utc_now

router = APIRouter()

# Cursors are compared with database columns; a larger number is refused (400), not a 500.
INTEGER_MAX = 2**31 - 1  # levering_regels.regel
BIGINT_MAX = 2**63 - 1  # terugkoppelingen.id

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
_REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {
        **_PROBLEM,
        "description": "Ongeldige invoer: elk fout veld en de regel staan in invalidParams.",
    },
    401: {**_PROBLEM, "description": "Geen of geen geldig toegangstoken."},
    413: {**_PROBLEM, "description": "De body is te groot."},
    415: {**_PROBLEM, "description": "Verkeerd Content-Type."},
    429: {
        **_PROBLEM,
        "description": "Te veel verzoeken; probeer het na Retry-After seconden opnieuw.",
    },
}


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def too_many_requests(wait_s: float, advice: str) -> Problem:
    seconds = max(1, int(wait_s + 0.999))
    return Problem(
        429,
        "Te veel verzoeken",
        f"U stuurt meer verzoeken dan is toegestaan. Probeer het over {seconds} seconden "
        f"opnieuw{advice}.",
        headers={"Retry-After": str(seconds)},
    )


async def rate_limited(request: Request, partner: CurrentPartner) -> PartnerIdentity:
    """429 with Retry-After when a partner sends faster than its share (per replica)."""
    wait = request.app.state.rate_limiter.allow(partner.id)
    if wait is not None:
        raise too_many_requests(wait, ", of lever grote aantallen via POST /api/v1/leveringen")
    return partner


LimitedPartner = Annotated[PartnerIdentity, Depends(rate_limited)]


@router.post(
    "/oauth/token",
    response_model=TokenResponse,
    tags=["authenticatie"],
    summary="Vraag een toegangstoken aan (OAuth 2.0 client credentials)",
    description="Stuur client_id en client_secret als HTTP Basic en grant_type=client_credentials "
    "als formulierveld. Het token draagt de identiteit van de partner.",
    responses={400: _REFUSALS[400], 401: _REFUSALS[401], 429: _REFUSALS[429]},
)
async def token(
    request: Request,
    grant_type: Annotated[str, Form(examples=["client_credentials"])],
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> TokenResponse:
    credentials = _basic_credentials(authorization)
    if credentials is not None:
        # The audit trail names the client id tried (never the secret), also when refused:
        # printable characters only, at most 64.
        request.state.audit_object = printable(credentials[0])
    # Per source first, so that guessing many client ids is throttled as well. Behind a
    # proxy request.client is the proxy itself: see token_rate_per_source_per_s (settings).
    source = request.client.host if request.client else "onbekend"
    wait = request.app.state.token_source_limiter.allow(source)
    if wait is not None:
        raise too_many_requests(wait, "")
    refused = Problem(
        401,
        "Niet geauthenticeerd",
        "Onbekende client of onjuist geheim (HTTP Basic met client_id en client_secret).",
        headers={"WWW-Authenticate": 'Basic realm="vroeg"'},
    )
    if credentials is not None and not is_client_id(credentials[0]):
        # Not shaped like our client ids: no bucket of its own (an id of kilobytes would
        # be one key each) and no lookup, but the same argon2 work as any refusal.
        await client_secret_matches(None, credentials[1])
        raise refused
    if credentials is not None:
        wait = request.app.state.token_client_limiter.allow(credentials[0])
        if wait is not None:
            raise too_many_requests(wait, "")
    if grant_type != "client_credentials":
        raise Problem(400, "Ongeldig verzoek", "grant_type moet client_credentials zijn.")
    if credentials is None:
        raise refused
    runtime = request.app.state.runtime
    async with runtime.session_factory() as session:
        partner = await session.scalar(select(Partner).where(Partner.client_id == credentials[0]))
    # An unknown client costs the same argon2 work as a wrong secret (a dummy hash).
    matches = await client_secret_matches(
        partner.secret_hash if partner is not None else None, credentials[1]
    )
    if partner is None or not matches or not partner.actief:
        raise refused
    request.state.partner_id = str(partner.id)
    return TokenResponse(
        access_token=issue_token(partner, runtime.settings, utc_now()),
        expires_in=runtime.settings.token_lifetime_s,
    )


@router.post(
    "/api/v1/signalen",
    response_model=Receipt,
    status_code=201,
    tags=["signalen"],
    summary="Lever één signaal aan",
    description="Het signaal wordt gecontroleerd, naar de gemeente van het adres gerouteerd en "
    "doorgestuurd, of niet doorgestuurd als de gemeente signalen voor dit adres niet oppakt. "
    "Hetzelfde partnerSignaalId opnieuw met dezelfde inhoud geeft 200 en dezelfde "
    "ontvangstbevestiging; met andere inhoud 409, met de velden die verschillen.",
    responses={
        200: {
            "model": Receipt,
            "description": "Dit signaal was al geleverd: dezelfde ontvangstbevestiging.",
        },
        **_REFUSALS,
        403: {
            **_PROBLEM,
            "description": "U bent niet aangemeld voor deze soort achterstand (veld soort).",
        },
        409: {
            **_PROBLEM,
            "description": "Dit partnerSignaalId is eerder geleverd met andere inhoud; "
            "invalidParams noemt de velden die verschillen. Er is niets gewijzigd.",
        },
    },
)
async def deliver_signal(request: Request, signal: SignalIn, partner: LimitedPartner) -> Response:
    runtime = request.app.state.runtime
    # Autocommit: every statement of accept_signals stands alone (the signal and its event
    # are one statement), which saves the BEGIN and COMMIT round trips.
    async with runtime.engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        session = AsyncSession(bind=autocommit, expire_on_commit=False)
        [outcome] = await handlers.accept_signals(
            session,
            request.app.state.vault,
            runtime.outbox,
            partner,
            [signal],
            region=request.app.state.municipalities,
            household_secret=runtime.settings.household_key_secret.get_secret_value(),
            now=utc_now(),
            require_active_partner=True,
        )
        await session.close()
    if isinstance(outcome, handlers.Refused):
        raise _refusal(outcome)
    if outcome.created:
        runtime.outbox.wake()
    request.state.audit_object = f"signaal:{outcome.receipt.id}"
    # The receipt is already a validated model: serialised once, not validated again.
    return Response(
        outcome.receipt.model_dump_json(by_alias=True),
        status_code=201 if outcome.created else 200,
        media_type="application/json",
        headers={"Location": f"/api/v1/signalen/{outcome.receipt.id}"},
    )


def _refusal(outcome: handlers.Refused) -> Problem:
    """400 for a broken rule; 403 for a kind the partner is not registered for; 409 for a
    partnerSignaalId delivered before with other content. Every field and rule is named."""
    params = [{"name": v.name, "code": v.code, "reason": v.reason} for v in outcome.violations]
    problem = invalid_input(params)
    if isinstance(outcome, handlers.Conflict):
        problem.status, problem.title = 409, "Conflict met een eerder geleverd signaal"
        problem.detail = (
            f"Dit partnerSignaalId leverde u al eerder, met andere inhoud in: "
            f"{', '.join(outcome.fields)}. Het opgeslagen signaal is niet gewijzigd."
        )
        problem.type = "https://vroegsignalering.example.nl/problemen/conflict"
        problem.headers = {"Location": f"/api/v1/signalen/{outcome.receipt.id}"}
    elif any(v.code == domain.NOT_REGISTERED for v in outcome.violations):
        problem.status, problem.title = 403, "Soort niet toegestaan"
        problem.type = "https://vroegsignalering.example.nl/problemen/soort-niet-toegestaan"
    return problem


@router.delete(
    "/api/v1/signalen/{signaal_id}",
    response_model=Receipt,
    tags=["signalen"],
    summary="Trek een eigen signaal in",
    description="Bijvoorbeeld omdat de achterstand betaald is voordat de gemeente in actie "
    "kwam, of omdat het signaal ten onrechte is verstuurd. Het signaal telt daarna niet meer "
    "mee in de match van het huishouden; u krijgt een terugkoppeling met status "
    "'ingetrokken'. Opnieuw intrekken geeft hetzelfde antwoord. Een correctie is een "
    "intrekking plus een nieuw signaal met een nieuw partnerSignaalId.",
    responses={401: _REFUSALS[401], 404: _PROBLEM, 429: _REFUSALS[429]},
)
async def withdraw_signal(
    request: Request, signaal_id: uuid.UUID, partner: LimitedPartner
) -> Receipt:
    runtime = request.app.state.runtime
    async with runtime.session_factory() as session, session.begin():
        await confirm_active(session, partner)
        receipt = await handlers.withdraw_signal(
            session, runtime.outbox, partner, signaal_id, now=utc_now()
        )
    if receipt is None:
        raise Problem(404, "Niet gevonden", "Geen signaal van u met dit id.")
    runtime.outbox.wake()
    request.state.audit_object = f"signaal:{signaal_id}"
    return receipt


@router.get(
    "/api/v1/signalen/{signaal_id}",
    response_model=Receipt,
    tags=["signalen"],
    summary="De ontvangstbevestiging van een eigen signaal",
    description="Alleen signalen die u zelf leverde; die van andere partners bestaan voor u niet (404).",
    responses={401: _REFUSALS[401], 404: _PROBLEM, 429: _REFUSALS[429]},
)
async def get_receipt(request: Request, signaal_id: uuid.UUID, partner: LimitedPartner) -> Receipt:
    async with request.app.state.runtime.session_factory() as session:
        await confirm_active(session, partner)
        receipt = await handlers.receipt_for(session, partner, signaal_id)
    if receipt is None:
        raise Problem(404, "Niet gevonden", "Geen signaal van u met dit id.")
    request.state.audit_object = f"signaal:{signaal_id}"
    return receipt


@router.post(
    "/api/v1/leveringen",
    response_model=DeliveryReceipt,
    status_code=202,
    tags=["leveringen"],
    summary="Lever een reeks signalen aan (JSON-lijst of CSV)",
    description="Een JSON-lijst van signalen (application/json) of een CSV-bestand (text/csv, "
    "UTF-8 met of zonder BOM, scheidingsteken ; of ,) met dezelfde veldnamen, genest met punten "
    "(adres.postcode). Elk signaal wordt apart beoordeeld: goede signalen worden aangenomen, "
    "ook als andere fouten bevatten. Volg de voortgang met GET /api/v1/leveringen/{id}.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "array",
                        "minItems": 1,
                        "description": "Signalen; elk wordt apart beoordeeld, een fout signaal "
                        "wordt geweigerd in de voortgang, niet de hele levering.",
                        # Not `$ref SignalIn`: a line that breaks SignalIn does not refuse
                        # the delivery (202); it is refused on its own, in the progress.
                        "items": {
                            "type": "object",
                            "description": "Een signaal met de velden van SignalIn (zoals "
                            "bij POST /signalen). Een levering wordt als geheel aangenomen "
                            "(202); elk signaal wordt daarna apart beoordeeld, en een signaal "
                            "dat niet aan SignalIn voldoet staat als 'geweigerd' met zijn "
                            "fouten in GET /leveringen/{levering_id}. Alleen een element dat "
                            "geen object is weigert de hele levering (400).",
                        },
                    }
                },
                "text/csv": {
                    "schema": {"type": "string"},
                    "example": (
                        "partnerSignaalId;soort;energiesoort;signaaldatum;ontstaansdatum;"
                        "achterstandBedrag;incassotraject.herinneringVerstuurdOp;"
                        "incassotraject.persoonlijkContactGezocht;incassotraject.gewezenOpSchuldhulp;"
                        "incassotraject.aanbodGegevensDoorgeven;persoon.bsn;persoon.achternaam;"
                        "adres.straatnaam;adres.huisnummer;adres.postcode;adres.woonplaats\n"
                        "WS-2026-000123;Energie;gas;2026-11-02;2026-09-01;734.50;2026-10-01;"
                        "true;true;true;999990019;Berg;Brinkstraat;12;9411 AB;Beilen\n"
                    ),
                },
            },
        }
    },
    responses=_REFUSALS,
)
async def deliver_batch(
    request: Request, response: Response, partner: LimitedPartner
) -> DeliveryReceipt:
    media_type = _media_type(request)
    if media_type not in ("application/json", "text/csv"):
        raise Problem(
            415, "Verkeerd Content-Type", "Stuur een levering als application/json of text/csv."
        )
    settings = request.app.state.runtime.settings
    busy = too_many_requests(
        settings.delivery_retry_after_s,
        f": er zijn al {settings.delivery_max_in_flight} leveringen van u in "
        "verwerking (zie GET /api/v1/leveringen/{id})",
    )
    # Before the body is read: a partner's parallel uploads are refused, not read and
    # parsed (up to max_delivery_bytes each) only to be refused afterwards.
    slots = _reading_slots(request, settings.delivery_max_reading_per_partner)
    if not slots.try_take(partner.id):
        raise busy
    try:
        async with request.app.state.runtime.session_factory() as session, session.begin():
            await confirm_active(session, partner)
            if await deliveries.in_flight(session, partner.id) >= settings.delivery_max_in_flight:
                raise busy
        body = await request.body()
        try:
            lines = await deliveries.parse_off_loop(body, media_type)
        except deliveries.UnreadableDelivery as exc:
            raise invalid_input([{"name": "body", "code": "bestand", "reason": str(exc)}]) from None
    finally:
        slots.release(partner.id)
    if not lines or len(lines) > settings.delivery_max_lines:
        raise invalid_input(
            [
                {
                    "name": "body",
                    "code": "aantal",
                    "reason": f"Een levering bevat 1 tot {settings.delivery_max_lines} signalen.",
                }
            ]
        )
    async with request.app.state.runtime.session_factory() as session, session.begin():
        await confirm_active(session, partner)
        # Again, under the partner's row lock: deliveries read at the same moment (on any
        # replica) count each other.
        if await deliveries.in_flight(session, partner.id) >= settings.delivery_max_in_flight:
            raise busy
        delivery = await deliveries.store_delivery(
            session, request.app.state.vault, partner, body, media_type, len(lines), utc_now()
        )
    request.app.state.delivery_worker.wake()
    request.state.audit_object = f"levering:{delivery.id}"
    response.headers["Location"] = f"/api/v1/leveringen/{delivery.id}"
    return DeliveryReceipt(
        id=delivery.id,
        status=delivery.status,
        aantal=delivery.aantal,
        ontvangen_op=delivery.ontvangen_op,
    )


def _reading_slots(request: Request, per_partner: int) -> deliveries.PartnerSlots:
    """This replica's count of deliveries being read and parsed, per partner."""
    slots: deliveries.PartnerSlots | None = getattr(request.app.state, "reading_slots", None)
    if slots is None:
        slots = request.app.state.reading_slots = deliveries.PartnerSlots(per_partner)
    return slots


# What a receipt shows of a stored signal (handlers.receipt_of).
_RECEIPT_COLUMNS = (
    Signal.id,
    Signal.partner_signaal_id,
    Signal.ontvangen_op,
    Signal.status,
    Signal.reden,
)


@router.get(
    "/api/v1/leveringen/{levering_id}",
    response_model=DeliveryStatus,
    tags=["leveringen"],
    summary="Voortgang van een levering, met per signaal de ontvangstbevestiging of de fouten",
    description="De voortgang, en per regel van de levering de ontvangstbevestiging of elk fout "
    "veld met de regel, in regelvolgorde en per bladzijde (aantal, standaard 1000): vraag de "
    "volgende bladzijde op met vanaf=<volgende>. Vraag opnieuw op tot status 'verwerkt' is; "
    "met aantal=0 alleen de voortgang.",
    responses={401: _REFUSALS[401], 404: _PROBLEM, 429: _REFUSALS[429]},
)
async def delivery_status(
    request: Request,
    levering_id: uuid.UUID,
    partner: LimitedPartner,
    vanaf: Annotated[
        int,
        Query(
            ge=0,
            le=INTEGER_MAX,
            description="Geef de regels na dit regelnummer (0: vanaf het begin).",
        ),
    ] = 0,
    aantal: Annotated[
        int,
        Query(
            ge=0,
            le=10_000,
            description="Hoeveel regels hoogstens; 0 geeft alleen de voortgang.",
        ),
    ] = 1000,
) -> DeliveryStatus:
    async with request.app.state.runtime.session_factory() as session:
        await confirm_active(session, partner)
        delivery = await session.scalar(
            select(Delivery).where(Delivery.id == levering_id, Delivery.partner_id == partner.id)
        )
        if delivery is None:
            raise Problem(404, "Niet gevonden", "Geen levering van u met dit id.")
        lines = (
            list(
                await session.scalars(
                    select(DeliveryLine)
                    .where(DeliveryLine.levering_id == levering_id, DeliveryLine.regel > vanaf)
                    .order_by(DeliveryLine.regel)
                    .limit(aantal)
                )
            )
            if aantal
            else []
        )
        if delivery.status != deliveries.PROCESSED:
            lines = lines[: deliveries.unbroken_run([line.regel for line in lines], vanaf)]
        signal_ids = [line.signal_id for line in lines if line.signal_id is not None]
        receipts = (
            {
                signal["id"]: handlers.receipt_of(signal).model_dump(mode="json", by_alias=True)
                for signal in (
                    await session.execute(
                        # the receipt's columns only (never the sealed personal data), and
                        # only this partner's signals
                        select(*_RECEIPT_COLUMNS).where(
                            Signal.id.in_(signal_ids), Signal.partner_id == partner.id
                        )
                    )
                ).mappings()
            }
            if signal_ids
            else {}
        )
    request.state.audit_object = f"levering:{levering_id}"
    last = lines[-1].regel if lines else None
    return DeliveryStatus(
        id=delivery.id,
        status=delivery.status,
        ontvangen_op=delivery.ontvangen_op,
        afgerond_op=delivery.afgerond_op,
        aantal=delivery.aantal,
        aantal_verwerkt=delivery.aantal_verwerkt,
        aantal_doorgestuurd=delivery.aantal_doorgestuurd,
        aantal_niet_doorgestuurd=delivery.aantal_niet_doorgestuurd,
        aantal_geweigerd=delivery.aantal_geweigerd,
        signalen=[deliveries.line_receipt(line, receipts) for line in lines],
        volgende=last if last is not None and len(lines) == aantal else None,
    )


@router.get(
    "/api/v1/terugkoppelingen",
    response_model=FeedbackPage,
    tags=["terugkoppelingen"],
    summary="Terugkoppelingen over uw signalen, oudste eerst",
    description="Wat de gemeente u over uw signalen laat weten (bijvoorbeeld dat een signaal in "
    "behandeling is, of niet is doorgestuurd). Vraag de volgende bladzijde op met "
    "vanaf=<volgende>; zonder vanaf begint u bij het begin.",
    responses={400: _REFUSALS[400], 401: _REFUSALS[401], 429: _REFUSALS[429]},
)
async def feedback(
    request: Request,
    partner: LimitedPartner,
    vanaf: Annotated[
        int,
        Query(ge=0, le=BIGINT_MAX, description="Cursor: het laatste volgnummer dat u had."),
    ] = 0,
    aantal: Annotated[
        int, Query(ge=1, le=1000, description="Hoeveel terugkoppelingen hoogstens.")
    ] = 100,
) -> FeedbackPage:
    async with request.app.state.runtime.session_factory() as session:
        await confirm_active(session, partner)
        items = await handlers.feedback_page(session, partner, vanaf, aantal)
    request.state.audit_object = f"terugkoppelingen:{vanaf}"
    return FeedbackPage(
        terugkoppelingen=[
            FeedbackItem(
                volgnummer=item.id,
                signaal_id=item.signal_id,
                partner_signaal_id=item.partner_signaal_id,
                status=item.status,  # type: ignore[arg-type]
                toelichting=item.toelichting,
                verstuurd_op=item.datum,
            )
            for item in items
        ],
        volgende=items[-1].id if items else None,
    )
