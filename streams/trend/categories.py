"""Category statistics of one stream: how busy each item category is, and each item's share.

Every category has a short and a long exponentially weighted mean (half-lives 1 and 8
windows) of the summed counts of its items; an item's *category momentum* is the mean, over
its categories, of ``(short + 1) / (long + 1)`` (NaN for an item without categories). The
categories are indexed in the order they were first registered, which a checkpoint keeps
(:attr:`CategoryStats.names`), because replaced metadata no longer tells that order.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
from scipy import sparse

from schemas import ItemMeta
from streams.trend.catalog import ItemCatalog
from streams.trend.stats import DecayingMeans

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]

#: Half-lives (in windows) of the short and the long mean of a category's counts.
CATEGORY_HALF_LIVES = (1.0, 8.0)


class CategoryStats:
    """The category means of the items of ``catalog`` (whose metadata names the categories).

    >>> catalog = ItemCatalog()
    >>> items = [ItemMeta(item_id="a", categories=("X",)), ItemMeta(item_id="b")]
    >>> catalog.add_metadata(items)
    >>> stats = CategoryStats(catalog)
    >>> stats.register(items)
    >>> rows = catalog.codes(["a", "b"])
    >>> stats.update(rows, np.array([4.0, 1.0]), window=0)
    >>> stats.momentum(rows, window=0).round(3).tolist()  # b has no category
    [2.252, nan]
    """

    def __init__(self, catalog: ItemCatalog) -> None:
        self.catalog = catalog
        self._names: list[str] = []
        self._index: dict[str, int] = {}
        self.means = DecayingMeans(CATEGORY_HALF_LIVES)
        self._membership_cache: sparse.csr_matrix | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The category names in the order the statistics are indexed by."""
        return tuple(self._names)

    def register(self, items: Iterable[ItemMeta]) -> None:
        """Give every category of ``items`` not seen before the next index."""
        for meta in items:
            for name in meta.categories:
                if name not in self._index:
                    self._index[name] = len(self._names)
                    self._names.append(name)

    def members_changed(self) -> None:
        """An item's categories changed: the cached membership matrix is stale even where its
        shape is not."""
        self._membership_cache = None

    def restore_names(self, names: Iterable[str]) -> None:
        """Index the statistics by ``names`` (saved from :attr:`names`); only into statistics
        without any, of a catalog without metadata."""
        if self._names or self.catalog.meta:
            raise RuntimeError("category names can only be restored into a state without any")
        self._names = [str(name) for name in names]
        self._index = {name: i for i, name in enumerate(self._names)}
        self._membership_cache = None

    def _membership(self) -> sparse.csr_matrix:
        """Items x categories 0/1 matrix, rebuilt only when the catalog or metadata grew."""
        shape = (len(self.catalog), len(self._names))
        if self._membership_cache is None or self._membership_cache.shape != shape:
            rows: list[int] = []
            columns: list[int] = []
            for item_id, meta in self.catalog.meta.items():
                code = self.catalog.code(item_id)
                for name in meta.categories:
                    rows.append(code)
                    columns.append(self._index[name])
            shape = (len(self.catalog), len(self._names))
            data = np.ones(len(rows))
            self._membership_cache = sparse.csr_matrix((data, (rows, columns)), shape=shape)
        return self._membership_cache

    def update(self, changed: IndexArray, counts: FloatArray, window: int) -> None:
        """Fold one closed window's counts of the ``changed`` items into their categories."""
        if not self._names or changed.shape[0] == 0:
            return
        totals = np.asarray(self._membership()[changed].T @ counts).ravel()
        active = np.flatnonzero(totals > 0).astype(np.int64)
        self.means.update(active, window, totals[active])

    def momentum(self, rows: IndexArray, window: int) -> FloatArray:
        """The category momentum of ``rows`` as of ``window`` (NaN without categories)."""
        if not self._names:
            return np.full(rows.shape[0], np.nan)
        all_categories = np.arange(len(self._names), dtype=np.int64)
        means = self.means.get(all_categories, window)
        momentum = (means[:, 0] + 1.0) / (means[:, 1] + 1.0)
        membership = self._membership()[rows]
        members = np.asarray(membership.sum(axis=1)).ravel()
        summed = np.asarray(membership @ momentum).ravel()
        result: FloatArray = np.where(members > 0, summed / np.maximum(members, 1), np.nan)
        return result
