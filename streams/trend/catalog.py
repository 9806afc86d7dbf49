"""Item ids and their dense indices, metadata, and the deterministic order of rankings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from schemas import ItemMeta

IndexArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: Scores are compared after rounding to this many decimals, so values that are equal in exact
#: arithmetic tie (and fall back to the id order) whatever floating-point path produced them.
SCORE_DECIMALS = 9


class ItemCatalog:
    """Item ids and their dense indices, plus metadata and a deterministic tie order.

    >>> catalog = ItemCatalog()
    >>> catalog.codes(np.array(["10", "9", "10"], dtype=object)).tolist()
    [0, 1, 0]
    >>> catalog.tie_order().tolist()  # every id is an integer: numeric order, 9 before 10
    [1, 0]
    """

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._index: dict[str, int] = {}
        self.meta: dict[str, ItemMeta] = {}
        self._integer_ids: list[int] = []
        self._all_integer = True
        self._tie_order: IndexArray | None = None
        self._id_array: npt.NDArray[np.object_] = np.empty(0, dtype=object)

    def __len__(self) -> int:
        return len(self.ids)

    def _add(self, item_id: str) -> int:
        code = len(self.ids)
        self.ids.append(item_id)
        self._index[item_id] = code
        if self._all_integer:
            try:
                self._integer_ids.append(int(item_id))
            except ValueError:
                self._all_integer = False
        self._tie_order = None
        return code

    def code(self, item_id: str) -> int:
        """The index of ``item_id``, registering it when new."""
        found = self._index.get(item_id)
        return found if found is not None else self._add(item_id)

    def codes(self, item_ids: Sequence[str] | npt.NDArray[Any]) -> IndexArray:
        """Indices of many ids at once; only distinct ids pay a dictionary lookup."""
        labels, uniques = pd.factorize(np.asarray(item_ids, dtype=object), sort=False)
        unique_codes = np.fromiter(
            (self.code(str(u)) for u in uniques), dtype=np.int64, count=len(uniques)
        )
        codes: IndexArray = unique_codes[labels]
        return codes

    def id_array(self) -> npt.NDArray[np.object_]:
        """The ids as a numpy object array (index it with catalog codes)."""
        if self._id_array.shape[0] != len(self.ids):
            self._id_array = np.asarray(self.ids, dtype=object)
        return self._id_array

    def add_metadata(self, items: Iterable[ItemMeta]) -> None:
        for meta in items:
            self.meta[meta.item_id] = meta

    def tie_order(self) -> IndexArray:
        """Position of every item when sorted by id: numerically when every id is an integer,
        else as strings. Rankings break score ties by it."""
        if self._tie_order is None or self._tie_order.shape[0] != len(self.ids):
            order = id_order(self.ids, self._integer_ids if self._all_integer else None)
            positions = np.empty(len(self.ids), dtype=np.int64)
            positions[order] = np.arange(len(self.ids))
            self._tie_order = positions
        return self._tie_order


def id_order(ids: Sequence[str], integers: Sequence[int] | None = None) -> IndexArray:
    """Positions of ``ids`` in the order rankings break ties in: numerically when every id is
    an integer (``integers``, when the caller already parsed them), else as strings.

    >>> id_order(["10", "9", "11"]).tolist(), id_order(["b", "a", "10"]).tolist()
    ([1, 0, 2], [2, 1, 0])
    >>> id_order(["100000000000000000000", "9"]).tolist()  # beyond int64: still numeric
    [1, 0]
    """
    if integers is None:
        try:
            integers = [int(i) for i in ids]
        except ValueError:
            integers = None
    keys: npt.NDArray[Any]
    if integers is not None:
        try:
            keys = np.asarray(integers, dtype=np.int64)
        except OverflowError:
            # An id beyond 64 bits is still an integer: compare them as Python ints.
            keys = np.asarray(integers, dtype=object)
    else:
        keys = np.asarray(list(ids), dtype=object)
    order: IndexArray = np.argsort(keys, kind="stable").astype(np.int64)
    return order


def tie_ranks(ids: Sequence[str]) -> IndexArray:
    """Each id's place in :func:`id_order` (0 first): the tie key of a ranking of ``ids``.

    >>> tie_ranks(["10", "9", "11"]).tolist()
    [1, 0, 2]
    """
    order = id_order(ids)
    ranks = np.empty(order.shape[0], dtype=np.int64)
    ranks[order] = np.arange(order.shape[0])
    return ranks


def rank_positions(scores: FloatArray, tie_order: IndexArray) -> IndexArray:
    """Positions sorted by score (rounded to :data:`SCORE_DECIMALS`) descending, ties by
    ``tie_order`` ascending (from :meth:`ItemCatalog.tie_order` or :func:`tie_ranks`).

    >>> rank_positions(np.array([1.0, 3.0, 3.0, 2.0]), np.array([0, 2, 1, 3])).tolist()
    [2, 1, 3, 0]
    >>> rank_positions(np.array([0.3, 0.1 + 0.2]), np.array([1, 0])).tolist()  # a tie
    [1, 0]
    """
    keys = np.round(scores, SCORE_DECIMALS)
    order: IndexArray = np.lexsort((tie_order, -keys)).astype(np.int64)
    return order
