"""Render RESULTS.md from the JSON reports that `trail evaluate --json` wrote.

python scripts/write_results.py out/results > RESULTS.md
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from model.baselines import CLASSIC_BASELINES
from streams.evaluation.report import number_cell
from streams.scoring import DEFAULT_RESCORE_TOP

DATASETS = [("ml-100k", "7d"), ("ml-1m", "7d"), ("amazon-beauty", "30d")]
CLASSIC = list(CLASSIC_BASELINES)
#: The HR@10 ratio over the best classic baseline that TRAIL must reach, per dataset.
TARGETS = {"ml-100k": 1.10, "ml-1m": 1.00, "amazon-beauty": 1.30}
ABLATIONS = [
    ("ranker", "learned ranker: every signal, label = next window's returning users"),
    ("ranker-no-subwindow", "without the sub-window signals"),
    ("ranker-count-label", "label = next window's event count instead"),
    ("trail", "TRAIL: the ranker with the LM's residual blended in (LM on)"),
]
ADAPTER_MANIFEST = (
    Path(__file__).resolve().parents[1] / "model/adapters/trail-smollm2/manifest.json"
)


def f(value: object, digits: int = 4) -> str:
    if isinstance(value, float):
        return number_cell(value, digits)
    return "-" if value is None else str(value)


def ci(pair: object) -> str:
    if not isinstance(pair, list) or any(v is None or math.isnan(v) for v in pair):
        return "-"
    return f"[{pair[0]:.4f}, {pair[1]:.4f}]"


def ratio(m: dict, key: str = "HR@10") -> str:
    value = m.get(f"{key}_ratio")
    interval = m.get(f"{key}_ratio_ci")
    if value is None or interval is None:
        return "-"
    return f"{value:.2f}x [{interval[0]:.2f}, {interval[1]:.2f}]"


def main() -> int:
    folder = Path(sys.argv[1])
    lines = [
        "# Results",
        "",
        "Produced by `bash scripts/results.sh` (`trail evaluate DATASET --window W "
        "--test-windows 8 --scorer ...` per dataset, rendered by `scripts/write_results.py`). "
        'Protocol (docs/architecture.md, "Evaluation protocol"): rankings at the end of each '
        "of the 8 windows before the last complete one, judged on the next window; HR@K / "
        "NDCG@K pooled over (user, window) pairs with 95% bootstrap intervals; ratios are to "
        "the best *classic* baseline of that dataset (mostpop, last-window, ewma-1/2/4, "
        "linear-trend) with paired bootstrap intervals over the same pairs. Every learned "
        "scorer is online: the `ranker` refits at every window on the 36 windows before it "
        "(never on the window it ranks), `decay-tuned` picks its half-life on the 8 windows "
        "before, River learns window by window. TRAIL ranks with the online ranker, "
        f"re-scores its top {DEFAULT_RESCORE_TOP} with the LM and explains the top 10; the LM's "
        "residual moves the ranking as far as it helped on the windows already judged. SASRec "
        "ranks per user (the personalized reference). MAE@10 is the mean absolute error of the "
        "forecasts of each window's top 10 (next-window events; returning users where the "
        "scorer forecasts them). Every evaluation ran on this project's 2-core CPU machine, "
        "shared with other work; `s` is the replay's wall time with that scorer.",
        "",
    ]
    if ADAPTER_MANIFEST.is_file():
        manifest = json.loads(ADAPTER_MANIFEST.read_text())
        trained_on = ", ".join(Path(folder).name for folder in manifest.get("data", {}))
        warm = " warm-started from earlier weights," if manifest.get("initialised_from") else ""
        lines += [
            "TRAIL adapter: `model/adapters/trail-smollm2` "
            f"(its last run: {manifest.get('steps', '?')} steps on "
            f"{manifest.get('device', 'cpu')},{warm} on the earlier windows of "
            f"{trained_on or '?'}; its model card `model/adapters/trail-smollm2/README.md` has "
            "the training commands; the evaluation windows were never trained on).",
            "",
        ]
    summary: list[str] = []
    explanation_summary: list[str] = []
    for name, window in DATASETS:
        path = folder / f"{name}.json"
        if not path.is_file():
            lines += [f"## {name}", "", f"(no report at {path})", ""]
            continue
        report = json.loads(path.read_text())
        results = report["results"]
        best = report.get("best_baseline") or max(
            CLASSIC, key=lambda s: results.get(s, {}).get("HR@10", -1)
        )
        lines += [
            f"## {name} (window {window}, {report['test_windows']} evaluated windows; best "
            f"classic baseline: {best})",
            "",
            "| scorer | HR@10 | HR@10 95% CI | HR@10 x best [95% CI] | NDCG@10 | NDCG@10 x best "
            "[95% CI] | HR@5 | HR@20 | MAE@10 events | MAE@10 returning | pairs | s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for scorer, m in results.items():
            seconds = m.get("seconds", m.get("train_seconds"))
            lines.append(
                f"| {scorer} | {f(m['HR@10'])} | {ci(m.get('HR@10_ci'))} | {ratio(m)} "
                f"| {f(m['NDCG@10'])} | {ratio(m, 'NDCG@10')} | {f(m['HR@5'])} "
                f"| {f(m['HR@20'])} | {f(m.get('MAE@10_count'), 2)} "
                f"| {f(m.get('MAE@10_returning'), 2)} | {m['pairs']} | {f(seconds, 0)} |"
            )
        sasrec = results.get("sasrec", {}).get("config")
        if sasrec:
            lines += [
                "",
                f"SASRec: {sasrec['epochs']} epochs, hidden {sasrec['hidden']}, "
                f"{sasrec['blocks']} blocks, {sasrec.get('threads', '?')} CPU thread(s); its `s` "
                "is its training time.",
            ]
        present = [(s, d) for s, d in ABLATIONS if s in results]
        if present:
            lines += [
                "",
                "Ablations (one thing taken away at a time):",
                "",
                "| scorer | what | HR@10 | HR@10 x best [95% CI] | NDCG@10 |",
                "|---|---|---|---|---|",
            ]
            for scorer, what in present:
                m = results[scorer]
                lines.append(
                    f"| {scorer} | {what} | {f(m['HR@10'])} | {ratio(m)} | {f(m['NDCG@10'])} |"
                )
        lines += [
            "",
            "HR@10 by trend category of the next-window items, and cold (first seen "
            "within the last 4 windows, or not before the judged window) against warm:",
            "",
            "| scorer | rising | falling | steady | new / cold | warm |",
            "|---|---|---|---|---|---|",
        ]
        for scorer, m in results.items():
            if scorer == "sasrec":
                continue
            lines.append(
                f"| {scorer} | {f(m.get('HR@10_rising'))} | {f(m.get('HR@10_falling'))} "
                f"| {f(m.get('HR@10_steady'))} | {f(m.get('HR@10_new'))} "
                f"| {f(m.get('HR@10_warm'))} |"
            )
        explainers = [s for s in ("base-lm", "trail") if s in results]
        if explainers:
            lines += [
                "",
                "Explanations of the top 10 per window, judged by the checker on the "
                "text the LM wrote (the forced forecast sentence left out):",
                "",
                "| scorer | faithfulness | contradiction rate | without claims "
                "| published faithfulness (after guard) | replaced by guard |",
                "|---|---|---|---|---|---|",
            ]
            for scorer in explainers:
                m = results[scorer]
                raw = m.get("raw_faithfulness", m.get("faithfulness"))
                raw_contra = m.get("raw_contradiction_rate", m.get("contradiction_rate"))
                lines.append(
                    f"| {scorer} | {f(raw)} | {f(raw_contra)} "
                    f"| {f(m.get('explanations_without_claims'))} "
                    f"| {f(m.get('faithfulness')) if 'guard_replaced' in m else '-'} "
                    f"| {f(m.get('guard_replaced'))} |"
                )
        if "trail" in results:
            m = results["trail"]
            target = TARGETS.get(name, 1.0)
            value = m.get("HR@10_ratio", float("nan"))
            ndcg_above = m["NDCG@10"] > results[best]["NDCG@10"]
            vs = m.get("HR@10_vs_ranker")
            vs_ci = m.get("HR@10_vs_ranker_ci")
            vs_text = "-" if vs is None else f"{vs:.2f}x [{vs_ci[0]:.2f}, {vs_ci[1]:.2f}]"
            summary.append(
                f"| {name} | {f(m['HR@10'])} | {best} {f(results[best]['HR@10'])} "
                f"| {ratio(m)} | {target:.2f}x | "
                f"{'met' if value >= target and ndcg_above else 'NOT met'} "
                f"| {'yes' if ndcg_above else 'no'} | {vs_text} | `{m.get('model_version', '-')}` |"
            )
            raw = m.get("raw_faithfulness")
            raw_contra = m.get("raw_contradiction_rate")
            if raw is not None and raw_contra is not None:
                met = raw >= 0.97 and raw_contra < 0.02
                explanation_summary.append(
                    f"| {name} | {f(raw)} | {f(raw_contra)} | {'met' if met else 'NOT met'} |"
                )
        plot = folder / f"{name}.png"
        if plot.is_file():
            lines += ["", f"![HR@10 per scorer with intervals]({plot.as_posix()})", ""]
    if summary:
        lines += [
            "## Targets: TRAIL against the best classic baseline and against the ranker alone",
            "",
            "| dataset | TRAIL HR@10 | best classic HR@10 | TRAIL x best [95% CI] | target "
            "| HR@10 target and NDCG@10 above | NDCG@10 above best | TRAIL x ranker [95% CI] "
            "| TRAIL version (`+onnx`: ONNX Runtime, `+int8`: quantized) |",
            "|---|---|---|---|---|---|---|---|---|",
            *summary,
            "",
        ]
    if explanation_summary:
        lines += [
            "## Target: raw LM faithfulness at least 0.97, contradictions under 0.02",
            "",
            "| dataset | faithfulness | contradiction rate | target |",
            "|---|---|---|---|",
            *explanation_summary,
            "",
        ]
    notes = folder / "notes.md"
    if notes.is_file():
        lines += ["", notes.read_text().strip(), ""]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
