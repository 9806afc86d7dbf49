"""``trail train SNAPSHOTS... --out DIR``: fine-tune a TRAIL adapter on window snapshots."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--prior", choices=("ewma-1", "last-window"), default="ewma-1")
    parser.add_argument(
        "--no-resume", action="store_true", help="start over even if DIR holds a checkpoint"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
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

    from model.trail import TrailConfig
    from model.training import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    model_config = TrailConfig(
        base_model=args.base_model,
        lora_rank=args.lora_rank,
        lora_alpha=2 * args.lora_rank,
        prior=args.prior,
    )
    manifest = train(
        args.snapshots,
        args.out,
        model_config=model_config,
        config=config,
        resume=not args.no_resume,
        progress=not args.no_progress,
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
