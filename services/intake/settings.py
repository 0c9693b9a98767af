from typing import ClassVar

from pydantic import Field, SecretStr

from shared.settings import DEVELOPMENT_SECRET_PREFIX, ServiceSettings


class IntakeSettings(ServiceSettings):
    """Intake's settings (VROEG_*)."""

    service_name: ClassVar[str] = "intake"
    default_port: ClassVar[int] = 8001

    household_key_secret: SecretStr = Field(
        SecretStr(DEVELOPMENT_SECRET_PREFIX + "household-key"),
        description="Regional secret for the keyed hash of normalised addresses (only intake "
        "sees addresses). Changing it splits every household's history: rotate with care.",
    )
    token_signing_key: SecretStr = Field(
        SecretStr(DEVELOPMENT_SECRET_PREFIX + "token-signing-key-0123456789abcdef"),
        description="HMAC key that signs partner access tokens (HS256).",
    )
    token_lifetime_s: int = Field(900, description="Lifetime of a partner access token.")
    token_issuer: str = Field("vroeg-intake", description="`iss` of partner access tokens.")
