"""Hard event-log inputs (issue 11): far-future times, time units, rows that broke loads.

Each test names the defect it catches; "old" is the loader before these fixes, which read
every plain number as seconds, had no horizon, and let one bad row abort or swallow a load.
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streams.eventlog.cache as parsed_cache
import streams.eventlog.careful as careful_reader
import streams.eventlog.text as text_files
from streams.cli import main as trail
from streams.eventlog import DatasetError, EventLog, load_events

BASE = 1_600_000_000  # 2020-09-13, in seconds
HEADER = b"user_id,item_id,timestamp\n"


def _load(path: Path, cache: Path, **options: object) -> EventLog:
    return load_events(path, cache_dir=cache, progress=False, **options)  # type: ignore[arg-type]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _rows(count: int, scale: int = 1, start: int = 0) -> list[bytes]:
    """``count`` good rows, ten minutes apart from BASE, with times multiplied by ``scale``."""
    return [
        f"u{i},i{i % 30},{(BASE + i * 600) * scale}".encode() for i in range(start, start + count)
    ]


def _write(path: Path, lines: list[bytes], header: bytes = HEADER) -> Path:
    path.write_bytes(header + b"\n".join(lines) + b"\n")
    return path


def _replay(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    """Run ``trail replay PATH --window 1d --scorer ewma-1`` as a user would; (rc, stderr)."""
    code = trail(
        ["replay", str(path), "--window", "1d", "--scorer", "ewma-1", "--print-top", "0"]
        + ["--no-progress", *extra]
    )
    return code, capsys.readouterr().err


# --- Defect 1: implausible timestamps --------------------------------------------------------


def test_far_future_times_are_refused_with_their_lines(tmp_path: Path, cache: Path) -> None:
    """Defect 1: old accepted 1e20 and a millisecond epoch (year ~131,970) as seconds."""
    rows = _rows(300)
    rows.insert(100, b"u-far,i1,1e20")  # line 102
    rows.insert(200, b"u-ms,i1,4102444800000")  # line 202
    log = _load(_write(tmp_path / "events.csv", rows), cache)

    assert len(log) == 300 and "u-far" not in set(log.user_ids)
    assert log.bad_row_count == 2
    assert [(row.line, row.reason) for row in log.bad_rows] == [
        (102, "timestamp 1e+20 (read as seconds) is after the year 9999"),
        (202, "timestamp 4102444800000 (read as seconds) is after the year 9999"),
    ]
    assert log.timestamps.max() == BASE + 299 * 600


def test_a_time_after_2100_beyond_the_log_is_refused_even_as_iso(
    tmp_path: Path, cache: Path
) -> None:
    """Defect 1: old accepted a year-2150 row in a 2020 log (50,000 empty daily windows)."""
    rows = _rows(300)
    rows.insert(10, b"u-late,i1,2150-01-01T00:00:00Z")  # line 12
    rows.insert(20, b"u-zero,i1,0")  # line 22: a "no time" sentinel, 50 years early
    log = _load(_write(tmp_path / "events.csv", rows), cache)

    assert len(log) == 300
    assert [(row.line, row.reason) for row in log.bad_rows] == [
        (
            12,
            "timestamp 2150-01-01T00:00:00Z is after the horizon 2100-01-01T00:00:00Z "
            "(see --time-horizon)",
        ),
        (
            22,
            "timestamp 0 (read as seconds) is before the horizon 1973-03-03T09:46:40Z "
            "(see --time-horizon)",
        ),
    ]


def test_the_automatic_horizon_keeps_real_logs_whole(tmp_path: Path, cache: Path) -> None:
    """Guard: a legit log never trips the automatic horizon.

    A log with a long thin tail (ML-1M: most ratings in 2000, the last in 2003), one of a few
    events spanning decades, and one of relative times (seconds from 0) keep every row.
    """
    dense = [f"u{i},i{i % 9},{BASE + i}".encode() for i in range(2000)]
    tail = [f"t{k},i1,{BASE + k * 365 * 86_400}".encode() for k in range(1, 6)]  # +1..5 years
    assert len(_load(_write(tmp_path / "tail.csv", dense + tail), cache)) == 2005

    decades = [b"a,1,100000000", b"b,1,946684800", b"c,1,4000000000"]  # 1973, 2000, 2096
    log = _load(_write(tmp_path / "decades.csv", decades), cache)
    assert len(log) == 3 and log.bad_row_count == 0

    relative = [f"u{i},i1,{i * 86_400}".encode() for i in range(40)] + [b"x,i1,315360000"]
    assert len(_load(_write(tmp_path / "relative.csv", relative), cache)) == 41


def test_a_duration_horizon_and_off(tmp_path: Path, cache: Path) -> None:
    """Defect 1: the horizon is a setting: a duration past the log's ends, or off."""
    rows = _rows(300)  # BASE .. BASE + 299 * 600
    rows.insert(50, f"u-40d,i1,{BASE + 299 * 600 + 40 * 86_400}".encode())  # line 52
    rows.insert(60, b"u-far,i1,1e20")  # line 62
    path = _write(tmp_path / "events.csv", rows)

    strict = _load(path, cache, time_horizon="30d")
    assert [row.line for row in strict.bad_rows] == [52, 62]
    assert "is after the horizon" in strict.bad_rows[0].reason
    assert len(_load(path, cache, time_horizon="60d")) == 301
    lenient = _load(path, cache, time_horizon="off")
    assert len(lenient) == 301  # only the year-9999 limit stays
    assert [row.line for row in lenient.bad_rows] == [62]
    with pytest.raises(ValueError, match="not auto, off or a duration"):
        _load(path, cache, time_horizon="soon")


