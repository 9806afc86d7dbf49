"""The evaluation protocol's brute-force check of the baselines, on real and on string ids.

The brute force (:mod:`brute_force_protocol`) is written from the protocol's words,
independently of the engine: the predictions files that ``trail replay`` writes must rank
every baseline as its definition does, and the HR@10 / NDCG@10 that ``trail evaluate``
prints must be its metrics of them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from brute_force_protocol import (
    BASELINES,
    WINDOW,
    Row,
    brute_force_metrics,
    brute_force_scores,
)

from streams.cli import main as trail


def test_replay_predictions_and_evaluate_agree_with_brute_force(
    beauty_slice: tuple[Path, list[Row]], tmp_path: Path
) -> None:
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


def _title_log(path: Path) -> list[Row]:
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
