from typing import ClassVar

from shared.settings import ServiceSettings


class FeedbackSettings(ServiceSettings):
    """Feedback's settings (VROEG_*)."""

    service_name: ClassVar[str] = "feedback"
    default_port: ClassVar[int] = 8004
