"""Fixtures for the widget tests: a widget server in a subprocess and headless Chromium.

``widget_server(*args)`` starts ``python -m streams.cli widget --port 0 ARGS`` and returns a
:class:`WidgetProcess` once ``/healthz`` answers; every server is stopped after the test.
``widget_server_once`` is one ``--no-source`` server for a whole module.
``browser`` is one headless Debian Chromium (``$TRAIL_CHROMIUM``, else the ``chromium`` on
PATH: the one ``scripts/system-deps.sh`` accepts) per session, driven by Playwright's sync API;
tests that need it are skipped with a clear message when it is missing (``apt-get install
chromium``), and fail instead under CI (``skip_or_fail`` of tests/conftest.py). Never
``playwright install``.

The Kafka fixtures (``kafka_bootstrap``, ``kafka_topic_factory``, ``in_thread``) come from
``tests/conftest.py``: the widget's Kafka test shares the session's one private broker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "out" / "widget"


def find_chromium() -> str | None:
    """The Chromium to drive: ``$TRAIL_CHROMIUM`` (a path or a command name), else the
    ``chromium`` on PATH, as ``scripts/system-deps.sh`` looks for it (``command -v chromium``).

    None when there is none, or when ``$TRAIL_CHROMIUM`` names nothing that runs.
    """
    wanted = os.environ.get("TRAIL_CHROMIUM") or "chromium"
    return shutil.which(wanted)


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT_S = 60.0


@dataclass
class WidgetProcess:
    url: str
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())

    def publish(self, kind: str, record: dict[str, Any]) -> Any:
        request = urllib.request.Request(  # noqa: S310
            f"{self.url}/api/publish/{kind}",
            data=json.dumps(record).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())

    def log(self) -> str:
        return "".join(self.output[-200:])


def _pump(stream: Any, sink: list[str], ready: threading.Event, found: list[str]) -> None:
    for line in stream:
        sink.append(line)
        if line.startswith("TRAIL_WIDGET_URL=") and not found:
            found.append(line.split("=", 1)[1].strip())
            ready.set()
    ready.set()


def start_widget(*args: str, env: dict[str, str] | None = None) -> WidgetProcess:
    command = [sys.executable, "-m", "streams.cli", "widget", "--port", "0", *args]
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    found: list[str] = []
    ready = threading.Event()
    threading.Thread(target=_pump, args=(process.stdout, output, ready, found), daemon=True).start()
    ready.wait(START_TIMEOUT_S)
    if not found:
        stop_widget(process)
        raise RuntimeError("widget did not start:\n" + "".join(output))
    server = WidgetProcess(found[0], process, output)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            server.get_json("/healthz")
            return server
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_widget(process)
                raise RuntimeError("widget did not answer /healthz:\n" + server.log()) from None
            time.sleep(0.1)


def stop_widget(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture
def widget_server() -> Iterator[Callable[..., WidgetProcess]]:
    started: list[WidgetProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> WidgetProcess:
        server = start_widget(*args, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_widget(server.process)


@pytest.fixture(scope="module")
def widget_server_once() -> Iterator[WidgetProcess]:
    """One ``--no-source`` server (publishing off) shared by a module's tests that only read."""
    server = start_widget("--no-source")
    try:
        yield server
    finally:
        stop_widget(server.process)


@pytest.fixture(scope="session")
def browser(skip_or_fail: Callable[[str], NoReturn]) -> Iterator[Any]:
    chromium = find_chromium()
    if chromium is None:
        named = os.environ.get("TRAIL_CHROMIUM")
        skip_or_fail(
            f"TRAIL_CHROMIUM={named!r} is not an executable Chromium"
            if named
            else "no chromium on PATH: apt-get install chromium (or set TRAIL_CHROMIUM)"
        )
    try:
        import playwright.sync_api as sync_api
    except ImportError as exc:
        skip_or_fail(f"Playwright is not installed ({exc}): pip install -e '.[all]'")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 900, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console {message.type}: {message.text}")
            if message.type == "error"
            else None
        ),
    )
    page.problems = problems  # type: ignore[attr-defined]
    try:
        yield page
    finally:
        context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


class PageHelpers:
    """Reads the first ``<trail-trending>`` of a page through its (open) shadow root."""

    ROWS_JS = """() => {
      const host = document.querySelector('trail-trending');
      if (!host || !host.shadowRoot) return [];
      return [...host.shadowRoot.querySelectorAll('li')].map((li) => ({
        id: li.getAttribute('data-item-id'),
        rank: Number(li.getAttribute('data-rank')),
        change: li.getAttribute('data-change'),
        badge: li.querySelector('.badge').textContent,
        title: li.querySelector('.title').textContent,
        explanation: li.querySelector('.explanation').textContent,
        spark: li.querySelector('polyline').getAttribute('points') || '',
      }));
    }"""

    def rows(self, page: Any) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = page.evaluate(self.ROWS_JS)
        return rows

    def wait_rows(self, page: Any, at_least: int) -> list[dict[str, Any]]:
        page.wait_for_function(f"() => ({self.ROWS_JS})().length >= {at_least}")
        return self.rows(page)

    def settle(self, page: Any) -> None:
        """Wait until the component's reorder and fade-in animations have finished."""
        page.wait_for_function(
            "() => document.querySelector('trail-trending').shadowRoot.getAnimations().length === 0"
        )


@pytest.fixture(scope="session")
def ui() -> PageHelpers:
    return PageHelpers()
