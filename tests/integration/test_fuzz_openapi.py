"""A property-based run over the partner API's OpenAPI document (schemathesis).

Every operation of the document is called by schemathesis against the real intake
process: as a partner with a valid token and without any token, with schema-valid
(positive) and schema-violating (negative) requests, through the examples, coverage and
fuzzing phases. Each answer must be no server error, have a documented status code,
content type, headers and body, and, for a refusal, be application/problem+json.

Schemathesis cannot know the region's address table or the rules the document does not
express, so its valid signals are mostly refused with a documented 400. Two more
properties therefore take schemathesis' valid signals and deliveries, put them at
addresses registered for this test and apply those rules: then they must be accepted,
and the receipts and delivery status read back must match the document too.

The document is generated in-process at import, because schemathesis needs the
operations when pytest collects, before the stack runs (its lazy loader,
`schemathesis.pytest.from_fixture`, fails under pytest 9.2: it uses
`request.node._nodeid`, which pytest's nodes no longer have). The fixture checks that
the running service serves the same paths and schemas, so what is fuzzed is what
partners get.

Besides, an independent run of the schemathesis command line, as an outsider would
start it: every built-in check, all four phases (examples, coverage, fuzzing and the
stateful phase, which follows the links from a new signal or delivery to its receipt or
progress), within a time budget. It must find no server error and no answer the
document does not describe.

Bounded on two cores: max_examples per operation, no deadline, no example database;
the command-line run has a time budget of its own; all requests go to the loopback stack.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stdnum.nl import bsn as bsn_rules

from services.intake.app import create_app
from services.intake.schemas import has_invalid_characters
from shared.events import SignalKind
from tests.support import fresh_households, token, vroeg_cli
from vroeg.stack import Stack

pytestmark = pytest.mark.integration

DOCUMENT: dict[str, Any] = create_app().openapi()


def _path(suffix: str) -> str:
    return next(path for path in DOCUMENT["paths"] if path.endswith(suffix))


def _schema(*, phases: dict[str, Any]) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "generation": {"mode": "all", "database": "none"},
            "request-timeout": 10,
            "phases": {"stateful": {"enabled": False}, **phases},
            "operations": [
                {
                    # A schema-valid body can still break a rule the document cannot
                    # express (an address outside the address table, a date in the future,
                    # the elfproef, an empty delivery): a documented 400 is an answer; and
                    # a partnerSignaalId drawn again with other content: a documented 409.
                    "include-method": "POST",
                    "include-path-regex": "/(signalen|leveringen)$",
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": ["2xx", "400", "401", "409", "429"]
                        }
                    },
                }
            ],
        }
    )
    return schemathesis.openapi.from_dict(DOCUMENT, config=config)


AS_PARTNER = _schema(phases={})
# Without a token every request ends at the door; the coverage phase would only send
# several hundred more of the same refusals.
WITHOUT_TOKEN = _schema(phases={"coverage": {"enabled": False}})

DELIVER_SIGNAL = AS_PARTNER[_path("/signalen")]["POST"]
GET_RECEIPT = AS_PARTNER[_path("/signalen/{signaal_id}")]["GET"]
DELIVER_BATCH = AS_PARTNER[_path("/leveringen")]["POST"]
GET_DELIVERY = AS_PARTNER[_path("/leveringen/{levering_id}")]["GET"]

FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)


@dataclass(frozen=True)
class Intake:
    base_url: str  # the intake process plus the document's server path (/api/v1)
    partner: dict[str, str]  # Authorization header of a partner registered here


def _bearer(client: httpx.Client, naam: str) -> dict[str, str]:
    """A partner registered for every kind of arrears: schemathesis draws any `soort`."""
    kinds = get_args(SignalKind)
    extra = [arg for kind in kinds[1:] for arg in ("--soort", kind)]
    partner = json.loads(
        vroeg_cli("partner", "add", "--naam", naam, "--type", kinds[0], *extra, "--json")
    )
    return {"Authorization": f"Bearer {token(client, partner)}"}


@pytest.fixture(scope="module")
def intake(running_stack: Stack) -> Intake:
    root = running_stack.url("intake")
    with httpx.Client(base_url=root) as client:
        served = client.get("/openapi.json").json()
        partner = _bearer(client, "Fuzz Woonbedrijf (test)")
    assert served["paths"] == DOCUMENT["paths"]
    assert served["components"]["schemas"] == DOCUMENT["components"]["schemas"]
    servers = DOCUMENT.get("servers") or [{"url": ""}]
    return Intake(root + urlsplit(servers[0]["url"]).path, partner)


# --- what every answer must be, beyond schemathesis' own checks ----------------------

_PROBLEM_FIELDS = {"type", "title", "status", "detail", "instance"}
_SECURITY_HEADERS = (
    "api-version",
    "strict-transport-security",
    "x-content-type-options",
    "cache-control",
    "content-security-policy",
)


def _media_type(response: schemathesis.Response) -> str:
    return (response.headers.get("content-type") or [""])[0].split(";")[0].strip()


def refusals_are_problem_json(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """Every refusal, documented or not (405), is RFC 9457 problem+json with its status."""
    if response.status_code < 400:
        return None
    assert _media_type(response) == "application/problem+json", (
        f"{response.status_code} came as {_media_type(response)!r}, not problem+json"
    )
    problem = json.loads(response.content)
    missing = _PROBLEM_FIELDS - set(problem)
    assert not missing, f"problem without {sorted(missing)}"
    assert problem["status"] == response.status_code, "problem status differs from HTTP status"
    return None


def security_headers_on_every_answer(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """API-Version and the security headers of the API Design Rules, on every response
    (also the guard's 413 and 415: the headers middleware is the outermost)."""
    missing = [name for name in _SECURITY_HEADERS if name not in response.headers]
    assert not missing, f"{response.status_code} answered without {missing}"
    return None


# Every built-in check, none left out; these two on top.
_ADDED: list[schemathesis.CheckFunction] = [
    refusals_are_problem_json,
    security_headers_on_every_answer,
]


def call_and_validate(
    case: schemathesis.Case, intake: Intake, headers: dict[str, str]
) -> schemathesis.Response:
    return case.call_and_validate(
        base_url=intake.base_url, headers=headers, additional_checks=_ADDED
    )


# --- every operation, as schemathesis generates it --------------------------------------


@AS_PARTNER.parametrize()
@settings(FUZZ, max_examples=40)
def test_every_operation_keeps_to_the_document_for_a_partner(
    case: schemathesis.Case, intake: Intake
) -> None:
    call_and_validate(case, intake, intake.partner)


@WITHOUT_TOKEN.parametrize()
@settings(FUZZ, max_examples=15)
def test_every_operation_keeps_to_the_document_without_a_token(
    case: schemathesis.Case, intake: Intake
) -> None:
    response = call_and_validate(case, intake, {})
    assert response.status_code >= 400, "an operation answered without a token"


# --- valid signals at known addresses are accepted ------------------------------------


@pytest.fixture(scope="module")
def homes(running_stack: Stack) -> list[Any]:
    return fresh_households(5, seed=71)


@pytest.fixture(scope="module")
def sender(running_stack: Stack) -> dict[str, str]:
    """A partner of its own, so that partnerSignaalIds are this test's alone."""
    with httpx.Client(base_url=running_stack.url("intake")) as client:
        return _bearer(client, "Fuzz Woonbedrijf Geldig (test)")


amounts = st.decimals(min_value="0.01", max_value="9999999999.99", places=2).map(str)


def at_known_address(signal: dict[str, Any], home: Any, amount: str) -> dict[str, Any]:
    """A schema-valid signal made to keep the rules the document cannot express; the
    rest stays as schemathesis generated it."""
    body: dict[str, Any] = json.loads(json.dumps(signal))
    today = dt.date.today()

    def not_after(value: str, limit: dt.date) -> str:
        return min(dt.date.fromisoformat(value), limit).isoformat()

    # The address lies in the region's address table, and gemeentecode agrees with it.
    body["adres"].update(postcode=home.postcode, huisnummer=home.huisnummer)
    if body.get("gemeentecode") is not None:
        body["gemeentecode"] = home.gemeentecode
    # energiesoort belongs to soort Energie, and only to it.
    if body["soort"] == "Energie":
        body["energiesoort"] = body.get("energiesoort") or "gas"
    else:
        body.pop("energiesoort", None)
    # An amount above zero with at most two decimals (the document: number or any string).
    body["achterstandBedrag"] = amount
    # No date in the future; the reminder and the arrears come before the signal.
    body["signaaldatum"] = signaaldatum = not_after(body["signaaldatum"], today)
    signalled = dt.date.fromisoformat(signaaldatum)
    if body.get("ontstaansdatum") is not None:
        body["ontstaansdatum"] = not_after(body["ontstaansdatum"], signalled)
    process = body["incassotraject"]
    process["herinneringVerstuurdOp"] = not_after(process["herinneringVerstuurdOp"], signalled)
    # All steps of the socially responsible collection process are taken.
    for step in ("persoonlijkContactGezocht", "gewezenOpSchuldhulp", "aanbodGegevensDoorgeven"):
        process[step] = True
    person = body["persoon"]
    if person.get("geboortedatum") is not None:
        person["geboortedatum"] = not_after(person["geboortedatum"], today)
    # A BSN passes the elfproef (the document: nine digits).
    if person.get("bsn") is not None and not bsn_rules.is_valid(person["bsn"]):
        person["bsn"] = None
    return body


def _value(body: dict[str, Any], name: str) -> Any:
    value: Any = body
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def known_gap(body: dict[str, Any], field: str) -> bool:
    """A refusal of a schema-valid field that we reported as a gap in the document:
    text that is only whitespace (the server strips Unicode whitespace, then needs one
    character; the document says minLength 1), and an email with whitespace or a control
    character (the server's `\\s` and `$` are the Rust regex engine's, Unicode's
    White_Space and the very end; the generator's are Python's, which differ on U+0085,
    U+001C..U+001F and a final newline)."""
    value = _value(body, field)
    if not isinstance(value, str):
        return False
    if has_invalid_characters(value):
        # Not a gap but the generator's: schemathesis draws NUL into texts whose pattern
        # in the document excludes it; the refusal is the document's.
        return True
    odd = any(c.isspace() or not c.isprintable() for c in value)
    return value.strip() == "" or (field == "contact.email" and odd)


# partnerSignaalId -> receipt id of what `sender` delivered, over all examples of both
# properties below: the first delivery of an id gives 201, every later one 200 and the
# same receipt (409 when its content differs), whether it came alone or in a delivery.
_ACCEPTED: dict[str, str] = {}


@settings(FUZZ, max_examples=25)
@given(case=DELIVER_SIGNAL.as_strategy(), home=st.integers(0, 4), amount=amounts)
def test_valid_signals_at_known_addresses_are_accepted(
    intake: Intake, homes: list[Any], sender: dict[str, str], case: Any, home: int, amount: str
) -> None:
    case.body = at_known_address(case.body, homes[home], amount)
    response = call_and_validate(case, intake, sender)
    if response.status_code == 400:
        refused = [p["name"] for p in response.json()["invalidParams"]]
        assert all(known_gap(case.body, name) for name in refused), response.text
        return
    partner_signaal_id = case.body["partnerSignaalId"]
    known = _ACCEPTED.get(partner_signaal_id)
    if response.status_code == 409:  # delivered before with other content: nothing changed
        assert known is not None, f"{partner_signaal_id} is new: no conflict expected"
        assert response.headers["location"][0].endswith(known)  # schemathesis: lists
        return
    assert response.status_code in (200, 201), response.text
    receipt = response.json()
    if known is None:
        assert response.status_code == 201, f"{partner_signaal_id} is new: 201 expected"
        _ACCEPTED[partner_signaal_id] = receipt["id"]
    else:
        assert response.status_code == 200 and receipt["id"] == known, (
            f"{partner_signaal_id} was delivered before: 200 and the same receipt expected"
        )
    again = call_and_validate(
        GET_RECEIPT.Case(path_parameters={"signaal_id": receipt["id"]}), intake, sender
    )
    assert again.status_code == 200 and again.json() == receipt


@settings(FUZZ, max_examples=5)
@given(
    lines=st.lists(
        DELIVER_SIGNAL.as_strategy().map(lambda case: case.body), min_size=1, max_size=4
    ),
    home=st.integers(0, 4),
    amount=amounts,
)
def test_valid_deliveries_at_known_addresses_are_processed(
    intake: Intake,
    homes: list[Any],
    sender: dict[str, str],
    lines: list[Any],
    home: int,
    amount: str,
) -> None:
    # The document's items are any object (each line is judged on its own, later):
    # schemathesis' valid signals of POST /signalen make the lines here.
    case = DELIVER_BATCH.Case(
        body=[at_known_address(line, homes[home], amount) for line in lines],
        media_type="application/json",
    )
    received = call_and_validate(case, intake, sender)
    assert received.status_code == 202
    progress = GET_DELIVERY.Case(path_parameters={"levering_id": received.json()["id"]})
    deadline = time.monotonic() + 15
    while (status := call_and_validate(progress, intake, sender).json())["status"] != "verwerkt":
        assert time.monotonic() < deadline, f"delivery not processed: {status}"
        time.sleep(0.1)
    for line in status["signalen"]:
        if line["status"] == "geweigerd":
            body = case.body[line["regel"] - 1]
            # or: its id stood on an earlier line, or came before with other content
            assert all(
                known_gap(body, error["name"]) or error.get("code") in ("dubbel", "afwijkend")
                for error in line["fouten"]
            ), line["fouten"]
            continue
        assert line["status"] == "doorgestuurd", line
        receipt_id = line["ontvangstbevestiging"]["id"]
        known = _ACCEPTED.setdefault(line["partnerSignaalId"], receipt_id)
        assert known == receipt_id, f"{line['partnerSignaalId']} got a second receipt"


# --- an independent run: the command line, all checks, the stateful phase ---------------

CLI_TIME_BUDGET_S = 60  # the run stops fuzzing and stateful testing when it is spent
CLI_CONFIG = """
request-timeout = 10
[generation]
database = "none"
[[operations]]
include-method = "POST"
include-path-regex = "/(signalen|leveringen)$"
# A schema-valid body can still break a rule the document cannot express (an address
# outside the address table, a date in the future, the elfproef, a CSV without header).
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "429"]
"""


def test_an_independent_schemathesis_run_finds_no_server_error_and_no_mismatch(
    running_stack: Stack, intake: Intake, tmp_path: Path
) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CLI_CONFIG)
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{running_stack.url('intake')}/openapi.json",
        "--url",
        intake.base_url,
        "--header",
        f"Authorization: {intake.partner['Authorization']}",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        "10",
        "--max-time",
        str(CLI_TIME_BUDGET_S),
        "--seed",
        "9",
        "--workers",
        "1",
    ]
    started = time.monotonic()
    run = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=CLI_TIME_BUDGET_S + 60,
        check=False,
        cwd=tmp_path,  # its cache and crash files stay out of the repository
    )
    took = time.monotonic() - started
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert "Stateful" in run.stdout and "Scenarios:" in run.stdout, report
    assert took < CLI_TIME_BUDGET_S + 30, f"the run took {took:.0f}s"
