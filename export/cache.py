"""The export cache: the first use of an adapter exports and validates it once, with progress.

``trail replay --scorer trail`` (and every other user of the TRAIL scorer) serves the LM with
ONNX Runtime out of the box: the adapter is exported into
``<cache>/exports/<adapter version>-<key>/`` the first time it is used (fp32 and int8 graphs,
each validated, see :mod:`export.onnx_export`), and later runs load that export in seconds.
The key covers the adapter's weights, the base model's name and the export layout, so a
retrained adapter or a new layout exports again; the manifest's hashes are checked at every
load. Two processes that start together serialise on the cache's lock file: one exports, the
other waits and serves the result. An export that failed its validation is kept (with its
manifest saying why) and not retried on every run. Serving from the cache, and falling back
to PyTorch when the runtime was not asked for explicitly, is the scorer factory's
(:func:`streams.registry.cached_trail_scorer`): it needs both this layer and ``model/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from export.manifest import MANIFEST_FILE, MANIFEST_FORMAT, int8_status
from export.sessions import CPU
from model.scorer import adapter_version

EXPORTS_SUBDIR = "exports"

#: ``--lm-runtime`` values: the precision each asks ONNX Runtime for.
PRECISION_OF = {
    "auto": "auto",
    "ort": "auto",
    "ort-fp32": "fp32",
    "ort-int8-scorer": "int8-scorer",
    "ort-int8": "int8",
}

Log = Callable[[str], None]


def log_to_stderr(message: str) -> None:
    """The default ``log``: one line on standard error, flushed (progress of a long export)."""
    print(message, file=sys.stderr, flush=True)


class ExportUnavailable(RuntimeError):
    """The adapter has no servable export and none can be made here (the message says why)."""


def export_key(adapter_dir: Path, base_model: str | None) -> str:
    """``trail-<adapter hash>-<hash of the base model override and the export layout>``.

    The adapter's hash covers its config, where its base model is named; ``base_model`` is
    the ``--base-model`` override, if any.

    >>> from model.scorer import DEFAULT_ADAPTER
    >>> export_key(DEFAULT_ADAPTER, None).startswith(adapter_version(DEFAULT_ADAPTER)[6:], 6)
    True
    """
    version = adapter_version(adapter_dir)
    digest = hashlib.sha256(json.dumps([version, base_model, MANIFEST_FORMAT]).encode())
    return f"{version.replace('@', '-')}-{digest.hexdigest()[:10]}"


def cached_export_dir(adapter_dir: Path, base_model: str | None, cache_dir: Path) -> Path:
    return Path(cache_dir) / EXPORTS_SUBDIR / export_key(adapter_dir, base_model)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # POSIX advisory lock: two trail processes sharing one cache export once between them.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _status(folder: Path, adapter_dir: Path) -> Literal["ok", "failed", "missing"]:
    """What the cache holds for the adapter: a servable export, a failed one, or nothing."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return "missing"
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return "missing"
    if manifest.get("adapter", {}).get("version") != adapter_version(adapter_dir):
        return "missing"
    return "ok" if manifest.get("status") == "ok" else "failed"


def ensure_export(
    adapter_dir: Path,
    *,
    cache_dir: Path,
    base_model: str | None = None,
    int8: bool = False,
    log: Log = log_to_stderr,
) -> Path:
    """The cached export of ``adapter_dir``, exported when missing; with ``int8`` its int8
    graphs too (added to an export that has none, and judged against fp32).

    Raises :class:`ExportUnavailable` when the cached export failed its validation (it is
    not retried: the message says which folder to delete to try again).
    """
    folder = cached_export_dir(adapter_dir, base_model, cache_dir)
    status = _status(folder, adapter_dir)
    if status == "ok" and (not int8 or _has_int8(folder)):
        return folder
    if status == "missing":
        from model.adapter_files import (
            read_adapter_manifest,
            read_score_head,
            read_trail_config,
        )

        # A broken adapter folder is named before minutes of export are announced.
        read_adapter_manifest(adapter_dir)
        read_trail_config(adapter_dir)
        read_score_head(adapter_dir)
    # One lock for the whole cache: exports are rare, and no lock file is left per adapter.
    with _locked(folder.parent / ".lock"):
        status = _status(folder, adapter_dir)  # another process may have exported meanwhile
        if status == "missing":
            from export.onnx_export import export_model

            log(
                f"first use of the TRAIL adapter {adapter_dir}: exporting it to ONNX once into "
                f"{folder} (a few minutes on 2 cores; later runs start in seconds)"
            )
            manifest = export_model(adapter_dir, folder, base_model=base_model, int8=int8, log=log)
            status = "ok" if manifest.get("status") == "ok" else "failed"
            if status == "ok":
                log(f"exported {manifest['version']} to {folder}")
        elif status == "ok" and int8 and not _has_int8(folder):
            add_int8(folder, log)
        if status == "failed":
            validation = json.loads((folder / MANIFEST_FILE).read_text()).get("validation")
            raise ExportUnavailable(
                f"the ONNX export of {adapter_dir} in {folder} failed its validation against "
                f"PyTorch ({validation}); delete that folder to export again"
            )
    return folder


def _has_int8(folder: Path) -> bool:
    """Whether the export's int8 graphs were made and judged (passed or not)."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    return int8_status(manifest) == "ok" or manifest.get("int8", {}).get("status") == "failed"


def add_int8(folder: Path, log: Log = log_to_stderr) -> dict[str, Any]:
    """Quantize an fp32 export in place and write the verdict into its manifest.

    Until the verdict the manifest says ``validating`` (a crash leaves it so, and it is
    redone next time); the fp32 graphs serve throughout.
    """
    from export.manifest import write_manifest
    from export.quantize import quantize_export

    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest.pop("files", None)
    manifest.pop("int8", None)
    log(f"adding int8 graphs to {folder}, judged against fp32 (a minute or two, once)")
    manifest["int8"] = quantize_export(folder, manifest, write_manifest, log)
    return write_manifest(folder, manifest)


def wants_int8(precision: str) -> bool:
    """Whether serving at ``precision`` here needs the int8 graphs: asked for, or ``auto`` on
    a CPU-only host where int8 is the default once it held (:data:`export.INT8_DEFAULT_ON_CPU`)."""
    from export import INT8_DEFAULT_ON_CPU
    from export.sessions import default_providers

    if precision in ("int8", "int8-scorer"):
        return True
    return precision == "auto" and INT8_DEFAULT_ON_CPU and default_providers() == [CPU]
