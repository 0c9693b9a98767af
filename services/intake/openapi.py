"""The partner API's OpenAPI document, shaped to the Dutch API Design Rules (Logius):
a versioned server URL, contact details, the API-Version header on every success, errors
as problem+json only, OAuth 2.0 client credentials as a security scheme."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

API_PREFIX = "/api/v1"

TAGS = [
    {
        "name": "signalen",
        "description": "Eén signaal aanleveren en de ontvangstbevestiging opvragen.",
    },
    {
        "name": "leveringen",
        "description": "Een reeks signalen aanleveren (JSON of CSV) en de voortgang volgen.",
    },
    {"name": "terugkoppelingen", "description": "Wat de gemeente u over uw signalen laat weten."},
]

CONTACT = {
    "name": "Vroegsignalering Drenthe, functioneel beheer",
    "url": "https://vroegsignalering.example.nl/partners",
    "email": "beheer@vroegsignalering.example.nl",
}

_VERSION_HEADER = {
    "API-Version": {
        "description": "De volledige versie van deze API.",
        "schema": {"type": "string", "example": "1.0.0"},
    }
}

_PROBLEM_SCHEMA = {
    "type": "object",
    "description": "Een fout volgens RFC 9457 (application/problem+json).",
    "properties": {
        "type": {"type": "string", "format": "uri-reference"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
    "required": ["type", "title", "status", "detail", "instance"],
}

_BAD_REQUEST_SCHEMA = {
    "type": "object",
    "description": "Ongeldige invoer: elk fout veld met de regel, als `invalidParams` (zoals de "
    "ZGW API's) en als `errors` (API Design Rules).",
    "properties": {
        **_PROBLEM_SCHEMA["properties"],  # type: ignore[dict-item]
        "invalidParams": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "description": "Het veld, met punten genest."},
                    "code": {"type": "string"},
                    "reason": {"type": "string", "description": "De regel, in het Nederlands."},
                },
                "required": ["name", "code", "reason"],
            },
        },
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "in": {"type": "string", "enum": ["body", "query", "path", "header"]},
                    "location": {"type": "string", "description": "JSON Pointer naar het veld."},
                    "code": {"type": "string"},
                    "detail": {"type": "string"},
                },
                "required": ["in", "detail"],
            },
        },
    },
    "required": ["type", "title", "status", "detail", "instance", "invalidParams", "errors"],
}


# What schemas.ApiModel refuses in every text (NUL, lone surrogates), in the document too.
_PLAIN_TEXT = "[^\\u0000\\ud800-\\udfff]"
_SIGNAL_SCHEMAS = ("SignalIn", "CollectionProcess", "Person", "Address", "Contact")


def _plain_text_only(schema: dict[str, Any]) -> None:
    """A free text gets a pattern without NUL and lone surrogates; a pattern that lets
    any character but a few through gets them added to the few."""
    for option in schema.get("anyOf", [schema]):
        if option.get("type") != "string" or "enum" in option or "format" in option:
            continue
        pattern = option.get("pattern")
        if pattern is None:
            option["pattern"] = f"^{_PLAIN_TEXT}*$"
        elif "[^@\\s]" in pattern:
            option["pattern"] = pattern.replace("[^@\\s]", "[^@\\s\\u0000\\ud800-\\udfff]")


def _problem(description: str, schema: str = "Problem") -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
        },
    }


def partner_openapi(app: FastAPI, *, public_url: str) -> dict[str, Any]:
    """The document partners build against, generated from the routes and then shaped."""
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        contact=CONTACT,
        tags=TAGS,
    )
    document["servers"] = [
        {"url": f"{public_url.rstrip('/')}{API_PREFIX}", "description": "Regionale omgeving"},
    ]
    paths: dict[str, Any] = {}
    for path, operations in document["paths"].items():
        if not path.startswith(API_PREFIX):
            continue  # the token endpoint is the security scheme; health is not partner API
        for operation in operations.values():
            _shape(operation)
        paths[path.removeprefix(API_PREFIX)] = operations
    document["paths"] = paths
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for generated in (
        "HTTPValidationError",
        "ValidationError",
        "Body_token_oauth_token_post",
        "TokenResponse",
    ):
        schemas.pop(generated, None)
    for name in _SIGNAL_SCHEMAS:
        for field in schemas[name]["properties"].values():
            _plain_text_only(field)
    schemas["Problem"] = _PROBLEM_SCHEMA
    schemas["BadRequestProblem"] = _BAD_REQUEST_SCHEMA
    document["components"]["securitySchemes"] = {
        "oauth2": {
            "type": "oauth2",
            "description": "OAuth 2.0 client credentials (NL GOV profiel): POST /oauth/token met "
            "client_id en client_secret als HTTP Basic en grant_type=client_credentials.",
            "flows": {
                "clientCredentials": {
                    "tokenUrl": f"{public_url.rstrip('/')}/oauth/token",
                    "scopes": {},
                }
            },
        }
    }
    document["security"] = [{"oauth2": []}]
    return document


def _shape(operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation["responses"]
    responses.pop("422", None)  # FastAPI's default; this API answers 400 problem+json
    for status, response in responses.items():
        if status.startswith(("2", "3")):
            response["headers"] = copy.deepcopy(_VERSION_HEADER)
        elif status == "400":
            responses[status] = _problem(
                response.get("description", "Ongeldige invoer."), "BadRequestProblem"
            )
        elif status[0] in "45":
            responses[status] = _problem(response.get("description", "Fout."))
    responses.setdefault("400", _problem("Ongeldige invoer.", "BadRequestProblem"))
    responses.setdefault("401", _problem("Geen of geen geldig toegangstoken."))
    responses.setdefault(
        "429", _problem("Te veel verzoeken; probeer het na Retry-After seconden opnieuw.")
    )
    operation.pop("security", None)
