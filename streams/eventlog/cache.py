"""The parsed-file cache: a large text log, once parsed and validated, kept as Parquet.

One entry per source path under ``cache_dir/parsed/``, checked against the file's size and
modification time; an entry that cannot be read is parsed again, one that cannot be written
only warns.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streams.eventlog.log import BadRow
from streams.eventlog.validate import Parsed

#: Bump when the layout of the parsed-file cache changes: old entries are then ignored.
_CACHE_FORMAT = 2
#: Smaller text files parse in milliseconds and are not cached.
_CACHE_MIN_BYTES = 256 * 1024


def _cache_file(cache_dir: Path, path: Path) -> Path:
    """One cache entry per source path: a changed source overwrites its entry."""
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
    return cache_dir / "parsed" / f"{key}.parquet"


def _fingerprint(path: Path) -> dict[str, int]:
    """What identifies the version of a source that a cache entry was made from."""
    stat = path.stat()
    return {"format": _CACHE_FORMAT, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def read_cached(path: Path, cache_dir: Path, parse: Callable[[], Parsed]) -> Parsed:
    """``parse()`` a text log, through the Parquet cache when the file is big enough to gain."""
    if path.stat().st_size < _CACHE_MIN_BYTES:
        return parse()
    cache_file = _cache_file(cache_dir, path)
    fingerprint = _fingerprint(path)  # taken before parsing: a later change invalidates
    parsed = _load_cached(cache_file, fingerprint)
    if parsed is None:
        parsed = parse()
        _store_cached(cache_file, fingerprint, parsed)
    return parsed


def _load_cached(cache_file: Path, fingerprint: dict[str, int]) -> Parsed | None:
    """Read a cache entry; ``None`` when missing, made from another version, or unreadable."""
    if not cache_file.is_file():
        return None
    try:
        table = pq.read_table(cache_file)
        report = json.loads(table.schema.metadata[b"trail"])
        if report["source"] != fingerprint:
            return None
        rows = table.num_rows
        first_line = report["first_line"]
        return Parsed(
            table["user_id"],
            table["item_id"],
            table["timestamp"].to_numpy(),
            tuple(BadRow(int(line), str(reason)) for line, reason in report["bad_rows"]),
            int(report["bad_row_count"]),
            lines=(
                table["line"].to_numpy()
                if first_line is None
                else np.arange(first_line, first_line + rows, dtype=np.int64)
            ),
            numeric=(
                table["numeric"].to_numpy(zero_copy_only=False)
                if "numeric" in table.column_names
                else np.ones(rows, dtype=bool)
            ),
            time_label=str(report["time_label"]),
        )
    except (OSError, pa.ArrowException, KeyError, TypeError, ValueError):
        return None


def _store_cached(cache_file: Path, fingerprint: dict[str, int], parsed: Parsed) -> None:
    """Write a cache entry atomically; a cache that cannot be written is only a warning."""
    lines = parsed.lines
    # Line numbers and the plain-number mask are stored only when they say something: most
    # logs have one event per line and plain-number times (and load faster without them).
    first_line = int(lines[0]) if lines.size else 2
    consecutive = bool(np.array_equal(lines, np.arange(first_line, first_line + lines.size)))
    report = {
        "source": fingerprint,
        "bad_rows": [[row.line, row.reason] for row in parsed.bad_rows],
        "bad_row_count": parsed.bad_row_count,
        "time_label": parsed.time_label,
        "first_line": first_line if consecutive else None,
    }
    columns = {
        "user_id": parsed.user_ids,
        "item_id": parsed.item_ids,
        "timestamp": parsed.timestamps,
    }
    if not consecutive:
        columns["line"] = pa.chunked_array([lines])
    if not parsed.numeric.all():
        columns["numeric"] = pa.chunked_array([parsed.numeric])
    table = pa.table(columns).replace_schema_metadata({"trail": json.dumps(report)})
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=cache_file.parent, prefix=".", suffix=".tmp", delete=False
        ) as handle:
            tmp = Path(handle.name)
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, cache_file)
        finally:
            tmp.unlink(missing_ok=True)
    except (OSError, pa.ArrowException) as exc:
        warnings.warn(f"could not cache the parsed log in {cache_file}: {exc}", stacklevel=3)
