"""Numeric arrays as short JSON strings: zlib-compressed little-endian bytes in base64.

State that travels in checkpoints (user hashes, per-item signals, training groups) is
mostly numbers; as JSON lists it would be several times larger and slower to parse. This is
the one encoding every such state uses. No pickle.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import numpy as np
import numpy.typing as npt


def pack_array(values: npt.NDArray[Any]) -> str:
    """``values`` as text; :func:`unpack_array` with the same dtype inverts it.

    >>> unpack_array(pack_array(np.arange(3, dtype=np.int64)), np.int64).tolist()
    [0, 1, 2]
    """
    # Compressed little-endian bytes in base64: a few MB of hashes stay a short JSON string.
    little = values.astype(values.dtype.newbyteorder("<"), copy=False)
    return base64.b64encode(zlib.compress(little.tobytes(), 1)).decode("ascii")


def unpack_array(text: str, dtype: type) -> npt.NDArray[Any]:
    raw = zlib.decompress(base64.b64decode(text))
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
