"""An export's manifest: the folder's layout, and the manifest read (checked) and written.

``manifest.json`` sits at the top of every export folder (``trail export``, see
:mod:`export.onnx_export`; the cache, see :mod:`export.cache`) and says what the folder holds:
the layout version, every file with its size and sha256, the versions of the libraries that
made it, the adapter and its config, and the validation against PyTorch (and, for int8
graphs, against fp32). :func:`write_manifest` writes it atomically with the hashes of every
file; :func:`read_manifest` refuses a folder that is not a servable export, with a message
that says what to do. The file list, its check and :class:`~model.files.ModelLoadError` come
from :mod:`model.files`, which the adapter folders of :mod:`model.trail` share.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from model.files import ModelLoadError, check_files, file_entries

#: Layout version of the exports written now. ``@2``: the scorer is the generator's body with
#: the score head (it takes a KV cache), ``prompt.json`` holds the template's pieces, and
#: int8 graphs may sit beside the fp32 ones. ``@3``: the scorer also returns its KV cache,
#: and the validation says whether explanations generated from it are the PyTorch ones.
MANIFEST_FORMAT = "trail-onnx@3"
#: Layouts the runtime serves (``@1``: a separately exported scorer, right-padded, no cache).
SERVED_FORMATS = ("trail-onnx@1", "trail-onnx@2", MANIFEST_FORMAT)
MANIFEST_FILE = "manifest.json"
SCORER_FILE = "scorer.onnx"
GENERATOR_DIR = "generator"
GENERATOR_FILE = f"{GENERATOR_DIR}/model.onnx"
TOKENIZER_DIR = "tokenizer"
PROMPT_FILE = "prompt.json"
INT8_SCORER_FILE = "scorer.int8.onnx"
INT8_GENERATOR_FILE = f"{GENERATOR_DIR}/model.int8.onnx"
#: Files an export cannot serve without (beyond what the manifest lists).
REQUIRED_FILES = (SCORER_FILE, GENERATOR_FILE, f"{TOKENIZER_DIR}/tokenizer_config.json")


def export_files(model_dir: Path) -> list[str]:
    """Every file of an export (relative POSIX paths), the manifest and hidden files (work in
    progress) excepted."""
    return sorted(
        path.relative_to(model_dir).as_posix()
        for path in model_dir.rglob("*")
        if path.is_file() and path.name != MANIFEST_FILE and not path.name.startswith(".")
    )


def read_manifest(model_dir: Path, *, verify: bool = True) -> dict[str, Any]:
    """The manifest of export ``model_dir``, checked; raises :class:`ModelLoadError`.

    With ``verify`` every listed file is hashed (about a second per GB): a truncated copy or a
    file swapped after the export is caught at start, not as wrong scores later.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(
            f"no exported model at {model_dir}: create one with `trail export ADAPTER --out DIR`"
        )
    path = model_dir / MANIFEST_FILE
    if not path.is_file():
        hint = ""
        if any((sub / MANIFEST_FILE).is_file() for sub in model_dir.iterdir() if sub.is_dir()):
            hint = " (it holds exports in subfolders: serve the folder with ReloadingScorer)"
        raise ModelLoadError(f"{model_dir} is not a TRAIL export: {MANIFEST_FILE} is missing{hint}")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") not in SERVED_FORMATS:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ModelLoadError(
            f"{model_dir}: export format {found!r} is none of {', '.join(SERVED_FORMATS)}; "
            "re-export with this version of TRAIL (`trail export`)"
        )
    if manifest.get("status") != "ok":
        validation = manifest.get("validation", {})
        raise ModelLoadError(
            f"{model_dir}: this export failed its validation against PyTorch ({validation}); "
            "it is not served"
        )
    check_files(
        model_dir,
        manifest.get("files"),
        REQUIRED_FILES,
        verify=verify,
        fix="re-export it with `trail export ADAPTER --out DIR`",
    )
    return manifest


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "optimum", "optimum-onnx", "onnx"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "missing"
    import onnxruntime

    versions["onnxruntime"] = f"{onnxruntime.__version__} ({', '.join(_ort_builds())})"
    return versions


def _ort_builds() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    builds = []
    for name in ("onnxruntime-gpu", "onnxruntime"):
        try:
            builds.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return builds


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest`` with the hashes of every file in ``out_dir``, atomically (a reader
    sees the old manifest or the new one, never half of one)."""
    manifest = {**manifest, "files": file_entries(out_dir, export_files(out_dir))}
    temporary = out_dir / f".{MANIFEST_FILE}.tmp"
    temporary.write_text(json.dumps(manifest, indent=2) + "\n")
    temporary.replace(out_dir / MANIFEST_FILE)
    return manifest


def int8_status(manifest: dict[str, Any], part: str = "all") -> str:
    """``ok``, ``failed`` or ``missing``: whether the export holds int8 graphs that held, both
    (``part="all"``) or the scorer's (``"scorer"``). Graphs still ``validating``, or left so
    by a crash, count as failed."""
    int8 = manifest.get("int8")
    if not isinstance(int8, dict):
        return "missing"
    key = "status" if part == "all" else "scorer_status"
    return "ok" if int8.get(key) == "ok" else "failed"
