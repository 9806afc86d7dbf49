"""Training checkpoints and the selected step's weights: tensors in safetensors, state in JSON.

Checkpoints (``checkpoint.safetensors`` in the output folder, for ``--out DIR`` to resume) hold
tensors only: the trainable weights, the optimizer's moments and the torch RNG; the step, the
loss history, the optimizer's settings and the sampler's RNG are JSON in the file's metadata.
One file, renamed into place, so a crash never pairs tensors and counters of different steps.
Nothing is unpickled: a file planted in the folder cannot run code. ``best.safetensors`` holds
the weights of the validation step selected so far, with its metrics.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model.adapter_files import one_line
from model.trail import TrailModel

CHECKPOINT = "checkpoint.safetensors"
#: The weights of the validation step selected so far (tensors; its metrics in the metadata).
BEST = "best.safetensors"
#: Checkpoints of older TRAIL versions: pickles, never loaded.
LEGACY_CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "trail-checkpoint@1"
#: The metadata key of a checkpoint's JSON state.
_STATE_KEY = "trail_state"
CHECKPOINT_FIX = "pass --no-resume to start over, or choose another --out"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the file and the fix.

    A ``ValueError`` so that the ``trail`` command line prints it as one line.
    """


def _trainable_state(model: TrailModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.lm.named_parameters() if p.requires_grad}


def _model_tensors(model: TrailModel) -> dict[str, torch.Tensor]:
    tensors = {f"trainable/{n}": t.cpu().contiguous() for n, t in _trainable_state(model).items()}
    tensors |= {f"head/{n}": t.detach().cpu().clone() for n, t in model.head.state_dict().items()}
    return tensors


def save_weights(path: Path, model: TrailModel, metrics: Mapping[str, float]) -> None:
    """The selected step's weights, renamed into place; its metrics as JSON metadata."""
    temporary = path.with_name(f".{path.name}.tmp")
    save_file(_model_tensors(model), temporary, metadata={_STATE_KEY: json.dumps(dict(metrics))})
    temporary.replace(path)


def best_metrics(path: Path, selected_by: str) -> dict[str, float] | None:
    """The metrics stored with the selected weights, or ``None`` when none were selected."""
    if not path.exists():
        return None
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            metrics = json.loads((handle.metadata() or {})[_STATE_KEY])
        if not isinstance(metrics, dict) or selected_by not in metrics:
            raise ValueError(f"its metadata holds no {selected_by}")
    except (OSError, SafetensorError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a readable selection ({one_line(exc)}): {CHECKPOINT_FIX}"
        ) from exc
    return {str(k): v for k, v in metrics.items()}


def load_weights(path: Path, model: TrailModel) -> None:
    with safe_open(path, framework="pt", device="cpu") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    parameters = {n: p for n, p in model.lm.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(tensors[f"trainable/{name}"])
    prefix = "head/"
    model.head.load_state_dict(
        {n[len(prefix) :]: t for n, t in tensors.items() if n.startswith(prefix)}
    )


def save_checkpoint(
    path: Path,
    model: TrailModel,
    optimizer: torch.optim.Optimizer,
    step: int,
    history: list[dict[str, float]],
    validations: list[dict[str, float]],
    rng: random.Random,
    run: Mapping[str, Any] | None = None,
) -> None:
    """Write a checkpoint: tensors in safetensors, counters and settings as JSON metadata.

    ``run`` is plain JSON about the run that a resumed run reports again (where its weights
    started); :func:`checkpoint_run` reads it back.
    """
    tensors = _model_tensors(model)
    optimizer_state = optimizer.state_dict()
    plain_state: dict[str, dict[str, Any]] = {}
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{key}"] = value.detach().cpu().contiguous()
            else:
                plain_state.setdefault(str(index), {})[key] = value
    tensors["torch_rng"] = torch.get_rng_state()
    version, internal, gauss = rng.getstate()
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "history": history,
        "validations": validations,
        "rng": [version, list(internal), gauss],
        "optimizer": {"param_groups": optimizer_state["param_groups"], "state": plain_state},
        "run": dict(run or {}),
    }
    temporary = path.with_name(f".{path.name}.tmp")
    save_file(tensors, temporary, metadata={_STATE_KEY: json.dumps(state)})
    temporary.replace(path)


def load_checkpoint(
    path: Path, model: TrailModel, optimizer: torch.optim.Optimizer, rng: random.Random
) -> tuple[int, list[dict[str, float]], list[dict[str, float]]]:
    """Restore a checkpoint into ``model``, ``optimizer``, ``rng`` and torch's RNG.

    Returns the step it was written at, the loss history and the validations so far. A file
    that does not fit (unreadable, not a TRAIL checkpoint, another model's weights) raises
    :class:`CheckpointError`, and the training run stops there.
    """
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({one_line(exc)}): {CHECKPOINT_FIX}"
        ) from exc
    groups: dict[str, dict[str, torch.Tensor]] = {"trainable": {}, "head": {}, "optimizer": {}}
    for name, tensor in tensors.items():
        group, _, rest = name.partition("/")
        if group in groups:
            groups[group][rest] = tensor
    try:
        state = json.loads(metadata[_STATE_KEY])
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"its format is not {CHECKPOINT_FORMAT!r}")
        step = int(state["step"])
        history = list(state["history"])
        validations = list(state["validations"])
        version, internal, gauss = state["rng"]
        # Per parameter index: the plain values from JSON, the tensors from the file.
        per_parameter: dict[int, dict[str, Any]] = {
            int(index): dict(values) for index, values in state["optimizer"]["state"].items()
        }
        for name, tensor in groups["optimizer"].items():
            index, _, key = name.partition("/")
            per_parameter.setdefault(int(index), {})[key] = tensor
        optimizer_state = {
            "param_groups": state["optimizer"]["param_groups"],
            "state": per_parameter,
        }
        torch_rng = tensors["torch_rng"]
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{path} holds no TRAIL training state ({type(exc).__name__}: {one_line(exc)}): "
            f"{CHECKPOINT_FIX}"
        ) from exc
    parameters = {n: p for n, p in model.lm.named_parameters() if p.requires_grad}
    expected = {n: tuple(p.shape) for n, p in parameters.items()}
    found = {n: tuple(t.shape) for n, t in groups["trainable"].items()}
    if found != expected:
        differ = sorted(set(found) ^ set(expected)) or sorted(
            n for n in expected if found[n] != expected[n]
        )
        raise CheckpointError(
            f"{path} was written for another model ({len(found)} trainable tensors, "
            f"{len(expected)} here; first difference: {differ[0]}): {CHECKPOINT_FIX}"
        )
    try:
        with torch.no_grad():
            for name, value in groups["trainable"].items():
                parameters[name].copy_(value)
        model.head.load_state_dict(groups["head"])
        optimizer.load_state_dict(optimizer_state)
        rng.setstate((version, tuple(internal), gauss))
        torch.set_rng_state(torch_rng)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(
            f"{path} does not fit this training run ({one_line(exc)[:300]}): {CHECKPOINT_FIX}"
        ) from exc
    return step, history, validations


def checkpoint_run(path: Path) -> dict[str, Any]:
    """The ``run`` record of a checkpoint (empty for checkpoints written without one)."""
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            state = json.loads((handle.metadata() or {})[_STATE_KEY])
    except (OSError, SafetensorError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({one_line(exc)}): {CHECKPOINT_FIX}"
        ) from exc
    run = state.get("run") if isinstance(state, dict) else None
    return dict(run) if isinstance(run, dict) else {}
