"""The ``trail`` command line.

Each subcommand lives in a module with ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their command runs (or its help is asked for), so
``trail replay`` never pays for torch or Kafka clients.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streams.settings import Settings

if TYPE_CHECKING:
    from streams.eventlog import EventLog
    from streams.scoring import Scorer

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "replay": ("streams.cli", "replay an event log through the engine, no broker"),
    "evaluate": ("streams.cli", "evaluate scorers on an event log (HR@K, NDCG@K, ...)"),
    "widget": ("streams.widget.cli", "serve the live trending page and embeddable widget (SSE)"),
    "model": ("model.cli_model", "manage the base language model (fetch)"),
    "train": ("model.cli_train", "fine-tune a TRAIL adapter on window snapshots"),
    "worker": ("streams.kafka.cli", "run the Kafka worker: events -> engine -> scores, trending"),
    "produce": ("streams.kafka_cli", "replay an event log into the events topic (Kafka)"),
    "tail": ("streams.kafka_tail", "follow the scores, trending or dead-letter topic"),
    "export": ("export.cli", "merge, export to ONNX, validate, write a manifest"),
}


def _settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the flags that were given on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _default(name: str) -> Any:
    """The default of setting ``name``, as help texts show it (written once, in Settings)."""
    return Settings.model_fields[name].default


def _common_replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "events",
        help="a user_id,item_id,timestamp CSV (.csv/.csv.gz), Parquet, recbole .inter file, "
        "or a dataset name: ml-100k, ml-1m, amazon-beauty",
    )
    parser.add_argument(
        "--window",
        default=None,
        help=f"window length, e.g. 1d (TRAIL_WINDOW; default {_default('window')})",
    )
    parser.add_argument(
        "--grace",
        default=None,
        help=f"grace period for late events (default {_default('grace')})",
    )
    parser.add_argument(
        "--test-windows",
        type=int,
        default=None,
        help="rank (and run expensive scorers) only for the last N complete windows",
    )
    parser.add_argument("--adapter", type=Path, default=None, help="TRAIL adapter folder")
    parser.add_argument(
        "--model",
        dest="model_dir",
        type=Path,
        default=None,
        help="exported ONNX model folder for the TRAIL scorer",
    )
    parser.add_argument("--base-model", default=None, help="base LM: HF id or local path")
    parser.add_argument(
        "--lm-runtime",
        "--runtime",
        dest="lm_runtime",
        choices=["auto", "ort", "ort-fp32", "ort-int8-scorer", "ort-int8", "torch"],
        default=None,
        help="TRAIL's LM runtime (TRAIL_LM_RUNTIME; default auto: ONNX Runtime, the adapter "
        "exported once into the cache, int8 where it held; torch: PyTorch)",
    )
    parser.add_argument(
        "--rescore-top",
        type=int,
        default=None,
        help="items the cheap ranker passes to the LM per window (M)",
    )
    parser.add_argument(
        "--time-unit",
        choices=["auto", "s", "ms", "us", "ns"],
        default=None,
        help="unit of plain-number timestamps (default auto: told from their median)",
    )
    parser.add_argument(
        "--time-horizon",
        default=None,
        help="rows beyond it are skipped as malformed: auto (default), off, or a duration "
        "before the log's 1st / after its 99th percentile time, e.g. 30d",
    )
    parser.add_argument(
        "--items",
        default=None,
        metavar="FILE",
        help="item catalog (CSV, Parquet or JSON lines: item_id and any of title, categories, "
        "tags, brand, price, release_date); per item it replaces the log's own metadata",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    _common_replay_arguments(parser)
    if command == "replay":
        parser.add_argument(
            "--scorer",
            default=None,
            help=f"scorer name (TRAIL_SCORER; default {_default('scorer')})",
        )
        parser.add_argument(
            "--predictions-out",
            type=Path,
            default=None,
            help="JSON lines {window_end, ranking} per evaluated window",
        )
        parser.add_argument(
            "--scores-out", type=Path, default=None, help="JSON lines of every ScoreUpdate"
        )
        parser.add_argument(
            "--snapshots-out",
            type=Path,
            default=None,
            help="folder for Parquet retraining snapshots, one per window",
        )
        parser.add_argument(
            "--print-top", type=int, default=5, help="print each window's top N (0 = quiet)"
        )
        parser.add_argument(
            "--explain-top",
            type=int,
            default=None,
            help=f"items explained per window (default {_default('explain_top')})",
        )
    else:
        parser.add_argument(
            "--scorer",
            action="append",
            default=None,
            help="scorer to evaluate (repeatable; default: every baseline)",
        )
        parser.add_argument("--json", type=Path, default=None, help="write results as JSON")
        parser.add_argument("--markdown", type=Path, default=None, help="write a Markdown table")
        parser.add_argument("--plot", type=Path, default=None, help="write a PNG of HR@10")
        parser.add_argument(
            "--with-sasrec",
            action="store_true",
            help="also train and evaluate SASRec, the personalized reference",
        )
        parser.add_argument(
            "--sasrec-epochs", type=int, default=None, help="SASRec epochs (default 60)"
        )
        parser.add_argument(
            "--predictions-dir",
            type=Path,
            default=None,
            help="write each scorer's predictions file here",
        )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings of ``trail replay`` / ``trail evaluate``: every flag left out keeps the
    ``TRAIL_*`` variable or the default of :class:`Settings`, the one place defaults live."""
    # evaluate's --scorer is a list of names to compare, not the one scorer setting.
    scorer = args.scorer if isinstance(args.scorer, str) else None
    return _settings(
        window=args.window,
        grace=args.grace,
        scorer=scorer,
        adapter=args.adapter,
        model_dir=args.model_dir,
        base_model=args.base_model,
        lm_runtime=args.lm_runtime,
        rescore_top=args.rescore_top,
        explain_top=getattr(args, "explain_top", None),
        time_unit=args.time_unit,
        time_horizon=args.time_horizon,
    )


