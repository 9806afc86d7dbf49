"""Training TRAIL from window snapshots: a plain loop, in the spirit of nanoGPT.

Data: the Parquet snapshots that ``trail replay --snapshots-out`` writes (features of every
active item at a window's close and what the next window brought: its events, distinct users
and returning users), read and split by :mod:`model.training_data`; the evaluation windows at
the end of every folder are never read.

The label (``label``) is ``log1p`` of the next window's distinct returning users by default,
the quantity HR@10 counts (a user counts once however many events they make), or of its event
count (``label="count"``, the earlier recipe). Loss per step, over items drawn from a few
windows at a time:
  MSE(prior + residual, label)
+ lm_weight   * NLL of the verbalized explanation (after the forced forecast)
+ rank_weight * pairwise logistic loss: within a window, the item with the larger label scores
                higher
+ expl_weight * hinge: the faithful explanation is more likely than a perturbed one by a margin

The explanation targets and the forced forecast sentence state the next window's *events*
(what a reader is told), whatever the label.

Model selection: every ``eval_every`` steps the validation windows are scored by how large a
share of the label the best possible top 10 would have held the model's top 10 captures
(``captured@10``: with the returning-users label, the protocol's HR@10 numerator as far as
snapshot rows can tell it), and the raw faithfulness of greedy explanations of
``faithfulness_items`` validation items is measured. Ranking decides: a step replaces the
selected one when its captured@10 is higher by more than the standard error of the mean over
validation windows; where the two lie within that error of each other (the validation set
cannot tell their rankings apart, the one-standard-error rule of model selection), the more
faithful one is kept (:func:`preferred`).

Checkpoints (``--out DIR`` resumes from them) and the selected weights are written by
:mod:`model.training_checkpoints`: tensors in safetensors, state in JSON, nothing pickled.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model.adapter_files import LORA_FILE, TrailConfig, read_adapter_manifest, read_trail_config
from model.explain import check_explanation, forecast_sentence, perturb, verbalize
from model.metrics import lm_written_part
from model.priors import prior_log_count
from model.trail import TrailModel
from model.training_checkpoints import (
    BEST,
    CHECKPOINT,
    CHECKPOINT_FIX,
    LEGACY_CHECKPOINT,
    CheckpointError,
    best_metrics,
    checkpoint_run,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
)
from model.training_data import LABELS, Example, SnapshotSplit, split_snapshots
from schemas import ItemMeta

#: The validation metric that selects the step whose weights the adapter gets.
SELECT_BY = "val_captured@10"


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
    label: str = "returning"
    faithfulness_items: int = 48

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"label {self.label!r} is none of {', '.join(LABELS)}")


_METRICS = ("captured@10", "precision@10", "pair_accuracy", "mse")


def _ranking_metrics(predicted: np.ndarray, target: np.ndarray, k: int = 10) -> dict[str, float]:
    """Per window: the share of the best top k's label mass that the predicted top k holds
    (``captured@10``), precision@k against the k items with the largest label, pair accuracy
    and the MSE of the log label.

    >>> import numpy as np
    >>> target = np.log1p(np.array([9.0, 0.0, 3.0]))
    >>> _ranking_metrics(np.array([0.0, 2.0, 1.0]), target, k=1)["captured@10"]
    0.0
    >>> _ranking_metrics(np.array([2.0, 0.0, 1.0]), target, k=2)["captured@10"]
    1.0
    """
    order_true = np.argsort(-target, kind="stable")[:k]
    order_pred = np.argsort(-predicted, kind="stable")[:k]
    mass = np.expm1(target)
    best = float(mass[order_true].sum())
    differ = target[:, None] > target[None, :]
    correct = (predicted[:, None] > predicted[None, :]) & differ
    return {
        "captured@10": float(mass[order_pred].sum()) / best if best > 0 else 1.0,
        "precision@10": len(set(order_true.tolist()) & set(order_pred.tolist()))
        / max(1, min(k, len(target))),
        "pair_accuracy": float(correct.sum() / max(1, differ.sum())),
        "mse": float(np.mean((predicted - target) ** 2)),
    }


@torch.no_grad()
def validate(
    model: TrailModel, windows: Sequence[Sequence[Example]], faithfulness_items: int = 0
) -> dict[str, float]:
    """Mean per-window metrics of the model and of its prior on the validation windows.

    With ``faithfulness_items``, that many items (spread evenly over the windows, each
    window's best by the model) are explained greedily after the forecast sentence of their
    realised next-window events, and ``val_faithfulness`` / ``val_contradiction_rate`` are the
    checker's mean verdicts on what the LM wrote after that forced sentence (no guard), as
    the evaluation protocol judges them.
    """
    model_metrics: list[dict[str, float]] = []
    prior_metrics: list[dict[str, float]] = []
    to_explain: list[Example] = []
    usable = [w for w in windows if len(w) >= 2]
    per_window = math.ceil(faithfulness_items / len(usable)) if usable else 0
    for window in usable:
        features = [e.features for e in window]
        target = np.array([e.target for e in window])
        predicted = model.score(features)
        prior = np.array([prior_log_count(f, model.config.prior) for f in features])
        model_metrics.append(_ranking_metrics(predicted, target))
        prior_metrics.append(_ranking_metrics(prior, target))
        best = np.argsort(-predicted, kind="stable")[:per_window]
        to_explain += [window[i] for i in best.tolist()]
    result: dict[str, float] = {}
    for name, metrics in (("val", model_metrics), ("prior", prior_metrics)):
        for key in _METRICS:
            values = [m[key] for m in metrics]
            result[f"{name}_{key}"] = float(np.mean(values)) if values else float("nan")
    captured = [m["captured@10"] for m in model_metrics]
    if len(captured) >= 2:
        result[f"{SELECT_BY}_se"] = float(np.std(captured, ddof=1) / math.sqrt(len(captured)))
    to_explain = to_explain[:faithfulness_items]
    if to_explain:
        texts = model.explain(
            [e.features for e in to_explain], [e.count_target for e in to_explain]
        )
        checks = [
            check_explanation(lm_written_part(text), e.features, e.count_target)
            for text, e in zip(texts, to_explain, strict=True)
        ]
        result["val_faithfulness"] = float(np.mean([c.faithfulness for c in checks]))
        result["val_contradiction_rate"] = float(np.mean([c.contradiction_rate for c in checks]))
    return result


def preferred(candidate: Mapping[str, float], selected: Mapping[str, float]) -> bool:
    """Whether a validated step replaces the selected one: by ranking first, then faithfulness.

    Rankings whose ``val_captured@10`` differ by no more than the larger of the two standard
    errors (``val_captured@10_se``; 0 where a validation did not record one) count as equal,
    and then the higher ``val_faithfulness`` wins (the earlier step stays on a tie or where
    either lacks it); otherwise the higher captured@10 wins.

    >>> a = {"val_captured@10": 0.587, "val_captured@10_se": 0.04, "val_faithfulness": 0.86}
    >>> b = {"val_captured@10": 0.566, "val_captured@10_se": 0.03, "val_faithfulness": 0.93}
    >>> preferred(b, a)  # within the error: the more faithful one
    True
    >>> preferred({**b, "val_captured@10": 0.50}, a)  # clearly worse ranking
    False
    >>> preferred({**b, "val_captured@10_se": 0.0}, {**a, "val_captured@10_se": 0.0})
    False
    """
    noise = max(candidate.get(f"{SELECT_BY}_se", 0.0), selected.get(f"{SELECT_BY}_se", 0.0))
    gain = candidate[SELECT_BY] - selected[SELECT_BY]
    if abs(gain) <= noise and "val_faithfulness" in candidate and "val_faithfulness" in selected:
        return candidate["val_faithfulness"] > selected["val_faithfulness"]
    return gain > 0


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
    forced = [forecast_sentence(e.features, e.count_target) for e in examples]
    answers = [
        verbalize(e.features, e.count_target, variant=rng.randrange(1 << 30)) for e in examples
    ]
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
    init_adapter: Path | None = None,
) -> dict[str, Any]:
    """Train (or resume training) a TRAIL adapter; returns the manifest it writes.

    ``items`` (a ``--items`` catalog) gives titles and categories to the snapshot rows of the
    items it holds; category momentum stays what the replay computed.

    On ``device="cuda"`` the loop is the same; the frozen base runs in bfloat16 autocast
    while the LoRA weights, the head and the optimizer state stay in float32.

    ``init_adapter`` starts the LoRA weights from a trained adapter of the same shape (rank,
    targets, adapted layers) instead of peft's initialisation; the score head starts fresh,
    since it is trained for this run's label and prior. A resumed run ignores it (the
    checkpoint holds the weights).
    """
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    split = split_snapshots(snapshot_dirs, config, model_config.prior, items)
    if not split.train:
        raise ValueError("no training windows with at least two items")
    model = TrailModel.from_base(model_config)
    initialised_from = None
    resuming = resume and (out_dir / CHECKPOINT).exists()
    if init_adapter is not None and not resuming:
        initialised_from = _init_lora(model, init_adapter)
    elif resuming:
        initialised_from = checkpoint_run(out_dir / CHECKPOINT).get("initialised_from")
        if initialised_from is None and init_adapter is not None:
            # A checkpoint written before runs recorded their start: the flag, given again
            # on resume, says where the weights started.
            initialised_from = _adapter_record(init_adapter)
    model = model.to(device)
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
            f"never loaded (a pickle can run code): {CHECKPOINT_FIX}"
        )
    best_path = out_dir / BEST
    if resume and checkpoint_path.exists():
        start_step, history, validations = load_checkpoint(checkpoint_path, model, optimizer, rng)
        print(f"resuming from step {start_step} ({checkpoint_path})")
    else:
        best_path.unlink(missing_ok=True)  # a previous run's selection is not this run's
    best = best_metrics(best_path, SELECT_BY)

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
                metrics = {
                    "step": done,
                    **validate(model, split.validation, config.faithfulness_items),
                }
            validations.append(metrics)
            if best is None or preferred(metrics, best):
                best = metrics
                save_weights(best_path, model, {"step": done, **metrics})
            tqdm.write(
                f"step {done}: val captured@10 {metrics['val_captured@10']:.3f} "
                f"(prior {metrics['prior_captured@10']:.3f}), precision@10 "
                f"{metrics['val_precision@10']:.3f} (prior {metrics['prior_precision@10']:.3f}), "
                f"faithfulness {metrics.get('val_faithfulness', float('nan')):.3f}"
            )
        if done % config.checkpoint_every == 0 or done == config.steps:
            save_checkpoint(
                checkpoint_path,
                model,
                optimizer,
                done,
                history,
                validations,
                rng,
                run={"initialised_from": initialised_from},
            )
    bar.close()
    if best is not None and best["step"] != config.steps:
        load_weights(best_path, model)
        tqdm.write(f"selected step {best['step']} ({SELECT_BY} {best[SELECT_BY]:.3f})")

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
        "initialised_from": initialised_from,
        "selected_by": SELECT_BY,
        "selection_rule": (
            f"{SELECT_BY} higher by more than its standard error over validation windows; "
            "within it, val_faithfulness"
        ),
        "validation": best or {},
        "validation_history": validations,
        "seconds_this_run": round(time.perf_counter() - started, 1),
        "device": device,
        "versions": _versions(),
    }
    # The manifest (this record plus the sha256 of every adapter file) is written last.
    return model.to("cpu").save(out_dir, info)


def _init_lora(model: TrailModel, adapter_dir: Path) -> dict[str, Any]:
    """Copy a trained adapter's LoRA weights into ``model``; what it was, for the manifest."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    read_adapter_manifest(adapter_dir)  # its files' hashes are checked before anything loads
    other = read_trail_config(adapter_dir)
    shape = ("base_model", "lora_rank", "lora_targets", "lora_top_fraction")
    differ = [k for k in shape if getattr(other, k) != getattr(model.config, k)]
    if differ:
        raise ValueError(
            f"--init-adapter {adapter_dir}: its LoRA differs in {', '.join(differ)} "
            f"({', '.join(f'{k}={getattr(other, k)!r}' for k in differ)}); pass the same "
            "settings, or start from scratch"
        )
    state = load_file(adapter_dir / LORA_FILE)
    result = set_peft_model_state_dict(model.lm, state)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"--init-adapter {adapter_dir}: tensors that fit no LoRA weight here")
    return _adapter_record(adapter_dir)


def _adapter_record(adapter_dir: Path) -> dict[str, Any]:
    """Which adapter a run started from: its folder and its LoRA file's manifest entry."""
    manifest = read_adapter_manifest(adapter_dir)
    return {"adapter": str(adapter_dir), "files": manifest.get("files", {}).get(LORA_FILE)}


def _mean_tail(history: list[dict[str, float]], key: str, n: int = 20) -> float:
    values = [h[key] for h in history[-n:] if key in h]
    return float(np.mean(values)) if values else float("nan")


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
