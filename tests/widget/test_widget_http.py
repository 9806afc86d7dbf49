"""HTTP edges of the real widget server (``trail widget`` in a subprocess, raw sockets).

Issue 11 item 8: every response carries ``X-Content-Type-Options: nosniff`` (Starlette's own
404/405, CORS preflights, the server's 400 for a request it cannot parse, ...), and a request
whose head is too large gets 431, not a connection reset, however its bytes arrive.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from streams.widget.app import create_app
from streams.widget.hub import TrendingHub
from streams.widget.protocol import MAX_REQUEST_HEAD_BYTES

pytestmark = pytest.mark.timeout(90)


def _address(server: Any) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def _exchange(server: Any, request: bytes, *, chunk: int | None = None) -> bytes:
    """Send ``request`` (in ``chunk``-byte pieces if given) and read the answer's head.

    A reset at any point is returned as ``b"RESET"``: what the old server gave a client whose
    header was too large."""
    with socket.create_connection(_address(server), timeout=20) as sock:
        try:
            if chunk is None:
                sock.sendall(request)
            else:
                for start in range(0, len(request), chunk):
                    sock.sendall(request[start : start + chunk])
            answer = b""
            while b"\r\n\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except ConnectionResetError:
            return b"RESET"
    return answer


def _status_and_headers(answer: bytes) -> tuple[int, dict[str, str]]:
    assert answer and answer != b"RESET", answer[:200]
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def _get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode()


#: Requests that reach every layer that answers: the routes, Starlette's own 404/405 and
#: the CORS middleware (preflights), the SSE stream, and the HTTP server's parse errors.
CASES = {
    "page": (_get("/"), 200),
    "component": (_get("/embed.js"), 200),
    "stylesheet": (_get("/static/page.css"), 200),
    "api": (_get("/api/trending"), 200),
    "health": (_get("/healthz"), 200),
    "favicon": (_get("/favicon.ico"), 204),
    "events HEAD": (_get("/events", "HEAD"), 200),
    "events": (_get("/events"), 200),
    "unknown item 404": (_get("/api/history/nope"), 404),
    "no route 404": (_get("/nope"), 404),
    "wrong method 405": (_get("/api/trending", "POST", "Content-Length: 0\r\n"), 405),
    "publish off 404/405": (_get("/api/publish/trending", "POST", "Content-Length: 0\r\n"), 404),
    "preflight ok": (
        _get(
            "/api/trending",
            "OPTIONS",
            "Origin: http://e.example\r\nAccess-Control-Request-Method: GET\r\n",
        ),
        200,
    ),
    "preflight refused": (
        _get(
            "/api/trending",
            "OPTIONS",
            "Origin: http://e.example\r\nAccess-Control-Request-Method: DELETE\r\n",
        ),
        400,
    ),
    "unparsable request 400": (b"NOT HTTP AT ALL\r\n\r\n", 400),
    "bad header line 400": (b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_response_says_nosniff(widget_server_once, case: str) -> None:
    """Fails on the old server for the 404s, the 405, the preflights and the 400s, which no
    route added the header to."""
    request, status = CASES[case]
    got, headers = _status_and_headers(_exchange(widget_server_once, request))
    if case == "publish off 404/405":
        assert got in (404, 405)
    else:
        assert got == status, headers
    assert headers.get("x-content-type-options") == "nosniff", (case, headers)
    assert headers.get("referrer-policy") == "no-referrer", (case, headers)


def _big_head(size: int) -> bytes:
    """A GET whose head is ``size`` bytes long, most of it one header."""
    start = b"GET /api/trending HTTP/1.1\r\nHost: x\r\nX-Big: "
    end = b"\r\nConnection: close\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


@pytest.mark.parametrize(
    ("size", "chunk"),
    [
        (MAX_REQUEST_HEAD_BYTES + 1, None),  # just over, one write
        (64 * 1024, 1024),  # arrives in pieces: the server refuses while it is still coming
        (1024 * 1024, None),  # the size that used to be reset
        (1024 * 1024, 16 * 1024),
    ],
)
def test_an_oversized_head_gets_431_not_a_reset(widget_server_once, size: int, chunk) -> None:
    """Fails on the old server: past h11's buffer it answered 400 and closed the socket
    while the client was still sending, so the client saw a reset (or, for a head that
    arrived in one read, 200: no limit at all)."""
    answer = _exchange(widget_server_once, _big_head(size), chunk=chunk)
    status, headers = _status_and_headers(answer)
    assert status == 431, answer[:300]
    assert headers.get("x-content-type-options") == "nosniff", headers
    assert headers.get("connection") == "close", headers
    # ... and the server goes on serving.
    assert widget_server_once.get_json("/healthz")["status"] == "ok"


def test_a_head_under_the_limit_is_served(widget_server_once) -> None:
    """The limit is not tighter than it says: a 30 KiB head (a cookie-heavy browser) is
    answered normally."""
    status, headers = _status_and_headers(_exchange(widget_server_once, _big_head(30 * 1024)))
    assert status == 200 and headers.get("x-content-type-options") == "nosniff"


def test_a_client_library_reads_the_431(widget_server_once) -> None:
    """What a user saw: urllib raised ``ConnectionResetError`` for a 200 KB header."""
    request = urllib.request.Request(  # noqa: S310
        widget_server_once.url + "/api/trending", headers={"X-Big": "b" * 200_000}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=20)  # noqa: S310
    assert refused.value.code == 431
    assert refused.value.headers["X-Content-Type-Options"] == "nosniff"


def test_the_app_refuses_a_whole_oversized_head_itself(in_thread) -> None:
    """The half of the limit that lives in the app: a head that reached it whole (one read
    on the server) is refused there, whatever server runs the app. Fails if ``_Guard``
    stops checking the head's size."""

    async def scenario() -> list[dict[str, Any]]:
        app = create_app(TrendingHub())
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/api/trending",
            "raw_path": b"/api/trending",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"x"), (b"x-big", b"c" * MAX_REQUEST_HEAD_BYTES)],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2),
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent

    sent = in_thread(scenario)
    assert sent[0]["status"] == 431
    assert (b"x-content-type-options", b"nosniff") in sent[0]["headers"]
