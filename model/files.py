"""Folders described by a manifest: the list of their files, each with its size and sha256.

A TRAIL adapter folder (:mod:`model.trail`) and an ONNX export (:mod:`export.manifest`) both
carry a ``manifest.json`` that lists the files a load reads. :func:`file_entries` writes that
list, :func:`check_files` holds a folder to it, and :class:`ModelLoadError` is what either
raises for a folder that cannot be served. They live here, below both, so that the adapter
code needs nothing of ``export/`` and the export code takes them from the layer it sits on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class ModelLoadError(ValueError):
    """An export or adapter folder that cannot be served: missing, corrupt, mismatched or failed.

    A ``ValueError`` so that the ``trail`` command line reports it as a clear error.
    """


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """The hex sha256 of the file at ``path``, read in ``chunk``-byte blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entries(folder: Path, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"sha256", "bytes"}}`` of each of ``names`` in ``folder``: a manifest's files."""
    return {
        name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
        for name in names
    }


def check_files(
    folder: Path, files: Any, required: Sequence[str], *, verify: bool = True, fix: str = ""
) -> None:
    """Check a manifest's ``files`` against ``folder``; raises :class:`ModelLoadError`.

    Every listed file must be there, inside ``folder``, with its size and (with ``verify``) its
    sha256; ``required`` names must be listed. ``fix`` ends every message: what to do.
    """
    tail = f": {fix}" if fix else ""
    if not isinstance(files, dict):
        raise ModelLoadError(f"{folder}: the manifest lists no files{tail}")
    missing = [name for name in required if name not in files]
    if missing:
        raise ModelLoadError(f"{folder}: the manifest does not list {', '.join(missing)}{tail}")
    root = folder.resolve()
    for name, entry in sorted(files.items()):
        file = folder / str(name)
        if not file.resolve().is_relative_to(root) or not isinstance(entry, dict):
            raise ModelLoadError(f"{folder}: the manifest's entry for {name!r} is invalid{tail}")
        if not file.is_file():
            raise ModelLoadError(f"{folder}: {name} is missing{tail}")
        if file.stat().st_size != entry.get("bytes"):
            raise ModelLoadError(
                f"{folder}: {name} has {file.stat().st_size} bytes, the manifest says "
                f"{entry.get('bytes')} (truncated or replaced){tail}"
            )
        if verify and sha256_file(file) != entry.get("sha256"):
            raise ModelLoadError(
                f"{folder}: {name} does not match its sha256 in the manifest{tail}"
            )
