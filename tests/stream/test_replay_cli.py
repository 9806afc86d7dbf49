"""`trail replay` and `trail evaluate` end to end on small files, no broker."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from schemas import ScoreUpdate, decode
from streams.cli import main as trail
from streams.registry import BASELINE_NAMES, SCORER_NAMES

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


def write_specialist_log(path: Path) -> None:
    """14 items over 40 days: item k has k events a day until day 20, then 15 - k a day.

    Each item has its own two users (``u{k}-0``, ``u{k}-1``), so a user's next-window items
    are exactly one item, and HR@5 / HR@10 tell rankings apart (every item is in a top 20).
    """
    lines = ["user_id,item_id,timestamp"]
    for day in range(40):
        for item in range(1, 15):
            for repeat in range(item if day <= 20 else 15 - item):
                lines.append(f"u{item}-{repeat % 2},{item},{day * DAY + 600 * repeat}")
    path.write_text("\n".join(lines) + "\n")


def brute_force_metrics(
    path: Path, predictions: list[dict[str, Any]], window: int
) -> dict[str, float]:
    """HR@k and NDCG@k of a predictions file, from the protocol's words, read off the raw log."""
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    events = [(user, item, int(ts)) for user, item, ts in rows]
    values: dict[str, list[float]] = {f"{m}@{k}": [] for m in ("HR", "NDCG") for k in (5, 10, 20)}
    for line in predictions:
        end, ranking = line["window_end"], line["ranking"]
        earlier = {user for user, _, ts in events if ts < end}
        touched: dict[str, set[str]] = {}
        for user, item, ts in events:
            if end <= ts < end + window and user in earlier:
                touched.setdefault(user, set()).add(item)
        for items in touched.values():
            for k in (5, 10, 20):
                gains = [1 / math.log2(p + 2) for p, i in enumerate(ranking[:k]) if i in items]
                ideal = sum(1 / math.log2(p + 2) for p in range(min(k, len(items))))
                values[f"HR@{k}"].append(float(bool(gains)))
                values[f"NDCG@{k}"].append(sum(gains) / ideal)
    return {name: sum(v) / len(v) for name, v in values.items()}


def test_evaluate_writes_json_markdown_and_plot(tmp_path, capsys) -> None:
    """``trail evaluate`` with no ``--scorer`` evaluates every baseline of the registry; each
    one's HR@k / NDCG@k are the protocol's, recomputed from its predictions file and the raw
    log; the rankings of two baselines are the ones their definitions give by hand; the
    Markdown table and the plot hold every scorer.

    Catches: a default scorer list that drifts from ``streams.registry`` (a new baseline left
    out), metrics off the protocol (an NDCG ideal over k items instead of min(k, relevant), a
    top-k cut off by one), or rankings that are not the baselines' (it used to check only
    that each number lay in [0, 1]).
    """
    path = tmp_path / "events.csv"
    write_specialist_log(path)
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
                "--predictions-dir",
                str(out / "predictions"),
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads((out / "r.json").read_text())
    results = report["results"]
    baselines = [name for name in SCORER_NAMES if name in BASELINE_NAMES]
    assert list(results) == baselines
    assert set(BASELINE_NAMES) <= set(SCORER_NAMES)

    week = 7 * DAY
    # Days 35..39 are a partial window: the rankings at the ends of windows 2 and 3 are judged.
    ends = [3 * week, 4 * week]
    predictions = {
        name: [json.loads(line) for line in (out / "predictions" / f"{name}.jsonl").open()]
        for name in baselines
    }
    for name in baselines:
        assert [line["window_end"] for line in predictions[name]] == ends, name
        expected = brute_force_metrics(path, predictions[name], week)
        for metric, value in expected.items():
            assert results[name][metric] == pytest.approx(value, abs=1e-12), (name, metric)
    items = [str(k) for k in range(1, 15)]
    # Last window: days 14..20 (k a day), then days 21..27 (15 - k a day).
    assert [line["ranking"] for line in predictions["last-window"]] == [items[::-1], items]
    # All events so far: 21k + 7(15 - k) = 14k + 105 at the end of window 3.
    assert predictions["mostpop"][1]["ranking"] == items[::-1]
    # By hand, last-window's HR@5. Window 3 judges its top 5 (items 14..10) on 26 users:
    # u{k}-0 for every k, u{k}-1 for k = 2..13 (u1-1 is new, item 14 has one event a day);
    # 9 of them are users of items 10..14. Window 4 judges items 1..5 on 27 users (u1-1 is
    # known by then), 10 of them users of items 1..5.
    assert results["last-window"]["HR@5"] == pytest.approx((9 + 10) / (26 + 27), abs=1e-12)
    assert any(results[n]["HR@5"] < results[n]["HR@10"] < 1.0 for n in baselines)

    markdown = (out / "r.md").read_text()
    assert all(f"| {name} |" in markdown for name in baselines)
    assert (out / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert "| scorer | HR@5 | HR@10 |" in capsys.readouterr().out


def test_unknown_scorer_and_missing_file_give_clear_errors(tmp_path, capsys) -> None:
    path = tmp_path / "events.csv"
    write_log(path, bad_rows=False)
    assert trail(["replay", str(path), "--scorer", "magic", "--no-progress"]) == 2
    assert "unknown scorer 'magic'" in capsys.readouterr().err
    assert trail(["replay", str(tmp_path / "nope.csv"), "--no-progress"]) == 2
    assert "error:" in capsys.readouterr().err
