"""What SASRec reads: users' histories as left-padded item-index sequences, and negatives."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from streams.eventlog import EventLog
from streams.trend.catalog import id_order

IntArray = npt.NDArray[np.int64]


def tie_order(item_ids: Sequence[str]) -> list[str]:
    """Item ids sorted as rankings break ties (:func:`streams.trend.catalog.id_order`):
    numerically when every id is an integer, else as strings."""
    ids = list(item_ids)
    return [ids[i] for i in id_order(ids).tolist()]


def user_histories(
    log: EventLog, item_index: Mapping[str, int]
) -> dict[str, tuple[npt.NDArray[np.float64], IntArray]]:
    """Each user's event times and item indices in time order (index 0 = unknown item)."""
    log = log.sorted_by_time()
    codes = pd.Series(log.item_ids, dtype=object).map(item_index).fillna(0).to_numpy(dtype=np.int64)
    # A stable sort by user keeps each user's events in time order.
    order = np.argsort(log.user_ids, kind="stable")
    users = log.user_ids[order]
    times = np.asarray(log.timestamps)[order]
    codes = codes[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    stops = np.r_[starts[1:], len(users)]
    return {
        str(users[a]): (times[a:b], codes[a:b])
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True)
    }


def left_pad(items: IntArray, length: int) -> IntArray:
    row = np.zeros(length, dtype=np.int64)
    if items.size:
        row[-items.size :] = items[-length:]
    return row


def training_sequences(
    histories: Mapping[str, tuple[npt.NDArray[np.float64], IntArray]], max_len: int
) -> tuple[IntArray, IntArray, list[IntArray]]:
    """Inputs, next-item targets and touched items of every user with two or more events.

    As in the paper, a user contributes the most recent ``max_len + 1`` training items: inputs
    ``s_1 .. s_n`` and targets ``s_2 .. s_{n+1}``, both left-padded.
    """
    inputs, targets, touched = [], [], []
    for user in sorted(histories):
        items = histories[user][1]
        if items.size < 2:
            continue
        recent = items[-(max_len + 1) :]
        inputs.append(left_pad(recent[:-1], max_len))
        targets.append(left_pad(recent[1:], max_len))
        touched.append(np.unique(items))
    empty = np.zeros((0, max_len), dtype=np.int64)
    return (
        np.stack(inputs) if inputs else empty,
        np.stack(targets) if targets else empty,
        touched,
    )


def sample_negatives(
    rng: np.random.Generator, targets: IntArray, touched: Sequence[IntArray], n_items: int
) -> IntArray:
    """One negative per position, uniform over the items the user never touched (0 where the
    position is padding or the user touched every item)."""
    seen = np.zeros((len(touched), n_items + 1), dtype=bool)
    for row, items in enumerate(touched):
        seen[row, items] = True
    hopeless = seen[:, 1:].all(axis=1)  # no item left to be a negative
    rows = np.arange(len(touched))[:, None]
    draw = rng.integers(1, n_items + 1, size=targets.shape)
    clash = seen[rows, draw] & ~hopeless[:, None]
    while clash.any():  # rejection sampling: users rarely touch most of the catalog
        draw[clash] = rng.integers(1, n_items + 1, size=int(clash.sum()))
        clash = seen[rows, draw] & ~hopeless[:, None]
    draw[hopeless] = 0
    return np.where(targets != 0, draw, 0)