def run(command: str, args: argparse.Namespace) -> int:
    from streams.eventlog import DatasetError, load_events, load_items
    from streams.registry import BASELINE_NAMES, UnknownScorerError, scorer_factory

    settings = settings_from_args(args)
    try:
        log = load_events(
            args.events,
            progress=not args.no_progress,
            cache_dir=settings.cache_dir,
            time_unit=settings.time_unit,
            time_horizon=settings.time_horizon,
        )
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in log.notes:
        print(f"note: {note}", file=sys.stderr)
    _report_bad_rows(log)
    if args.items:
        try:
            catalog = load_items(args.items, cache_dir=settings.cache_dir)
        except DatasetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for line in catalog.report():
            print(line, file=sys.stderr)
        log = catalog.apply_to(log)
    try:
        if command == "replay":
            return _replay(args, settings, log, scorer_factory(settings.scorer, settings))
        names = args.scorer or list(BASELINE_NAMES)
        factories = [(name, scorer_factory(name, settings)) for name in names]
    except UnknownScorerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _evaluate(args, settings, log, factories)


def _report_bad_rows(log: EventLog) -> None:
    bad = log.bad_rows
    count = log.bad_row_count
    if not count:
        return
    print(
        f"warning: skipped {count:,} malformed rows in {log.source}",
        file=sys.stderr,
    )
    for row in bad[:10]:
        print(f"  line {row.line}: {row.reason}", file=sys.stderr)
    if count > 10:
        print(f"  ... and {count - 10:,} more", file=sys.stderr)


def _replay(
    args: argparse.Namespace, settings: Settings, log: EventLog, make: Callable[[], Scorer]
) -> int:
    from streams.engine import Engine
    from streams.publish import (
        ConsolePrinter,
        PredictionsWriter,
        Publisher,
        ScoresWriter,
        SnapshotWriter,
    )
    from streams.replay import EvaluationWindows, replay

    config = settings.engine_config()
    windows = EvaluationWindows.of(
        log.timestamps,
        config.trend.window.length,
        args.test_windows,
    )
    publishers: list[Publisher] = []
    if args.print_top > 0:
        publishers.append(ConsolePrinter(top=args.print_top))
    if args.predictions_out is not None:
        publishers.append(
            PredictionsWriter(
                args.predictions_out,
                depth=config.ranking_depth,
                first_window=windows.first,
                last_window=windows.last,
            )
        )
    if args.scores_out is not None:
        publishers.append(ScoresWriter(args.scores_out))
    if args.snapshots_out is not None:
        publishers.append(SnapshotWriter(args.snapshots_out))
    engine = Engine(config, make(), score_from_window=windows.first)
    summary = replay(log, engine, publishers, windows, progress=not args.no_progress)
    print(f"\n{summary.describe()}", file=sys.stderr)
    return 0


def _evaluate(
    args: argparse.Namespace,
    settings: Settings,
    log: EventLog,
    factories: list[tuple[str, Callable[[], Scorer]]],
) -> int:
    from streams.evaluation import DEFAULT_TEST_WINDOWS, evaluate

    report = evaluate(
        log,
        factories,
        settings.engine_config(),
        test_windows=DEFAULT_TEST_WINDOWS if args.test_windows is None else args.test_windows,
        predictions_dir=args.predictions_dir,
        depth=settings.ranking_depth,
        progress=not args.no_progress,
    )
    if args.with_sasrec:
        from dataclasses import replace

        from model.sasrec import SasRecConfig
        from streams.evaluation.sasrec import evaluate_sasrec

        config = SasRecConfig()
        if args.sasrec_epochs is not None:
            config = replace(config, epochs=args.sasrec_epochs)
        sasrec = evaluate_sasrec(
            log,
            settings.window_seconds,
            test_windows=len(report.windows),
            config=config,
            progress=not args.no_progress,
        )
        report = replace(report, reports=[*report.reports, sasrec])
    print(report.markdown())
    report.write(args.json, args.markdown, args.plot)
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported to add its arguments."""
    parser = argparse.ArgumentParser(
        prog="trail",
        description="TRAIL: streaming trend scoring and explanation with a fine-tuned small LM",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(module=module_name)
        if name != command:
            continue
        if module_name == "streams.cli":
            add_arguments(name, sub)
        else:
            importlib.import_module(module_name).add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.module == "streams.cli":
            return run(args.command, args)
        return int(importlib.import_module(args.module).run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors whose message says what went wrong and what to do: one line, exit 2.

    A failed download of the base model or a data set (no network, no such version) is one
    of them; anything else is a bug and keeps its traceback. Imported here, not at the top,
    so that ``trail --help`` stays light.
    """
    from model.base import ModelError
    from streams.eventlog.log import DatasetError
    from streams.eventlog.wheels import WheelDownloadError

    return (ValueError, FileNotFoundError, ModelError, DatasetError, WheelDownloadError)


if __name__ == "__main__":
    raise SystemExit(main())
