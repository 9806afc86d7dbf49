"""Widget fan-out benchmark: 200 idle SSE clients, then how fast updates reach them.

Starts ``trail widget --no-source --allow-publish`` in a subprocess (the publish endpoint
exists only with that flag), opens ``--clients`` idle Server-Sent Events connections (raw
asyncio streams), and then, for ``--rounds`` rounds:

- publishes a new top-10 snapshot and times its arrival at every idle client
  (fan-out latency: publish request sent -> the client has read the whole event);
- connects one fresh client and times connect -> first snapshot fully received
  (``fresh_client_latency_ms``, the median over rounds; its p99 is reported as well).

Prints a table, records a row under ``## widget`` in BENCHMARKS.md (unless ``--no-record``),
and with ``--json`` prints one JSON object as the last line of stdout:
``{"fresh_client_latency_ms": ..., "fanout_p99_ms": ..., "clients": 200, ...}``.
Target: both below one second.

    .venv/bin/python bench/widget.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "BENCHMARKS.md"
SECTION = "## widget"
TABLE_HEAD = "| date | machine | command | results |\n|---|---|---|---|\n"
TARGET_MS = 1000.0
READ_LIMIT = 1 << 20


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def make_snapshot(window: int, items: int = 10) -> dict[str, Any]:
    """A realistic top-N: rotating order (rank changes), explanations, recent counts."""
    week = 604_800
    ids = [str(100 + n) for n in range(items + 5)]
    shift = window % len(ids)
    order = (ids[shift:] + ids[:shift])[:items]
    return {
        "window_start": 2_000 * week + (window - 1) * week,
        "window_end": 2_000 * week + window * week,
        "model_version": "bench@1",
        "changed_items": 1500,
        "events": 25000.0,
        "items": [
            {
                "item_id": item_id,
                "rank": rank,
                "score": round(4.0 - 0.1 * rank, 6),
                "explanation": (
                    f'"Film {item_id}" is rising, up 2.{rank}x vs its long-run average with '
                    f"about {40 - rank} events this week. Its genre Drama is also heating up."
                ),
                "title": f"Film {item_id}",
                "trend": "rising",
                "recent_counts": [10.0 + rank, 12.0, 15.0 + window % 7, 40.0 - rank],
            }
            for rank, item_id in enumerate(order, start=1)
        ],
    }


# --------------------------------------------------------------------------------------------
# Server


class Server:
    def __init__(self, clients: int) -> None:
        command = [
            sys.executable, "-m", "streams.cli", "widget", "--port", "0", "--no-source",
            "--allow-publish", "--log-level", "warning", "--max-clients", str(clients + 50),
        ]  # fmt: skip
        self.command = command
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.output: list[str] = []
        self.url = ""
        ready = threading.Event()
        threading.Thread(target=self._pump, args=(ready,), daemon=True).start()
        ready.wait(60)
        if not self.url:
            self.stop()
            raise RuntimeError("widget server did not start:\n" + "".join(self.output))
        parts = urllib.parse.urlsplit(self.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80

    def _pump(self, ready: threading.Event) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if line.startswith("TRAIL_WIDGET_URL="):
                self.url = line.split("=", 1)[1].strip()
                ready.set()
        ready.set()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


async def http_request(
    host: str, port: int, method: str, path: str, body: bytes = b""
) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(host, port, limit=READ_LIMIT)
    try:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
    status = int(response.split(b" ", 2)[1])
    return status, response.split(b"\r\n\r\n", 1)[-1]


async def publish(server: Server, window: int) -> int:
    status, body = await http_request(
        server.host, server.port, "POST", "/api/publish/trending",
        json.dumps(make_snapshot(window)).encode(),
    )  # fmt: skip
    if status != 202:
        raise RuntimeError(f"publish failed: HTTP {status} {body[:200]!r}")
    return int(json.loads(body)["seq"])


async def health(server: Server) -> dict[str, Any]:
    status, body = await http_request(server.host, server.port, "GET", "/healthz")
    if status != 200:
        raise RuntimeError(f"/healthz: HTTP {status}")
    result: dict[str, Any] = json.loads(body)
    return result


# --------------------------------------------------------------------------------------------
# Clients


class SSEClient:
    """One raw SSE connection; records when each event id has been read completely."""

    def __init__(self, arrivals: dict[int, list[float]]) -> None:
        self.arrivals = arrivals
        self.first: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port, limit=READ_LIMIT)
        self.writer = writer
        writer.write(
            f"GET /events HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        self.task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        event_id: int | None = None
        try:
            while line := await reader.readline():
                if line.startswith(b"id: "):
                    event_id = int(line[4:])
                elif line.startswith(b"data: ") and event_id is not None:
                    now = time.perf_counter()
                    self.arrivals.setdefault(event_id, []).append(now)
                    if not self.first.done():
                        self.first.set_result(now)
                    event_id = None
        except (ConnectionError, asyncio.CancelledError):
            pass

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.writer is not None:
            self.writer.close()


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def measure(server: Server, clients: int, rounds: int) -> dict[str, Any]:
    arrivals: dict[int, list[float]] = {}
    seq = await publish(server, 1)  # fresh clients get this state right away
    idle = [SSEClient(arrivals) for _ in range(clients)]
    started = time.perf_counter()
    for batch in range(0, clients, 50):
        await asyncio.gather(*(c.open(server.host, server.port) for c in idle[batch : batch + 50]))
    await wait_for(lambda: len(arrivals.get(seq, ())) >= clients, 30, "idle clients")
    connect_s = time.perf_counter() - started
    state = await health(server)
    if state["clients"] < clients:
        raise RuntimeError(f"server sees {state['clients']} clients, expected {clients}")

    fanout_ms: list[float] = []
    last_ms: list[float] = []
    fresh_ms: list[float] = []
    for window in range(2, rounds + 2):
        await asyncio.sleep(0.05)
        sent = time.perf_counter()
        seq = await publish(server, window)
        await wait_for(lambda s=seq: len(arrivals.get(s, ())) >= clients, 30, f"update {seq}")
        times = arrivals.pop(seq)
        delays = [(t - sent) * 1000 for t in times]
        fanout_ms += delays
        last_ms.append(max(delays))

        fresh = SSEClient({})
        connect = time.perf_counter()
        await fresh.open(server.host, server.port)
        received = await asyncio.wait_for(fresh.first, 30)
        fresh_ms.append((received - connect) * 1000)
        await fresh.close()
    await asyncio.gather(*(c.close() for c in idle))
    return {
        "fresh_client_latency_ms": round(statistics.median(fresh_ms), 2),
        "fresh_client_p99_ms": round(percentile(fresh_ms, 99), 2),
        "fanout_p50_ms": round(percentile(fanout_ms, 50), 2),
        "fanout_p99_ms": round(percentile(fanout_ms, 99), 2),
        "fanout_max_ms": round(max(fanout_ms), 2),
        "fanout_last_client_p50_ms": round(statistics.median(last_ms), 2),
        "clients": clients,
        "rounds": rounds,
        "connect_all_s": round(connect_s, 3),
        "dropped_messages": state["dropped_messages"],
        "target_ms": TARGET_MS,
    }


# --------------------------------------------------------------------------------------------
# Report


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}"


def table(results: dict[str, Any]) -> str:
    rows = [
        ("idle SSE clients", f"{results['clients']}"),
        ("rounds", f"{results['rounds']}"),
        ("connect all idle clients", f"{results['connect_all_s'] * 1000:.0f} ms"),
        ("fresh client: connect -> first snapshot (median)",
         f"{results['fresh_client_latency_ms']:.1f} ms"),
        ("fresh client p99", f"{results['fresh_client_p99_ms']:.1f} ms"),
        ("fan-out publish -> client p50", f"{results['fanout_p50_ms']:.1f} ms"),
        ("fan-out publish -> client p99", f"{results['fanout_p99_ms']:.1f} ms"),
        ("fan-out publish -> last client (median round)",
         f"{results['fanout_last_client_p50_ms']:.1f} ms"),
        ("fan-out max", f"{results['fanout_max_ms']:.1f} ms"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    verdict = "below" if max_latency(results) < TARGET_MS else "ABOVE"
    lines.append(f"target: {verdict} {TARGET_MS:.0f} ms")
    return "\n".join(lines)


def max_latency(results: dict[str, Any]) -> float:
    return max(results["fresh_client_latency_ms"], results["fanout_p99_ms"])


def record(results: dict[str, Any], command: str, path: Path = BENCHMARKS) -> None:
    """Append a row under ``## widget`` (created when missing); other sections stay as they are.

    The file is re-read right before writing: other benchmarks append their own sections.
    """
    summary = (
        f"fresh client {results['fresh_client_latency_ms']:.1f} ms (p99 "
        f"{results['fresh_client_p99_ms']:.1f}); fan-out to {results['clients']} idle clients "
        f"p50 {results['fanout_p50_ms']:.1f} / p99 {results['fanout_p99_ms']:.1f} / max "
        f"{results['fanout_max_ms']:.1f} ms; {results['rounds']} rounds"
    )
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    row = f"| {now} | {machine()} | `{command}` | {summary} |\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        if lines and lines[-1].strip():
            lines.append("\n")
        lines += [f"{SECTION}\n", "\n", TABLE_HEAD, row]
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        table_rows = [i for i in range(start + 1, end) if lines[i].startswith("|")]
        if table_rows:
            lines.insert(table_rows[-1] + 1, row)
        else:
            lines[start + 1 : start + 1] = ["\n", TABLE_HEAD, row]
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(lines))
    temporary.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200, help="idle SSE clients (200)")
    parser.add_argument("--rounds", type=int, default=20, help="publish rounds (20)")
    parser.add_argument("--json", action="store_true", help="print results as a JSON last line")
    parser.add_argument("--no-record", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    command = shlex.join(
        ["python", "bench/widget.py", *(argv if argv is not None else sys.argv[1:])]
    )
    server = Server(args.clients)
    try:
        results = asyncio.run(measure(server, args.clients, args.rounds))
    finally:
        server.stop()
    print(table(results))
    if not args.no_record:
        record(results, command)
        print(f"recorded in {BENCHMARKS.relative_to(REPO_ROOT)} under '{SECTION}'")
    if args.json:
        print(json.dumps(results))
    return 0 if max_latency(results) < TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
