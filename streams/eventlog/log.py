"""The event log as columns, and what a load reports: bad rows and the error that stops it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from schemas import ItemMeta

#: At most this many malformed rows are kept with their reasons; all of them are counted.
MAX_BAD_ROWS = 1000


class DatasetError(Exception):
    """An event log that cannot be loaded at all; the message says why and what to do."""


@dataclass(frozen=True)
class BadRow:
    """A malformed row that was skipped.

    Attributes
    ----------
    line : int
        1-based line number in the file (the header is line 1); for Parquet, the row number.
    reason : str
        What is wrong, e.g. ``"timestamp 'abc' is not a number or an ISO-8601 time"``.
    """

    line: int
    reason: str


@dataclass(frozen=True, eq=False)
class EventLog:
    """An event log as columns: one entry per event in each array.

    The arrays are read-only views; ``items`` is a read-only mapping.

    Attributes
    ----------
    name : str
        Dataset name, or the file name.
    user_ids, item_ids : numpy.ndarray
        ``object`` arrays of ``str``.
    timestamps : numpy.ndarray
        ``float64`` unix seconds, finite and non-negative.
    items : Mapping[str, ItemMeta]
        Item metadata when the source has it, else empty.
    bad_rows : tuple[BadRow, ...]
        The first :data:`MAX_BAD_ROWS` malformed rows of the source, in file order.
    bad_row_count : int
        How many malformed rows the source had in all.
    source : str
        The path the events came from.
    time_unit : str
        The unit the source's plain-number timestamps were read in: ``"s"``, ``"ms"``,
        ``"us"`` or ``"ns"`` (``"s"`` when it has none).
    notes : tuple[str, ...]
        What the load chose on its own that the user should know, e.g. a detected time unit.

    Examples
    --------
    >>> log = EventLog("demo", np.array(["u", "v"], dtype=object),
    ...                np.array(["a", "b"], dtype=object), np.array([20.0, 10.0]))
    >>> len(log), list(log.sorted_by_time().item_ids), list(log.slice_time(15, None).user_ids)
    (2, ['b', 'a'], ['u'])
    """

    name: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray
    items: Mapping[str, ItemMeta] = field(default_factory=dict)
    bad_rows: tuple[BadRow, ...] = ()
    bad_row_count: int = 0
    source: str = ""
    time_unit: str = "s"
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        columns = {
            "user_ids": _read_only(self.user_ids, object),
            "item_ids": _read_only(self.item_ids, object),
            "timestamps": _read_only(self.timestamps, np.float64),
        }
        if len({len(column) for column in columns.values()}) != 1:
            sizes = ", ".join(f"{key}={len(column)}" for key, column in columns.items())
            raise ValueError(f"EventLog columns differ in length: {sizes}")
        for key, column in columns.items():
            object.__setattr__(self, key, column)
        object.__setattr__(self, "items", MappingProxyType(dict(self.items)))
        object.__setattr__(self, "bad_rows", tuple(self.bad_rows))
        object.__setattr__(self, "notes", tuple(self.notes))

    def __len__(self) -> int:
        """Return the number of events."""
        return len(self.timestamps)

    def sorted_by_time(self) -> EventLog:
        """Return the log stably sorted by timestamp (``self`` when it already is).

        Returns
        -------
        EventLog
            Events in time order; events with equal timestamps keep their file order.
        """
        ts = self.timestamps
        if bool(np.all(ts[1:] >= ts[:-1])):
            return self
        return self._take(np.argsort(ts, kind="stable"))

    def slice_time(self, start: float | None, end: float | None) -> EventLog:
        """Return the events with ``start <= timestamp < end``.

        Parameters
        ----------
        start, end : float or None
            Bounds in unix seconds; ``None`` leaves that side open.

        Returns
        -------
        EventLog
            The selected events in their current order, with the same metadata and bad-row
            report (both describe the source); ``self`` when every event is selected.
        """
        keep = np.ones(len(self), dtype=bool)
        if start is not None:
            keep &= self.timestamps >= start
        if end is not None:
            keep &= self.timestamps < end
        if keep.all():
            return self
        return self._take(np.flatnonzero(keep))

    def _take(self, index: np.ndarray) -> EventLog:
        return dataclasses.replace(
            self,
            user_ids=self.user_ids[index],
            item_ids=self.item_ids[index],
            timestamps=self.timestamps[index],
        )


def _read_only(values: np.ndarray, dtype: type) -> np.ndarray:
    """Return a read-only 1-D view of ``values`` as ``dtype`` (the caller's array is untouched)."""
    array: np.ndarray = np.asarray(values, dtype=dtype).view()
    if array.ndim != 1:
        raise ValueError(f"EventLog columns must be one-dimensional, got shape {array.shape}")
    array.flags.writeable = False
    return array
