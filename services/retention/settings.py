from typing import ClassVar

from shared.settings import ServiceSettings


class RetentionSettings(ServiceSettings):
    """Retention's settings (VROEG_*)."""

    service_name: ClassVar[str] = "retention"
    default_port: ClassVar[int] = 8005
