#!/usr/bin/env bash
# Rebuild RESULTS.md: `trail evaluate` of every scorer (the classic baselines, River, the
# tuned decay, the online ranker and its ablations, the untuned base LM, TRAIL, and SASRec as
# the personalized reference) on the three datasets, last 8 windows.
# Usage: bash scripts/results.sh [OUT_DIR]   (well over an hour on 2 CPU cores)
# To re-run one scorer only (a retrained adapter, say):
#   trail evaluate DATASET --window W --test-windows 8 --scorer trail --json new.json
#   python scripts/merge_results.py docs/results/DATASET.json new.json
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/results}
mkdir -p "$out"
# Every scorer the CLI knows, in report order (streams/registry.py lists them, once).
mapfile -t scorers < <(.venv/bin/python -c \
  'from streams.registry import SCORER_NAMES; print(*SCORER_NAMES, sep="\n")')
(( ${#scorers[@]} )) || { echo "no scorer names from streams.registry" >&2; exit 1; }
args=()
for s in "${scorers[@]}"; do args+=(--scorer "$s"); done
for spec in ml-100k:7d ml-1m:7d amazon-beauty:30d; do
  name=${spec%%:*}
  window=${spec##*:}
  echo "== $name ($window windows)" >&2
  .venv/bin/trail evaluate "$name" --window "$window" --test-windows 8 "${args[@]}" \
    --with-sasrec --sasrec-epochs "${SASREC_EPOCHS:-30}" --no-progress \
    --json "$out/$name.json" --plot "$out/$name.png"
done
.venv/bin/python scripts/write_results.py "$out" > RESULTS.md
echo "wrote RESULTS.md" >&2
