"""Kafka TLS and SASL: the settings become the same client arguments for faststream's broker
and for aiokafka's producers, consumers and admin clients."""

import ssl

import pytest
from pydantic import ValidationError

from shared.messaging import kafka_client_args, kafka_security, make_broker, make_producer
from shared.settings import ServiceSettings


def settings(**values: object) -> ServiceSettings:
    return ServiceSettings(_env_file=None, **values)  # type: ignore[arg-type]


def test_plaintext_by_default_for_the_embedded_broker() -> None:
    assert kafka_security(settings()) is None
    assert kafka_client_args(settings(kafka_bootstrap="b:9092")) == {"bootstrap_servers": "b:9092"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_over_tls_gives_mechanism_credentials_and_a_tls_context(mechanism: str) -> None:
    args = kafka_client_args(
        settings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism=mechanism,
            kafka_sasl_username="vroeg-intake",
            kafka_sasl_password="p" * 40,
        )
    )
    assert args["security_protocol"] == "SASL_SSL"
    assert args["sasl_mechanism"] == mechanism
    assert args["sasl_plain_username"] == "vroeg-intake"
    assert args["sasl_plain_password"] == "p" * 40
    assert isinstance(args["ssl_context"], ssl.SSLContext)
    assert args["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_tls_only_loads_the_given_ca() -> None:
    import certifi

    args = kafka_client_args(
        settings(kafka_security_protocol="SSL", kafka_ssl_cafile=certifi.where())
    )
    assert args["security_protocol"] == "SSL"
    assert "sasl_mechanism" not in args
    assert args["ssl_context"].check_hostname


async def test_broker_and_relay_producer_get_the_same_security() -> None:
    configured = settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="vroeg-feedback",
        kafka_sasl_password="q" * 40,
    )
    broker = make_broker(configured)
    connection = broker._connection_kwargs  # what faststream connects its clients with
    assert connection["security_protocol"] == "SASL_SSL"
    assert connection["sasl_mechanism"] == "SCRAM-SHA-512"
    assert connection["sasl_plain_username"] == "vroeg-feedback"
    producer = make_producer(configured)
    assert producer.client._security_protocol == "SASL_SSL"
    assert producer.client._sasl_mechanism == "SCRAM-SHA-512"
    assert producer.client._sasl_plain_username == "vroeg-feedback"


def test_sasl_settings_come_whole_and_with_a_sasl_protocol() -> None:
    with pytest.raises(ValidationError, match="needs kafka_sasl_mechanism"):
        settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN")
    with pytest.raises(ValidationError, match="need kafka_security_protocol SASL"):
        settings(kafka_sasl_mechanism="PLAIN", kafka_sasl_username="u")
    with pytest.raises(ValidationError, match="go together"):
        settings(kafka_security_protocol="SSL", kafka_ssl_certfile="/etc/client.pem")


def test_production_refuses_a_sasl_password_over_plaintext() -> None:
    sasl = {
        "kafka_sasl_mechanism": "SCRAM-SHA-256",
        "kafka_sasl_username": "vroeg-intake",
        "kafka_sasl_password": "r" * 40,
    }
    settings(kafka_security_protocol="SASL_PLAINTEXT", **sasl)  # development: allowed
    with pytest.raises(ValidationError, match="SASL_PLAINTEXT sends the Kafka password"):
        settings(environment="production", kafka_security_protocol="SASL_PLAINTEXT", **sasl)
    settings(environment="production", kafka_security_protocol="SASL_SSL", **sasl)
