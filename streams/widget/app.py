"""The HTTP routes around a :class:`~streams.widget.hub.TrendingHub`, as a Starlette app.

Starlette is imported inside :func:`create_app`: it is an optional extra (``widget``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson

from schemas import ScoreUpdate, TrendingSnapshot, decode
from schemas.records import MAX_RECORD_BYTES, RecordError
from streams.widget.hub import (
    DEFAULT_HEARTBEAT,
    DEFAULT_RETRY_MS,
    DEFAULT_SEND_TIMEOUT,
    Subscriber,
    SubscriberClosed,
    TrendingHub,
)
from streams.widget.protocol import SECURITY_HEADER_LINES, SECURITY_HEADERS, Guard

log = logging.getLogger("trail.widget")

#: Page, stylesheet and component: package data of ``streams.widget``, in this folder.
STATIC_FOLDER = "static"

#: The page's policy: only our own script and stylesheet, no inline code, no eval, no
#: frames, and Trusted Types with no policy at all, so any innerHTML-style string sink throws.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'; require-trusted-types-for 'script'; trusted-types 'none'"
)


class EventStream:
    """The SSE response of one client: ``retry:``, the current snapshot, then updates and
    heartbeats. A plain ASGI callable, so a stalled write can be timed out or cut."""

    def __init__(
        self,
        hub: TrendingHub,
        subscriber: Subscriber,
        *,
        heartbeat_s: float,
        retry_ms: int,
        send_timeout_s: float,
    ) -> None:
        self.hub = hub
        self.subscriber = subscriber
        self.heartbeat_s = heartbeat_s
        self.retry_ms = retry_ms
        self.send_timeout_s = send_timeout_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        subscriber = self.subscriber
        subscriber.task = asyncio.current_task()
        if scope.get("method") == "HEAD":  # headers only: never hold the connection open
            self.hub.unsubscribe(subscriber)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache, no-transform"),
            (b"x-accel-buffering", b"no"),
            *SECURITY_HEADER_LINES,
        ]

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    subscriber.close("disconnected")
                    return

        watcher = asyncio.create_task(watch_disconnect())

        async def write(chunk: bytes, more: bool = True) -> None:
            body = {"type": "http.response.body", "body": chunk, "more_body": more}
            await asyncio.wait_for(send(body), self.send_timeout_s)

        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await write(f"retry: {self.retry_ms}\n: trail widget\n\n".encode())
            while True:
                try:
                    message = await subscriber.get(timeout=self.heartbeat_s)
                except SubscriberClosed:
                    break
                await write(message if message is not None else b": heartbeat\n\n")
            if subscriber.closed_reason not in ("disconnected", "lagging"):
                await write(b"", more=False)
        except TimeoutError:
            self.hub.stats.stalled_disconnects += 1
            self.hub.cut_responses += 1
            log.warning(
                "disconnected an SSE client whose socket stalled for %.0f s", self.send_timeout_s
            )
        except asyncio.CancelledError:
            if subscriber.closed_reason != "lagging":
                raise
            # Cut by the hub for lagging: swallow our own cancellation and end the response.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            self.hub.cut_responses += 1
        except OSError:
            pass
        finally:
            watcher.cancel()
            self.hub.unsubscribe(subscriber)


@dataclass(frozen=True)
class WidgetOptions:
    heartbeat_s: float = DEFAULT_HEARTBEAT
    retry_ms: int = DEFAULT_RETRY_MS
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT
    allow_publish: bool = False
    cors_origin: str = "*"


def _static(name: str) -> bytes:
    return resources.files("streams.widget").joinpath(STATIC_FOLDER, name).read_bytes()


def create_app(
    hub: TrendingHub,
    options: WidgetOptions | None = None,
    *,
    startup: Callable[[], Awaitable[None]] | None = None,
    shutdown: Callable[[], Awaitable[None]] | None = None,
) -> Any:
    """The Starlette application around ``hub``; ``startup``/``shutdown`` start the sources."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    opts = options or WidgetOptions()
    page = _static("index.html")
    page_js = _static("page.js")
    page_css = _static("page.css")
    embed_js = _static("trail-trending.js")

    def json_bytes(body: bytes, status: int = 200) -> Response:
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    def asset(body: bytes, media_type: str, *, cross_origin: bool = False) -> Response:
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        if cross_origin:
            headers["Cross-Origin-Resource-Policy"] = "cross-origin"
        return Response(body, media_type=media_type, headers=headers)

    async def index(request: Request) -> Response:
        headers = {
            **SECURITY_HEADERS,
            "Content-Security-Policy": PAGE_CSP,
            "X-Frame-Options": "DENY",
            "Cache-Control": "no-cache",
        }
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    async def embed(request: Request) -> Response:
        return asset(embed_js, "text/javascript; charset=utf-8", cross_origin=True)

    async def static_js(request: Request) -> Response:
        return asset(page_js, "text/javascript; charset=utf-8")

    async def static_css(request: Request) -> Response:
        return asset(page_css, "text/css; charset=utf-8")

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    async def trending(request: Request) -> Response:
        return json_bytes(hub.view_json())

    async def item_history(request: Request) -> Response:
        history = hub.history(request.path_params["item_id"])
        if history is None:
            return json_bytes(orjson.dumps({"error": "unknown item"}), status=404)
        return json_bytes(orjson.dumps(history))

    async def events(request: Request) -> Any:
        subscriber = hub.subscribe()
        if subscriber is None:
            return PlainTextResponse(
                "too many clients", status_code=503, headers={"Retry-After": "10"}
            )
        return EventStream(
            hub,
            subscriber,
            heartbeat_s=opts.heartbeat_s,
            retry_ms=opts.retry_ms,
            send_timeout_s=opts.send_timeout_s,
        )

    async def health(request: Request) -> Response:
        return json_bytes(orjson.dumps(hub.health()))

    def publisher(kind: str) -> Callable[[Request], Awaitable[Response]]:
        async def publish(request: Request) -> Response:
            # JSON only: a cross-origin page cannot send it without a preflight, which is
            # refused (CORS allows GET only), so no website can publish through a browser.
            if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return PlainTextResponse("expected application/json", status_code=415)
            origin = request.headers.get("origin")
            if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host"):
                return PlainTextResponse("cross-origin publish refused", status_code=403)
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_RECORD_BYTES:
                    return PlainTextResponse("record too large", status_code=413)
            try:
                if kind == "trending":
                    accepted = hub.apply_snapshot(decode(TrendingSnapshot, bytes(body)))
                else:
                    hub.apply_score(decode(ScoreUpdate, bytes(body)))
                    accepted = True
            except RecordError as exc:
                hub.stats.bad_records += 1
                return JSONResponse({"error": str(exc)}, status_code=422)
            return JSONResponse({"accepted": accepted, "seq": hub.view()["seq"]}, status_code=202)

        return publish

    routes = [
        Route("/", index),
        Route("/embed.js", embed),
        Route("/static/page.js", static_js),
        Route("/static/page.css", static_css),
        Route("/favicon.ico", favicon),
        Route("/api/trending", trending),
        Route("/api/history/{item_id:path}", item_history),
        Route("/events", events),
        Route("/healthz", health),
    ]
    if opts.allow_publish:
        routes += [
            Route("/api/publish/trending", publisher("trending"), methods=["POST"]),
            Route("/api/publish/score", publisher("score"), methods=["POST"]),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        hub.bind(asyncio.get_running_loop())
        if startup is not None:
            await startup()
        try:
            yield
        finally:
            hub.close_all()
            if shutdown is not None:
                await shutdown()

    middleware = [
        Middleware(
            CORSMiddleware,
            allow_origins=[opts.cors_origin],
            allow_methods=["GET"],
            allow_headers=["Last-Event-ID", "Cache-Control"],
            max_age=600,
        )
    ]
    return Guard(Starlette(routes=routes, middleware=middleware, lifespan=lifespan))
