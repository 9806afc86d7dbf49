"""Training TRAIL from window snapshots: a plain loop, in the spirit of nanoGPT.

Data: the Parquet snapshots that ``trail replay --snapshots-out`` writes (features of every
active item at a window's close and the realised count of the next window). Per window, the
items the cascade would hand to the LM (the top M by the recency prior) become examples. The
last ``holdout`` windows of every snapshot folder are never read (they are the evaluation
windows); the ``val_windows`` before them are the validation set.

Loss per step, over items drawn from a few windows at a time:
  MSE(prior + residual, log1p(next count))
+ lm_weight   * NLL of the verbalized explanation (after the forced forecast)
+ rank_weight * pairwise logistic loss: within a window, the item that grew more scores higher
+ expl_weight * hinge: the faithful explanation is more likely than a perturbed one by a margin

Checkpoints (``checkpoint.safetensors`` in the output folder, for ``--out DIR`` to resume) hold
tensors only: the trainable weights, the optimizer's moments and the torch RNG; the step, the
loss history, the optimizer's settings and the sampler's RNG are JSON in the file's metadata.
One file, renamed into place, so a crash never pairs tensors and counters of different steps.
Nothing is unpickled: a file planted in the folder cannot run code.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from model.explain import forecast_sentence, perturb, verbalize
from model.priors import prior_log_count
from model.trail import TrailConfig, TrailModel, one_line
from schemas import ItemFeatures, ItemMeta, WindowSnapshotRow

CHECKPOINT = "checkpoint.safetensors"
#: Checkpoints of older TRAIL versions: pickles, never loaded.
LEGACY_CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "trail-checkpoint@1"
#: The metadata key of a checkpoint's JSON state.
_STATE_KEY = "trail_state"
_CHECKPOINT_FIX = "pass --no-resume to start over, or choose another --out"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the file and the fix.

    A ``ValueError`` so that the ``trail`` command line prints it as one line.
    """


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch_size: int = 6
    windows_per_batch: int = 2
    perturbed_per_batch: int = 1
    lr: float = 3e-4
    head_lr: float = 2e-3
    warmup: int = 20
    weight_decay: float = 0.0
    lm_weight: float = 0.3
    rank_weight: float = 0.5
    expl_weight: float = 0.3
    expl_margin: float = 1.0
    rescore_top: int = 50
    holdout: int = 8
    val_windows: int = 2
    eval_every: int = 50
    checkpoint_every: int = 25
    seed: int = 0


@dataclass(frozen=True)
class Example:
    features: ItemFeatures
    next_count: float
    source: str

    @property
    def target(self) -> float:
        return math.log1p(self.next_count)


@dataclass
class SnapshotSplit:
    train: list[list[Example]]  # one list per window
    validation: list[list[Example]]
    description: dict[str, Any]


def load_snapshot_windows(
    directory: Path, items: Mapping[str, ItemMeta] | None = None
) -> dict[int, list[WindowSnapshotRow]]:
    """Rows of a snapshot folder, by window end, oldest first; an item in ``items`` (a
    ``--items`` catalog) takes its title and categories from there."""
    if not directory.is_dir():
        raise FileNotFoundError(f"snapshot folder {directory} does not exist")
    files = sorted(directory.glob("window_end=*/*.parquet"))
    if not files:
        raise ValueError(f"snapshot folder {directory} holds no window_end=*/ Parquet files")
    fields = set(WindowSnapshotRow.model_fields)
    by_window: dict[int, list[WindowSnapshotRow]] = {}
    # One file per window, read one by one: an all-null column in one window must not clash
    # with the same column's type in another.
    for path in files:
        for record in pq.read_table(path).to_pylist():
            row = WindowSnapshotRow.model_validate({k: v for k, v in record.items() if k in fields})
            meta = items.get(row.item_id) if items else None
            if meta is not None:
                row = row.model_copy(update={"title": meta.title, "categories": meta.categories})
            by_window.setdefault(row.window_end, []).append(row)
    return dict(sorted(by_window.items()))


