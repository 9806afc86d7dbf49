"""Per-row KV caches: what the scorer computed for a prompt, kept for that prompt's explanation.

The scorer (``trail-onnx@3`` on) returns the KV cache of the prompts it scores. The items the
window then explains are among them, and their explanation prompts are those prompts
followed by the forced forecast sentence, so their generation starts from the kept cache and
computes only the sentence's tokens before decoding, instead of the whole prompt again.

A cache tensor is ``(batch, kv_heads, length, head_dim)``, by ``past_key_values.*`` name. A
batch of left-padded rows holds padding positions; :func:`row_caches` keeps each row's real
positions only, and :func:`stacked` puts rows of different lengths back into one batch,
right-aligned, with the attention mask that hides the zeros before each row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
Past = dict[str, npt.NDArray[Any]]

#: Bytes of scorer caches one window may keep for its explanations (about 5 MB per
#: 100-token SmolLM2-135M prompt); rows beyond it are explained from their prompt ids.
DEFAULT_BUDGET_BYTES = 256 * 2**20


def row_caches(past: Past, mask: IntArray) -> list[Past]:
    """Each row's cache at the positions its ``mask`` row marks real, one row per batch.

    >>> past = {"k": np.arange(6, dtype=np.float32).reshape(2, 1, 3, 1)}
    >>> rows = row_caches(past, np.array([[1, 0, 1], [1, 1, 1]]))
    >>> [r["k"].ravel().tolist() for r in rows]
    [[0.0, 2.0], [3.0, 4.0, 5.0]]
    """
    result = []
    for row, real in enumerate(mask.astype(bool)):
        result.append(
            {name: np.ascontiguousarray(v[row : row + 1, :, real]) for name, v in past.items()}
        )
    return result


def stacked(rows: Sequence[Past]) -> tuple[Past, IntArray]:
    """One batch of ``rows``' caches, each right-aligned (zeros before it), and its mask.

    >>> a, b = {"k": np.ones((1, 1, 2, 1))}, {"k": np.full((1, 1, 3, 1), 2.0)}
    >>> past, mask = stacked([a, b])
    >>> past["k"][:, 0, :, 0].tolist(), mask.tolist()
    ([[0.0, 1.0, 1.0], [2.0, 2.0, 2.0]], [[0, 1, 1], [1, 1, 1]])
    """
    lengths = [next(iter(r.values())).shape[2] for r in rows]
    width = max(lengths)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    batch: Past = {}
    for name, first in rows[0].items():
        _, heads, _, dim = first.shape
        batch[name] = np.zeros((len(rows), heads, width, dim), dtype=first.dtype)
    for i, (row, length) in enumerate(zip(rows, lengths, strict=True)):
        mask[i, width - length :] = 1
        for name, value in row.items():
            batch[name][i, :, width - length :] = value[0]
    return batch, mask


class RowCacheStore:
    """The caches of one window's scored prompts, by prompt ids, within a byte budget.

    :meth:`admitted` picks the rows to keep before they are scored, in the order given (the
    ranker's, best first: the items most likely explained) until the budget is spent.

    >>> store = RowCacheStore(budget_bytes=20)
    >>> store.admitted([2, 3, 1], token_bytes=4)  # 8 + 12 bytes fit, the third row does not
    [True, True, False]
    >>> store.put([1, 2], {"k": np.zeros((1, 1, 2, 1), np.float32)})
    >>> store.get([1, 2]) is not None, store.get([3])
    (True, None)
    """

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.budget_bytes = budget_bytes
        self._rows: dict[tuple[int, ...], Past] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        self._rows.clear()

    def admitted(self, lengths: Sequence[int], token_bytes: int) -> list[bool]:
        """Which rows of these token ``lengths`` to keep: the first ones that fit."""
        total = np.cumsum(np.asarray(lengths, dtype=np.int64) * token_bytes)
        return (total <= self.budget_bytes).tolist()

    def put(self, prompt_ids: Sequence[int], past: Past) -> None:
        self._rows[tuple(prompt_ids)] = past

    def get(self, prompt_ids: Sequence[int]) -> Past | None:
        return self._rows.get(tuple(prompt_ids))
