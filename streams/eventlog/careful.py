"""The careful reader: a delimited file split line by line, so that no bad row stops it.

Slower than pyarrow; used when pyarrow cannot split a file cleanly (a bad row that is not
UTF-8, a line over a block) or when a bad row spans lines (a stray quote may hide good rows).
"""

from __future__ import annotations

import gzip
import re
import zlib
from array import array
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from streams.eventlog.log import MAX_BAD_ROWS, BadRow, DatasetError
from streams.eventlog.text import (
    READ_BLOCK_BYTES,
    Layout,
    Rows,
    is_gzip,
    read_progress,
    size_label,
)

#: A longer line is a malformed row (the fast reader cannot hold it in one block).
_MAX_LINE_BYTES = READ_BLOCK_BYTES
#: A quoted value may join at most this many lines (ids are at most MAX_ID_CHARS long).
MAX_RECORD_LINES = 64
#: The careful reader hands rows to Arrow in chunks of this many.
_CHUNK_ROWS = 1 << 16
#: Splits a line after a carriage return that no line feed follows (an old Mac line end).
_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")


def _without_line_end(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        return line[:-2] if line.endswith(b"\r\n") else line[:-1]
    return line[:-1] if line.endswith(b"\r") else line


class _Lines(Protocol):
    """A binary file to read lines from (plain or gzip)."""

    def readline(self, size: int | None = -1, /) -> bytes: ...


def _physical_lines(handle: _Lines) -> Iterator[bytes | None]:
    """Yield each line with its line end; ``None`` for a line over :data:`_MAX_LINE_BYTES`.

    Lines end at a line feed, or at a carriage return that no line feed follows (as in
    pyarrow). The bytes of an over-long line are skipped, never held in memory.
    """
    while chunk := handle.readline(_MAX_LINE_BYTES + 1):
        if len(chunk) > _MAX_LINE_BYTES and not chunk.endswith(b"\n"):
            while chunk and not chunk.endswith(b"\n"):
                chunk = handle.readline(READ_BLOCK_BYTES)
            yield None
        elif b"\r" in chunk[:-2]:
            yield from (part for part in _LONE_CR.split(chunk) if part)
        else:
            yield chunk


class _LineSource:
    """Numbered physical lines after the header, and lines pushed back to be read again."""

    def __init__(self, handle: _Lines, advance: Callable[[], None]) -> None:
        self._lines = _physical_lines(handle)
        self._advance = advance
        self._number = 0
        self._again: list[tuple[int, bytes | None]] = []  # a stack: read back to front

    def next(self) -> tuple[int, bytes | None] | None:
        """Return ``(line number, line)``, or ``None`` at the end of the file."""
        if self._again:
            return self._again.pop()
        line = next(self._lines, b"")
        if line == b"":
            return None
        self._number += 1
        if self._number % _CHUNK_ROWS == 0:
            self._advance()
        return self._number, line

    def push_back(self, lines: Sequence[tuple[int, bytes | None]]) -> None:
        """Read ``lines`` again, in order, before any further line of the file."""
        self._again.extend(reversed(lines))


def _split_quoted(record: bytes, sep: bytes) -> list[bytes] | None:
    """Split a CSV record into fields as pyarrow does; ``None`` while a quote is open.

    A quote opens a quoted value only at the start of a field; in it, two quotes stand for
    one; text after the closing quote joins the value. Elsewhere a quote is just a character.

    Examples
    --------
    >>> _split_quoted(b'a,"b,c",d"e', b","), _split_quoted(b'a,"b', b",")
    ([b'a', b'b,c', b'd"e'], None)
    """
    fields: list[bytes] = []
    start = 0
    while True:
        if record.startswith(b'"', start):
            value = bytearray()
            at = start + 1
            while True:
                close = record.find(b'"', at)
                if close < 0:
                    return None
                value += record[at:close]
                if not record.startswith(b'"', close + 1):
                    break
                value += b'"'
                at = close + 2
            at = close + 1
            cut = record.find(sep, at)
            value += record[at:] if cut < 0 else record[at:cut]
            fields.append(bytes(value))
        else:
            cut = record.find(sep, start)
            fields.append(record[start:] if cut < 0 else record[start:cut])
        if cut < 0:
            return fields
        start = cut + 1


class _RowBuilder:
    """Collects the fields of good rows as Arrow chunks, and the rows that are skipped."""

    def __init__(self, include: list[str]) -> None:
        self._include = include
        self._records: list[Sequence[bytes]] = []  # the values of each row, in ``include`` order
        self._chunks: list[list[pa.Array]] = [[] for _ in include]
        self._lines = array("q")
        self._spans: dict[int, int] = {}  # row -> extra lines, for the few rows over several
        self.skipped: list[BadRow] = []
        self.skipped_count = 0

    def keep(self, values: Sequence[bytes], line: int, span: int = 0) -> None:
        if span:
            self._spans[len(self._lines)] = span
        self._records.append(values)
        self._lines.append(line)
        if len(self._records) >= _CHUNK_ROWS:
            self._flush()

    def skip(self, line: int, reason: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < MAX_BAD_ROWS:
            self.skipped.append(BadRow(line, reason))

    def _flush(self) -> None:
        if not self._records:
            return
        for chunks, values in zip(self._chunks, zip(*self._records, strict=True), strict=True):
            chunks.append(pa.array(values, type=pa.binary()))
        self._records.clear()

    def rows(self) -> Rows:
        self._flush()
        columns = {
            name: pa.chunked_array(chunks, type=pa.binary())
            for name, chunks in zip(self._include, self._chunks, strict=True)
        }
        spans = np.zeros(len(self._lines), dtype=np.int64)
        spans[list(self._spans)] = list(self._spans.values())
        lines = np.frombuffer(self._lines, dtype=np.int64).copy()
        return Rows(columns, lines, spans, self.skipped, self.skipped_count)


def read_careful(
    path: Path, layout: Layout, accept: Callable[[list[bytes]], bool], progress: bool
) -> Rows:
    """Split the file line by line: slower than pyarrow, but no bad row stops it.

    Every row that cannot be split into the header's fields is skipped and noted with its
    line: a wrong width, a line over :data:`_MAX_LINE_BYTES`, a stray quote. A quote that
    opens a value over several lines must close within :data:`MAX_RECORD_LINES` lines into
    a row that ``accept`` (full validation) passes; otherwise it is a stray quote, and the
    lines after it are read again as rows of their own.
    """
    width = len(layout.names)
    pick = itemgetter(*(layout.names.index(name) for name in layout.include))
    sep = layout.delimiter.encode()
    rows = _RowBuilder(layout.include)
    keep = rows.keep
    try:
        with (
            path.open("rb") as raw,
            tqdm(**read_progress(path, f"reading {path.name} line by line", progress)) as bar,
        ):
            handle: _Lines = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip(path) else raw
            source = _LineSource(handle, lambda: bar.update(raw.tell() - bar.n))
            source.next()  # the header
            while (item := source.next()) is not None:
                number, line = item
                if line is None:
                    rows.skip(number, f"line is longer than {size_label(_MAX_LINE_BYTES)}")
                    continue
                body = _without_line_end(line)
                if not body:
                    continue  # a blank line
                span = 0
                if layout.quoted and b'"' in body:
                    taken = [(number, line)]
                    fields = _quoted_fields(body, taken, source, sep)
                    span = len(taken) - 1
                    if fields is None or (
                        span and (len(fields) != width or not accept(list(pick(fields))))
                    ):
                        # A stray quote: report its line, read the lines it took again.
                        source.push_back(taken[1:])
                        rows.skip(number, _stray_quote(fields, taken))
                        continue
                else:
                    fields = body.split(sep)
                if len(fields) != width:
                    rows.skip(number, f"expected {width} fields, got {len(fields)}")
                    continue
                keep(pick(fields), number, span)
            bar.update(raw.tell() - bar.n)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    return rows.rows()


def _quoted_fields(
    body: bytes, taken: list[tuple[int, bytes]], source: _LineSource, sep: bytes
) -> list[bytes] | None:
    """Fields of a record with a quote; lines that an open quote joins go into ``taken``."""
    fields = _split_quoted(body, sep)
    record = b"".join(line for _, line in taken)
    while fields is None and len(taken) < MAX_RECORD_LINES:
        following = source.next()
        if following is None:
            break
        number, line = following
        if line is None:  # an over-long line ends any quoted value
            source.push_back([following])
            break
        taken.append((number, line))
        record += line
        if b'"' in line:  # only a quote can close the value
            fields = _split_quoted(_without_line_end(record), sep)
    return fields


def _stray_quote(fields: list[bytes] | None, taken: Sequence[tuple[int, bytes]]) -> str:
    """Why a row with a stray quote is skipped."""
    if fields is None:
        what = "unclosed quote"
    else:
        what = f"stray quote (joining lines {taken[0][0]}-{taken[-1][0]} gives no valid row)"
    return what + ("; the lines after it are read as rows" if len(taken) > 1 else "")
