"""Merge the scorers of one ``trail evaluate --json`` file into another of the same protocol.

Lets one scorer be re-run (a retrained TRAIL adapter, say) without re-running the others.
Both files must describe the same dataset, window length and test windows, or nothing is
written. Scorers present in both are replaced by the newer file's results. The HR@10 plot
beside INTO (same name, .png) is drawn again from the merged results. Ratios to the best
classic baseline are paired over (user, window) pairs, so a merged scorer keeps them only if
its own run had the same best baseline.

Usage: python scripts/merge_results.py INTO.json FROM.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.evaluation import plot_hr10_intervals  # noqa: E402

PROTOCOL = ("dataset", "window_seconds", "test_windows", "first_window_end", "last_window_end")


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    into_path, from_path = Path(sys.argv[1]), Path(sys.argv[2])
    into = json.loads(into_path.read_text())
    new = json.loads(from_path.read_text())
    differ = [k for k in PROTOCOL if into.get(k) != new.get(k)]
    if differ:
        for key in differ:
            print(
                f"{key}: {into.get(key)!r} in {into_path}, {new.get(key)!r} in {from_path}",
                file=sys.stderr,
            )
        print("not merged: the two runs do not share one protocol", file=sys.stderr)
        return 1
    for section in ("results", "hr10_per_window"):
        into[section].update(new[section])
    into_path.write_text(json.dumps(into, indent=2) + "\n")
    # Ratios to the best baseline need both runs' pairs: the merged scorers keep the ratios
    # of their own run only when that run's best baseline is the merged file's.
    for name, metrics in new["results"].items():
        if metrics.get("baseline") not in (None, into.get("best_baseline")):
            for key in ("HR@10_ratio", "HR@10_ratio_ci", "NDCG@10_ratio", "NDCG@10_ratio_ci"):
                into["results"][name].pop(key, None)
    plot_hr10_intervals(
        into["dataset"], into["results"], into.get("best_baseline"), into_path.with_suffix(".png")
    )
    print(f"merged {', '.join(new['results'])} into {into_path} (plot redrawn)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
