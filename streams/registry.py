"""Scorers by their command-line name, built as the settings say: the one scorer factory.

The factory sits in the application layer, above ``model/`` and ``export/``, because a TRAIL
scorer needs both: ONNX Runtime from ``export/`` (an export folder that is swapped for a newer
one between windows, or the adapter's export from the cache, made on first use) and PyTorch
from ``model/`` where ONNX Runtime cannot serve the adapter here. Baselines need nothing; the
language-model scorers load their weights only when built, so listing or running a baseline
never imports torch or ONNX Runtime (docs/architecture.md, "Conventions that tools rely on").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from model.baselines import BASELINES
from streams.scoring import Scorer
from streams.settings import Settings

if TYPE_CHECKING:
    from export.cache import Log
    from export.runtime import OrtTrailScorer
    from model.scorer import TrailScorer

BASELINE_NAMES = tuple(BASELINES)
#: The online ranker and its ablations: the label HR@10 counts, or the sub-window signals,
#: taken away one at a time.
RANKERS: dict[str, dict[str, object]] = {
    "ranker": {},
    "ranker-count-label": {"label": "count"},
    "ranker-no-subwindow": {"subwindow": False},
}
#: The scorers with a language model: the untuned base LM and TRAIL's adapter.
LANGUAGE_MODELS = ("base-lm", "trail")
#: Every scorer name the CLI accepts, in the order reports list them: each of the three
#: kinds above is listed where it is defined, and only there.
SCORER_NAMES = (*BASELINES, *RANKERS, *LANGUAGE_MODELS)


class UnknownScorerError(ValueError):
    """A scorer name that is none of :data:`SCORER_NAMES`."""


def scorer_factory(name: str, settings: Settings) -> Callable[[], Scorer]:
    """A zero-argument constructor for scorer ``name`` configured by ``settings``."""
    if name in BASELINES:
        # Typed by the mixin they share (no explanations, no online learning); every baseline
        # also has the protocol's name, version and score.
        return cast("Callable[[], Scorer]", BASELINES[name])
    if name in RANKERS:
        from model.ranker import OnlineRanker, RankerConfig

        config = RankerConfig(**RANKERS[name])  # type: ignore[arg-type]
        return lambda: _named(OnlineRanker(config), name)
    if name in LANGUAGE_MODELS:
        return language_model_scorer_factory(name, settings)
    raise UnknownScorerError(f"unknown scorer {name!r}; choose one of: {', '.join(SCORER_NAMES)}")


def _named(scorer: Scorer, name: str) -> Scorer:
    scorer.name = name
    return scorer


def language_model_scorer_factory(name: str, settings: Settings) -> Callable[[], Scorer]:
    """Constructor of ``trail`` or ``base-lm`` as ``settings`` configure them.

    TRAIL runs on ONNX Runtime by default (``settings.lm_runtime``): with ``model_dir`` that
    export (folder) is served, otherwise the adapter's export from the cache, made on first
    use (:func:`cached_trail_scorer`); ``torch`` serves the adapter with PyTorch.
    """
    from model.scorer import DEFAULT_ADAPTER, BaseLMScorer, TrailScorer

    if name == "base-lm":
        return lambda: BaseLMScorer(
            base_model=settings.base_model, rescore_top=settings.rescore_top
        )
    if settings.model_dir is not None:
        if settings.lm_runtime == "torch":
            raise ValueError(
                "--model serves an ONNX export with ONNX Runtime; for PyTorch pass the "
                "adapter (--adapter DIR) with --lm-runtime torch"
            )
        # A folder of exports (or one export): the newest valid one serves, and a newer one is
        # picked up between windows without a restart.
        from export.cache import PRECISION_OF
        from export.reload import ReloadingScorer

        model_dir = settings.model_dir
        precision = PRECISION_OF[settings.lm_runtime]
        return lambda: ReloadingScorer(
            model_dir,
            rescore_top=settings.rescore_top,
            guard=settings.explanation_guard,
            precision=precision,
        )
    adapter = settings.adapter or DEFAULT_ADAPTER
    if not (adapter / "trail_config.json").is_file():
        raise FileNotFoundError(
            f"no TRAIL adapter at {adapter}: train one with `trail train SNAPSHOTS --out DIR` "
            "and pass --adapter DIR"
        )
    if settings.lm_runtime != "torch":
        return lambda: cached_trail_scorer(adapter, settings)
    return lambda: TrailScorer(
        adapter,
        base_model=settings.base_model,
        rescore_top=settings.rescore_top,
        guard=settings.explanation_guard,
    )


def cached_trail_scorer(adapter_dir: Path, settings: Settings, *, log: Log | None = None) -> Scorer:
    """The TRAIL scorer for ``adapter_dir`` on the runtime ``settings.lm_runtime`` asks for.

    ``auto`` serves ONNX Runtime from the cache in ``settings.cache_dir`` (int8 on the CPU
    where it held, see :func:`export.runtime.choose_precision`), and PyTorch when ONNX Runtime
    cannot serve this adapter here (a package missing, or the export failed its validation),
    saying so; ``ort``, ``ort-fp32`` and ``ort-int8`` raise instead of falling back. ``log``
    (standard error by default) hears about exports and fallbacks.
    """
    import shutil

    from export.cache import (
        PRECISION_OF,
        ExportUnavailable,
        ensure_export,
        log_to_stderr,
        wants_int8,
    )
    from model.files import ModelLoadError

    say = log or log_to_stderr
    runtime = settings.lm_runtime
    precision = PRECISION_OF[runtime]
    root = settings.cache_dir
    int8 = wants_int8(precision)
    folder: Path | None = None
    try:
        folder = ensure_export(
            adapter_dir, cache_dir=root, base_model=settings.base_model, int8=int8, log=say
        )
        return _ort(folder, settings, precision)
    except ModelLoadError as exc:
        if folder is None or runtime != "auto":
            raise
        # The cache is ours: a corrupt or truncated file there is exported again, once.
        say(f"warning: the cached export cannot be served ({exc}); exporting it again")
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder = ensure_export(
                adapter_dir, cache_dir=root, base_model=settings.base_model, int8=int8, log=say
            )
            return _ort(folder, settings, precision)
        except (ImportError, ExportUnavailable, ModelLoadError) as again:
            return _torch(adapter_dir, settings, again, say)
    except (ImportError, ExportUnavailable) as exc:
        if runtime != "auto":
            raise
        return _torch(adapter_dir, settings, exc, say)


def _ort(folder: Path, settings: Settings, precision: str) -> OrtTrailScorer:
    from export.runtime import OrtTrailScorer

    return OrtTrailScorer(
        folder,
        rescore_top=settings.rescore_top,
        guard=settings.explanation_guard,
        precision=precision,
    )


def _torch(adapter_dir: Path, settings: Settings, why: BaseException, log: Log) -> TrailScorer:
    from model.scorer import TrailScorer

    log(
        f"warning: ONNX Runtime cannot serve the TRAIL adapter here ({why}); "
        "scoring with PyTorch instead (--lm-runtime torch says so explicitly)"
    )
    return TrailScorer(
        adapter_dir,
        base_model=settings.base_model,
        rescore_top=settings.rescore_top,
        guard=settings.explanation_guard,
    )
