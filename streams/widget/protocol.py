"""The layer under the routes: security headers on every response, and 431 for a big head.

Two places see a request before a route does. uvicorn's h11 protocol parses the head as it
arrives: :func:`http_protocol` changes how it answers a head it refuses (431 or 400, with the
security headers, read to the end so the client sees the answer instead of a TCP reset).
A head that arrives whole in one read is parsed without a refusal; :class:`Guard`, the
outermost ASGI layer, measures it and answers 431 itself, and adds the security headers to
every response the application sends (Starlette's own 404, 405 and 500 included).
"""

from __future__ import annotations

import asyncio
from typing import Any

#: Headers on every response: no MIME sniffing, no referrer.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: The same as raw ASGI header lines.
SECURITY_HEADER_LINES = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
#: Largest request head (request line and headers) served; a larger one gets 431. Browsers
#: send a few KiB; 32 KiB leaves room for many cookies on a shared host name.
MAX_REQUEST_HEAD_BYTES = 32 * 1024
#: After refusing a request, how long (seconds) and how much (bytes) of what the client
#: still sends is read and dropped before the socket closes (so it reads the answer).
LINGER_S = 2.0
LINGER_BYTES = 4 * 1024 * 1024


def _head_size(scope: dict[str, Any]) -> int:
    """Bytes of a request's head as sent: request line, ``name: value`` lines, blank line."""
    line = len(scope.get("method", "")) + len(scope.get("raw_path") or b"") + 12
    query = scope.get("query_string") or b""
    line += len(query) + 1 if query else 0
    return line + sum(len(name) + len(value) + 4 for name, value in scope["headers"]) + 2


class Guard:
    """The outermost ASGI layer: every response gets :data:`SECURITY_HEADERS` (Starlette's
    own 404, 405 and 500 included, which no route adds them to), and a request whose head
    exceeds ``max_head`` gets 431.

    The HTTP server refuses a head that arrives in pieces once the pieces pass the limit
    (:func:`http_protocol`); a head that arrives whole in one read reaches the app, and this
    is where it is refused, so the limit holds however the bytes were split.
    """

    def __init__(self, app: Any, max_head: int = MAX_REQUEST_HEAD_BYTES) -> None:
        self.app = app
        self.max_head = max_head

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _head_size(scope) > self.max_head:
            body = b"request header fields too large\n"
            headers = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *SECURITY_HEADER_LINES,
            ]
            await send({"type": "http.response.start", "status": 431, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return

        async def send_secured(message: Any) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", ())}
                missing = [(k, v) for k, v in SECURITY_HEADER_LINES if k not in present]
                if missing:
                    message = {**message, "headers": [*message.get("headers", ()), *missing]}
            await send(message)

        await self.app(scope, receive, send_secured)


def http_protocol(max_head: int = MAX_REQUEST_HEAD_BYTES) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, changed where it answers a request it cannot parse.

    uvicorn answers 400 without :data:`SECURITY_HEADERS` and closes the socket at once; a
    client still sending (an oversized header, say) then gets a TCP reset, usually before it
    can read the answer. Here a head over ``max_head`` bytes gets 431, any other parse error
    400, both with the security headers; then the connection is half-closed and what the
    client still sends is read and discarded (for up to :data:`LINGER_S` seconds and
    :data:`LINGER_BYTES` bytes), so the answer arrives instead of a reset.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class WidgetH11Protocol(H11Protocol):
        lingering = False
        discarded = 0

        def data_received(self, data: bytes) -> None:
            if self.lingering:
                self.discarded += len(data)
                if self.discarded > LINGER_BYTES:
                    self.transport.close()
                return
            super().data_received(data)

        def eof_received(self) -> None:
            if self.lingering:
                self.transport.close()

        def shutdown(self) -> None:
            if self.lingering:
                self.transport.close()
                return
            super().shutdown()

        def send_400_response(self, msg: str) -> None:
            if self.cycle is not None and not self.cycle.response_complete:
                # A response is already on the wire (garbage pipelined behind a request):
                # there is no room for another one; end the connection.
                self.transport.close()
                return
            if len(self.conn.trailing_data[0]) > max_head:
                status, body = 431, b"request header fields too large\n"
            else:
                status, body = 400, b"invalid HTTP request\n"
            headers = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *SECURITY_HEADER_LINES,
            ]
            events = (h11.Response(status_code=status, headers=headers), h11.Data(data=body))
            output = b"".join(self.conn.send(e) or b"" for e in (*events, h11.EndOfMessage()))
            self.transport.write(output)
            self.lingering = True
            if self.transport.can_write_eof():
                self.transport.write_eof()  # FIN once the answer is flushed; keep reading
            self.loop.call_later(LINGER_S, self.transport.close)

    return WidgetH11Protocol
