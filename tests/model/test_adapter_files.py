"""Adapter folders on disk: safetensors, a manifest of sha256 hashes, one clear line when broken.

Each broken folder goes through the command line a user runs (``trail replay ... --scorer trail
--adapter DIR``): exit status 2, one ``error:`` line naming the file and what to do, and no
traceback.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from model.adapter_files import (
    ADAPTER_FILES,
    ADAPTER_FIX,
    ADAPTER_MANIFEST_FORMAT,
    CONFIG_FILE,
    HEAD_FILE,
    LEGACY_HEAD_FILE,
    LORA_CONFIG_FILE,
    LORA_FILE,
    MANIFEST_FILE,
    TrailConfig,
    read_adapter_manifest,
    read_score_head,
    write_adapter_manifest,
)
from model.scorer import DEFAULT_ADAPTER, adapter_version
from model.tiny import synthetic_features
from model.trail import ScoreHead, TrailModel
from schemas import ItemFeatures
from streams.cli import main as trail

#: Hidden size of SmolLM2-135M, the committed adapter's base model.
SMOLLM2_HIDDEN = 576


@pytest.fixture(scope="module")
def adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-model adapter whose LoRA and head are not zero, written by ``TrailModel.save``."""
    torch.manual_seed(0)
    model = TrailModel.from_base(TrailConfig(base_model=str(tiny_model), lora_top_fraction=1.0))
    with torch.no_grad():
        for name, parameter in model.lm.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05)
        model.head.proj.weight.normal_(0.0, 0.1)
        model.head.proj.bias.fill_(0.1)
    out = tmp_path_factory.mktemp("adapter") / "good"
    model.save(out, {"note": "test"})
    return out


@pytest.fixture
def copy(adapter: Path, tmp_path: Path) -> Path:
    """A fresh copy of the good adapter, to break."""
    return Path(shutil.copytree(adapter, tmp_path / "adapter"))


def features(count: int = 5) -> list[ItemFeatures]:
    rng = random.Random(3)
    return [synthetic_features(rng) for _ in range(count)]


def replay_error(events: Path, adapter_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``trail replay`` with ``adapter_dir``; assert exit 2 and one error line; return it."""
    code = trail(
        [
            "replay",
            str(events),
            "--window",
            "7d",
            "--scorer",
            "trail",
            "--adapter",
            str(adapter_dir),
            "--print-top",
            "0",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


# ---------------------------------------------------------------------------- good folders
def test_save_writes_safetensors_and_a_manifest_of_hashes(adapter: Path) -> None:
    """What ``save`` writes: no pickle, and a manifest whose hashes are the files' own."""
    assert (adapter / HEAD_FILE).is_file()
    assert not (adapter / LEGACY_HEAD_FILE).exists()
    manifest = json.loads((adapter / MANIFEST_FILE).read_text())
    assert manifest["format"] == ADAPTER_MANIFEST_FORMAT
    assert manifest["note"] == "test"
    assert sorted(manifest["files"]) == sorted(ADAPTER_FILES)
    for name, entry in manifest["files"].items():
        data = (adapter / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert set(load_file(adapter / HEAD_FILE)) == {
        "norm.weight",
        "norm.bias",
        "proj.weight",
        "proj.bias",
    }


def test_saved_and_loaded_model_scores_identically(tiny_model: Path, tmp_path: Path) -> None:
    """The safetensors round trip changes no score, to the last bit (a cast or a lost
    tensor would)."""
    torch.manual_seed(1)
    model = TrailModel.from_base(TrailConfig(base_model=str(tiny_model), lora_top_fraction=1.0))
    with torch.no_grad():
        for name, parameter in model.lm.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05)
        model.head.proj.weight.normal_(0.0, 0.1)
        model.head.norm.weight.normal_(1.0, 0.1)
    model.save(tmp_path / "a")
    before = model.score(features())
    after = TrailModel.load(tmp_path / "a").score(features())
    assert np.any(before != 0.0)
    assert np.array_equal(before, after)


def test_committed_adapter_is_safetensors_with_a_verified_manifest() -> None:
    """The committed adapter: no pickle head, every file matches the manifest (a file copied
    in without its manifest fails here), and the head has the base model's hidden size."""
    assert not (DEFAULT_ADAPTER / LEGACY_HEAD_FILE).exists()
    manifest = read_adapter_manifest(DEFAULT_ADAPTER)
    assert sorted(manifest["files"]) == sorted(ADAPTER_FILES)
    # The training record is there: its steps, the validation step it selected and why.
    assert manifest["steps"] == manifest["training"]["steps"] > 0
    assert 0 < manifest["validation"]["step"] <= manifest["steps"]
    assert manifest["selected_by"] == "val_captured@10"
    head = ScoreHead(SMOLLM2_HIDDEN)
    head.load_state_dict(read_score_head(DEFAULT_ADAPTER))
    assert head.proj.weight.count_nonzero() > 0  # trained, not a fresh zero head
    assert adapter_version(DEFAULT_ADAPTER).startswith("trail@")


# ---------------------------------------------------------------------------- broken folders
def truncate(name: str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])

    return apply


