"""``load_events``: any supported source turned into an :class:`~streams.eventlog.log.EventLog`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streams.eventlog.cache import read_cached
from streams.eventlog.csvfile import read_csv_log
from streams.eventlog.horizon import TIME_UNITS, TimeUnit, horizon_margin, unit_of, within_horizon
from streams.eventlog.log import DatasetError, EventLog
from streams.eventlog.named import dataset_file, dataset_names
from streams.eventlog.parquet import read_parquet
from streams.eventlog.recbole import read_inter, sibling_items
from streams.trend.folders import default_cache_dir

_FORMATS = {".csv": "csv", ".inter": "inter", ".parquet": "parquet", ".pq": "parquet"}


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
    if kind == "parquet":
        parsed = read_parquet(path)
    else:
        read = read_csv_log if kind == "csv" else read_inter
        parsed = read_cached(path, cache_root, lambda: read(path, progress))
    unit, notes = unit_of(parsed, time_unit, path)
    timed = within_horizon(parsed, unit, margin)
    items = sibling_items(path, progress) if kind == "inter" else {}
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


def _resolve(source: str | Path, cache_dir: Path, progress: bool) -> tuple[str, Path]:
    """Return ``(name, path)`` for a path or a dataset name, downloading when needed."""
    if isinstance(source, str) and source in dataset_names() and not Path(source).exists():
        return source, dataset_file(source, cache_dir, progress)
    path = Path(source).expanduser()
    if not path.exists():
        raise DatasetError(
            f"{path}: no such file. Give a CSV, Parquet or RecBole .inter file, "
            f"or one of the dataset names {dataset_names()}."
        )
    if not path.is_file():
        raise DatasetError(f"{path}: not a file; give the event log file itself")
    return path.name, path


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


def _to_objects(column: pa.ChunkedArray) -> np.ndarray:
    """Strings as a NumPy object array, one ``str`` object per distinct id (fast, compact)."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    values: np.ndarray = encoded.dictionary.to_numpy(zero_copy_only=False)
    strings: np.ndarray = values[encoded.indices.to_numpy(zero_copy_only=False)]
    return strings
