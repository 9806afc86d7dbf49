"""Training data: window snapshots read into examples, split by time.

Per window, the items the cascade would hand to the LM (the top M by the recency prior) become
examples. The last ``holdout`` windows of every snapshot folder are never read (they are the
evaluation windows); the ``val_windows`` before them are the validation set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow.parquet as pq

from model.priors import prior_log_count
from schemas import ItemFeatures, ItemMeta, WindowSnapshotRow


class SplitSettings(Protocol):
    """What the split reads of a training configuration (``TrainConfig`` has it all)."""

    @property
    def holdout(self) -> int: ...
    @property
    def val_windows(self) -> int: ...
    @property
    def rescore_top(self) -> int: ...
    @property
    def label(self) -> str: ...


#: What the score head learns to predict (``log1p`` of it) for the next window.
LABELS = ("returning", "count")


@dataclass(frozen=True)
class Example:
    features: ItemFeatures
    next_count: float
    source: str
    next_returning: float = 0.0
    label: str = "returning"

    @property
    def target(self) -> float:
        """``log1p`` of the label: what the score head (prior + residual) predicts."""
        return math.log1p(self.next_returning if self.label == "returning" else self.next_count)

    @property
    def count_target(self) -> float:
        """``log1p`` of the next window's events: the forecast the explanation states."""
        return math.log1p(self.next_count)


@dataclass
class SnapshotSplit:
    train: list[list[Example]]  # one list per window
    validation: list[list[Example]]
    description: dict[str, Any]


def load_snapshot_windows(
    directory: Path, items: Mapping[str, ItemMeta] | None = None
) -> dict[int, list[WindowSnapshotRow]]:
    """Rows of a snapshot folder, by window end, oldest first; an item in ``items`` (a
    ``--items`` catalog) takes its title and categories from there."""
    if not directory.is_dir():
        raise FileNotFoundError(f"snapshot folder {directory} does not exist")
    files = sorted(directory.glob("window_end=*/*.parquet"))
    if not files:
        raise ValueError(f"snapshot folder {directory} holds no window_end=*/ Parquet files")
    fields = set(WindowSnapshotRow.model_fields)
    by_window: dict[int, list[WindowSnapshotRow]] = {}
    # One file per window, read one by one: an all-null column in one window must not clash
    # with the same column's type in another.
    for path in files:
        for record in pq.read_table(path).to_pylist():
            row = WindowSnapshotRow.model_validate({k: v for k, v in record.items() if k in fields})
            meta = items.get(row.item_id) if items else None
            if meta is not None:
                row = row.model_copy(update={"title": meta.title, "categories": meta.categories})
            by_window.setdefault(row.window_end, []).append(row)
    return dict(sorted(by_window.items()))


def examples(
    rows: Sequence[WindowSnapshotRow], top: int, prior: str, source: str, label: str
) -> list[Example]:
    ranked = sorted(rows, key=lambda r: (-prior_log_count(r, prior), r.item_id))[:top]
    features_fields = set(ItemFeatures.model_fields)
    return [
        Example(
            ItemFeatures(**{k: v for k, v in r.model_dump().items() if k in features_fields}),
            r.next_count,
            source,
            next_returning=r.next_returning,
            label=label,
        )
        for r in ranked
    ]


def split_snapshots(
    directories: Sequence[Path],
    config: SplitSettings,
    prior: str,
    items: Mapping[str, ItemMeta] | None = None,
) -> SnapshotSplit:
    """Train and validation windows from each folder; its last ``holdout`` windows unread."""
    train: list[list[Example]] = []
    validation: list[list[Example]] = []
    description: dict[str, Any] = {}
    for directory in directories:
        windows = load_snapshot_windows(directory, items)
        ends = list(windows)
        usable = ends[: max(0, len(ends) - config.holdout)]
        if len(usable) <= config.val_windows:
            raise ValueError(
                f"{directory}: {len(ends)} windows leave too few for training after holding "
                f"out {config.holdout} and validating on {config.val_windows}"
            )
        train_ends = usable[: -config.val_windows] if config.val_windows else usable
        val_ends = usable[len(train_ends) :]
        source = directory.name
        train += [
            examples(windows[e], config.rescore_top, prior, source, config.label)
            for e in train_ends
        ]
        validation += [
            examples(windows[e], config.rescore_top, prior, source, config.label) for e in val_ends
        ]
        description[str(directory)] = {
            "windows": len(ends),
            "train_windows": [train_ends[0], train_ends[-1]] if train_ends else [],
            "validation_windows": [val_ends[0], val_ends[-1]] if val_ends else [],
            "held_out_windows": ends[len(usable) :] and [ends[len(usable)], ends[-1]],
        }
    train = [w for w in train if len(w) >= 2]
    return SnapshotSplit(train, validation, description)
