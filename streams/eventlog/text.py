"""Delimited text files: the header, pyarrow's CSV reader, and what both readers share.

:mod:`~streams.eventlog.delimited` reads a file with pyarrow first (:func:`read_table`) and
falls back to :mod:`~streams.eventlog.careful` when pyarrow cannot split it cleanly.
"""

from __future__ import annotations

import csv
import gzip
import re
import sys
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from tqdm import tqdm

from streams.eventlog.log import MAX_BAD_ROWS, BadRow, DatasetError

#: A progress bar appears only when reading takes longer than this (seconds).
PROGRESS_DELAY_S = 1.0
#: pyarrow's block size; a line longer than one block is a malformed row.
READ_BLOCK_BYTES = 1 << 22
_GZIP_MAGIC = b"\x1f\x8b"
#: A header line longer than this is not a header (it would also break the csv module).
_MAX_HEADER_BYTES = 64 * 1024


#: Held while pyarrow reads with :func:`read_table`'s hook for unraisable errors in place.
_UNRAISABLE_LOCK = threading.Lock()


def read_progress(path: Path, desc: str, progress: bool) -> dict[str, Any]:
    """The options of a tqdm bar over the bytes of ``path`` as it is read (on standard
    error, shown only when ``progress`` and once the read takes over :data:`PROGRESS_DELAY_S`)."""
    return {
        "total": path.stat().st_size,
        "desc": desc,
        "unit": "B",
        "unit_scale": True,
        "unit_divisor": 1024,
        "delay": PROGRESS_DELAY_S,
        "disable": not progress,
        "file": sys.stderr,
    }


class NeedsCarefulRead(DatasetError):
    """pyarrow cannot split this file (a row over a block, or a bad row it cannot report)."""


class SkippedRows:
    """``invalid_row_handler`` for pyarrow: skips rows with a wrong field count, noting them."""

    def __init__(self) -> None:
        self.numbers: list[int] = []  # pyarrow's 1-based row number (the header is row 1)
        self.newlines: list[int] = []  # extra physical lines a row spans (quoted newlines)
        self.reasons: list[str] = []  # for the first MAX_BAD_ROWS only

    def __call__(self, row: pacsv.InvalidRow) -> str:
        self.numbers.append(row.number)
        self.newlines.append(row.text.count("\n"))
        if len(self.reasons) < MAX_BAD_ROWS:
            self.reasons.append(f"expected {row.expected_columns} fields, got {row.actual_columns}")
        return "skip"


@dataclass(frozen=True)
class Layout:
    """How a text log is laid out: its header fields, those read, and its syntax."""

    names: list[str]
    include: list[str]
    delimiter: str
    quoted: bool  # CSV: values may be quoted (and hold line breaks); .inter: never


@dataclass(frozen=True)
class Rows:
    """The rows of a text file split into fields, before validation.

    Attributes
    ----------
    columns : dict[str, pyarrow.ChunkedArray]
        One binary column per included header field.
    lines : numpy.ndarray
        The first physical line of each row.
    spans : numpy.ndarray
        How many more lines each row takes (line breaks in quoted values).
    skipped : list[BadRow]
        The first :data:`MAX_BAD_ROWS` rows that could not be split into the header's fields.
    skipped_count : int
        How many such rows there were.
    """

    columns: dict[str, pa.ChunkedArray]
    lines: np.ndarray
    spans: np.ndarray
    skipped: list[BadRow]
    skipped_count: int

    def blank(self) -> np.ndarray:
        """Rows whose fields are all empty: blank lines, skipped without a report."""
        blank = np.ones(len(self.lines), dtype=bool)
        for column in self.columns.values():
            blank &= pc.equal(pc.binary_length(column), 0).to_numpy(zero_copy_only=False)
        return blank


def is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == _GZIP_MAGIC


