"""The online ranker's cost per window: refit (fit plus predict) and feature building.

Replays a dataset through the engine with the online ranker scoring its last N windows (the
ranker refits before each of them on the last 36 labelled windows) and reports per-window
refit seconds and training rows. The baseline measured in the same run is the same replay
with EWMA-1 (the ranker's own fallback), so the ratio says what the learned ranking costs.

    .venv/bin/python bench/ranker.py [--dataset amazon-beauty] [--window 30d] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import command_line, machine, record, today  # noqa: E402
from model.baselines import EWMA  # noqa: E402
from model.ranker import OnlineRanker  # noqa: E402
from streams.engine import Engine, EngineConfig  # noqa: E402
from streams.eventlog import load_events  # noqa: E402
from streams.replay import EvaluationWindows, replay  # noqa: E402
from streams.trend.state import TrendConfig  # noqa: E402
from streams.trend.windows import WindowSpec, parse_duration  # noqa: E402


def timed_replay(log, window: int, scorer, test_windows: int) -> tuple[float, int]:
    windows = EvaluationWindows.of(log.timestamps, window, test_windows)
    engine = Engine(
        EngineConfig(TrendConfig(WindowSpec(window)), explain_top=0),
        scorer,
        score_from_window=windows.first,
    )
    started = time.perf_counter()
    summary = replay(log, engine, [], windows, progress=False)
    return time.perf_counter() - started, summary.windows_scored


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--window", default="30d")
    parser.add_argument("--test-windows", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--no-record", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()

    log = load_events(args.dataset, progress=False).sorted_by_time()
    window = parse_duration(args.window)
    baseline_s, _ = timed_replay(log, window, EWMA(1), args.test_windows)
    ranker = OnlineRanker()
    ranker_s, scored = timed_replay(log, window, ranker, args.test_windows)
    fits = np.asarray(ranker.fit_seconds)
    rows = int(sum(g.labels.shape[0] for g in ranker._groups))
    results = {
        "dataset": args.dataset,
        "windows_scored": scored,
        "fits": int(fits.size),
        "fit_p50_s": round(float(np.median(fits)), 3) if fits.size else None,
        "fit_max_s": round(float(fits.max()), 3) if fits.size else None,
        "training_rows": rows,
        "features": len(ranker.columns),
        "replay_s_ranker": round(ranker_s, 2),
        "replay_s_ewma1": round(baseline_s, 2),
        "ranker_vs_ewma1": round(ranker_s / baseline_s, 1),
    }
    print(
        f"online ranker on {args.dataset} (window {args.window}, scoring the last "
        f"{args.test_windows} windows; refit before each on the last 36 labelled windows)"
    )
    print(f"{'measure':<24}{'value':>14}")
    for key, value in results.items():
        print(f"{key:<24}{value!s:>14}")
    if not args.no_record:
        record(
            "ranker",
            "| date | machine | command | refits | fit p50 s | fit max s | training rows "
            "| replay s (ranker / ewma-1) |\n|---|---|---|---|---|---|---|---|",
            f"| {today()} | {machine()} | `{command_line()}` | {results['fits']} "
            f"| {results['fit_p50_s']} | {results['fit_max_s']} | {rows:,} "
            f"| {results['replay_s_ranker']} / {results['replay_s_ewma1']} "
            f"({results['ranker_vs_ewma1']}x) |",
        )
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
