"""The evaluation protocol, recomputed by brute force from the raw log.

Everything here is written from the protocol's words (docs/architecture.md, "Evaluation
protocol"), independently of the engine: the window grid, the baselines' scores, the
eligible users and their next-window items, HR@10 and NDCG@10. The predictions files that
``trail replay`` writes and the numbers that ``trail evaluate`` prints must agree with it.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

from streams.cli import main as trail

DAY = 86_400
WINDOW = 30 * DAY
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
BEAUTY = SHARED / "amazon-beauty-5core" / "interactions.csv.gz"
BASELINES = ["mostpop", "last-window", "ewma-1", "ewma-2", "ewma-4", "linear-trend"]


@pytest.fixture(scope="module")
def beauty_slice(
    tmp_path_factory: pytest.TempPathFactory, skip_or_fail: Callable[[str], NoReturn]
) -> tuple[Path, list[tuple]]:
    """The last 14 months of amazon-beauty: a small real log (under CI it must be there)."""
    if not BEAUTY.exists():
        skip_or_fail(f"{BEAUTY} is not there")
    with gzip.open(BEAUTY, "rt") as source:
        rows = [(r["user_id"], r["item_id"], int(r["timestamp"])) for r in csv.DictReader(source)]
    start = max(ts for _, _, ts in rows) - 420 * DAY
    rows = [r for r in rows if r[2] >= start]
    path = tmp_path_factory.mktemp("beauty") / "slice.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["user_id", "item_id", "timestamp"])
        writer.writerows(rows)
    return path, rows


def brute_force_scores(rows: list[tuple], name: str, end: int) -> dict[str, float]:
    """Each baseline's score of every item seen before ``end``, from its definition."""
    t = end // WINDOW - 1
    counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for _, item, ts in rows:
        if ts < end:
            counts[item][ts // WINDOW] += 1
    scores = {}
    for item, per_window in counts.items():
        if name == "mostpop":
            scores[item] = sum(per_window.values())
        elif name == "last-window":
            scores[item] = per_window.get(t, 0)
        elif name.startswith("ewma-"):
            h = float(name.split("-")[1])
            scores[item] = sum(2 ** (-(t - w) / h) * c for w, c in per_window.items())
        elif name == "linear-trend":
            ys = [per_window.get(w, 0) for w in range(t - 3, t + 1)]
            xs = [0, 1, 2, 3]
            mean_x, mean_y = sum(xs) / 4, sum(ys) / 4
            slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
                (x - mean_x) ** 2 for x in xs
            )
            scores[item] = max(0.0, ys[-1] + slope)
    return scores


def brute_force_metrics(rows: list[tuple], predictions: list[dict]) -> tuple[float, float]:
    hits, gains, pairs = 0.0, 0.0, 0
    for line in predictions:
        end = line["window_end"]
        top = line["ranking"][:10]
        earlier_users = {u for u, _, ts in rows if ts < end}
        touched: dict[str, set[str]] = defaultdict(set)
        for user, item, ts in rows:
            if end <= ts < end + WINDOW and user in earlier_users:
                touched[user].add(item)
        for items in touched.values():
            pairs += 1
            hits += any(i in items for i in top)
            dcg = sum(1 / math.log2(p + 2) for p, i in enumerate(top) if i in items)
            idcg = sum(1 / math.log2(p + 2) for p in range(min(10, len(items))))
            gains += dcg / idcg
    return hits / pairs, gains / pairs


def test_replay_predictions_and_evaluate_agree_with_brute_force(beauty_slice, tmp_path) -> None:
    path, rows = beauty_slice
    report_path = tmp_path / "report.json"
    assert (
        trail(
            [
                "evaluate",
                str(path),
                "--window",
                "30d",
                "--test-windows",
                "4",
                "--json",
                str(report_path),
                "--no-progress",
                *[arg for name in BASELINES for arg in ("--scorer", name)],
            ]
        )
        == 0
    )
    report = json.loads(report_path.read_text())["results"]
    last_complete = max(ts for _, _, ts in rows) // WINDOW - 1
    expected_ends = [(w + 1) * WINDOW for w in range(last_complete - 4, last_complete)]

    for name in BASELINES:
        predictions_path = tmp_path / f"{name}.jsonl"
        assert (
            trail(
                [
                    "replay",
                    str(path),
                    "--window",
                    "30d",
                    "--scorer",
                    name,
                    "--test-windows",
                    "4",
                    "--predictions-out",
                    str(predictions_path),
                    "--print-top",
                    "0",
                    "--no-progress",
                ]
            )
            == 0
        )
        predictions = [json.loads(line) for line in predictions_path.read_text().splitlines()]
        assert [p["window_end"] for p in predictions] == expected_ends

        for line in predictions:
            scores = brute_force_scores(rows, name, line["window_end"])
            # Ties by id ascending, numerically: every amazon-beauty id is an integer.
            want = sorted(scores, key=lambda i: (-round(scores[i], 9), int(i)))
            assert line["ranking"] == want[: len(line["ranking"])], name

        hr, ndcg = brute_force_metrics(rows, predictions)
        assert round(report[name]["HR@10"], 4) == round(hr, 4), name
        assert round(report[name]["NDCG@10"], 4) == round(ndcg, 4), name
        lo, hi = report[name]["HR@10_ci"]
        assert lo <= report[name]["HR@10"] <= hi


