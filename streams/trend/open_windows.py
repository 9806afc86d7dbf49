"""The windows of a trend state as events pass through them.

An event is only appended to its open window's buffer (:class:`OpenWindows`); the window's
statistics move once, when it closes (:class:`~streams.trend.state.TrendState`), and what the
close changed is a :class:`ClosedWindow`. :class:`IngestResult` is what one batch of events
closed and which of its events came late.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.trend.subwindow import WindowEvents
from streams.trend.users import HashArray

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ClosedWindow:
    """A window that just closed: which items changed and by how much."""

    index: int
    start: int
    end: int
    changed: IndexArray
    counts: FloatArray
    events: float


@dataclass(frozen=True)
class IngestResult:
    """What one batch did: windows it closed (in order) and which of its events were late."""

    closed: list[ClosedWindow]
    late: npt.NDArray[np.bool_]


class OpenWindows:
    """The events of the windows not closed yet, by window index, in the chunks they came in.

    >>> open_windows = OpenWindows()
    >>> open_windows.add(
    ...     np.array([0, 1, 0]), np.array([3, 5, 3]), np.array([30.0, 51.0, 32.0]),
    ...     np.ones(3), np.zeros(3, dtype=np.uint64),
    ... )
    >>> sorted(open_windows), 4 in open_windows
    ([3, 5], False)
    >>> open_windows.pop(3).codes.tolist(), len(open_windows.pop(4)), sorted(open_windows)
    ([0, 0], 0, [5])
    """

    def __init__(self) -> None:
        self._chunks: dict[int, list[WindowEvents]] = {}

    def __contains__(self, window: object) -> bool:
        return window in self._chunks

    def __iter__(self) -> Iterator[int]:
        return iter(self._chunks)

    def add(
        self,
        codes: IndexArray,
        windows: IndexArray,
        times: FloatArray,
        weights: FloatArray,
        users: HashArray,
    ) -> None:
        """Buffer events (catalog codes, window indices, times, weights, user hashes).

        The arrays are kept, not copied: the caller hands over arrays it will not reuse.
        """
        if codes.shape[0] == 0:
            return
        first, last = int(windows.min()), int(windows.max())
        if first == last:
            self._chunks.setdefault(first, []).append(WindowEvents(codes, times, weights, users))
            return
        if bool((windows[1:] >= windows[:-1]).all()):
            # Events in time order (a replay): each window's events are one slice, no sort.
            changes = (np.flatnonzero(np.diff(windows)) + 1).tolist()
            for start, stop in zip([0, *changes], [*changes, len(windows)], strict=True):
                chunk = WindowEvents(
                    codes[start:stop], times[start:stop], weights[start:stop], users[start:stop]
                )
                self._chunks.setdefault(int(windows[start]), []).append(chunk)
            return
        for window in np.unique(windows).tolist():
            mask = windows == window
            chunk = WindowEvents(codes[mask], times[mask], weights[mask], users[mask])
            self._chunks.setdefault(window, []).append(chunk)

    def pop(self, window: int) -> WindowEvents:
        """The events of ``window`` (none when it had none), which is then no longer open."""
        return WindowEvents.concat(self._chunks.pop(window, []))

    def state_dict(self) -> dict[str, Any]:
        """Every open window's events, keyed by the window index as text (JSON keys)."""
        return {
            str(window): WindowEvents.concat(chunks).state_dict()
            for window, chunks in self._chunks.items()
        }

    @classmethod
    def from_state_dict(cls, data: Mapping[str, Any]) -> OpenWindows:
        """Rebuild what :meth:`state_dict` wrote."""
        open_windows = cls()
        for window_text, events in data.items():
            open_windows._chunks[int(window_text)] = [WindowEvents.from_state_dict(events)]
        return open_windows