def flip_a_byte(folder: Path) -> None:
    path = folder / LORA_FILE
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # inside the tensor data: same size, other weights
    path.write_bytes(bytes(data))


def delete(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def edit_config_only(folder: Path) -> None:
    """Another prior, same size: only the hash tells."""
    path = folder / CONFIG_FILE
    text = path.read_text()
    assert '"ewma-1"' in text
    path.write_text(text.replace('"ewma-1"', '"ewma-4"'))


def resealed(change: Callable[[Path], None]) -> Callable[[Path], None]:
    """``change``, then a manifest that matches it: the check after the hashes is reached."""

    def apply(folder: Path) -> None:
        change(folder)
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        write_adapter_manifest(folder, manifest)

    return apply


def write_config(text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / CONFIG_FILE).write_text(text)


def config_with(**changes: object) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        config = json.loads((folder / CONFIG_FILE).read_text())
        config.update(changes)
        (folder / CONFIG_FILE).write_text(json.dumps(config))

    return apply


def wrong_head_shape(folder: Path) -> None:
    """A head for a hidden size of 3, not the tiny model's."""
    head = {name: torch.zeros(3) for name in ("norm.weight", "norm.bias")}
    save_file(
        {**head, "proj.weight": torch.zeros(1, 3), "proj.bias": torch.zeros(1)}, folder / HEAD_FILE
    )


def legacy_head(folder: Path) -> None:
    (folder / HEAD_FILE).rename(folder / LEGACY_HEAD_FILE)


def old_manifest(folder: Path) -> None:
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["format"] = "trail-manifest@1"
    del manifest["files"]
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


BROKEN = {
    # name: (how the folder is broken, what the one line must say)
    "truncated LoRA weights": (truncate(LORA_FILE), f"{LORA_FILE} has", "truncated or replaced"),
    "truncated score head": (truncate(HEAD_FILE), f"{HEAD_FILE} has", "truncated or replaced"),
    "LoRA weights changed in place": (flip_a_byte, LORA_FILE, "does not match its sha256"),
    "config edited by hand": (edit_config_only, CONFIG_FILE, "does not match its sha256"),
    "missing score head": (delete(HEAD_FILE), HEAD_FILE, "is missing"),
    "missing LoRA config": (delete(LORA_CONFIG_FILE), LORA_CONFIG_FILE, "is missing"),
    "missing manifest": (delete(MANIFEST_FILE), MANIFEST_FILE, "is missing"),
    "manifest not JSON": (
        lambda folder: (folder / MANIFEST_FILE).write_text("{not json"),
        MANIFEST_FILE,
        "not readable JSON",
    ),
    "manifest without hashes": (old_manifest, MANIFEST_FILE, "no file hashes"),
    "config not JSON": (resealed(write_config('{"base_model": ')), CONFIG_FILE, "not a valid"),
    "config a list": (resealed(write_config("[]")), CONFIG_FILE, "JSON object"),
    "config of unknown prior": (resealed(config_with(prior="ewma-9")), CONFIG_FILE, "ewma-9"),
    "config of wrong type": (resealed(config_with(lora_rank="8")), CONFIG_FILE, "lora_rank"),
    "config of unknown field": (resealed(config_with(colour=1)), CONFIG_FILE, "colour"),
    "config of another format": (
        resealed(config_with(format="trail-adapter@0")),
        CONFIG_FILE,
        "trail-adapter@0",
    ),
    "score head not safetensors": (
        resealed(truncate(HEAD_FILE)),
        HEAD_FILE,
        "not a readable safetensors file",
    ),
    "score head of another size": (resealed(wrong_head_shape), HEAD_FILE, "does not fit"),
}


@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_broken_adapter_is_one_clear_line(
    case: str, copy: Path, events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each broken folder: one line naming the file and the fix, no traceback.

    Catches: a truncated or swapped file loading (or failing deep in peft / safetensors with a
    traceback) because the manifest is not checked; a hand-edited config accepted unchecked.
    """
    breaks, names, says = BROKEN[case]
    breaks(copy)
    line = replay_error(events, copy, capsys)
    assert names in line and says in line, line
    assert ADAPTER_FIX in line, line


def test_pickle_score_head_is_refused_not_loaded(
    copy: Path, events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An adapter of an older TRAIL (``score_head.pt``, a pickle) is named and refused.

    Catches: a loader that falls back to ``torch.load`` on the old file name.
    """
    legacy_head(copy)
    line = replay_error(events, copy, capsys)
    assert LEGACY_HEAD_FILE in line and "never loaded" in line and "trail train" in line, line


def test_missing_adapter_folder_is_one_clear_line(tmp_path: Path) -> None:
    """Loading a folder that does not exist says how to make one (no FileNotFoundError
    traceback from deep inside transformers)."""
    with pytest.raises(ValueError, match="no TRAIL adapter at .*trail train"):
        TrailModel.load(tmp_path / "none")
