"""End-to-end: the widget page and the embeddable component in headless Debian Chromium.

The server runs in a subprocess (``trail widget --port 0``). The first test feeds it through
the real demo path (the embedded replay on the first windows of ML-100K); the others publish
hand-made snapshots through ``--allow-publish``, which only tests and benchmarks turn on.
Screenshots go to ``out/widget/`` (ignored by git).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(90)

XSS = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


def snapshot(window: int, order: list[str], **item_fields: dict[str, Any]) -> dict[str, Any]:
    """A TrendingSnapshot (wire JSON) of weekly window ``window`` ranking ``order``."""
    week = 604_800
    items = []
    for rank, item_id in enumerate(order, start=1):
        item = {
            "item_id": item_id,
            "rank": rank,
            "score": round(3.0 - 0.2 * rank, 3),
            "explanation": f"Item {item_id} has {10 - rank} events this week.",
            "title": f"Film {item_id.upper()}",
            "trend": "rising" if rank % 2 else "steady",
            "recent_counts": [rank, 2 * rank, 3 + window, 12 - rank],
        }
        item.update(item_fields.get(item_id, {}))
        items.append(item)
    return {
        "window_start": 1_000 * week + (window - 1) * week,
        "window_end": 1_000 * week + window * week,
        "model_version": "test@1",
        "items": items,
        "changed_items": len(items),
        "events": 100.0,
    }


def test_demo_on_ml100k_fills_then_changes_rank(widget_server, page, artifacts, ui) -> None:
    """Real path: the embedded replay of ML-100K pushes each window; the page follows."""
    server = widget_server(
        "--demo", "ml-100k", "--demo-windows", "8", "--window", "7d",
        "--scorer", "ewma-1", "--interval", "1.5", "--loop",
    )  # fmt: skip
    page.goto(server.url + "/")
    page.wait_for_function("() => customElements.get('trail-trending') !== undefined")
    first = ui.wait_rows(page, 10)
    assert len(first) == 10
    assert [row["rank"] for row in first] == list(range(1, 11))
    assert all(row["title"] and row["explanation"] for row in first)
    assert all(row["spark"] for row in first), "every row draws a sparkline"
    page.evaluate("() => { window.__sameDocument = true; }")
    ui.settle(page)
    page.screenshot(path=str(artifacts / "demo-filled.png"), full_page=True)

    # The next windows reorder the list in place: ▲/▼ badges, a different order, no reload.
    order = [row["id"] for row in first]
    page.wait_for_function(
        f"""(before) => {{
          const now = ({ui.ROWS_JS})();
          const ids = now.map((row) => row.id);
          return now.length >= 10 && JSON.stringify(ids) !== JSON.stringify(before)
            && now.some((row) => row.change === 'up' || row.change === 'down');
        }}""",
        arg=order,
        timeout=30_000,
    )
    changed = ui.rows(page)
    moved = [row for row in changed if row["change"] in ("up", "down")]
    assert moved and all(row["badge"][0] in "▲▼" for row in moved)
    assert page.evaluate("() => window.__sameDocument") is True, "the page must not reload"
    ui.settle(page)
    page.screenshot(path=str(artifacts / "demo-rank-change.png"), full_page=True)
    health = server.get_json("/healthz")
    assert health["snapshots"] >= 2 and health["source"] == "demo:ml-100k"
    assert page.problems == []  # no script errors, no CSP violations


def test_explanation_with_markup_is_rendered_as_text(widget_server, page, artifacts, ui) -> None:
    server = widget_server("--no-source", "--allow-publish")
    evil = {"explanation": XSS, "title": '<img src=x onerror="window.__pwned=3">Bad</b>'}
    server.publish("trending", snapshot(1, ["a", "b", "c"], b=evil))
    page.goto(server.url + "/")
    shown = ui.wait_rows(page, 3)
    row_b = next(row for row in shown if row["id"] == "b")
    assert row_b["explanation"] == XSS
    assert row_b["title"] == evil["title"]
    assert page.evaluate("() => window.__pwned") is None
    dom = page.evaluate(
        """() => {
          const root = document.querySelector('trail-trending').shadowRoot;
          return {
            scripts: root.querySelectorAll('script').length + document.querySelectorAll(
              'body script').length,
            images: root.querySelectorAll('img').length + document.querySelectorAll('img').length,
          };
        }"""
    )
    assert dom == {"scripts": 0, "images": 0}

    # An update with the markup moved to another row: still text, rows updated in place.
    page.evaluate(
        """() => { window.__rowB = document.querySelector('trail-trending').shadowRoot
          .querySelector('li[data-item-id="b"]'); }"""
    )
    server.publish("trending", snapshot(2, ["b", "c", "a"], a=evil))
    page.wait_for_function(f"() => ({ui.ROWS_JS})()[0].id === 'b'")
    after = {row["id"]: row for row in ui.rows(page)}
    assert after["a"]["explanation"] == XSS and after["a"]["change"] == "down"
    assert after["b"]["badge"] == "▲1" and after["c"]["badge"] == "▲1"
    assert after["a"]["badge"] == "▼2"
    same_node = page.evaluate(
        """() => window.__rowB === document.querySelector('trail-trending').shadowRoot
          .querySelector('li[data-item-id="b"]')"""
    )
    assert same_node, "rows are keyed by item id and updated in place"
    assert page.evaluate("() => window.__pwned") is None
    ui.settle(page)
    page.screenshot(path=str(artifacts / "escaped-markup.png"), full_page=True)
    assert page.problems == []


def test_headers_api_and_publish_off_by_default(widget_server) -> None:
    server = widget_server("--no-source")
    with urllib.request.urlopen(server.url + "/", timeout=10) as response:  # noqa: S310
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    request = urllib.request.Request(  # noqa: S310
        server.url + "/api/trending", headers={"Origin": "http://elsewhere.example"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert json.loads(response.read())["items"] == []
    with pytest.raises(urllib.error.HTTPError) as missing:
        server.publish("trending", snapshot(1, ["a"]))
    assert missing.value.code in (404, 405), "no publish endpoint without --allow-publish"
    with pytest.raises(urllib.error.HTTPError) as unknown:
        server.get_json("/api/history/nope")
    assert unknown.value.code == 404


class _HostPage(BaseHTTPRequestHandler):
    html = b""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write(self.html)

    def log_message(self, *args: Any) -> None:
        return None


def test_embed_script_on_another_origin(widget_server, page, artifacts, ui) -> None:
    """A third-party page drops in the script tag: CORS lets the component read the stream."""
    server = widget_server("--no-source", "--allow-publish")
    server.publish("trending", snapshot(1, ["a", "b", "c", "d", "e"]))
    handler = type("Host", (_HostPage,), {})
    handler.html = (
        "<!doctype html><html><head><title>host site</title></head><body>"
        "<h1>Some other site</h1>"
        f'<script src="{server.url}/embed.js"></script>'
        '<trail-trending limit="3"></trail-trending>'
        "</body></html>"
    ).encode()
    host = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{host.server_address[1]}/")
        shown = ui.wait_rows(page, 3)
        assert [row["id"] for row in shown] == ["a", "b", "c"]  # limit="3"
        server.publish("trending", snapshot(2, ["e", "a", "b", "c", "d"]))
        page.wait_for_function(f"() => ({ui.ROWS_JS})()[0].id === 'e'")
        assert ui.rows(page)[0]["change"] == "up"
        ui.settle(page)
        page.screenshot(path=str(artifacts / "embedded.png"), full_page=True)
        assert page.problems == []
    finally:
        host.shutdown()
        host.server_close()
