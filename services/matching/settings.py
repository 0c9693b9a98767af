from typing import ClassVar

from pydantic import Field

from shared.settings import ServiceSettings


class MatchingSettings(ServiceSettings):
    """Matching's settings (VROEG_*)."""

    service_name: ClassVar[str] = "matching"
    default_port: ClassVar[int] = 8002

    consecutive_window_months: int = Field(
        3,
        ge=1,
        le=6,
        description="Months looked back for a consecutive match: 3 in the policy plan, "
        "6 in the national monitor. Per municipality from #4 on.",
    )
