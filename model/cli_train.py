"""``trail train SNAPSHOTS... --out DIR``: fine-tune a TRAIL adapter on window snapshots."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from model.priors import PRIORS
    from model.training import TrainConfig

    parser.add_argument(
        "snapshots",
        nargs="+",
        type=Path,
        help="snapshot folders written by `trail replay --snapshots-out`",
    )
    parser.add_argument("--out", type=Path, required=True, help="adapter folder to write")
    parser.add_argument(
        "--base-model",
        default="smollm2-135m",
        help="base LM: smollm2-135m (default), a local path or an HF id",
    )
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument(
        "--prior",
        choices=PRIORS,
        default="ewma-1",
        help="recency prior the score head corrects (default %(default)s)",
    )
    parser.add_argument(
        "--lora-top-fraction",
        type=float,
        default=0.34,
        help="adapt only this top fraction of the layers (default %(default)s; 1.0 = all)",
    )
    parser.add_argument(
        "--no-resume", action="store_true", help="start over even if DIR holds a checkpoint"
    )
    parser.add_argument(
        "--init-adapter",
        type=Path,
        default=None,
        metavar="DIR",
        help="start the LoRA weights from this trained adapter (same rank, targets and "
        "--lora-top-fraction); the score head starts fresh",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--device",
        default="auto",
        help="torch device: auto (cuda when available, else cpu), cpu, cuda or cuda:N",
    )
    parser.add_argument(
        "--items",
        default=None,
        metavar="FILE",
        help="item catalog (CSV, Parquet or JSON lines): titles and categories for the rows "
        "of its items (replay with --items to recompute category momentum too)",
    )
    parser.add_argument("--no-progress", action="store_true")
    defaults = TrainConfig()
    for field in fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(
            flag,
            type=type(getattr(defaults, field.name)),
            default=getattr(defaults, field.name),
            help="(default %(default)s)",
        )


def run(args: argparse.Namespace) -> int:
    import torch

    from model.adapter_files import TrailConfig
    from model.training import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"trail train: --device {device} asked for, but torch sees no CUDA GPU")
    items = None
    if args.items:
        from streams.eventlog import DatasetError, load_items

        try:
            catalog = load_items(args.items)
        except DatasetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for line in catalog.report():
            print(line, file=sys.stderr)
        items = catalog.items
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    model_config = TrailConfig(
        base_model=args.base_model,
        lora_rank=args.lora_rank,
        lora_alpha=2 * args.lora_rank,
        prior=args.prior,
        lora_top_fraction=args.lora_top_fraction,
    )
    manifest = train(
        args.snapshots,
        args.out,
        model_config=model_config,
        config=config,
        resume=not args.no_resume,
        progress=not args.no_progress,
        device=device,
        items=items,
        init_adapter=args.init_adapter,
    )
    print(
        json.dumps(
            {
                "out": str(args.out),
                "final_loss": manifest["final_loss"],
                "validation": manifest["validation"],
            },
            indent=2,
        )
    )
    return 0
