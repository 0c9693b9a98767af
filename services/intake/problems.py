"""Errors as application/problem+json (RFC 9457), with every bad field named."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

PROBLEM_JSON = "application/problem+json"

# How much of a name taken from the request (a field name, a client id) an answer or the
# audit trail repeats.
NAME_LIMIT = 64


class Rule(ValueError):
    """A rule a value breaks, worded in Dutch for the partner. Only these messages reach
    an answer; any other error's message (pydantic's, a library's, the database's) is
    replaced by our own text."""


def printable(value: str, limit: int = NAME_LIMIT) -> str:
    """Only printable characters (no NUL, control characters or lone surrogates), bounded:
    safe to repeat in an answer, a log line or the audit trail."""
    return "".join(c for c in value if c.isprintable())[:limit]


_PYDANTIC_RULES_NL = {
    "missing": "Dit veld is verplicht.",
    "extra_forbidden": "Dit veld is onbekend; controleer de veldnaam.",
    "string_too_long": "De tekst is te lang.",
    "string_too_short": "De tekst mag niet leeg zijn.",
    "string_pattern_mismatch": "De waarde heeft niet de juiste vorm.",
    "literal_error": "De waarde is niet een van de toegestane waarden.",
    "date_from_datetime_parsing": "Geef een datum als JJJJ-MM-DD.",
    "date_parsing": "Geef een datum als JJJJ-MM-DD.",
    "date_type": "Geef een datum als JJJJ-MM-DD.",
    "decimal_parsing": 'Geef een bedrag als tekst met een punt, bijvoorbeeld "734.50".',
    "decimal_max_places": "Een bedrag heeft hoogstens twee decimalen.",
    "decimal_max_digits": "Het bedrag is te groot.",
    "greater_than": "De waarde is te klein.",
    "greater_than_equal": "De waarde is te klein.",
    "less_than_equal": "De waarde is te groot.",
    "too_short": "De lijst is te kort.",
    "too_long": "De lijst is te lang.",
    "bool_parsing": "Geef true of false.",
    "bool_type": "Geef true of false.",
    "int_parsing": "Geef een geheel getal.",
    "int_type": "Geef een geheel getal.",
    "model_type": "Geef een object.",
    "model_attributes_type": "Geef een object.",
    "json_invalid": "De body is geen geldige JSON.",
    "uuid_parsing": "Geef een geldige UUID.",
    "uuid_type": "Geef een geldige UUID.",
    "string_type": "Geef tekst.",
    "value_error": "De waarde voldoet niet aan de regel.",
}


class Problem(Exception):
    """An error that becomes a problem+json response."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        invalid_params: Sequence[dict[str, str]] = (),
        errors: Sequence[dict[str, str]] = (),
        headers: dict[str, str] | None = None,
        type_: str = "about:blank",
    ) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.detail = detail
        self.invalid_params = list(invalid_params)
        self.errors = list(errors)
        self.headers = headers or {}
        self.type = type_

    def response(self, instance: str) -> JSONResponse:
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }
        if self.invalid_params:
            body["invalidParams"] = self.invalid_params
            body["errors"] = self.errors
        return JSONResponse(
            body, status_code=self.status, headers=self.headers, media_type=PROBLEM_JSON
        )


def invalid_input(params: list[dict[str, str]], where: str = "body") -> Problem:
    summary = "; ".join(f"{p['name']}: {p['reason']}" for p in params[:20])
    return Problem(
        400,
        "Ongeldige invoer",
        f"Het verzoek is niet aangenomen. {summary}",
        invalid_params=params,
        errors=[
            {
                "in": where,
                "location": "#/" + p["name"].replace(".", "/"),
                "code": p["code"],
                "detail": p["reason"],
            }
            for p in params
        ],
        type_="https://vroegsignalering.example.nl/problemen/ongeldige-invoer",
    )


def _field_name(loc: tuple[Any, ...], error_type: str) -> str:
    if error_type == "json_invalid":
        return "body"  # pydantic puts the character offset here
    parts = [str(part) for part in loc if part not in ("body", "path", "query", "header")]
    return printable(".".join(parts)) or "body"  # a name may come from the request


def params_from_validation(errors: Sequence[Any]) -> list[dict[str, str]]:
    params = []
    for error in errors:
        rule = _PYDANTIC_RULES_NL.get(error["type"], "De waarde voldoet niet aan de regel.")
        if error["type"] == "value_error":
            cause = error.get("ctx", {}).get("error")
            rule = str(cause) if isinstance(cause, Rule) else rule
        elif error["type"] == "string_pattern_mismatch" and "pattern" in error.get("ctx", {}):
            rule = f"De waarde heeft niet de juiste vorm (patroon {error['ctx']['pattern']})."
        elif error["type"] in ("string_too_long", "too_long"):
            rule = f"Te lang: hoogstens {error.get('ctx', {}).get('max_length')} tekens."
        params.append(
            {
                "name": _field_name(tuple(error["loc"]), error["type"]),
                "code": error["type"],
                "reason": rule,
            }
        )
    return params


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> JSONResponse:
        return exc.response(request.url.path)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        where = str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else "body"
        where = where if where in ("body", "path", "query", "header") else "body"
        return invalid_input(params_from_validation(errors), where).response(request.url.path)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Our own words only: a database's or a library's message may name tables, values
        # or personal data. The error itself is logged by the server, without the request.
        return Problem(
            500,
            "Interne fout",
            "Er ging aan onze kant iets mis. Probeer het later opnieuw; een signaal opnieuw "
            "sturen met hetzelfde partnerSignaalId geeft geen dubbel signaal.",
        ).response(request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # a body that is not JSON (or not UTF-8) at all
            return invalid_input(
                [
                    {
                        "name": "body",
                        "code": "json_invalid",
                        "reason": "De body is geen geldige JSON in UTF-8.",
                    }
                ]
            ).response(request.url.path)
        titles = {404: "Niet gevonden", 405: "Methode niet toegestaan", 401: "Niet geauthenticeerd"}
        details = {
            404: "Dit adres bestaat niet in deze API.",
            405: "Deze methode is hier niet toegestaan; zie de Allow-header.",
        }
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not only its first route's
            headers["Allow"] = _allowed_methods(request)
        # Never the exception's own text: it may be a library's, in English, or worse.
        return Problem(
            exc.status_code,
            titles.get(exc.status_code, "Fout"),
            details.get(exc.status_code, "Het verzoek kon niet worden verwerkt."),
            headers=headers,
        ).response(request.url.path)


def _allowed_methods(request: Request) -> str:
    """The methods of every route on this path (Starlette names only the first route's)."""
    scope = {**request.scope, "method": ""}
    methods: set[str] = set()
    for route in request.app.router.routes:
        if route.matches(scope)[0] != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))