def _examples(
    rows: Sequence[WindowSnapshotRow], top: int, prior: str, source: str
) -> list[Example]:
    ranked = sorted(rows, key=lambda r: (-prior_log_count(r, prior), r.item_id))[:top]
    features_fields = set(ItemFeatures.model_fields)
    return [
        Example(
            ItemFeatures(**{k: v for k, v in r.model_dump().items() if k in features_fields}),
            r.next_count,
            source,
        )
        for r in ranked
    ]


def split_snapshots(
    directories: Sequence[Path],
    config: TrainConfig,
    prior: str,
    items: Mapping[str, ItemMeta] | None = None,
) -> SnapshotSplit:
    """Train and validation windows from each folder; its last ``holdout`` windows unread."""
    train: list[list[Example]] = []
    validation: list[list[Example]] = []
    description: dict[str, Any] = {}
    for directory in directories:
        windows = load_snapshot_windows(directory, items)
        ends = list(windows)
        usable = ends[: max(0, len(ends) - config.holdout)]
        if len(usable) <= config.val_windows:
            raise ValueError(
                f"{directory}: {len(ends)} windows leave too few for training after holding "
                f"out {config.holdout} and validating on {config.val_windows}"
            )
        train_ends = usable[: -config.val_windows] if config.val_windows else usable
        val_ends = usable[len(train_ends) :]
        source = directory.name
        train += [_examples(windows[e], config.rescore_top, prior, source) for e in train_ends]
        validation += [_examples(windows[e], config.rescore_top, prior, source) for e in val_ends]
        description[str(directory)] = {
            "windows": len(ends),
            "train_windows": [train_ends[0], train_ends[-1]] if train_ends else [],
            "validation_windows": [val_ends[0], val_ends[-1]] if val_ends else [],
            "held_out_windows": ends[len(usable) :] and [ends[len(usable)], ends[-1]],
        }
    train = [w for w in train if len(w) >= 2]
    return SnapshotSplit(train, validation, description)


def _ranking_metrics(predicted: np.ndarray, target: np.ndarray, k: int = 10) -> dict[str, float]:
    """Precision@k against the k items with the most next-window events, and pair accuracy."""
    top_true = set(np.argsort(-target, kind="stable")[:k].tolist())
    top_pred = set(np.argsort(-predicted, kind="stable")[:k].tolist())
    differ = target[:, None] > target[None, :]
    correct = (predicted[:, None] > predicted[None, :]) & differ
    return {
        "precision@10": len(top_true & top_pred) / max(1, min(k, len(target))),
        "pair_accuracy": float(correct.sum() / max(1, differ.sum())),
        "mse": float(np.mean((predicted - target) ** 2)),
    }


@torch.no_grad()
def validate(model: TrailModel, windows: Sequence[Sequence[Example]]) -> dict[str, float]:
    """Mean per-window metrics of the model and of its prior on held-out windows."""
    model_metrics: list[dict[str, float]] = []
    prior_metrics: list[dict[str, float]] = []
    for window in windows:
        if len(window) < 2:
            continue
        features = [e.features for e in window]
        target = np.array([e.target for e in window])
        predicted = model.score(features)
        prior = np.array([prior_log_count(f, model.config.prior) for f in features])
        model_metrics.append(_ranking_metrics(predicted, target))
        prior_metrics.append(_ranking_metrics(prior, target))
    result: dict[str, float] = {}
    for name, metrics in (("val", model_metrics), ("prior", prior_metrics)):
        for key in ("precision@10", "pair_accuracy", "mse"):
            values = [m[key] for m in metrics]
            result[f"{name}_{key}"] = float(np.mean(values)) if values else float("nan")
    return result


