"""``trail tail scores|trending|dlq``: subscribe to an output topic and pretty-print it.

Reads without joining a consumer group (nothing is committed), from the end by default or
from the beginning with ``--from-beginning``. ``--dedupe`` drops repeats by idempotency key
(``item_id|window_end|model_version`` for scores, the window for trending, the source
coordinates for dead letters), as a consumer of these at-least-once topics should.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
from typing import IO, Any

import orjson

from streams.settings import Settings

TOPICS = ("scores", "trending", "dlq")


def _date(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


def format_record(kind: str, record: Any) -> tuple[str, str]:
    """(de-duplication key, human-readable text) of one record."""
    if kind == "dlq":
        from streams.kafka.deadletters import read_dead_letter

        letter = read_dead_letter(record)
        shown = (letter.value or b"")[:80].decode("utf-8", "replace")
        return (
            f"{letter.topic}/{letter.partition}/{letter.offset}",
            f"{letter.kind:<9} {letter.topic}/{letter.partition}@{letter.offset}: "
            f"{letter.reason}\n          value {shown!r}",
        )
    data = orjson.loads(record.value)
    if kind == "trending":
        lines = [
            f"== trending {_date(data['window_start'])} .. {_date(data['window_end'])}: "
            f"{data['events']:.0f} events, {data['changed_items']} items changed, "
            f"model {data['model_version']}"
        ]
        for item in data["items"]:
            name = item.get("title") or f"item {item['item_id']}"
            lines.append(
                f"  {item['rank']:>3}. {name[:48]:<48} score {item['score']:8.4f}  "
                f"{item.get('trend') or ''}"
            )
        return str(data["window_end"]), "\n".join(lines)
    features = data.get("features") or {}
    text = (
        f"{_date(data['window_end'])}  #{data['rank']:<5} item {data['item_id']:<10} "
        f"score {data['score']:8.4f}  count {features.get('count', 0):g}  "
        f"{features.get('trend', '')}"
    )
    if data.get("explanation"):
        text += f"\n      {data['explanation']}"
    key = f"{data['item_id']}|{data['window_end']}|{data['model_version']}"
    return key, text


async def tail(
    settings: Settings,
    kind: str,
    *,
    topic: str | None = None,
    from_beginning: bool = False,
    max_records: int | None = None,
    timeout: float | None = None,
    raw: bool = False,
    dedupe: bool = False,
    out: IO[str] | None = None,
) -> int:
    from aiokafka import AIOKafkaConsumer

    from streams.kafka.options import client_options, verify_connection

    await verify_connection(settings)  # refused credentials: one clear error, no retries
    out = out if out is not None else sys.stdout
    topic = (
        topic
        or {
            "scores": settings.scores_topic,
            "trending": settings.trending_topic,
            "dlq": settings.dlq_topic,
        }[kind]
    )
    consumer = AIOKafkaConsumer(
        topic,
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    await consumer.start()
    seen: set[str] = set()
    shown = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while max_records is None or shown < max_records:
            if deadline is not None and time.monotonic() >= deadline:
                break
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            for records in batches.values():
                for record in records:
                    key, text = format_record(kind, record)
                    if dedupe:
                        if key in seen:
                            continue
                        seen.add(key)
                    if raw:
                        print((record.value or b"").decode("utf-8", "replace"), file=out)
                    else:
                        print(text, file=out)
                    shown += 1
                    if max_records is not None and shown >= max_records:
                        break
            out.flush()
    finally:
        await consumer.stop()
    return shown


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=TOPICS, help="which output to follow")
    parser.add_argument("--topic", default=None, help="topic name (default from settings)")
    parser.add_argument("--broker", default=None, help="bootstrap servers (TRAIL_BROKER)")
    parser.add_argument("--from-beginning", action="store_true", help="start at the oldest")
    parser.add_argument(
        "--max", dest="max_records", type=int, default=None, help="stop after N records"
    )
    parser.add_argument("--timeout", type=float, default=None, help="stop after S seconds")
    parser.add_argument("--json", dest="raw", action="store_true", help="raw JSON lines")
    parser.add_argument("--dedupe", action="store_true", help="drop repeats by idempotency key")


def run(args: argparse.Namespace) -> int:
    settings = Settings(**({"broker": args.broker} if args.broker else {}))
    try:
        asyncio.run(
            tail(
                settings,
                args.what,
                topic=args.topic,
                from_beginning=args.from_beginning,
                max_records=args.max_records,
                timeout=args.timeout,
                raw=args.raw,
                dedupe=args.dedupe,
            )
        )
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # e.g. piped into head
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0
