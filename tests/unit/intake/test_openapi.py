"""The partner API's OpenAPI document keeps the API Design Rules' core rules.

(The Logius Spectral ruleset itself is run by hand, see docs/adr/0005; these are the same
properties, asserted here so that a change that breaks them fails the build.)"""

import pytest

from services.intake.app import create_app
from services.intake.settings import IntakeSettings


@pytest.fixture(scope="module")
def document() -> dict:
    settings = IntakeSettings(public_url="https://vroegsignalering.example.nl", _env_file=None)
    return create_app(settings).openapi()


def operations(document: dict):  # type: ignore[no-untyped-def]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_server_url_is_https_and_carries_the_major_version(document: dict) -> None:
    assert [s["url"] for s in document["servers"]] == ["https://vroegsignalering.example.nl/api/v1"]
    assert set(document["paths"]) == {
        "/signalen",
        "/signalen/{signaal_id}",
        "/leveringen",
        "/leveringen/{levering_id}",
        "/terugkoppelingen",
    }


def test_contact_and_semantic_version(document: dict) -> None:
    assert {"name", "url", "email"} <= set(document["info"]["contact"])
    major, minor, patch = document["info"]["version"].split(".")
    assert major.isdigit() and minor.isdigit() and patch.isdigit()


def test_every_success_names_the_api_version_header(document: dict) -> None:
    for path, method, operation in operations(document):
        for status, response in operation["responses"].items():
            if status.startswith(("2", "3")):
                assert "API-Version" in response["headers"], (path, method, status)


def test_every_error_is_problem_json_and_every_operation_can_refuse_input(document: dict) -> None:
    for path, method, operation in operations(document):
        responses = operation["responses"]
        assert "422" not in responses, (path, method)
        assert "400" in responses, (path, method)
        assert operation.get("description"), (path, method)
        for status, response in responses.items():
            if status[0] in "45":
                assert list(response["content"]) == ["application/problem+json"], (
                    path,
                    method,
                    status,
                )
    bad_request = document["components"]["schemas"]["BadRequestProblem"]
    assert {"invalidParams", "errors"} <= set(bad_request["required"])


def test_oauth2_client_credentials_secures_the_api(document: dict) -> None:
    scheme = document["components"]["securitySchemes"]["oauth2"]
    assert (
        scheme["flows"]["clientCredentials"]["tokenUrl"]
        == "https://vroegsignalering.example.nl/oauth/token"
    )
    assert document["security"] == [{"oauth2": []}]


def test_schema_names_are_upper_camel_case(document: dict) -> None:
    for name in document["components"]["schemas"]:
        assert name[0].isupper() and "_" not in name, name
