"""The five services: how to start each, where its settings and migrations live."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.feedback.settings import FeedbackSettings
from services.intake.settings import IntakeSettings
from services.matching.settings import MatchingSettings
from services.outreach.settings import OutreachSettings
from services.retention.settings import RetentionSettings
from shared.settings import ServiceSettings

_HERE = Path(__file__).parent


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    settings_class: type[ServiceSettings]

    @property
    def module(self) -> str:
        return f"services.{self.name}"

    @property
    def migrations(self) -> Path:
        return _HERE / self.name / "migrations"

    def settings(self, **overrides: object) -> ServiceSettings:
        return self.settings_class(**overrides)  # type: ignore[arg-type]


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("intake", IntakeSettings),
    ServiceSpec("matching", MatchingSettings),
    ServiceSpec("outreach", OutreachSettings),
    ServiceSpec("feedback", FeedbackSettings),
    ServiceSpec("retention", RetentionSettings),
)
BY_NAME = {spec.name: spec for spec in SERVICES}