def _sample(split: SnapshotSplit, config: TrainConfig, rng: random.Random) -> list[list[Example]]:
    per_window = max(2, config.batch_size // config.windows_per_batch)
    groups = []
    for window in rng.sample(split.train, k=min(config.windows_per_batch, len(split.train))):
        groups.append(rng.sample(window, k=min(per_window, len(window))))
    return groups


def step_loss(
    model: TrailModel, groups: list[list[Example]], config: TrainConfig, rng: random.Random
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of one batch (items grouped by window) and its parts."""
    examples = [e for group in groups for e in group]
    prompts = [model.prompt_text(e.features) for e in examples]
    forced = [forecast_sentence(e.features, e.target) for e in examples]
    answers = [verbalize(e.features, e.target, variant=rng.randrange(1 << 30)) for e in examples]
    residual, nll = model(model.encode(prompts, answers, forced))
    if nll is None:
        raise RuntimeError("a batch with answers must give their NLL")
    prior = torch.tensor(
        [prior_log_count(e.features, model.config.prior) for e in examples], device=model.device
    )
    target = torch.tensor([e.target for e in examples], device=model.device)
    predicted = prior + residual
    mse = torch.mean((predicted - target) ** 2)

    rank_terms = []
    offset = 0
    for group in groups:
        size = len(group)
        p = predicted[offset : offset + size]
        t = target[offset : offset + size]
        better = (t[:, None] - t[None, :]) > 0.1
        if better.any():
            rank_terms.append(torch.nn.functional.softplus(-(p[:, None] - p[None, :]))[better])
        offset += size
    rank = torch.cat(rank_terms).mean() if rank_terms else torch.zeros(())

    chosen = rng.sample(range(len(examples)), k=min(config.perturbed_per_batch, len(examples)))
    negatives = [perturb(answers[i], examples[i].features, rng) for i in chosen]
    _, nll_negative = model(
        model.encode([prompts[i] for i in chosen], negatives, [forced[i] for i in chosen])
    )
    if nll_negative is None:
        raise RuntimeError("a batch with answers must give their NLL")
    explanation = torch.relu(config.expl_margin - (nll_negative - nll[chosen])).mean()

    loss = mse + config.lm_weight * nll.mean() + config.rank_weight * rank
    loss = loss + config.expl_weight * explanation
    parts = {
        "loss": loss.item(),
        "mse": mse.item(),
        "lm": nll.mean().item(),
        "rank": rank.item(),
        "expl": explanation.item(),
    }
    return loss, parts


def _learning_rate(step: int, config: TrainConfig, base: float) -> float:
    if step < config.warmup:
        return base * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(
    snapshot_dirs: Sequence[Path],
    out_dir: Path,
    *,
    model_config: TrailConfig,
    config: TrainConfig,
    resume: bool = True,
    progress: bool = True,
    device: str = "cpu",
    items: Mapping[str, ItemMeta] | None = None,
) -> dict[str, Any]:
    """Train (or resume training) a TRAIL adapter; returns the manifest it writes.

    ``items`` (a ``--items`` catalog) gives titles and categories to the snapshot rows of the
    items it holds; category momentum stays what the replay computed.

    On ``device="cuda"`` the loop is the same; the frozen base runs in bfloat16 autocast
    while the LoRA weights, the head and the optimizer state stay in float32.
    """
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    split = split_snapshots(snapshot_dirs, config, model_config.prior, items)
    if not split.train:
        raise ValueError("no training windows with at least two items")
    model = TrailModel.from_base(model_config).to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    trainable = [p for p in model.lm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": trainable, "lr": config.lr, "base_lr": config.lr},
            {
                "params": list(model.head.parameters()),
                "lr": config.head_lr,
                "base_lr": config.head_lr,
            },
        ],
        weight_decay=config.weight_decay,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out_dir / CHECKPOINT
    start_step = 0
    history: list[dict[str, float]] = []
    validations: list[dict[str, float]] = []
    rng = random.Random(config.seed)  # noqa: S311 - reproducible sampling, not security
    if resume and not checkpoint_path.exists() and (out_dir / LEGACY_CHECKPOINT).exists():
        # Starting over silently would throw away a run the user asked to resume.
        raise CheckpointError(
            f"{out_dir / LEGACY_CHECKPOINT} is a pickle checkpoint of an older TRAIL and is "
            f"never loaded (a pickle can run code): {_CHECKPOINT_FIX}"
        )
    if resume and checkpoint_path.exists():
        start_step, history, validations = load_checkpoint(checkpoint_path, model, optimizer, rng)
        print(f"resuming from step {start_step} ({checkpoint_path})")

    started = time.perf_counter()
    bar = tqdm(
        range(start_step, config.steps),
        initial=start_step,
        total=config.steps,
        disable=not progress,
        desc="train",
        unit="step",
    )
    for step in bar:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config, group["base_lr"])
        with autocast:
            loss, parts = step_loss(model, _sample(split, config, rng), config, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            [p for g in optimizer.param_groups for p in g["params"]], 1.0
        )
        optimizer.step()
        history.append({"step": step + 1, **parts})
        bar.set_postfix(
            loss=f"{parts['loss']:.3f}", mse=f"{parts['mse']:.3f}", lm=f"{parts['lm']:.2f}"
        )
        done = step + 1
        if split.validation and (done % config.eval_every == 0 or done == config.steps):
            with autocast:
                metrics = {"step": done, **validate(model, split.validation)}
            validations.append(metrics)
            tqdm.write(
                f"step {done}: val precision@10 {metrics['val_precision@10']:.3f} "
                f"(prior {metrics['prior_precision@10']:.3f}), val mse {metrics['val_mse']:.3f} "
                f"(prior {metrics['prior_mse']:.3f})"
            )
        if done % config.checkpoint_every == 0 or done == config.steps:
            _save_checkpoint(checkpoint_path, model, optimizer, done, history, validations, rng)
    bar.close()

    info = {
        "model": model_config.to_json(),
        "training": asdict(config),
        "data": split.description,
        "examples": {
            "train": sum(len(w) for w in split.train),
            "validation": sum(len(w) for w in split.validation),
        },
        "steps": config.steps,
        "final_loss": _mean_tail(history, "loss"),
        "final_parts": {k: _mean_tail(history, k) for k in ("mse", "lm", "rank", "expl")},
        "validation": validations[-1] if validations else {},
        "validation_history": validations,
        "seconds_this_run": round(time.perf_counter() - started, 1),
        "device": device,
        "versions": _versions(),
    }
    # The manifest (this record plus the sha256 of every adapter file) is written last.
    return model.to("cpu").save(out_dir, info)


def _mean_tail(history: list[dict[str, float]], key: str, n: int = 20) -> float:
    values = [h[key] for h in history[-n:] if key in h]
    return float(np.mean(values)) if values else float("nan")


def _trainable_state(model: TrailModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.lm.named_parameters() if p.requires_grad}


def _save_checkpoint(
    path: Path,
    model: TrailModel,
    optimizer: torch.optim.Optimizer,
    step: int,
    history: list[dict[str, float]],
    validations: list[dict[str, float]],
    rng: random.Random,
) -> None:
    """Write a checkpoint: tensors in safetensors, counters and settings as JSON metadata."""
    tensors = {f"trainable/{n}": t.cpu().contiguous() for n, t in _trainable_state(model).items()}
    tensors |= {f"head/{n}": t.detach().cpu().clone() for n, t in model.head.state_dict().items()}
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
            f"{path} is not a readable checkpoint ({one_line(exc)}): {_CHECKPOINT_FIX}"
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
            f"{_CHECKPOINT_FIX}"
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
            f"{len(expected)} here; first difference: {differ[0]}): {_CHECKPOINT_FIX}"
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
            f"{path} does not fit this training run ({one_line(exc)[:300]}): {_CHECKPOINT_FIX}"
        ) from exc
    return step, history, validations


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