#: Titles as ids, as ML-1M's are: mixed case, digits inside, commas (quoted in the CSV),
#: accents, and ids that look like integers among them.
TITLES = [
    "Amélie (2001)",
    "American Beauty (1999)",
    "Matrix, The (1999)",
    "Se7en (1995)",
    "Shawshank Redemption, The (1994)",
    "Toy Story (1995)",
    "Toy Story 2 (1999)",
    "toy story (1995)",
    "Zoë",
    "item10",
    "item9",
    "Émile",
    "Ünder",
    "12 Angry Men (1957)",
    "2001: A Space Odyssey (1968)",
    "10",
    "9",
]


def _title_log(path: Path) -> list[tuple]:
    """Nine 30-day windows of small, often tied counts of every title by 40 users."""
    import numpy as np

    rng = np.random.default_rng(11)
    rows = []
    for window in range(9):
        for title in TITLES:
            for _ in range(int(rng.poisson(2.0))):
                user = f"user {int(rng.integers(40))}"
                rows.append((user, title, window * WINDOW + int(rng.integers(WINDOW))))
    rows.sort(key=lambda r: r[2])
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["user_id", "item_id", "timestamp"])
        writer.writerows(rows)
    return rows


def test_title_ids_rank_and_score_as_the_protocol_says(tmp_path: Path) -> None:
    """String ids through the whole protocol: the predictions file ranks every baseline's
    brute-force scores with ties broken by the ids as strings (code point order), and ``trail
    evaluate``'s HR@10 / NDCG@10 are the brute-force metrics of those rankings. Unlike the
    amazon-beauty check it needs no shared data, and its ties are by strings, not numbers.

    Catches: a reversed tie order for non-integer ids (``ItemCatalog.tie_order``), ids that
    are changed on the way (a title cut at its comma, case folded), or metrics that match
    items by anything but the exact id (``model.metrics``).
    """
    path = tmp_path / "titles.csv"
    rows = _title_log(path)
    report_path = tmp_path / "report.json"
    common = ["--window", "30d", "--test-windows", "4", "--no-progress"]
    scorers = [arg for name in BASELINES for arg in ("--scorer", name)]
    assert trail(["evaluate", str(path), *common, "--json", str(report_path), *scorers]) == 0
    report = json.loads(report_path.read_text())["results"]
    ties = 0
    for name in BASELINES:
        predictions_path = tmp_path / f"{name}.jsonl"
        replay = ["replay", str(path), *common, "--scorer", name, "--print-top", "0"]
        assert trail([*replay, "--predictions-out", str(predictions_path)]) == 0
        predictions = [json.loads(line) for line in predictions_path.read_text().splitlines()]
        # The log's last window is partial (it ends at the last event): the four before it.
        assert [p["window_end"] for p in predictions] == [w * WINDOW for w in range(4, 8)]
        for line in predictions:
            scores = brute_force_scores(rows, name, line["window_end"])
            want = sorted(scores, key=lambda i: (-round(scores[i], 9), i))
            assert line["ranking"] == want, name
            rounded = [round(scores[i], 9) for i in want]
            ties += len(rounded) - len(set(rounded))
        hr, ndcg = brute_force_metrics(rows, predictions)
        assert report[name]["HR@10"] == pytest.approx(hr, abs=1e-12), name
        assert report[name]["NDCG@10"] == pytest.approx(ndcg, abs=1e-12), name
        assert 0 < hr < 1, f"{name}: HR@10 {hr} would not tell rankings apart"
    assert ties > 20, "too few tied scores: the tie order was hardly tested"
