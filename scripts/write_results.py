"""Render RESULTS.md from the JSON reports that `trail evaluate --json` wrote.

python scripts/write_results.py out/results > RESULTS.md
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

DATASETS = [("ml-100k", "7d"), ("ml-1m", "7d"), ("amazon-beauty", "30d")]
BASELINES = ["mostpop", "last-window", "ewma-1", "ewma-2", "ewma-4", "linear-trend", "river"]
ADAPTER_MANIFEST = (
    Path(__file__).resolve().parents[1] / "model/adapters/trail-smollm2/manifest.json"
)


def f(value: object, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def ci(pair: object) -> str:
    if not isinstance(pair, list) or any(v is None or math.isnan(v) for v in pair):
        return "-"
    return f"[{pair[0]:.4f}, {pair[1]:.4f}]"


def main() -> int:
    folder = Path(sys.argv[1])
    lines = [
        "# Results",
        "",
        "Produced by `bash scripts/results.sh` (which runs `trail evaluate DATASET --window W "
        "--test-windows 8 --scorer ... --with-sasrec` per dataset and renders this file). "
        'Protocol: docs/architecture.md, "Evaluation protocol": rankings at the end of each of '
        "the 8 windows before the last 8 complete ones, judged on the next window; HR@K / NDCG@K "
        "pooled over (user, window) pairs with 95% bootstrap intervals. TRAIL and the base LM "
        "re-score the top 50 items of the recency prior (cascade) and explain the top 10. "
        "SASRec ranks per user (the personalized reference), trained on the events before the "
        "first judged window. Every evaluation below ran on this project's 2-core CPU "
        "machine; `s` is the replay's wall time with that scorer (model loading excluded; "
        "`-` where the run predates that column).",
        "",
    ]
    if ADAPTER_MANIFEST.is_file():
        manifest = json.loads(ADAPTER_MANIFEST.read_text())
        validation = manifest.get("validation") or {}
        lines += [
            "TRAIL adapter: `model/adapters/trail-smollm2` "
            f"({manifest['steps']} steps on {manifest.get('device', 'cpu')}, "
            f"{manifest['examples']['train']} training examples from the snapshots of ML-1M and "
            "amazon-beauty, their last 8 windows (the evaluation windows) never read; final "
            f"training loss {manifest['final_loss']:.3f}; validation precision@10 "
            f"{f(validation.get('val_precision@10'), 3)} against "
            f"{f(validation.get('prior_precision@10'), 3)} for its prior). Its model card "
            "(`model/adapters/trail-smollm2/README.md`) has the training commands. ML-100K "
            "is never trained on.",
            "",
        ]
    verdicts: list[str] = []
    explanation_verdicts: list[str] = []
    for name, window in DATASETS:
        path = folder / f"{name}.json"
        if not path.is_file():
            lines += [f"## {name}", "", f"(no report at {path})", ""]
            continue
        report = json.loads(path.read_text())
        results = report["results"]
        lines += [f"## {name} (window {window}, {report['test_windows']} evaluated windows)", ""]
        lines += [
            "| scorer | HR@10 | HR@10 95% CI | NDCG@10 | NDCG@10 95% CI | HR@5 | HR@20 "
            "| NDCG@5 | NDCG@20 | Spearman | pairs | s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for scorer, m in results.items():
            seconds = m.get("seconds", m.get("train_seconds"))
            lines.append(
                f"| {scorer} | {f(m['HR@10'])} | {ci(m.get('HR@10_ci'))} | {f(m['NDCG@10'])} "
                f"| {ci(m.get('NDCG@10_ci'))} | {f(m['HR@5'])} | {f(m['HR@20'])} "
                f"| {f(m['NDCG@5'])} | {f(m['NDCG@20'])} | {f(m.get('spearman'))} "
                f"| {m['pairs']} | {f(seconds, 0)} |"
            )
        sasrec = results.get("sasrec", {}).get("config")
        if sasrec:
            lines += [
                "",
                f"SASRec: {sasrec['epochs']} epochs, hidden {sasrec['hidden']}, "
                f"{sasrec['blocks']} blocks, {sasrec.get('threads', '?')} CPU thread(s); its `s` "
                "is the training time.",
            ]
        lines += [
            "",
            "HR@10 by trend category of the next-window items, and cold (first seen "
            "within the last 4 windows, or not before the judged window) against warm:",
            "",
        ]
        lines += [
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
            ]
            lines += [
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
        best = max(BASELINES, key=lambda s: results.get(s, {}).get("HR@10", -1))
        if "trail" in results:
            m = results["trail"]
            trail_hr = m["HR@10"]
            best_hr = results[best]["HR@10"]
            gain = (trail_hr / best_hr - 1) * 100 if best_hr else float("nan")
            verdicts.append(
                f"| {name} | {f(trail_hr)} | {best} {f(best_hr)} | {gain:+.1f}% "
                f"| {'met' if gain >= 10 else 'not met'} |"
            )
            raw = m.get("raw_faithfulness")
            raw_contra = m.get("raw_contradiction_rate")
            if raw is not None and raw_contra is not None:
                met = raw >= 0.95 and raw_contra < 0.02
                explanation_verdicts.append(
                    f"| {name} | {f(raw)} | {f(raw_contra)} | {'met' if met else 'not met'} |"
                )
        missing = [s for s in ("base-lm", "trail", "sasrec") if s not in results]
        if missing:
            lines += ["", f"Not measured here: {', '.join(missing)}.", ""]
        plot = folder / f"{name}.png"
        if plot.is_file():
            lines += ["", f"![HR@10 per window]({plot.as_posix()})", ""]
    if verdicts:
        lines += [
            "## Target: TRAIL HR@10 at least 10% above the best baseline",
            "",
            "| dataset | TRAIL HR@10 | best baseline HR@10 | TRAIL vs best | target |",
            "|---|---|---|---|---|",
            *verdicts,
            "",
        ]
    if explanation_verdicts:
        lines += [
            "## Target: faithfulness at least 95%, contradictions under 2% (TRAIL, as written)",
            "",
            "| dataset | faithfulness | contradiction rate | target |",
            "|---|---|---|---|",
            *explanation_verdicts,
            "",
        ]
    notes = folder / "notes.md"
    if notes.is_file():
        lines += ["", notes.read_text().strip(), ""]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
