"""A delimited text log (CSV or RecBole ``.inter``) read into validated columns.

pyarrow splits the file when it can; the careful reader takes over when it cannot, or when a
row pyarrow split over several lines fails validation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streams.eventlog.careful import MAX_RECORD_LINES, read_careful
from streams.eventlog.log import BadRow
from streams.eventlog.text import (
    Layout,
    NeedsCarefulRead,
    Rows,
    SkippedRows,
    read_header,
    read_table,
)
from streams.eventlog.validate import Parsed, validate

#: ``roles_of(path, header names)``: the header field of ``user_id``, ``item_id``, ``timestamp``.
Roles = Callable[[Path, list[str]], dict[str, str]]


def _line_numbers(
    rows: int, skipped: SkippedRows, spans: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return the first physical line of each kept row and of each skipped row.

    pyarrow numbers parsed rows (header = 1, blank lines included); a row whose quoted values
    hold newlines spans more than one line, which shifts the lines of every later row.
    """
    total = rows + len(skipped.numbers)
    is_skipped = np.zeros(total, dtype=bool)
    is_skipped[np.asarray(skipped.numbers, dtype=np.int64) - 2] = True
    lines = np.arange(2, total + 2, dtype=np.int64)
    if spans.any() or any(skipped.newlines):
        extra = np.zeros(total, dtype=np.int64)
        extra[~is_skipped] = spans
        extra[is_skipped] = skipped.newlines
        lines[1:] += np.cumsum(extra)[:-1]
    return lines[~is_skipped], lines[is_skipped]


def _read_fast(path: Path, layout: Layout, progress: bool) -> Rows | None:
    """Split the file with pyarrow; ``None`` when only the careful reader can get it right."""
    skipped = SkippedRows()
    include = layout.include
    try:
        table = read_table(
            path,
            names=layout.names,
            include=include,
            delimiter=layout.delimiter,
            quoted=layout.quoted,
            handler=skipped,
            progress=progress,
        )
    except NeedsCarefulRead:
        return None
    if any(skipped.newlines):
        return None  # a bad row over several lines: a stray quote may have swallowed rows
    spans = np.zeros(table.num_rows, dtype=np.int64)
    if layout.quoted and table.num_rows:
        counts = [pc.count_substring(table[name], "\n").to_numpy() for name in include]
        spans = np.asarray(np.sum(counts, axis=0, dtype=np.int64))
        if int(spans.max()) >= MAX_RECORD_LINES:
            return None  # the careful reader takes such a row for a stray quote
    lines, skipped_lines = _line_numbers(table.num_rows, skipped, spans)
    earlier = [
        BadRow(int(line), reason)
        for line, reason in zip(skipped_lines, skipped.reasons, strict=False)
    ]
    columns = {name: table[name] for name in include}
    return Rows(columns, lines, spans, earlier, len(skipped.numbers))


def read_delimited(
    path: Path, *, delimiter: str, quoted: bool, roles_of: Roles, progress: bool
) -> Parsed:
    """Parse a delimited text log whose header ``roles_of`` maps to the event columns.

    pyarrow reads the file when it can split it cleanly; a file it cannot (a bad row that is
    not UTF-8, a line over a block) or whose bad rows span lines (a stray quote may hide good
    rows in them) is read again by the careful reader. ``quoted``: values may be quoted (and
    hold line breaks), as in CSV; never in a RecBole ``.inter`` file.
    """
    names = read_header(path, delimiter, quoted)
    roles = roles_of(path, names)
    # Line breaks in quoted values shift the line numbers of later rows, whichever column
    # holds them: a quoted file reads every column; an unquoted one only the three it needs.
    include = names if quoted else list(roles.values())
    label = roles["timestamp"].split(":", 1)[0]

    def check(rows: Rows) -> tuple[Parsed, np.ndarray]:
        return validate(
            rows.columns[roles["user_id"]],
            rows.columns[roles["item_id"]],
            rows.columns[roles["timestamp"]],
            time_label=label,
            lines=rows.lines,
            blank=rows.blank(),
            earlier=rows.skipped,
            earlier_count=rows.skipped_count,
        )

    layout = Layout(names, include, delimiter, quoted)
    fast = _read_fast(path, layout, progress)
    if fast is not None:
        parsed, failed = check(fast)
        if not bool(np.any(failed & (fast.spans > 0))):
            return parsed

    def accept(values: list[bytes]) -> bool:
        one = {
            name: pa.chunked_array([pa.array([value], type=pa.binary())])
            for name, value in zip(include, values, strict=True)
        }
        single = Rows(one, np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), [], 0)
        return not bool(check(single)[1][0])

    careful = read_careful(path, layout, accept, progress)
    return check(careful)[0]
