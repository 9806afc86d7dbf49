"""`trail replay` and `trail evaluate` end to end on small files, no broker."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from schemas import ScoreUpdate, decode
from streams.cli import main as trail

DAY = 86_400


def write_log(path: Path, *, bad_rows: bool) -> None:
    lines = ["user_id,item_id,timestamp"]
    for day in range(40):
        for item in range(1, 6):
            for repeat in range(item if day > 20 else 6 - item):
                lines.append(f"u{(day + item + repeat) % 7},{item},{day * DAY + repeat * 60}")
    if bad_rows:
        lines.insert(3, "u1,2,yesterday")  # line 4
        lines.insert(10, "u1,3")  # line 11
        lines.insert(20, "u1,,5")  # line 21
        lines.insert(30, "u1,4,5,extra")  # line 31
    path.write_text("\n".join(lines) + "\n")


def test_malformed_rows_are_reported_with_line_numbers_and_skipped(tmp_path, capsys) -> None:
    path = tmp_path / "events.csv"
    write_log(path, bad_rows=True)
    assert (
        trail(
            [
                "replay",
                str(path),
                "--window",
                "7d",
                "--scorer",
                "last-window",
                "--print-top",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "skipped 4 malformed rows" in err
    for line in (4, 11, 21, 31):
        assert f"line {line}:" in err
    assert "(4 malformed rows skipped" in err


def test_replay_writes_scores_and_snapshots_with_next_counts(tmp_path, capsys) -> None:
    path = tmp_path / "events.csv"
    write_log(path, bad_rows=False)
    scores = tmp_path / "scores.jsonl"
    snapshots = tmp_path / "snapshots"
    assert (
        trail(
            [
                "replay",
                str(path),
                "--window",
                "7d",
                "--scorer",
                "ewma-1",
                "--scores-out",
                str(scores),
                "--snapshots-out",
                str(snapshots),
                "--print-top",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("== window") == 5  # days 0..34 make five complete windows
    updates = [decode(ScoreUpdate, line) for line in scores.read_bytes().splitlines()]
    assert {u.model_version for u in updates} == {"ewma-1@1"}
    assert len({u.idempotency_key for u in updates}) == len(updates)

    partitions = sorted((p.name for p in snapshots.iterdir()), key=lambda n: int(n.split("=")[1]))
    assert partitions == [f"window_end={(w + 1) * 7 * DAY}" for w in range(4)]
    table = pq.read_table(snapshots / partitions[-1] / "part-0.parquet").to_pylist()
    # In window 4 (days 28..34) item k had k events per day: 7k events next window.
    assert {row["item_id"]: row["next_count"] for row in table} == {
        str(k): 7.0 * k for k in range(1, 6)
    }


def test_evaluate_writes_json_markdown_and_plot(tmp_path, capsys) -> None:
    path = tmp_path / "events.csv"
    write_log(path, bad_rows=False)
    out = tmp_path / "out"
    assert (
        trail(
            [
                "evaluate",
                str(path),
                "--window",
                "7d",
                "--test-windows",
                "2",
                "--json",
                str(out / "r.json"),
                "--markdown",
                str(out / "r.md"),
                "--plot",
                str(out / "r.png"),
                "--no-progress",
            ]
        )
        == 0
    )
    results = json.loads((out / "r.json").read_text())["results"]
    assert set(results) == {
        "mostpop",
        "last-window",
        "ewma-1",
        "ewma-2",
        "ewma-4",
        "linear-trend",
        "river",
    }
    for metrics in results.values():
        assert 0.0 <= metrics["HR@10"] <= 1.0
        assert metrics["HR@5"] <= metrics["HR@10"] <= metrics["HR@20"]
    assert "| linear-trend |" in (out / "r.md").read_text()
    assert (out / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert "HR@10" in capsys.readouterr().out


def test_unknown_scorer_and_missing_file_give_clear_errors(tmp_path, capsys) -> None:
    path = tmp_path / "events.csv"
    write_log(path, bad_rows=False)
    assert trail(["replay", str(path), "--scorer", "magic", "--no-progress"]) == 2
    assert "unknown scorer 'magic'" in capsys.readouterr().err
    assert trail(["replay", str(tmp_path / "nope.csv"), "--no-progress"]) == 2
    assert "error:" in capsys.readouterr().err