# --- Defect 2: time units --------------------------------------------------------------------


@pytest.mark.parametrize(("scale", "unit"), [(1000, "ms"), (10**6, "us"), (10**9, "ns")])
def test_epoch_units_are_detected_and_noted(
    tmp_path: Path, cache: Path, scale: int, unit: str
) -> None:
    """Defect 2: old read millisecond (and smaller) epochs as seconds without a word."""
    log = _load(_write(tmp_path / "events.csv", _rows(500, scale)), cache)

    assert log.time_unit == unit and log.bad_row_count == 0
    assert np.allclose(log.timestamps, BASE + 600 * np.arange(500), rtol=0, atol=1e-3)
    assert len(log.notes) == 1 and "--time-unit" in log.notes[0]
    assert {"ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}[unit] in log.notes[0]


def test_seconds_need_no_note_and_an_explicit_unit_wins(tmp_path: Path, cache: Path) -> None:
    """Defect 2: ``time_unit`` overrides detection; rows it makes implausible are reported."""
    seconds = _load(_write(tmp_path / "s.csv", _rows(50)), cache)
    assert seconds.time_unit == "s" and seconds.notes == ()
    assert seconds.timestamps[0] == BASE

    path = _write(tmp_path / "ms.csv", _rows(50, 1000))
    as_seconds = _load(path, cache, time_unit="s")
    assert len(as_seconds) == 0 and as_seconds.bad_row_count == 50
    assert as_seconds.bad_rows[0].reason.endswith("(read as seconds) is after the year 9999")
    assert _load(path, cache, time_unit="ms").timestamps[0] == BASE


def test_mixed_units_report_the_rows_of_the_other_unit(tmp_path: Path, cache: Path) -> None:
    """Defect 2: in a mixed log the rows of the minority unit are implausible and reported."""
    rows = _rows(400)
    rows[7] = f"u-ms,i1,{BASE * 1000}".encode()  # line 9
    log = _load(_write(tmp_path / "seconds.csv", rows), cache)
    assert log.time_unit == "s" and [row.line for row in log.bad_rows] == [9]

    rows = _rows(400, 1000)
    rows[7] = f"u-s,i1,{BASE}".encode()  # line 9: a second among milliseconds (1970-01-19)
    log = _load(_write(tmp_path / "ms.csv", rows), cache)
    assert log.time_unit == "ms"
    assert [(row.line, row.reason) for row in log.bad_rows] == [
        (
            9,
            f"timestamp {BASE} (read as milliseconds) is before the horizon "
            "1973-03-03T09:46:40Z (see --time-horizon)",
        )
    ]


def test_a_log_of_no_known_unit_is_a_clear_error(tmp_path: Path, cache: Path) -> None:
    """Defect 2: times too large even for nanoseconds say what to pass."""
    path = _write(tmp_path / "events.csv", [b"u,i,1e20", b"v,i,2e20"])
    with pytest.raises(DatasetError, match="cannot tell the unit.*--time-unit"):
        _load(path, cache)
    as_ns = _load(path, cache, time_unit="ns")  # years 5138 and 8307
    assert as_ns.timestamps.tolist() == [1e11, 2e11]


def test_parquet_integer_milliseconds_and_arrow_timestamps(tmp_path: Path, cache: Path) -> None:
    """Defect 2: plain-number Parquet times get a unit; Arrow timestamps keep their own."""
    numbers = tmp_path / "numbers.parquet"
    millis = [(BASE + i) * 1000 for i in range(10)]
    pq.write_table(pa.table({"user_id": ["u"] * 10, "item_id": ["i"] * 10, "ts": millis}), numbers)
    log = _load(numbers, cache)
    assert log.time_unit == "ms" and log.timestamps[0] == BASE

    stamps = tmp_path / "stamps.parquet"
    instants = pa.array(millis, type=pa.timestamp("ms", tz="UTC"))
    pq.write_table(pa.table({"user_id": ["u"] * 10, "item_id": ["i"] * 10, "ts": instants}), stamps)
    log = _load(stamps, cache)
    assert log.time_unit == "s" and log.notes == () and log.timestamps[0] == BASE


def test_the_parsed_cache_does_not_fix_the_unit_or_lose_line_numbers(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defects 1, 2: a cached parse still honours another ``time_unit`` and reports rows the
    horizon refuses at their true lines (blank lines and a quoted line break shift them)."""
    monkeypatch.setattr(parsed_cache, "_CACHE_MIN_BYTES", 0)
    rows = _rows(100, 1000)
    rows[3] = b""  # line 5: blank
    rows[4] = f'u4,"i\nx",{(BASE + 4 * 600) * 1000}'.encode()  # lines 6-7
    rows[60] = b"u-s,i1,1600000000"  # line 63
    path = _write(tmp_path / "events.csv", rows)

    first = _load(path, cache)
    second = _load(path, cache)
    assert len(list((cache / "parsed").glob("*.parquet"))) == 1
    for log in (first, second):
        assert log.time_unit == "ms" and len(log) == 98
        assert [row.line for row in log.bad_rows] == [63]
    as_seconds = _load(path, cache, time_unit="s")  # every other row is after year 9999
    assert list(as_seconds.user_ids) == ["u-s"] and as_seconds.bad_rows[0].line == 2


# --- Defect 4 (issue item 4): rows that aborted or swallowed loads ---------------------------


def test_a_first_line_over_128_kib_is_a_clear_error(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 4: old crashed in the csv module ("field larger than field limit")."""
    path = _write(tmp_path / "events.csv", _rows(10), header=b"user_id" + b"x" * 200_000 + b"\n")
    with pytest.raises(DatasetError, match="line 1 is longer than 64 KiB"):
        _load(path, cache)

    code, err = _replay(path, capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"error: {path}: line 1 is longer than 64 KiB; the first line must be a header, "
        "e.g. user_id,item_id,timestamp"
    ]


def test_a_garbage_header_gives_a_short_message(tmp_path: Path, cache: Path) -> None:
    """Defect 4: old printed a 60 KiB header back in full in the error."""
    path = _write(tmp_path / "events.csv", _rows(3), header=b"x" * 60_000 + b",y\n")
    with pytest.raises(DatasetError, match="unknown column") as caught:
        _load(path, cache)
    assert len(str(caught.value)) < 500


def test_a_non_utf8_row_of_the_wrong_width_loses_no_good_row(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 4: old aborted ("cannot parse (CSV parse error: Row #3002 ...)"), losing every
    row; pyarrow also printed an "Exception ignored" traceback on stderr."""
    rows = _rows(5000)
    rows.insert(3000, b"u-bad,\xff\xfe,5,extra")  # line 3002
    rows.insert(4000, b"u-bad2,\xff,7")  # line 4002: right width, not UTF-8
    path = _write(tmp_path / "events.csv", rows)

    log = _load(path, cache)
    assert len(log) == 5000 and log.bad_row_count == 2
    assert [(row.line, row.reason) for row in log.bad_rows] == [
        (3002, "expected 3 fields, got 4"),
        (4002, "item_id is not valid UTF-8 text"),
    ]
    assert list(log.user_ids) == [f"u{i}" for i in range(5000)]

    code, err = _replay(path, capsys)
    assert code == 0
    assert "Traceback" not in err and "Exception ignored" not in err
    assert "skipped 2 malformed rows" in err and "line 3002: expected 3 fields, got 4" in err


def test_gzip_and_recbole_files_with_such_rows_load_too(tmp_path: Path, cache: Path) -> None:
    """Defect 4: the careful reader also reads gzip CSVs and tab-separated .inter files."""
    zipped = tmp_path / "events.csv.gz"
    rows = _rows(50)
    rows.insert(20, b"u,\xff,1,2")  # line 22
    zipped.write_bytes(gzip.compress(HEADER + b"\r\n".join(rows) + b"\r\n"))
    log = _load(zipped, cache)
    assert len(log) == 50 and [row.line for row in log.bad_rows] == [22]

    inter = tmp_path / "tiny.inter"
    inter.write_bytes(
        b"user_id:token\titem_id:token\ttimestamp:float\n1\t10\t100\n2\t\xff\t200\t9\n3\t30\t300\n"
    )
    log = _load(inter, cache)
    assert list(log.user_ids) == ["1", "3"]
    assert [(row.line, row.reason) for row in log.bad_rows] == [(3, "expected 3 fields, got 4")]


def test_an_unclosed_quote_costs_one_row_not_the_rest_of_the_file(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 5 (load part): old took the quote's 5,901 lines for one bad row: 5,900 good
    rows vanished, counted as one. Now that line is reported and every other row loads."""
    rows = _rows(9900)
    rows.insert(4000, b'u-open,"i1,5')  # line 4002: its quote never closes
    path = _write(tmp_path / "events.csv", rows)

    log = _load(path, cache)
    assert log.bad_row_count == 1
    assert log.bad_rows[0].line == 4002 and "unclosed quote" in log.bad_rows[0].reason
    assert list(log.user_ids) == [f"u{i}" for i in range(9900)]
    lines = path.read_bytes().count(b"\n")
    assert len(log) + log.bad_row_count == lines - 1  # every line after the header counted

    code, err = _replay(path, capsys)
    assert code == 0 and "Traceback" not in err
    assert "skipped 1 malformed rows" in err and "line 4002: unclosed quote" in err


def test_stray_quotes_are_read_line_by_line_but_real_quoted_values_stay(
    tmp_path: Path, cache: Path
) -> None:
    """Defect 5 (load part): a quote that closes lines later into no valid row is stray;
    the lines between are rows of their own. A valid multi-line value still loads whole, at
    the right lines, also when the careful reader is needed."""
    lines = [
        b'u1,"i1,1',  # 2: stray: joined with 3-5 it has 4 fields
        b"u2,i2,2",  # 3
        b"u3,i3,3",  # 4
        b'u4",i4,4',  # 5: the quote that closed it; alone a valid row (user u4")
        b'u5,"i5,5',  # 6: stray: joined with 7-8 it has 3 fields but time "x"
        b"u6,i6,6",  # 7
        b'u7",x',  # 8: 2 fields
        b'u9,"multi',  # 9-10: a real quoted value over two lines
        b'line",9',  # 10
        b"u11,\xff,11,extra",  # 11: forces the careful reader
        b"u12,i12,12",  # 12
    ]
    log = _load(_write(tmp_path / "events.csv", lines), cache)

    assert list(log.user_ids) == ["u2", "u3", 'u4"', "u6", "u9", "u12"]
    assert log.item_ids[4] == "multi\nline"
    assert [row.line for row in log.bad_rows] == [2, 6, 8, 11]
    assert "stray quote (joining lines 2-5 gives no valid row)" in log.bad_rows[0].reason
    assert log.bad_rows[2].reason == "expected 3 fields, got 2"


def test_a_line_over_a_block_is_one_bad_row(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 4: old aborted ("straddling object straddles two block boundaries") on a line
    larger than pyarrow's block (4 MiB; 64 KiB here, to keep the file small)."""
    monkeypatch.setattr(text_files, "READ_BLOCK_BYTES", 1 << 16)
    monkeypatch.setattr(careful_reader, "_MAX_LINE_BYTES", 1 << 16)
    rows = _rows(6000)  # about 150 KiB: the long line is not in the first block
    rows.insert(5000, b"u-huge,i1," + b"9" * (100 << 10))  # line 5002
    log = _load(_write(tmp_path / "events.csv", rows), cache)
    assert len(log) == 6000
    assert [(row.line, row.reason) for row in log.bad_rows] == [
        (5002, "line is longer than 64 KiB")
    ]


def test_every_good_row_survives_garbage_mixed_in(tmp_path: Path, cache: Path) -> None:
    """Defects 4, 5: garbage rows of every kind, mixed into a log, are each reported at their
    line and no good row is lost (old aborted on the first non-UTF-8 wrong-width row)."""
    chooser = random.Random(11)
    garbage = [
        lambda: bytes(
            chooser.choice(b"\xff\xfe\x00abc,;\t") for _ in range(chooser.randint(1, 30))
        ),
        lambda: b"u,i,1," + b",".join(b"x" for _ in range(chooser.randint(1, 5))),
        lambda: b"only-one-field",
        lambda: b",i,1",
        lambda: b"u,i,not-a-time",
        lambda: b"u,\xc3\x28,1",
        lambda: b"u,i,-5",
        lambda: b"u,i,nan",
    ]
    good = _rows(3000)
    lines: list[bytes] = []
    expected_bad: list[int] = []
    for row in good:
        if chooser.random() < 0.05:
            junk = chooser.choice(garbage)()
            junk = junk.replace(b"\n", b"").replace(b"\r", b"")
            if junk.count(b",") == 2 and junk.strip(b", \t") == b"":
                junk = b"x"  # ",," is a blank row, skipped without a report
            lines.append(junk)
            expected_bad.append(len(lines) + 1)
        lines.append(row)
    path = _write(tmp_path / "events.csv", lines)

    log = _load(path, cache)
    assert list(log.user_ids) == [f"u{i}" for i in range(3000)]
    assert [row.line for row in log.bad_rows] == expected_bad
    assert log.bad_row_count == len(expected_bad) > 100


def test_replay_notes_the_detected_unit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Defect 2, as a user sees it: old replayed a millisecond log as year ~52,700, one event
    per window; now a note names the unit and the flag, and --time-unit s refuses the rows."""
    path = _write(tmp_path / "events.csv", _rows(300, 1000))
    code, err = _replay(path, capsys)
    assert code == 0
    assert "note: events.csv: timestamps read as milliseconds since 1970" in err
    assert "--time-unit" in err and "0 malformed rows" in err

    code, err = _replay(path, capsys, "--time-unit", "s", "--time-horizon", "off")
    assert code == 2 and "Traceback" not in err
    assert "skipped 300 malformed rows" in err and "no valid events" in err
    assert "line 2: timestamp 1600000000000 (read as seconds) is after the year 9999" in err
