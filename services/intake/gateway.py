"""Gateway hygiene: body limits and rate limits per partner. The audit trail of every
partner call is shared.audit.AuditHttpCalls."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.intake.problems import PROBLEM_JSON

log = structlog.get_logger(__name__)


class _TooLarge(Exception):
    pass


class RequestGuard:
    """Before a body is read: 415 for a content type the path does not take, 413 for a
    body over the path's limit (also when no Content-Length was sent)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default_limit: int,
        limits: dict[str, int],
        content_types: dict[str, tuple[str, ...]],
    ) -> None:
        self.app = app
        self.default_limit = default_limit
        self.limits = limits
        self.content_types = content_types

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers = dict(scope["headers"])
        accepted = self.content_types.get(path)
        media_type = (
            headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        )
        if accepted is not None and media_type not in accepted:
            await _refuse(
                scope,
                send,
                415,
                "Verkeerd Content-Type",
                f"Dit adres neemt alleen {' of '.join(accepted)} aan.",
            )
            return
        limit = self.limits.get(path, self.default_limit)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(scope, send, limit)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _too_large(scope, send, limit)


async def _too_large(scope: Scope, send: Send, limit: int) -> None:
    await _refuse(
        scope,
        send,
        413,
        "Te groot",
        f"De body is groter dan {limit} bytes. Lever grote aantallen via "
        "POST /api/v1/leveringen, of splits het bestand.",
    )


async def _refuse(scope: Scope, send: Send, status: int, title: str, detail: str) -> None:
    body = json.dumps(
        {
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": detail,
            "instance": scope["path"],
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per partner (per replica): `allow` answers None or seconds to wait."""

    def __init__(self, per_second: float, burst: int) -> None:
        self.per_second = per_second
        self.burst = burst
        self._buckets: dict[uuid.UUID, _Bucket] = {}

    def allow(self, partner_id: uuid.UUID, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(partner_id)
        if bucket is None:
            bucket = self._buckets[partner_id] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.per_second)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        return (1 - bucket.tokens) / self.per_second
