"""SASRec's rankings at the protocol's ranking times: each user's top items, ties by item id.

The report of SASRec under the evaluation protocol (the windows, targets and metrics every
scorer is judged by) is :mod:`streams.evaluation.sasrec`'s, beside the other scorers'.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from model.sasrec.data import IntArray, left_pad, user_histories
from model.sasrec.network import SasRec
from model.sasrec.training import torch_threads
from streams.eventlog import EventLog

NAME = "sasrec"
VERSION = "sasrec@1"

#: Users scored in one forward pass when ranking.
_RANK_BATCH = 256


def _top_k(scores: npt.NDArray[np.float32], k: int) -> IntArray:
    """Indices of the ``k`` best finite scores, ties by index (= item id) ascending."""
    finite = int(np.isfinite(scores).sum())
    m = min(k, finite)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    best = np.argpartition(-scores, m - 1)[:m]
    # Everything tied with the m-th best competes, so ties are broken by index, not by chance.
    candidates = np.flatnonzero(scores >= scores[best].min())
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order[:m]]


@torch.no_grad()
def sasrec_rankings(
    model: SasRec,
    log: EventLog,
    window_ends: list[int],
    users_per_window: dict[int, list[str]],
    k: int = 20,
) -> dict[int, dict[str, list[str]]]:
    """Each user's top-``k`` items at each ranking time.

    Parameters
    ----------
    model : SasRec
        A trained model.
    log : EventLog
        The events; at ranking time ``end`` only those with ``timestamp < end`` are read.
    window_ends : list of int
        Ranking times (unix seconds).
    users_per_window : dict of int to list of str
        The users to rank for at each time.
    k : int
        Ranking depth.

    Returns
    -------
    dict of int to dict of str to list of str
        ``end -> user -> item ids``, best first, ties by item id ascending. Items the user
        touched before ``end`` and items the model does not know are never recommended; a
        user with no known item before ``end`` gets an empty ranking (nothing to condition on).
    """
    histories = user_histories(log, model.item_index)
    max_len = model.config.max_len
    model.eval()
    rankings: dict[int, dict[str, list[str]]] = {}
    with torch_threads(model.config.threads):
        for end in window_ends:
            per_user: dict[str, list[str]] = {}
            users = users_per_window.get(end, [])
            for start in range(0, len(users), _RANK_BATCH):
                batch, sequences, touched = [], [], []
                for user in users[start : start + _RANK_BATCH]:
                    times, codes = histories.get(user, (np.zeros(0), np.zeros(0, np.int64)))
                    known = codes[: np.searchsorted(times, end, side="left")]
                    known = known[known != 0]  # unseen items have no embedding
                    if not known.size:
                        per_user[user] = []
                        continue
                    batch.append(user)
                    sequences.append(left_pad(known, max_len))
                    touched.append(known)
                if not batch:
                    continue
                scores = model.score_last(torch.from_numpy(np.stack(sequences))).numpy()
                scores[:, 0] = -np.inf  # padding is not an item
                for row, user in enumerate(batch):
                    scores[row, touched[row]] = -np.inf
                    top = _top_k(scores[row], k)
                    per_user[user] = [model.item_ids[j - 1] for j in top.tolist()]
            rankings[end] = per_user
    return rankings
