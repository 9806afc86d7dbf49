"""``trail export [ADAPTER_DIR] --out DIR [--int8]``: merge, export to ONNX, validate, write a
manifest; with ``--int8`` also int8 graphs, judged against fp32 (the manifest's ``int8``).

``trail replay`` and the worker need no explicit export: the first use of an adapter exports
it into the cache (:mod:`export.cache`).

Exit status: 0 when the export passed validation, 1 when it was written but failed validation
(the manifest says ``"status": "failed"`` and the runtime refuses it), 2 on errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from export import DEFAULT_MAX_ABS_DIFF, DEFAULT_OPSET, DEFAULT_PROMPTS

    parser.add_argument(
        "adapter",
        nargs="?",
        type=Path,
        default=None,
        help="TRAIL adapter folder (default: the committed model/adapters/trail-smollm2)",
    )
    parser.add_argument("--out", type=Path, required=True, help="export folder to write")
    parser.add_argument("--base-model", default=None, help="base LM: HF id or local path")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    parser.add_argument(
        "--max-abs-diff",
        type=float,
        default=DEFAULT_MAX_ABS_DIFF,
        help=f"largest accepted score difference from PyTorch (default {DEFAULT_MAX_ABS_DIFF})",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also write int8 dynamic-quantization graphs, validated against fp32",
    )
    parser.add_argument(
        "--prompts",
        type=int,
        default=DEFAULT_PROMPTS,
        help=f"validation prompts (default {DEFAULT_PROMPTS})",
    )


def run(args: argparse.Namespace) -> int:
    # Heavy imports (torch, transformers, optimum) only when the command really runs.
    from export.onnx_export import ExportError, export_model
    from model.scorer import DEFAULT_ADAPTER

    adapter = args.adapter if args.adapter is not None else DEFAULT_ADAPTER
    if not (adapter / "trail_config.json").is_file():
        print(
            f"error: no TRAIL adapter at {adapter}: train one with "
            "`trail train SNAPSHOTS --out DIR` and pass it as ADAPTER_DIR",
            file=sys.stderr,
        )
        return 2
    try:
        manifest = export_model(
            adapter,
            args.out,
            base_model=args.base_model,
            opset=args.opset,
            max_abs_diff=args.max_abs_diff,
            prompts=args.prompts,
            int8=args.int8,
        )
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    validation = manifest["validation"]
    summary = json.dumps(
        {k: validation[k] for k in ("score_max_abs_diff", "greedy_tokens_identical")}
    )
    if manifest["status"] != "ok":
        print(
            f"export FAILED validation: score max abs diff {validation['score_max_abs_diff']:.3g} "
            f"(threshold {validation['score_threshold']:.3g}), greedy tokens identical on "
            f"{validation['greedy_prompts_identical']}/{validation['prompts_checked']} prompts; "
            f"written to {args.out} marked failed (not servable)",
            file=sys.stderr,
        )
        print(summary)
        return 1
    print(
        f"exported {manifest['version']} to {args.out}: score max abs diff "
        f"{validation['score_max_abs_diff']:.3g}, greedy tokens identical on "
        f"{validation['prompts_checked']} prompts, {manifest['export_seconds']['total']:.0f} s",
        file=sys.stderr,
    )
    if "int8" in manifest:
        int8 = manifest["int8"]
        verdicts = {
            "int8 scorer (--lm-runtime ort-int8-scorer)": int8.get("scorer_status"),
            "int8 scorer and generator (--lm-runtime ort-int8)": int8.get("status"),
        }
        for name, status in verdicts.items():
            verdict = "passed" if status == "ok" else "FAILED (not served)"
            print(f"{name}: {verdict}", file=sys.stderr)
        print(f"int8 validation against fp32: {int8['validation']}", file=sys.stderr)
    print(summary)
    return 0
