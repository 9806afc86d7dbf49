"""The TRAIL cascade's predictions file, scored by the brute-force protocol (issue 10).

``trail replay --scorer trail --predictions-out P`` must score the same under the independent
implementation (:mod:`brute_force_protocol`) as ``trail evaluate --scorer trail`` reports,
on a small real slice of amazon-beauty (its last eight months, so that the two TRAIL runs
stay short). The LM is a tiny random Llama with a TRAIL adapter
whose score head is far from zero, so the LM's residuals move the ranker's scores.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from brute_force_protocol import WINDOW, Row, brute_force_metrics

from streams.cli import main as trail

pytest.importorskip("torch")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def adapter(
    tmp_path_factory: pytest.TempPathFactory, perturbed_adapter: Callable[..., Path]
) -> Path:
    """A TRAIL adapter on the tiny random Llama whose LoRA and score head are not zero (as if
    trained): a fresh head is zero, and an LM that adds nothing would leave the ranker's
    ranking, which test_ranker_protocol already checks. Its head weighs more than the model
    tests' (0.5), with no bias, so the residuals reorder this slice's top 10."""
    from model.tiny_lm import build_tiny_model

    base = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    return perturbed_adapter(base, head_std=0.5, head_bias=0.0)


def test_trail_predictions_score_the_same_under_the_brute_force_protocol(
    short_beauty_slice: tuple[Path, list[Row]],
    adapter: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HR@10 and NDCG@10 recomputed from ``trail replay --scorer trail``'s predictions file and
    the raw log equal what ``trail evaluate --scorer trail`` reports, and the replay ranks
    each window as the evaluation did. Catches a predictions file written from anything but
    the cascade's final ranking (the ranker's before the LM: on this slice the LM changes the
    top 10 of two of the four windows, and the ranker's own rankings score another HR@10;
    or another window's), or an evaluation whose TRAIL run differs from a replay's."""
    path, rows = short_beauty_slice
    # TRAIL's default runtime exports the adapter on first use: into this test's cache.
    monkeypatch.setenv("TRAIL_CACHE_DIR", str(tmp_path / "cache"))
    common = ["--window", "30d", "--test-windows", "4", "--no-progress", "--scorer", "trail"]
    common += ["--adapter", str(adapter)]
    report_path = tmp_path / "report.json"
    evaluated = tmp_path / "evaluated"
    assert (
        trail(
            ["evaluate", str(path), *common, "--json", str(report_path)]
            + ["--predictions-dir", str(evaluated)]
        )
        == 0
    )
    report = json.loads(report_path.read_text())["results"]["trail"]
    predictions_path = tmp_path / "trail.jsonl"
    replay = ["replay", str(path), *common, "--print-top", "0", "--explain-top", "2"]
    assert trail([*replay, "--predictions-out", str(predictions_path)]) == 0
    text = predictions_path.read_text()
    predictions = [json.loads(line) for line in text.splitlines()]
    last_complete = max(ts for _, _, ts in rows) // WINDOW - 1
    assert [p["window_end"] for p in predictions] == [
        (w + 1) * WINDOW for w in range(last_complete - 4, last_complete)
    ]
    assert text == (evaluated / "trail.jsonl").read_text()
    hr, ndcg = brute_force_metrics(rows, predictions)
    assert 0 < hr < 1
    assert round(report["HR@10"], 4) == round(hr, 4)
    assert round(report["NDCG@10"], 4) == round(ndcg, 4)
