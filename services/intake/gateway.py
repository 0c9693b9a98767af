"""Gateway hygiene: body limits and rate limits per partner. The audit trail of every
partner call is shared.audit.AuditHttpCalls."""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Hashable
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
        started = refused = False

        async def limited_receive() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Answer 413 at once: the app (FastAPI reading a JSON body) would turn
                    # the failed read into a 400 of its own.
                    refused = True
                    if not started:
                        await _too_large(scope, send, limit)
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 went out; the app's answer to the broken read is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception:
            if not refused:  # after a refusal, what the app raised is the broken read
                raise


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
    """A token bucket per key (a partner id, a client id, a source address; per replica):
    `allow` answers None or seconds to wait. At most `max_keys` buckets are kept: when
    full, the buckets that have refilled (idle callers) are dropped, then the oldest."""

    def __init__(self, per_second: float, burst: int, max_keys: int = 100_000) -> None:
        self.per_second = per_second
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[Hashable, _Bucket] = {}

    def allow(self, key: Hashable, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.per_second)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        return (1 - bucket.tokens) / self.per_second

    def _prune(self, now: float) -> None:
        refill_s = self.burst / self.per_second
        for key in [k for k, b in self._buckets.items() if now - b.updated >= refill_s]:
            del self._buckets[key]  # a full bucket is the same as no bucket
        if len(self._buckets) >= self.max_keys:  # all busy: forget the least recent tenth
            oldest = heapq.nsmallest(
                max(1, self.max_keys // 10), self._buckets, key=lambda k: self._buckets[k].updated
            )
            for key in oldest:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
