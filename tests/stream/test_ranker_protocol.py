"""The online ranker's predictions file, scored by the brute-force protocol.

``trail evaluate`` scores its own rankings; a predictions file written by ``trail replay``
must give the same HR@10 / NDCG@10 under the independent implementation, and the ranker
must rank above every classic baseline on this real slice of amazon-beauty.
"""

from __future__ import annotations

import json
from pathlib import Path

# The brute-force metrics are the shared ones (beauty_slice is conftest's): one definition.
from brute_force_protocol import BASELINES, WINDOW, Row, brute_force_metrics

from streams.cli import main as trail


def test_ranker_predictions_score_the_same_under_the_brute_force_protocol(
    beauty_slice: tuple[Path, list[Row]], tmp_path: Path
) -> None:
    path, rows = beauty_slice
    report_path = tmp_path / "report.json"
    common = ["--window", "30d", "--test-windows", "4", "--no-progress"]
    scorers = [arg for name in (*BASELINES, "ranker") for arg in ("--scorer", name)]
    assert trail(["evaluate", str(path), *common, "--json", str(report_path), *scorers]) == 0
    report = json.loads(report_path.read_text())["results"]
    predictions_path = tmp_path / "ranker.jsonl"
    assert (
        trail(
            ["replay", str(path), *common, "--scorer", "ranker", "--print-top", "0",
             "--predictions-out", str(predictions_path)]
        )
        == 0
    )
    predictions = [json.loads(line) for line in predictions_path.read_text().splitlines()]
    last_complete = max(ts for _, _, ts in rows) // WINDOW - 1
    assert [p["window_end"] for p in predictions] == [
        (w + 1) * WINDOW for w in range(last_complete - 4, last_complete)
    ]
    hr, ndcg = brute_force_metrics(rows, predictions)
    assert round(report["ranker"]["HR@10"], 4) == round(hr, 4)
    assert round(report["ranker"]["NDCG@10"], 4) == round(ndcg, 4)
    best = max(report[name]["HR@10"] for name in BASELINES)
    assert report["ranker"]["HR@10"] > best