def read_header(path: Path, delimiter: str, quoted: bool) -> list[str]:
    """Return the stripped field names of the first line."""
    try:
        with gzip.open(path, "rb") if is_gzip(path) else path.open("rb") as handle:
            raw = handle.readline(_MAX_HEADER_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    if len(raw) > _MAX_HEADER_BYTES and not raw.endswith(b"\n"):
        raise DatasetError(
            f"{path}: line 1 is longer than {size_label(_MAX_HEADER_BYTES)}; the first line "
            "must be a header, e.g. user_id,item_id,timestamp"
        )
    try:
        # pyarrow ends a line at a lone carriage return too; so does the header.
        text = re.split(r"\r\n|\r|\n", raw.decode("utf-8-sig"), maxsplit=1)[0]
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: the header line is not UTF-8 text") from exc
    if not text.strip():
        raise DatasetError(
            f"{path}: the first line must be a header, e.g. user_id,item_id,timestamp"
        )
    try:
        fields = next(csv.reader([text], delimiter=delimiter)) if quoted else text.split(delimiter)
    except csv.Error as exc:
        raise DatasetError(f"{path}: the header line is not CSV ({exc})") from exc
    names = [name.strip() for name in fields]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DatasetError(f"{path}: duplicate header field(s) {names_shown(duplicates)}")
    return names


def size_label(count: int) -> str:
    """A byte count for a message: ``64 KiB``, ``4 MiB``."""
    if count >= 1 << 20:
        return f"{count / (1 << 20):.3g} MiB"
    return f"{count / 1024:.3g} KiB"


def names_shown(names: Sequence[str]) -> list[str]:
    """Header names short enough to print: a garbage header must not flood the terminal."""
    shown = [name if len(name) <= 40 else name[:37] + "..." for name in names[:20]]
    return shown if len(names) <= 20 else [*shown, f"... {len(names) - 20} more"]


def read_table(
    path: Path,
    *,
    names: list[str],
    include: list[str],
    delimiter: str,
    quoted: bool,
    handler: SkippedRows,
    progress: bool,
) -> pa.Table:
    """Read the rows after the header as binary columns, skipping rows of the wrong width.

    Raises
    ------
    NeedsCarefulRead
        pyarrow could not split the file, e.g. a row is larger than a block, or a row of the
        wrong width is not UTF-8 text (pyarrow cannot hand it to ``handler``).
    DatasetError
        The file cannot be read.
    """
    read_options = pacsv.ReadOptions(
        use_threads=False,  # pyarrow reports row numbers to the handler only when serial
        block_size=READ_BLOCK_BYTES,
        skip_rows=1,
        column_names=names,
    )
    parse_options = pacsv.ParseOptions(
        delimiter=delimiter,
        quote_char='"' if quoted else False,
        newlines_in_values=quoted,
        ignore_empty_lines=False,  # keeps pyarrow's row numbers equal to line numbers
        invalid_row_handler=handler,
    )
    convert_options = pacsv.ConvertOptions(
        column_types=dict.fromkeys(include, pa.binary()), include_columns=include
    )
    unraisable: list[BaseException | None] = []
    reader = threading.get_ident()

    def note_unraisable(failure: sys.UnraisableHookArgs) -> None:
        if threading.get_ident() == reader:
            unraisable.append(failure.exc_value)
        else:
            previous_hook(failure)

    # pyarrow decodes a bad row as UTF-8 before it calls the handler (in this thread, as
    # use_threads is off); when that fails it prints the error as "unraisable" (a traceback
    # on stderr) and stops reading. Catch it here: the careful reader then reads the file.
    # The hook is global: the lock keeps two threads' reads from restoring it out of order.
    with _UNRAISABLE_LOCK:
        previous_hook = sys.unraisablehook
        sys.unraisablehook = note_unraisable
        try:
            table = _read_csv(path, read_options, parse_options, convert_options, progress)
        except pa.ArrowInvalid as exc:
            raise NeedsCarefulRead(f"{path}: cannot parse ({exc})") from exc
        except (OSError, pa.ArrowException) as exc:
            raise DatasetError(f"{path}: cannot read ({exc})") from exc
        finally:
            sys.unraisablehook = previous_hook
    if unraisable:
        raise NeedsCarefulRead(f"{path}: a malformed row is not UTF-8 text ({unraisable[0]})")
    return table


def _read_csv(
    path: Path,
    read_options: pacsv.ReadOptions,
    parse_options: pacsv.ParseOptions,
    convert_options: pacsv.ConvertOptions,
    progress: bool,
) -> pa.Table:
    """pyarrow's CSV reader on a plain or gzip file, with a progress bar on long reads."""
    compressed = is_gzip(path)
    with (
        path.open("rb") as raw,
        tqdm.wrapattr(
            raw, "read", **read_progress(path, f"reading {path.name}", progress)
        ) as counted,
    ):
        stream = pa.PythonFile(counted, mode="r")
        if compressed:
            stream = pa.CompressedInputStream(stream, "gzip")
        return pacsv.read_csv(
            stream,
            read_options=read_options,
            parse_options=parse_options,
            convert_options=convert_options,
        )
