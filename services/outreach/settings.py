from typing import ClassVar

from shared.settings import ServiceSettings


class OutreachSettings(ServiceSettings):
    """Outreach's settings (VROEG_*)."""

    service_name: ClassVar[str] = "outreach"
    default_port: ClassVar[int] = 8003
