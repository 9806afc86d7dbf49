"""Item catalogs: ``--items FILE`` as CSV, Parquet or JSON lines, read into :class:`ItemMeta`.

A catalog gives what is known about items besides their traffic. Every format has the same
fields (:class:`schemas.ItemMeta`, committed as ``schemas/json/item_meta.schema.json``):

==================  ==========================================================================
``item_id``         required: the id the event log uses (text or an integer)
``title``           the item's name (alias ``name``); at most 512 characters
``categories``      one or more categories (aliases ``category``, ``genres``, ``genre``)
``tags``            one or more tags (alias ``tag``)
``brand``           at most 256 characters
``price``           a number, 0 or more
``release_date``    ``YYYY-MM-DD`` (an ISO time gives its date), or a bare year ``YYYY``
``year``            the release year (alias ``release_year``); set from ``release_date`` too
==================  ==========================================================================

Column and key names are matched without regard to case or surrounding spaces. In CSV the
several categories or tags of an item are one field separated by ``|``
(``Animation|Comedy``); in Parquet a list column or such a string; in JSON lines an array of
strings or such a string. Empty values mean "not known". Other columns are ignored, with a
note that names them.

Rows that cannot be used are skipped and reported with their line number (the header is line
1; in JSON lines the first line is 1; in Parquet the row number) and the reason: no
``item_id``, a value of the wrong kind (a price that is not a number, a date that is not a
date), a value over its limit, invalid UTF-8, a wrong number of CSV fields, a stray quote (its
line is skipped and the lines after it are read again as rows of their own) or a line over
:data:`MAX_LINE_BYTES`. An item id on several rows keeps its last row, with a note. Only a
file that cannot be read, or a CSV without a usable header, stops the load
(:class:`~streams.eventlog.log.DatasetError`).

:func:`load_items` also takes what the worker's ``--items`` took before: a dataset name
(``ml-100k``, ``ml-1m``) or a RecBole ``.inter`` / ``.item`` file.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> _ = (folder / "items.csv").write_text(
...     "item_id,title,categories,price,colour\\n"
...     "1,Toy Story (1995),Animation|Children's|Comedy,,red\\n"
...     "2,GoldenEye (1995),Action,cheap,blue\\n")
>>> catalog = load_items(folder / "items.csv")
>>> catalog.items["1"].categories
('Animation', "Children's", 'Comedy')
>>> [(row.line, row.reason) for row in catalog.bad_rows]
[(3, "price 'cheap' is not a number")]
>>> catalog.notes
('ignored column(s) not in the item schema: colour',)
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import warnings
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import ItemMeta
from streams.eventlog.item_values import BadValue, item_meta
from streams.eventlog.log import MAX_BAD_ROWS, BadRow, DatasetError, EventLog

#: Field -> the column names that give it (the first is the field's own name).
COLUMNS: dict[str, tuple[str, ...]] = {
    "item_id": ("item_id",),
    "title": ("title", "name"),
    "categories": ("categories", "category", "genres", "genre"),
    "tags": ("tags", "tag"),
    "brand": ("brand",),
    "price": ("price",),
    "release_date": ("release_date",),
    "year": ("year", "release_year"),
}
#: A longer line is a malformed row (a catalog line is a few hundred bytes).
MAX_LINE_BYTES = 1 << 20
#: A quoted CSV value may join at most this many lines.
MAX_RECORD_LINES = 16
#: At most this many duplicate item ids are quoted in the note about them.
_SHOWN_DUPLICATES = 5

_ALIAS = {alias: name for name, aliases in COLUMNS.items() for alias in aliases}


@dataclass(frozen=True)
class ItemsFile:
    """A catalog as read: the items, the rows that were skipped, and notes.

    Attributes
    ----------
    items : Mapping[str, ItemMeta]
        By item id, in the order the ids first appear (read-only).
    bad_rows : tuple[BadRow, ...]
        The first :data:`~streams.eventlog.log.MAX_BAD_ROWS` skipped rows, in file order.
    bad_row_count : int
        How many rows were skipped in all.
    notes : tuple[str, ...]
        What the reader chose on its own: ignored columns, duplicate ids.
    source : str
        The file (or dataset name) the catalog came from.
    unit : str
        What :attr:`BadRow.line` counts: ``"line"``, or ``"row"`` for Parquet.
    """

    items: Mapping[str, ItemMeta]
    bad_rows: tuple[BadRow, ...] = ()
    bad_row_count: int = 0
    notes: tuple[str, ...] = ()
    source: str = ""
    unit: str = "line"

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", MappingProxyType(dict(self.items)))
        object.__setattr__(self, "bad_rows", tuple(self.bad_rows))
        object.__setattr__(self, "notes", tuple(self.notes))

    def report(self, shown: int = 10) -> list[str]:
        """Lines for the user: each note, then the skipped rows (the first ``shown``)."""
        lines = [f"note: {self.source}: {note}" for note in self.notes]
        if self.bad_row_count:
            lines.append(
                f"warning: skipped {self.bad_row_count:,} malformed item row(s) in {self.source}"
            )
            lines += [f"  {self.unit} {row.line}: {row.reason}" for row in self.bad_rows[:shown]]
            if self.bad_row_count > shown:
                lines.append(f"  ... and {self.bad_row_count - shown:,} more")
        return lines

    def apply_to(self, log: EventLog) -> EventLog:
        """``log`` with this catalog's metadata: an item in both keeps the catalog's."""
        return dataclasses.replace(log, items={**log.items, **self.items})


def load_items(source: str | Path, *, cache_dir: Path | None = None) -> ItemsFile:
    """Read an item catalog.

    Parameters
    ----------
    source : str or pathlib.Path
        A CSV (``.csv``, ``.csv.gz``), Parquet (``.parquet``, ``.pq``) or JSON-lines
        (``.jsonl``, ``.ndjson``, ``.json``, each also ``.gz``) catalog; a RecBole ``.inter``
        file (its sibling ``.item`` file) or ``.item`` file; or a dataset name such as
        ``ml-100k``.
    cache_dir : pathlib.Path, optional
        Where datasets are kept (see :func:`~streams.eventlog.load_events`).

    Returns
    -------
    ItemsFile
        The items, with the skipped rows and the notes.

    Raises
    ------
    DatasetError
        The source does not exist, cannot be read, has an unknown format, or (CSV) has no
        header with an ``item_id`` column.
    """
    from streams.eventlog.named import dataset_names

    if isinstance(source, str) and source in dataset_names() and not Path(source).exists():
        return _dataset_items(source, cache_dir)
    path = Path(source).expanduser()
    if not path.is_file():
        what = "not a file" if path.exists() else "no such file"
        raise DatasetError(
            f"{path}: {what}. Give a CSV, Parquet or JSON-lines item catalog, a RecBole "
            f".inter or .item file, or one of the dataset names {dataset_names()}."
        )
    name = path.name.lower().removesuffix(".gz")
    suffix = Path(name).suffix
    try:
        if suffix == ".csv":
            return _read_csv(path)
        if suffix in (".parquet", ".pq") and not path.name.lower().endswith(".gz"):
            return _read_parquet(path)
        if suffix in (".jsonl", ".ndjson", ".json"):
            return _read_json_lines(path)
        if suffix in (".inter", ".item"):
            return _recbole_items(path)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    raise DatasetError(
        f"{path}: unknown catalog format. Supported: .csv or .csv.gz, .parquet, .jsonl "
        "(JSON lines, also .ndjson / .json, plain or .gz), and RecBole .inter / .item files."
    )


# ------------------------------------------------------------------------------ collecting
@dataclass
class _Collector:
    """Items in first-seen order, the last row of an id winning; bad rows and notes."""

    source: str
    unit: str = "line"
    items: dict[str, ItemMeta] = field(default_factory=dict)
    bad_rows: list[BadRow] = field(default_factory=list)
    bad_row_count: int = 0
    notes: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)  # id -> first repeating line

    def bad(self, line: int, reason: str) -> None:
        self.bad_row_count += 1
        if len(self.bad_rows) < MAX_BAD_ROWS:
            self.bad_rows.append(BadRow(line, reason))

    def row(self, line: int, values: Mapping[str, object]) -> None:
        try:
            meta = item_meta(values)
        except BadValue as exc:
            self.bad(line, str(exc))
            return
        if meta.item_id in self.items:
            self.duplicates.setdefault(meta.item_id, line)
        self.items[meta.item_id] = meta

    def ignored(self, names: Iterable[str]) -> None:
        unknown = sorted(set(names))
        if unknown:
            shown = ", ".join(unknown[:20]) + (" ..." if len(unknown) > 20 else "")
            self.notes.append(f"ignored column(s) not in the item schema: {shown}")

    def result(self) -> ItemsFile:
        if self.duplicates:
            shown = ", ".join(
                f"{item_id!r} ({self.unit} {line})"
                for item_id, line in list(self.duplicates.items())[:_SHOWN_DUPLICATES]
            )
            more = len(self.duplicates) - _SHOWN_DUPLICATES
            self.notes.append(
                f"{len(self.duplicates):,} item id(s) on more than one {self.unit}, the last "
                f"kept: {shown}" + (f" and {more:,} more" if more > 0 else "")
            )
        return ItemsFile(
            items=self.items,
            bad_rows=tuple(self.bad_rows),
            bad_row_count=self.bad_row_count,
            notes=tuple(self.notes),
            source=self.source,
            unit=self.unit,
        )


def _roles(path: Path, names: list[str], collector: _Collector) -> dict[str, int]:
    """Field -> column position, from a header; unknown columns noted."""
    roles: dict[str, int] = {}
    unknown = []
    for position, raw in enumerate(names):
        name = raw.strip().lower()
        role = _ALIAS.get(name)
        if role is None:
            unknown.append(raw.strip() or f"(column {position + 1} without a name)")
            continue
        if role in roles:
            raise DatasetError(
                f"{path}: columns {names[roles[role]].strip()!r} and {raw.strip()!r} both give "
                f"{role}; keep one"
            )
        roles[role] = position
    if "item_id" not in roles:
        raise DatasetError(
            f"{path}: no item_id column; the header has {[n.strip() for n in names][:20]} "
            f"(known columns: {', '.join(COLUMNS)})"
        )
    collector.ignored(unknown)
    return roles


# ------------------------------------------------------------------------------ CSV
def _opened(path: Path) -> BinaryIO:
    with path.open("rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if compressed else path.open("rb")  # type: ignore[return-value]


def _lines(handle: BinaryIO) -> Iterator[tuple[int, str | None, str]]:
    """``(number, text, problem)`` per physical line: text without its line end, or None
    with the reason it cannot be used (over :data:`MAX_LINE_BYTES`, not UTF-8)."""
    number = 0
    while chunk := handle.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(chunk) > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
            while chunk and not chunk.endswith(b"\n"):  # skip the rest, never hold it
                chunk = handle.readline(MAX_LINE_BYTES)
            yield number, None, f"line over {MAX_LINE_BYTES:,} bytes"
            continue
        raw = chunk.rstrip(b"\r\n")
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte order mark
        try:
            yield number, raw.decode("utf-8"), ""
        except UnicodeDecodeError:
            yield number, None, "not valid UTF-8 text"


def _split(text: str) -> list[str] | None:
    """The fields of one CSV record (which may hold quoted line ends), or None when the text
    is not exactly one well-formed record."""
    try:
        rows = list(csv.reader(io.StringIO(text), strict=True))
    except csv.Error:
        return None
    return rows[0] if len(rows) == 1 else None


def _read_csv(path: Path) -> ItemsFile:
    collector = _Collector(str(path))
    with _opened(path) as handle:
        lines = _lines(handle)
        first = next(lines, None)
        if first is None or first[1] is None:
            reason = "the file is empty" if first is None else first[2]
            raise DatasetError(f"{path}: no usable header on line 1 ({reason})")
        names = _split(first[1])
        if not names:
            raise DatasetError(f"{path}: line 1 is not a CSV header: {first[1][:80]!r}")
        roles = _roles(path, names, collector)
        again: deque[tuple[int, str | None, str]] = deque()

        def take() -> tuple[int, str | None, str] | None:
            return again.popleft() if again else next(lines, None)

        while (line := take()) is not None:
            number, text, problem = line
            if text is None:
                collector.bad(number, problem)
                continue
            if not text.strip():
                continue
            record, fields = text, _split(text)
            joined: list[tuple[int, str | None, str]] = []
            # An odd number of quotes: the record goes on, a quoted value holding a line end.
            while record.count('"') % 2 == 1 and len(joined) < MAX_RECORD_LINES - 1:
                following = take()
                if following is None:
                    break
                joined.append(following)
                if following[1] is None:
                    break
                record += "\n" + following[1]
                fields = _split(record)
            if fields is None or len(fields) != len(names):
                if joined:
                    # A stray quote, most likely: this line is bad, the ones it took are rows.
                    again.extendleft(reversed(joined))
                    collector.bad(number, 'unclosed quote (a stray " or a quoted line end)')
                else:
                    got = "no single CSV record" if fields is None else str(len(fields))
                    collector.bad(number, f"expected {len(names)} fields, got {got}")
                continue
            collector.row(number, {role: fields[i] for role, i in roles.items()})
    return collector.result()


# ------------------------------------------------------------------------------ JSON lines
def _read_json_lines(path: Path) -> ItemsFile:
    collector = _Collector(str(path))
    unknown: set[str] = set()
    with _opened(path) as handle:
        for number, text, problem in _lines(handle):
            if text is None:
                collector.bad(number, problem)
                continue
            stripped = text.strip()
            if not stripped:
                continue
            if number == 1 and stripped.startswith("["):
                raise DatasetError(
                    f"{path}: a JSON array; write one JSON object per line (JSON lines)"
                )
            try:
                obj = orjson.loads(stripped)
            except orjson.JSONDecodeError as exc:
                collector.bad(number, f"not valid JSON ({exc})")
                continue
            if not isinstance(obj, dict):
                collector.bad(number, f"expected a JSON object, got {type(obj).__name__}")
                continue
            values: dict[str, object] = {}
            clash = None
            for key, value in obj.items():
                role = _ALIAS.get(str(key).strip().lower())
                if role is None:
                    unknown.add(str(key))
                elif role in values:
                    clash = f"two keys give {role}"
                else:
                    values[role] = value
            if clash:
                collector.bad(number, clash)
                continue
            collector.row(number, values)
    collector.ignored(unknown)
    return collector.result()


# ------------------------------------------------------------------------------ Parquet
def _read_parquet(path: Path) -> ItemsFile:
    collector = _Collector(str(path), unit="row")
    try:
        schema = pq.read_schema(path)
        # pandas may store its index as extra columns; they are not data.
        names = [n for n in schema.names if not n.startswith("__index_level_")]
        roles = _roles(path, names, collector)
        table = pq.read_table(path, columns=[names[i] for i in roles.values()])
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from exc
    columns = {role: table[names[i]].to_pylist() for role, i in roles.items()}
    for row in range(table.num_rows):
        collector.row(row + 1, {role: values[row] for role, values in columns.items()})
    return collector.result()


# ------------------------------------------------------------------------------ the old sources
def _dataset_items(name: str, cache_dir: Path | None) -> ItemsFile:
    from streams.eventlog.load import load_events

    log = load_events(name, cache_dir=cache_dir, progress=False)
    notes = () if log.items else (f"dataset {name} has no item metadata",)
    return ItemsFile(items=log.items, notes=notes, source=name)


def _recbole_items(path: Path) -> ItemsFile:
    from streams.eventlog.recbole import sibling_items

    base = path.name.removesuffix(".gz").removesuffix(".inter").removesuffix(".item")
    inter = path if ".inter" in path.name else path.with_name(f"{base}.inter")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = sibling_items(inter, progress=False)
    notes = tuple(str(w.message) for w in caught)
    if not items and not notes:
        notes = (f"no {base}.item file beside {inter.name}: no item metadata",)
    return ItemsFile(items=items, notes=notes, source=str(path))
