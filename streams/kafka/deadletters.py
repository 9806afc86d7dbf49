"""Dead letters: the records the engine did not apply, the ``events.dlq`` format, and the
readable reasons they carry.

Every dead letter is built by :meth:`DeadLetter.of_record` from the consumer record it
stands for (the decoders' malformed records, the worker's late events through
:func:`late_letter`); :func:`dead_letter_record` writes it to the dead-letter topic and
:func:`read_dead_letter` reads it back.

Dead-letter format (``events.dlq``): the record's key and value are the original key and value,
unchanged (a value over :data:`DLQ_MAX_VALUE_BYTES` is cut there, with its full length in a
header); headers say why and where from:

==========================  ===================================================================
``trail.dlq.kind``          ``malformed`` or ``late``
``trail.dlq.category``      ``too_large``, ``missing_key``, ``missing_value``, ``bad_json``,
                            ``not_object``, ``unknown_field``, ``invalid``, ``key_mismatch``,
                            ``future``, ``late``; for the items topic also ``invalid_key``
                            and ``wrong_partition``
``trail.dlq.reason``        the precise reason (``RecordError`` text, the closed window and the
                            watermark that closed it, or how far past the clock bound); long
                            values in it are cut (:func:`show_time`, :data:`SHOWN_CHARS`)
``trail.dlq.topic``         source topic, partition, offset and record timestamp (ms)
``trail.dlq.partition``
``trail.dlq.offset``
``trail.dlq.timestamp``
``trail.dlq.worker``        the worker id that dead-lettered it
``trail.dlq.truncated``     only when cut: the original value length
``trail.dlq.null_value``    only when the original value was null (the value is then empty)
==========================  ===================================================================

Malformed records of the items topic go to the same dead-letter topic, with
``trail.dlq.topic`` naming the items topic.

Re-deliveries after a crash repeat a dead letter with the same (topic, partition, offset):
consumers of the DLQ de-duplicate on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: Dead letters keep at most this many bytes of the original value (a broker refuses records
#: over ``message.max.bytes``, 1 MiB by default, and the headers need room too).
DLQ_MAX_VALUE_BYTES = 900_000
DLQ_HEADER_PREFIX = "trail.dlq."
MAX_REASON_CHARS = 2000
#: Ids and keys quoted in a reason are cut to this many characters.
SHOWN_CHARS = 60

#: ``show_time`` prints a date beside times up to the end of year 9999 (``datetime``'s range).
_MAX_DATED_TS = 253_402_300_800.0


def show_time(ts: float) -> str:
    """A unix time as a short readable string for dead-letter reasons and logs.

    Plausible times keep millisecond precision and get their UTC date; absurd ones (a 1e300
    timestamp would otherwise print 300 digits) get six significant digits.

    Parameters
    ----------
    ts : float
        Unix seconds (any float, NaN and infinities included).

    Returns
    -------
    str
        At most about 40 characters.

    Examples
    --------
    >>> show_time(1700000000.5)
    '1700000000.500 (2023-11-14T22:13:20Z)'
    >>> show_time(1e300)
    '1e+300'
    >>> show_time(-4.0)
    '-4.000'
    """
    if not math.isfinite(ts) or abs(ts) >= 1e15:
        return f"{ts:.6g}"
    if 0.0 <= ts < _MAX_DATED_TS - 1.0:  # - 1 s: rounding to microseconds
        date = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{ts:.3f} ({date})"
    return f"{ts:.3f}"


def show_seconds(seconds: float) -> str:
    """A duration in the largest unit that keeps it readable (bounded like :func:`show_time`).

    Examples
    --------
    >>> show_seconds(90)
    '90 s'
    >>> show_seconds(3 * 86400 + 3600)
    '3.04 days'
    >>> show_seconds(4102444800000 - 1700000000)
    '129,945 years'
    >>> show_seconds(1e300)
    '3.17e+292 years'
    """
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.3g} h"
    if seconds < 2 * 365.25 * 86400:
        return f"{seconds / 86400:.3g} days"
    years = seconds / (365.25 * 86400)
    return f"{years:,.0f} years" if years < 1e6 else f"{years:.3g} years"


def shown(text: str) -> str:
    """``repr(text)``, cut to about :data:`SHOWN_CHARS` characters."""
    if len(text) > SHOWN_CHARS:
        return f"{text[:SHOWN_CHARS]!r}... ({len(text)} characters)"
    return repr(text)


def shown_key(key: bytes) -> str:
    """A record key for a reason: decoded leniently and cut like :func:`shown`."""
    if len(key) > SHOWN_CHARS:
        head = key[:SHOWN_CHARS].decode("utf-8", "replace")
        return f"{head!r}... ({len(key)} bytes)"
    return repr(key.decode("utf-8", "replace"))


@dataclass(frozen=True)
class DeadLetter:
    """A record of the events (or items) topic that the engine did not apply, and why."""

    kind: str  # "malformed" | "late"
    category: str
    reason: str
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None

    @classmethod
    def of_record(
        cls,
        record: Any,
        topic: str,
        partition: int,
        category: str,
        reason: str,
        *,
        kind: str = "malformed",
    ) -> DeadLetter:
        """The dead letter of consumer ``record`` (its offset, timestamp, key and value).

        Parameters
        ----------
        record
            The consumer record (``offset``, ``timestamp``, ``key``, ``value``).
        topic, partition
            Where it was read from (a record of the Faust runtime need not carry them).
        category
            The ``trail.dlq.category`` header (see the table above).
        reason
            The precise reason, for a person.
        kind
            ``malformed`` (the record cannot be applied) or ``late`` (its window was closed).
        """
        return cls(
            kind,
            category,
            reason,
            topic,
            partition,
            record.offset,
            record.timestamp,
            record.key,
            record.value,
        )


def late_letter(record: Any, topic: str, partition: int, reason: str) -> DeadLetter:
    """The dead letter of an event whose window had already closed (``kind`` and ``category``
    ``late``)."""
    return DeadLetter.of_record(record, topic, partition, "late", reason, kind="late")


def dead_letter_record(
    letter: DeadLetter, worker: str
) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """``(key, value, headers)`` of the ``events.dlq`` record for ``letter``."""
    value = letter.value if letter.value is not None else b""
    headers = [
        ("trail.dlq.kind", letter.kind.encode()),
        ("trail.dlq.category", letter.category.encode()),
        ("trail.dlq.reason", letter.reason[:MAX_REASON_CHARS].encode("utf-8", "replace")),
        ("trail.dlq.topic", letter.topic.encode()),
        ("trail.dlq.partition", str(letter.partition).encode()),
        ("trail.dlq.offset", str(letter.offset).encode()),
        ("trail.dlq.timestamp", str(letter.timestamp).encode()),
        ("trail.dlq.worker", worker.encode("utf-8", "replace")),
    ]
    if len(value) > DLQ_MAX_VALUE_BYTES:
        headers.append(("trail.dlq.truncated", str(len(value)).encode()))
        value = value[:DLQ_MAX_VALUE_BYTES]
    if letter.value is None:
        headers.append(("trail.dlq.null_value", b"1"))
    return letter.key, value, headers


@dataclass(frozen=True)
class ReadDeadLetter:
    """A dead letter read back from ``events.dlq``."""

    kind: str
    category: str
    reason: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    truncated_from: int | None

    @property
    def source(self) -> tuple[str, int, int]:
        """(topic, partition, offset): the de-duplication key of a dead letter."""
        return self.topic, self.partition, self.offset


def read_dead_letter(record: Any) -> ReadDeadLetter:
    """The dead letter in a consumer record of the dead-letter topic (what
    :func:`dead_letter_record` wrote; missing headers read as empty or -1)."""
    headers = {
        name.removeprefix(DLQ_HEADER_PREFIX): raw.decode("utf-8", "replace")
        for name, raw in (record.headers or ())
        if name.startswith(DLQ_HEADER_PREFIX)
    }
    truncated = headers.get("truncated")
    return ReadDeadLetter(
        kind=headers.get("kind", ""),
        category=headers.get("category", ""),
        reason=headers.get("reason", ""),
        topic=headers.get("topic", ""),
        partition=int(headers.get("partition", "-1")),
        offset=int(headers.get("offset", "-1")),
        key=record.key,
        value=None if headers.get("null_value") else record.value,
        truncated_from=int(truncated) if truncated else None,
    )
