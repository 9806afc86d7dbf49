"""RecBole atomic files: ``.inter`` event logs and the ``.item`` metadata beside them."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from pydantic import ValidationError

from schemas import ItemMeta
from streams.eventlog.delimited import read_delimited
from streams.eventlog.log import DatasetError
from streams.eventlog.text import SkippedRows, names_shown, read_header, read_table
from streams.eventlog.validate import Parsed, as_text

_YEAR = re.compile(r"^(\d{4})(\.0*)?$")
#: Titles that mean "no title" in the MovieLens item files.
_NO_TITLE = frozenset({"", "unknown", "unkonwn"})
_TITLE_FIELDS = ("movie_title", "title", "name")
_YEAR_FIELDS = ("release_year", "year")
_CATEGORY_FIELDS = ("class", "genre", "genres", "categories", "category")
_MAX_TITLE_CHARS = 512


def read_inter(path: Path, progress: bool) -> Parsed:
    """Parse a RecBole ``.inter`` file (tab-separated, header fields ``name:type``)."""
    return read_delimited(
        path, delimiter="\t", quoted=False, roles_of=inter_roles, progress=progress
    )


def inter_roles(path: Path, names: list[str]) -> dict[str, str]:
    """Map roles to the ``name:type`` header fields of a RecBole ``.inter`` file."""
    by_base = {name.split(":", 1)[0]: name for name in names}
    missing = [role for role in ("user_id", "item_id", "timestamp") if role not in by_base]
    if missing:
        raise DatasetError(
            f"{path}: RecBole header lacks {missing}; expected fields like "
            f"user_id:token item_id:token timestamp:float, got {names_shown(names)}"
        )
    return {role: by_base[role] for role in ("user_id", "item_id", "timestamp")}


def sibling_items(inter: Path, progress: bool) -> dict[str, ItemMeta]:
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
    names = read_header(path, "\t", quoted=False)
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
    skipped = SkippedRows()
    table = read_table(
        path,
        names=names,
        include=list(dict.fromkeys(wanted.values())),
        delimiter="\t",
        quoted=False,
        handler=skipped,
        progress=progress,
    )
    absent = [None] * table.num_rows
    columns = {role: as_text(role, table[name])[0].to_pylist() for role, name in wanted.items()}
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
