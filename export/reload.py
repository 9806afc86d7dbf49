"""Hot reload: serve the newest export of a folder, and swap in a newer one between windows.

:class:`ReloadingScorer` watches a folder (:class:`ModelWatcher`) and swaps in a newer export
between windows, keeping the old one when the new one does not load.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Unpack

import numpy as np
import numpy.typing as npt

from export.manifest import MANIFEST_FILE, read_manifest
from export.runtime import OrtTrailScorer, ServingOptions
from model.files import ModelLoadError, sha256_file
from streams.trend.features import FeatureFrame
from streams.trend.state import WindowOutcome

FloatArray = npt.NDArray[np.float64]

log = logging.getLogger("trail.export")


def _created(path: Path) -> tuple[str, float]:
    """Sort key of an export: the manifest's creation time, then the file's mtime."""
    manifest = path / MANIFEST_FILE
    try:
        created = str(json.loads(manifest.read_text()).get("created_at", ""))
    except (OSError, ValueError, AttributeError):
        created = ""
    return created, manifest.stat().st_mtime


class ModelWatcher:
    """Serves the newest export of ``folder`` and picks up newer ones when asked.

    ``folder`` is either one export (reloaded when its manifest changes, e.g. after an export
    in place) or a folder of exports (the newest subfolder with a manifest is served; names
    starting with ``.`` are ignored, which is where ``trail export`` stages its work). A newer
    export that fails to load is logged once and skipped; the current one keeps serving.
    """

    def __init__(self, folder: Path, load: Callable[[Path], OrtTrailScorer]) -> None:
        self.folder = Path(folder)
        self._load = load
        self._failed: set[tuple[Path, str]] = set()
        errors: list[str] = []
        for path in self.candidates():
            try:
                self.current = load(path)
            except ModelLoadError as exc:
                errors.append(str(exc))
                self._failed.add((path, self._manifest_key(path)))
                log.error("cannot serve %s: %s", path, exc)
                continue
            self._key = (path, self.current.manifest_sha256)
            return
        if errors:
            listed = "\n  ".join(errors)
            raise ModelLoadError(f"no export in {folder} can be served:\n  {listed}")
        read_manifest(self.folder)  # raises the clear "missing / not an export" error
        raise ModelLoadError(f"no export in {folder}")  # pragma: no cover - read_manifest raised

    def candidates(self) -> list[Path]:
        """Export folders, newest first."""
        if (self.folder / MANIFEST_FILE).is_file():
            return [self.folder]
        if not self.folder.is_dir():
            return []
        found = [
            sub
            for sub in self.folder.iterdir()
            if sub.is_dir() and not sub.name.startswith(".") and (sub / MANIFEST_FILE).is_file()
        ]
        return sorted(found, key=lambda p: (_created(p), p.name), reverse=True)

    @staticmethod
    def _manifest_key(path: Path) -> str:
        try:
            return sha256_file(path / MANIFEST_FILE)
        except OSError:
            return ""

    def maybe_reload(self) -> bool:
        """Load the newest export if it is not the one serving; ``True`` when it switched.

        Cheap when nothing changed (a directory listing and a hash of small manifests), so it
        can run at every window's close.
        """
        candidates = self.candidates()
        if not candidates:
            return False
        newest = candidates[0]
        key = (newest, self._manifest_key(newest))
        if key == self._key or key in self._failed:
            return False
        try:
            scorer = self._load(newest)
        except Exception as exc:  # noqa: BLE001 - whatever broke, the old model keeps serving
            self._failed.add(key)
            log.error("cannot load %s, still serving %s: %s", newest, self.current.version, exc)
            return False
        log.info("reloaded: %s -> %s (%s)", self.current.version, scorer.version, newest)
        self.current = scorer
        self._key = key
        return True


class ReloadingScorer:
    """A Scorer over a watched folder: a newer export is swapped in between windows.

    :meth:`score` opens every window, so it first asks the watcher for a newer export; the
    window is then scored and explained by one model, and ``version`` (which the engine writes
    into every ScoreUpdate) names the export that served it. ``options`` are
    :class:`~export.runtime.OrtTrailScorer`'s, for every export it loads.
    """

    name = "trail"
    learns_online = True

    def __init__(
        self, folder: Path, *, guard: bool = True, **options: Unpack[ServingOptions]
    ) -> None:
        from model.cascade import RankingStage
        from model.scorer import ExplanationGuard

        # One guard and one online ranking stage across reloads: counts cover the whole run,
        # and a new export keeps what the ranker has learned.
        self.guard = ExplanationGuard(guard)
        self.stage = RankingStage()

        def load(path: Path) -> OrtTrailScorer:
            scorer = OrtTrailScorer(path, **options)
            scorer.guard = self.guard
            scorer.stage = self.stage
            return scorer

        self.watcher = ModelWatcher(folder, load)

    @property
    def current(self) -> OrtTrailScorer:
        return self.watcher.current

    @property
    def version(self) -> str:
        return self.watcher.current.version

    @property
    def provider(self) -> str:
        return self.watcher.current.provider

    def score(self, features: FeatureFrame) -> FloatArray:
        self.watcher.maybe_reload()
        return self.watcher.current.score(features)

    def explain(self, features: FeatureFrame, scores: FloatArray) -> list[str | None]:
        return self.watcher.current.explain(features, scores)

    def learn(self, features: FeatureFrame, outcome: WindowOutcome) -> None:
        self.stage.learn(features, outcome)

    def forecast(self, features: FeatureFrame) -> tuple[FloatArray, FloatArray]:
        return self.stage.ranker.forecast(features)

    def state_dict(self) -> dict[str, Any]:
        return self.watcher.current.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.watcher.current.load_state_dict(state)
