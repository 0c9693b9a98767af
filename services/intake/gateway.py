"""Gateway hygiene: body limits, rate limits per partner, and the audit trail of every
partner call (who, what, result; never personal data)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.intake.models import AuditRecord
from services.intake.problems import PROBLEM_JSON
from shared.events import utc_now

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


@dataclass
class AuditTrail:
    """Collects an audit record per partner call and writes them in bulk every moment.

    The write is off the request path; what a crash can lose is at most one flush
    interval of records (the signals themselves are never lost: they commit first).
    """

    session_factory: async_sessionmaker
    flush_interval_s: float = 0.5
    _pending: list[dict[str, Any]] = field(default_factory=list)

    def record(
        self,
        *,
        actor: str,
        action: str,
        object_: str | None,
        result: str,
        gemeentecode: str | None = None,
    ) -> None:
        self._pending.append(
            {
                "at": utc_now(),
                "actor": actor,
                "action": action,
                "object": object_,
                "result": result,
                "gemeentecode": gemeentecode,
            }
        )

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            async with self.session_factory() as session, session.begin():
                await session.execute(insert(AuditRecord), batch)
        except Exception:
            self._pending[:0] = batch  # keep them for the next round
            raise

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)  # a write interval, not synchronisation
            try:
                await self.flush()
            except Exception as exc:
                log.warning("audit flush failed, will retry", error=type(exc).__name__)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.flush()


class AuditPartnerCalls:
    """Records every call to the partner API: partner (or 'anoniem'), route, status, object."""

    def __init__(self, app: ASGIApp, trail_of: Any) -> None:
        self.app = app
        self.trail_of = trail_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path.startswith("/api/") or path == "/oauth/token"):
            await self.app(scope, receive, send)
            return
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            state = scope.get("state", {})
            route = scope.get("route")
            template = getattr(route, "path", path)
            trail: AuditTrail | None = self.trail_of()
            if trail is not None:
                trail.record(
                    actor=f"partner:{state['partner_id']}" if "partner_id" in state else "anoniem",
                    action=f"{scope['method']} {template}",
                    object_=state.get("audit_object"),
                    result=str(status),
                )
