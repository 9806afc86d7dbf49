"""A window's TRAIL work: seconds from a window's close to its published scores and texts.

Replays a real log (ML-1M in 7-day windows by default) through the engine with TRAIL in the
cascade at its default depths (the online ranker orders every item, the LM re-scores its top
``--rescore-top`` and explains the top ``--explain-top``), and times, for ``--windows``
windows with about ``--changed`` changed items each, the span from the watermark passing the
window's end to the window's ScoreUpdates and trending list encoded for the broker
(``window_publish_s``), split into:

* ``engine``: the trend state's close and the features of every item seen so far;
* ``learn``: the online ranker's refit on the window before (and the LM blend's judging);
* ``rank``: the ranker's scores of every item, and the cascade's bookkeeping;
* ``prompts``: prompt building and tokenization (re-scoring and explaining);
* ``lm_score``: the LM's score forward passes;
* ``generate``: greedy explanation decoding (KV cache);
* ``guard``: the forecasts, the checker and, where it steps in, the verbalizer;
* ``publish``: ScoreUpdates and the trending list encoded as the Kafka worker sends them.

Windows before the timed ones run through the engine unscored (the ranker learns on them).
``--catalog N`` first adds ``N`` items that had one event each in the log's first window and
none since (long-quiet items): the same changed items, a bigger state. Their first window
lies beyond the ranker's training span before the timed ones: while new, every one of them
is a ranker candidate, and LightGBM's lambdarank refuses a window of more than 10,000 rows.
The LM runtime is the default one (``--lm-runtime``, as ``trail replay``): ONNX Runtime
from the export cache.

    .venv/bin/python bench/window.py [--dataset ml-1m] [--window 7d] [--windows 6]
        [--catalog N] [--lm-runtime auto] [--compare-int8] [--json]

``--compare-int8`` replays the timed windows three times: fp32 (the CPU default, see
``export.INT8_DEFAULT_ON_CPU``), ``int8-scorer`` (int8 scores, fp32 explanations) and ``int8``
(both graphs; even where it failed its validation), and reports fp32's times with the others'
p50 beside them, the top-10 overlap with fp32 per window, and the guard's view of what each
LM wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import command_line, machine, record, today  # noqa: E402
from schemas import encode  # noqa: E402
from streams.engine import Engine, WindowResult  # noqa: E402
from streams.eventlog import load_events  # noqa: E402
from streams.kafka.publisher import encode_score_updates  # noqa: E402
from streams.registry import scorer_factory  # noqa: E402
from streams.scoring import DEFAULT_RESCORE_TOP  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.trend.windows import parse_duration  # noqa: E402

#: What ``--compare-int8`` replays: fp32 (the CPU default), int8 scores alone, both in int8.
COMPARED = ("fp32", "int8-scorer", "int8")
PARTS = ("engine", "learn", "rank", "prompts", "lm_score", "generate", "guard", "publish")
TARGET_S = 10.0
#: Windows that run before any timed one (the ranker needs history to fit).
WARMUP_WINDOWS = 10


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def choose_windows(
    window_index: np.ndarray, item_codes: np.ndarray, count: int, changed: int
) -> list[int]:
    """The first ``count`` windows after the warm-up whose changed items are within 30% of
    ``changed`` (window indices; events sorted by time)."""
    first = int(window_index.min())
    chosen = []
    for index in range(first + WARMUP_WINDOWS, int(window_index.max())):
        start, stop = np.searchsorted(window_index, [index, index + 1])
        if stop <= start:
            continue
        items = int(np.unique(item_codes[start:stop]).shape[0])
        if abs(items - changed) <= 0.3 * changed:
            chosen.append(index)
            if len(chosen) == count:
                break
    return chosen


class Clock:
    """Seconds spent in named parts, accumulated (one window at a time)."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = dict.fromkeys(PARTS, 0.0)

    def wrap(self, part: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.parts[part] += time.perf_counter() - started

        return timed


def instrument(scorer: Any, clock: Clock) -> dict[str, float]:
    """Time the scorer's parts in ``clock``; returns the LM's own timings (ORT) if it has any.

    The scorer's methods are wrapped on the instance: ``learn``; ``score`` (the ranker and
    the LM) with the LM's ``_rescore`` inside it; ``explain`` with the model's ``explain``
    inside it. What the ORT model reports (prompts, scoring, generation) is moved from the
    ``rank``/``guard`` totals into their own parts after each window.
    """
    current = getattr(scorer, "current", scorer)  # a ReloadingScorer serves one export
    scorer.learn = clock.wrap("learn", scorer.learn)
    score, rescore = current.score, current._rescore
    explain, model_explain = current.explain, current.model.explain
    current.score = clock.wrap("rank", score)
    current._rescore = clock.wrap("lm_score", rescore)
    current.explain = clock.wrap("guard", explain)
    current.model.explain = clock.wrap("generate", model_explain)
    timings: dict[str, float] = getattr(current.model, "timings", {})
    return timings


def settle(clock: Clock, timings: dict[str, float], before: dict[str, float]) -> None:
    """Nested parts counted once each: the LM's inside the ranker's and the guard's."""
    parts = clock.parts
    parts["rank"] -= parts["lm_score"]
    parts["guard"] -= parts["generate"]
    if timings:
        spent = {k: timings[k] - before.get(k, 0.0) for k in timings}
        # ORT splits both LM calls into prompt building, scoring and generation.
        parts["prompts"] = spent["prompt_s"]
        parts["lm_score"] = spent["score_s"]
        parts["generate"] = spent["generate_s"]


def quiet_items(count: int, at: float) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array([f"quiet-{i}" for i in range(count)], dtype=object)
    return ids, np.full(count, at, dtype=np.float64)


def run(args: argparse.Namespace, lm_runtime: str) -> dict[str, Any]:
    settings = Settings(
        window=args.window,
        rescore_top=args.rescore_top,
        explain_top=args.explain_top,
        lm_runtime=lm_runtime,
    )
    window = parse_duration(args.window)
    events = load_events(args.dataset, progress=False).sorted_by_time()
    timestamps = np.asarray(events.timestamps, dtype=np.float64)
    window_index = (timestamps // window).astype(np.int64)
    _, item_codes = np.unique(np.asarray(events.item_ids, dtype=object), return_inverse=True)
    timed = choose_windows(window_index, item_codes, args.windows, args.changed)
    if len(timed) < args.windows:
        raise SystemExit(
            f"{args.dataset} has only {len(timed)} windows of {args.window} with about "
            f"{args.changed} changed items after the warm-up; lower --windows or --changed"
        )
    log(f"timed windows {timed} ({args.dataset}, {args.window}), TRAIL via {lm_runtime}")

    started = time.perf_counter()
    if lm_runtime in ("ort-int8", "ort-int8-scorer") and args.compare_int8:
        from export.cache import ensure_export
        from export.runtime import OrtTrailScorer
        from model.scorer import DEFAULT_ADAPTER

        folder = ensure_export(DEFAULT_ADAPTER, cache_dir=settings.cache_dir, int8=True, log=log)
        scorer: Any = OrtTrailScorer(
            folder,
            settings.rescore_top,
            precision=lm_runtime.removeprefix("ort-"),
            unvalidated_int8=True,
        )
    else:
        scorer = scorer_factory("trail", settings)()
    load_s = time.perf_counter() - started
    provider = getattr(scorer, "provider", "torch")
    precision = getattr(scorer, "precision", "fp32")
    engine = Engine(settings.engine_config(), scorer, score_from_window=timed[0])
    engine.add_metadata(events.items.values())
    item_ids = np.asarray(events.item_ids, dtype=object)
    users = np.asarray(events.user_ids)
    if args.catalog:
        from model.ranker import RankerConfig

        age = timed[0] - int(window_index.min())
        needed = RankerConfig().span + settings.engine_config().trend.thresholds.new_item_windows
        if age <= needed:
            raise SystemExit(
                f"the quiet items' window is {age} windows before the timed ones, within the "
                f"ranker's {needed} windows of training rows: choose later windows"
            )
        quiet_at = float(timestamps[0])
        ids, times = quiet_items(args.catalog, quiet_at)
        cut = int(np.searchsorted(timestamps, quiet_at))
        item_ids = np.concatenate([item_ids[:cut], ids, item_ids[cut:]])
        timestamps = np.concatenate([timestamps[:cut], times, timestamps[cut:]])
        quiet_users = np.full(args.catalog, "quiet-user", dtype=object)
        users = np.concatenate([users[:cut], quiet_users, users[cut:]])
    codes = engine.state.catalog.codes(item_ids)

    clock = Clock()
    timings = instrument(scorer, clock)
    windows: list[dict[str, Any]] = []
    rankings: list[list[str]] = []
    texts: list[dict[str, str]] = []
    published: dict[str, Any] = {}

    def publish(result: WindowResult) -> None:
        began = time.perf_counter()
        updates = encode_score_updates(result)
        trending = encode(result.trending())
        clock.parts["publish"] += time.perf_counter() - began
        published["bytes"] = sum(len(v) for _, v in updates) + len(trending)
        published["updates"] = len(updates)
        published["result"] = result

    warm_end = timed[0] * window
    position = int(np.searchsorted(timestamps, warm_end))
    log(f"warm-up: {position:,} events through {timed[0] - int(window_index.min())} windows")
    for start in range(0, position, 65_536):
        stop = min(start + 65_536, position)
        engine.ingest(codes[start:stop], timestamps[start:stop], users=users[start:stop])
    log(f"  done in {time.perf_counter() - started:.0f} s; timing {len(timed)} windows")
    for index in range(timed[0], timed[-1] + 1):
        end = (index + 1) * window
        stop = int(np.searchsorted(timestamps, end))
        engine.ingest(codes[position:stop], timestamps[position:stop], users=users[position:stop])
        position = stop
        clock.parts = dict.fromkeys(PARTS, 0.0)
        before = dict(timings)
        cpu = time.process_time()
        began = time.perf_counter()
        engine.advance_to(float(end), on_result=publish)
        total = time.perf_counter() - began
        cpu = time.process_time() - cpu
        if index not in timed:
            continue
        settle(clock, timings, before)
        result: WindowResult = published["result"]
        parts = dict(clock.parts)
        parts["engine"] = total - sum(v for k, v in parts.items() if k != "engine")
        row = {
            "window": index,
            "changed_items": int(result.window.changed.shape[0]),
            "items": len(result.features),
            "window_publish_s": total,
            "cpu_s": cpu,
            **{f"{k}_s": v for k, v in parts.items()},
            "updates": published["updates"],
        }
        windows.append(row)
        rankings.append(result.ranking(10))
        texts.append({result.features.item_ids[p]: t for p, t in result.explanations.items()})
        log(
            f"  window {index}: {row['changed_items']} changed, {row['items']:,} items, "
            f"{total:.2f} s ({cpu:.2f} s CPU)"
        )
    guard = getattr(getattr(scorer, "current", scorer), "guard", None)
    return {
        "windows": windows,
        "rankings": rankings,
        "texts": texts,
        "provider": provider,
        "precision": precision,
        "version": scorer.version,
        "load_s": load_s,
        "guard": guard.report() if guard is not None else {},
        "peak_rss_mb": peak_rss_mb(),
    }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def summary(run_: dict[str, Any]) -> dict[str, Any]:
    rows = run_["windows"]
    out: dict[str, Any] = {}
    for key in ("window_publish_s", "cpu_s", *(f"{p}_s" for p in PARTS)):
        values = [r[key] for r in rows]
        out[key] = round(percentile(values, 50), 3)
        out[f"{key}_p95"] = round(percentile(values, 95), 3)
    out["changed_items"] = int(np.median([r["changed_items"] for r in rows]))
    out["items"] = int(np.median([r["items"] for r in rows]))
    return out


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Top-10 overlap per window and the guard's judgement of what each LM wrote."""
    overlaps = [
        len(set(x) & set(y)) / 10 for x, y in zip(a["rankings"], b["rankings"], strict=True)
    ]
    same = sum(x == y for x, y in zip(a["texts"], b["texts"], strict=True))
    return {
        "top10_overlap_per_window": overlaps,
        "rankings_identical": a["rankings"] == b["rankings"],
        "windows_with_identical_texts": int(same),
        "guard": {
            "fp32": {k: round(v, 3) for k, v in a["guard"].items()},
            b["precision"]: {k: round(v, 3) for k, v in b["guard"].items()},
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--window", default="7d")
    parser.add_argument("--windows", type=int, default=6, help="timed windows (p50/p95 over)")
    parser.add_argument("--changed", type=int, default=1000, help="changed items per window")
    parser.add_argument("--rescore-top", type=int, default=DEFAULT_RESCORE_TOP)
    parser.add_argument("--explain-top", type=int, default=10)
    parser.add_argument("--catalog", type=int, default=0, help="long-quiet items to add")
    parser.add_argument(
        "--lm-runtime",
        default="auto",
        choices=["auto", "ort", "ort-fp32", "ort-int8-scorer", "ort-int8", "torch"],
    )
    parser.add_argument(
        "--compare-int8", action="store_true", help="also replay int8 and fp32 and compare"
    )
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--no-record", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    runs: dict[str, dict[str, Any]] = {}
    if args.compare_int8:
        # The same windows in each precision; the table shows the CPU default's (fp32),
        # the others' p50 beside it.
        runs = {p: run(args, f"ort-{p}") for p in COMPARED}
        main_run = runs["fp32"]
    else:
        main_run = run(args, args.lm_runtime)
    result: dict[str, Any] = {
        **summary(main_run),
        "windows_timed": len(main_run["windows"]),
        "dataset": args.dataset,
        "window": args.window,
        "catalog": args.catalog,
        "rescore_top": args.rescore_top,
        "explain_top": args.explain_top,
        "lm": f"{main_run['version']} on {main_run['provider']} ({main_run['precision']})",
        "scorer_load_s": round(main_run["load_s"], 1),
        "peak_rss_mb": round(main_run["peak_rss_mb"]),
        "load_average_start": round(load, 2),
        "load_average_end": round(os.getloadavg()[0], 2),
        "per_window": [
            {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
            for r in main_run["windows"]
        ],
    }
    if args.compare_int8:
        for name in COMPARED[1:]:
            result[f"{name}_vs_fp32"] = compare(runs["fp32"], runs[name])
        for name in COMPARED:
            result[f"{name}_window_publish_s"] = summary(runs[name])["window_publish_s"]
            result[f"{name}_cpu_s"] = summary(runs[name])["cpu_s"]

    print(
        f"window close -> published, {args.dataset} {args.window}, {result['windows_timed']} "
        f"windows of ~{result['changed_items']} changed items ({result['items']:,} items in "
        f"the state, {args.catalog:,} of them added long-quiet), TRAIL {result['lm']}, "
        f"re-score {args.rescore_top}, explain {args.explain_top}; load average "
        f"{result['load_average_start']} -> {result['load_average_end']}"
    )
    print(f"{'part':<20}{'p50 s':>10}{'p95 s':>10}")
    for key in ("window_publish_s", "cpu_s", *(f"{p}_s" for p in PARTS)):
        print(f"{key:<20}{result[key]:>10.3f}{result[key + '_p95']:>10.3f}")
    verdict = "met" if result["window_publish_s"] <= TARGET_S else "NOT met"
    print(f"target p50 <= {TARGET_S:g} s on 2 cores: {verdict}")
    comparison = ""
    if args.compare_int8:
        lines = []
        for name in COMPARED[1:]:
            c = result[f"{name}_vs_fp32"]
            lines.append(
                f"{name} vs fp32: top-10 overlap per window {c['top10_overlap_per_window']}, "
                f"guard {c['guard']}"
            )
        lines.append(
            "p50 s (CPU s): "
            + ", ".join(
                f"{n} {result[n + '_window_publish_s']:.2f} ({result[n + '_cpu_s']:.2f})"
                for n in COMPARED
            )
        )
        comparison = "; ".join(lines)
        print("\n".join(lines))
    if not args.no_record:
        parts = ", ".join(f"{p} {result[p + '_s']:.2f}" for p in PARTS if result[p + "_s"] >= 0.005)
        notes = f"{parts}; CPU {result['cpu_s']:.2f} s; scorer load {result['scorer_load_s']} s"
        if comparison:
            notes += f"; {comparison}"
        record(
            "window",
            "| date | machine | command | LM | windows | changed items | items in state "
            "| window_publish_s p50 / p95 | parts (p50 s) |\n|---|---|---|---|---|---|---|---|---|",
            f"| {today()} | {machine()} (at start {result['load_average_start']}, end "
            f"{result['load_average_end']}) | `{command_line()}` | {result['lm']} "
            f"| {result['windows_timed']} | {result['changed_items']} | {result['items']:,} "
            f"| {result['window_publish_s']:.2f} / {result['window_publish_s_p95']:.2f} "
            f"| {notes} |",
        )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
