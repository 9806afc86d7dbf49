"""A TRAIL adapter folder: its files, its config, its manifest, each read or refused in one line.

An adapter folder holds the LoRA weights (``adapter_config.json``,
``adapter_model.safetensors``), the score head (``score_head.safetensors``), the model's shape
(``trail_config.json``) and ``manifest.json``: how it was trained and the sha256 of every file
that :meth:`model.trail.TrailModel.load` reads, checked before anything is loaded. Nothing is
unpickled: tensors are safetensors, the rest JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from model.files import ModelLoadError, check_files, file_entries
from model.priors import PRIORS

ADAPTER_FORMAT = "trail-adapter@1"
HEAD_FILE = "score_head.safetensors"
CONFIG_FILE = "trail_config.json"
LORA_FILE = "adapter_model.safetensors"
LORA_CONFIG_FILE = "adapter_config.json"
MANIFEST_FILE = "manifest.json"
#: ``@1`` manifests listed no file hashes; ``@2`` lists the sha256 of every file load reads.
ADAPTER_MANIFEST_FORMAT = "trail-manifest@2"
#: The files :meth:`TrailModel.load` reads: the manifest must list them all.
ADAPTER_FILES = (LORA_CONFIG_FILE, LORA_FILE, HEAD_FILE, CONFIG_FILE)
#: The score head of adapters from before safetensors: a pickle, never loaded.
LEGACY_HEAD_FILE = "score_head.pt"
#: What to do about a broken adapter folder; ends every load error.
ADAPTER_FIX = (
    "restore the adapter folder from its source, or retrain it with "
    "`trail train SNAPSHOTS --out DIR`"
)


@dataclass(frozen=True)
class TrailConfig:
    """Shape of a TRAIL model; saved beside the adapter so that it reloads identically."""

    base_model: str = "smollm2-135m"
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    #: Adapt only the top fraction of layers: backward stops below them, which halves the
    #: cost of a training step on a CPU while the upper layers carry most task adaptation.
    lora_top_fraction: float = 0.34
    prior: str = "ewma-1"
    max_explanation_tokens: int = 36
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["lora_targets"] = list(self.lora_targets)
        data["format"] = ADAPTER_FORMAT
        return data

    @classmethod
    def from_json(cls, data: Any) -> TrailConfig:
        """Inverse of :meth:`to_json`; raises ``ValueError`` naming what is wrong.

        Every field must have its default's type (an int passes for a float), so that a hand
        edit is caught here and not as an odd failure deep in peft.
        """
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, found {type(data).__name__}")
        if data.get("format") != ADAPTER_FORMAT:
            raise ValueError(
                f"adapter format {data.get('format')!r} is not {ADAPTER_FORMAT!r}: "
                "retrain the adapter with this version of TRAIL"
            )
        values = {k: v for k, v in data.items() if k != "format"}
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown fields {', '.join(unknown)}")
        # A missing field would silently take today's default, which may not be the trained one.
        missing = sorted(set(known) - set(values))
        if missing:
            raise ValueError(f"missing fields {', '.join(missing)}")
        defaults = cls()
        for name, value in values.items():
            expected = type(getattr(defaults, name))
            if expected is tuple:
                valid = isinstance(value, list) and all(isinstance(v, str) for v in value)
            elif expected is float:
                valid = isinstance(value, int | float) and not isinstance(value, bool)
            else:
                valid = isinstance(value, expected) and not (
                    expected is int and isinstance(value, bool)
                )
            if not valid:
                raise ValueError(f"{name} must be {expected.__name__}, not {value!r}")
        if values["prior"] not in PRIORS:
            raise ValueError(f"prior {values['prior']!r} is none of {', '.join(PRIORS)}")
        values["lora_targets"] = tuple(values["lora_targets"])
        return cls(**values)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (library messages may span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def write_adapter_manifest(adapter_dir: Path, info: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json``: ``info`` plus the sha256 and size of every file load reads.

    Written last (after the files it lists) and atomically, so that a crash mid-save leaves a
    folder that fails its check instead of one that loads half old, half new.
    """
    adapter_dir = Path(adapter_dir)
    manifest = {
        "format": ADAPTER_MANIFEST_FORMAT,
        **{k: v for k, v in info.items() if k not in ("format", "files")},
        "files": file_entries(adapter_dir, ADAPTER_FILES),
    }
    temporary = adapter_dir / f".{MANIFEST_FILE}.tmp"
    temporary.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    temporary.replace(adapter_dir / MANIFEST_FILE)
    return manifest


def read_adapter_manifest(adapter_dir: Path, *, verify: bool = True) -> dict[str, Any]:
    """The manifest of ``adapter_dir``, its files checked; raises :class:`ModelLoadError`.

    With ``verify`` every file is hashed (milliseconds for a LoRA adapter), so a truncated or
    swapped file is named here instead of failing, or silently scoring wrong, later.
    """
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise ModelLoadError(
            f"no TRAIL adapter at {adapter_dir}: train one with `trail train SNAPSHOTS --out DIR`"
        )
    if (adapter_dir / LEGACY_HEAD_FILE).is_file() and not (adapter_dir / HEAD_FILE).is_file():
        raise ModelLoadError(
            f"{adapter_dir}: {LEGACY_HEAD_FILE} is a pickle from an older TRAIL and is never "
            f"loaded (a pickle can run code): retrain the adapter with "
            "`trail train SNAPSHOTS --out DIR`"
        )
    path = adapter_dir / MANIFEST_FILE
    if not path.is_file():
        raise ModelLoadError(f"{adapter_dir}: {MANIFEST_FILE} is missing: {ADAPTER_FIX}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{adapter_dir}: {MANIFEST_FILE} is not readable JSON ({one_line(exc)}): {ADAPTER_FIX}"
        ) from exc
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != ADAPTER_MANIFEST_FORMAT:
        raise ModelLoadError(
            f"{adapter_dir}: {MANIFEST_FILE} has format {found!r}, not "
            f"{ADAPTER_MANIFEST_FORMAT!r} (no file hashes): {ADAPTER_FIX}"
        )
    check_files(adapter_dir, manifest.get("files"), ADAPTER_FILES, verify=verify, fix=ADAPTER_FIX)
    return dict(manifest)


def read_trail_config(adapter_dir: Path) -> TrailConfig:
    """``trail_config.json`` of ``adapter_dir``; raises :class:`ModelLoadError` naming it."""
    path = Path(adapter_dir) / CONFIG_FILE
    try:
        return TrailConfig.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{adapter_dir}: {CONFIG_FILE} is not a valid TRAIL config ({one_line(exc)}): "
            f"{ADAPTER_FIX}"
        ) from exc


def read_score_head(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The score head's tensors (safetensors, on the CPU); raises :class:`ModelLoadError`."""
    path = Path(adapter_dir) / HEAD_FILE
    try:
        return load_file(path, device="cpu")
    except (OSError, SafetensorError) as exc:
        raise ModelLoadError(
            f"{adapter_dir}: {HEAD_FILE} is not a readable safetensors file ({one_line(exc)}): "
            f"{ADAPTER_FIX}"
        ) from exc
