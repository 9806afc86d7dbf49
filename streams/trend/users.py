"""Who has been seen: user ids as 64-bit hashes, and the set of users seen before a window.

A *returning* user of window ``t`` is one whose first event came before ``t`` began; that is
the user the evaluation's HR@10 counts. The trend state never keeps user id strings: each
id becomes a 64-bit hash (pandas' SipHash-2-4 with its fixed default key, stable across runs
and machines), and the set of users seen so far is either

* :class:`ExactSeenUsers`: a sorted array of hashes, 8 bytes per user, exact up to 64-bit
  hash collisions (about one in 10^7 for a billion users); or
* :class:`BloomSeenUsers`: a Bloom filter of fixed size for very large user bases, whose
  false positives count a few new users as returning (the rate is reported).

Both round-trip through plain dicts (no pickle).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd

from streams.trend.packing import pack_array, unpack_array

HashArray = npt.NDArray[np.uint64]
BoolArray = npt.NDArray[np.bool_]

#: How user ids are hashed; stored in every state so a reader never mixes two schemes.
USER_HASH = "pandas-siphash24-0123456789123456"


def hash_user_ids(user_ids: npt.ArrayLike) -> HashArray:
    """64-bit hashes of user ids (any values; compared by their text).

    >>> hashes = hash_user_ids(np.array(["u1", "u2", "u1"], dtype=object))
    >>> bool(hashes[0] == hashes[2]), bool(hashes[0] == hashes[1])
    (True, False)
    >>> int(hash_user_ids(np.array([7], dtype=object))[0]) == int(hash_user_ids(["7"])[0])
    True
    """
    # pandas hashes non-string objects by their str(), so 7 and "7" are one user. This is
    # what ``pd.util.hash_array(values, categorize=True)`` computes (factorize, hash each
    # distinct id once, spread the hashes back; a missing id gets the largest uint64), less
    # its Categorical wrapper, which cost a third again of the factorising on every batch.
    values = np.asarray(user_ids, dtype=object)
    codes, distinct = pd.factorize(values, sort=False)
    hashes = pd.util.hash_array(np.asarray(distinct, dtype=object), categorize=False)
    hashed: HashArray = (
        hashes.take(codes) if hashes.shape[0] else np.zeros(codes.shape[0], dtype=np.uint64)
    )
    missing = codes < 0
    if missing.any():
        hashed[missing] = np.iinfo(np.uint64).max
    return hashed


class SeenUsers(Protocol):
    """The set of users seen in closed windows."""

    kind: str

    def __len__(self) -> int: ...

    def contains(self, hashes: HashArray) -> BoolArray: ...

    def add(self, hashes: HashArray) -> None: ...

    def add_new(self, hashes: HashArray) -> None:
        """Add ``hashes`` known to be distinct and not yet in the set."""
        ...

    def state_dict(self) -> dict[str, Any]: ...


class ExactSeenUsers:
    """Exact set of user hashes, kept sorted.

    >>> seen = ExactSeenUsers()
    >>> seen.add(np.array([5, 3, 5], dtype=np.uint64))
    >>> seen.contains(np.array([3, 4, 5], dtype=np.uint64)).tolist(), len(seen)
    ([True, False, True], 2)
    """

    kind = "exact"

    def __init__(self, hashes: HashArray | None = None) -> None:
        self._sorted: HashArray = (
            np.zeros(0, dtype=np.uint64) if hashes is None else np.unique(hashes)
        )

    def __len__(self) -> int:
        return int(self._sorted.shape[0])

    def contains(self, hashes: HashArray) -> BoolArray:
        if self._sorted.shape[0] == 0:
            return np.zeros(hashes.shape[0], dtype=bool)
        where = np.searchsorted(self._sorted, hashes)
        where = np.minimum(where, self._sorted.shape[0] - 1)
        found: BoolArray = self._sorted[where] == hashes
        return found

    def add(self, hashes: HashArray) -> None:
        self.add_new(np.unique(hashes[~self.contains(hashes)]))

    def add_new(self, hashes: HashArray) -> None:
        """Add ``hashes`` known to be distinct and not yet in the set (no second look-up)."""
        if hashes.shape[0]:
            fresh = np.sort(hashes)
            # New users are few per window: one insertion pass keeps the array sorted.
            self._sorted = np.insert(self._sorted, np.searchsorted(self._sorted, fresh), fresh)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "hash": USER_HASH, "users": pack_array(self._sorted)}

    @classmethod
    def from_state_dict(cls, data: Mapping[str, Any]) -> ExactSeenUsers:
        return cls(unpack_array(data["users"], np.uint64))


class BloomSeenUsers:
    """A Bloom filter of ``bits`` bits and ``hashes`` probes per user (double hashing).

    Memory is ``bits / 8`` bytes whatever the number of users. Once ``n`` users are in, a
    new user is mistaken for a seen one with probability about ``(1 - e^(-k n / m))^k``
    (:meth:`false_positive_rate`).

    >>> seen = BloomSeenUsers(bits=1 << 16, probes=4)
    >>> seen.add(hash_user_ids([f"u{i}" for i in range(100)]))
    >>> bool(seen.contains(hash_user_ids(["u7"]))[0]), seen.false_positive_rate() < 1e-4
    (True, True)
    """

    kind = "bloom"

    def __init__(self, bits: int = 1 << 27, probes: int = 5) -> None:
        if bits < 64 or bits & (bits - 1):
            raise ValueError(f"Bloom filter bits must be a power of two >= 64, got {bits}")
        if not 1 <= probes <= 16:
            raise ValueError(f"Bloom filter probes must be 1..16, got {probes}")
        self.bits = bits
        self.probes = probes
        self._array = np.zeros(bits // 8, dtype=np.uint8)
        self._added = 0

    def __len__(self) -> int:
        """Users added (a user added twice counts twice: the filter cannot tell)."""
        return self._added

    def _positions(self, hashes: HashArray) -> npt.NDArray[np.uint64]:
        low = hashes & np.uint64(0xFFFFFFFF)
        high = (hashes >> np.uint64(32)) | np.uint64(1)
        steps = np.arange(self.probes, dtype=np.uint64)
        mask = np.uint64(self.bits - 1)
        positions: npt.NDArray[np.uint64] = (low[:, None] + steps[None, :] * high[:, None]) & mask
        return positions

    def contains(self, hashes: HashArray) -> BoolArray:
        positions = self._positions(hashes)
        bytes_, offsets = positions >> np.uint64(3), positions & np.uint64(7)
        set_bits = (self._array[bytes_.astype(np.int64)] >> offsets.astype(np.uint8)) & 1
        found: BoolArray = np.asarray(set_bits.all(axis=1), dtype=bool)
        return found

    def add(self, hashes: HashArray) -> None:
        self.add_new(np.unique(hashes[~self.contains(hashes)]))

    def add_new(self, hashes: HashArray) -> None:
        """Add ``hashes`` known to be distinct and not reported as seen by :meth:`contains`."""
        positions = self._positions(hashes).ravel()
        bytes_ = (positions >> np.uint64(3)).astype(np.int64)
        values = (np.uint8(1) << (positions & np.uint64(7)).astype(np.uint8)).astype(np.uint8)
        np.bitwise_or.at(self._array, bytes_, values)
        self._added += int(hashes.shape[0])

    def false_positive_rate(self) -> float:
        """The chance that a user never added is reported as seen, at the current fill."""
        return float((1.0 - math.exp(-self.probes * self._added / self.bits)) ** self.probes)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "hash": USER_HASH,
            "bits": self.bits,
            "probes": self.probes,
            "added": self._added,
            "array": pack_array(self._array),
        }

    @classmethod
    def from_state_dict(cls, data: Mapping[str, Any]) -> BloomSeenUsers:
        seen = cls(int(data["bits"]), int(data["probes"]))
        seen._array = unpack_array(data["array"], np.uint8).copy()
        seen._added = int(data["added"])
        return seen


def seen_users(setting: str) -> SeenUsers:
    """The seen-user set a setting names: ``exact``, or ``bloom`` / ``bloom:<log2 bits>``.

    >>> seen_users("exact").kind, seen_users("bloom:20").bits
    ('exact', 1048576)
    """
    if setting == "exact":
        return ExactSeenUsers()
    if setting == "bloom":
        return BloomSeenUsers()
    if setting.startswith("bloom:") and setting[6:].isdigit() and 6 <= int(setting[6:]) <= 40:
        return BloomSeenUsers(bits=1 << int(setting[6:]))
    raise ValueError(f"seen-users setting {setting!r}: use 'exact', 'bloom' or 'bloom:<6..40>'")


def seen_users_from_state_dict(data: Mapping[str, Any]) -> SeenUsers:
    """Rebuild either kind of seen-user set; refuse another hashing scheme."""
    if data.get("hash") != USER_HASH:
        raise ValueError(f"user hashes {data.get('hash')!r} are not {USER_HASH!r}")
    if data.get("kind") == "exact":
        return ExactSeenUsers.from_state_dict(data)
    if data.get("kind") == "bloom":
        return BloomSeenUsers.from_state_dict(data)
    raise ValueError(f"unknown seen-user set kind {data.get('kind')!r}")
