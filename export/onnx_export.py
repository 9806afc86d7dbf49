"""Merge a TRAIL adapter into its base LM, export two ONNX graphs, validate them, write a manifest.

Steps (each prints a progress line):

1. load the adapter (:meth:`model.trail.TrailModel.load`) and compute the PyTorch references
   on real prompts: the score head's residuals and greedy explanation tokens, both from the
   unmerged PEFT model, i.e. exactly what :class:`model.scorer.TrailScorer` serves;
2. merge the LoRA weights into the base (``merge_and_unload``) and save the merged LM and the
   tokenizer to a temporary folder;
3. the generator: optimum-onnx ``main_export(task="text-generation-with-past")`` into
   ``generator/``; its ``logits`` output is then cut to the last position (only that one is
   ever read, and the full ``(batch, prompt, vocab)`` tensor of the first step is large);
4. the scorer: ``(input_ids, attention_mask) -> residual`` of the score head on the last prompt
   token, with ``torch.onnx.export(dynamo=True)`` (the TorchScript exporter fails on current
   Llama masks) and dynamic batch and sequence axes;
5. validation with the serving code (:mod:`export.runtime`) on the CPU: the residuals' max abs
   difference against a threshold, and greedy tokens identical for every prompt;
6. ``manifest.json`` last: hashes, opset, versions, base model, adapter, config, validation.

The export is staged in a hidden sibling folder and renamed into place at the end, so a
:class:`export.runtime.ModelWatcher` never sees half of one.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export import DEFAULT_MAX_ABS_DIFF, DEFAULT_OPSET, DEFAULT_PROMPTS
from export.runtime import (
    CPU,
    GENERATOR_DIR,
    GENERATOR_FILE,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    SCORER_FILE,
    TOKENIZER_DIR,
    OrtTrailModel,
    export_files,
    file_entries,
)
from model.explain import forecast_sentence
from model.priors import prior_log_count
from model.scorer import adapter_version
from model.trail import TrailModel
from schemas import ItemFeatures

#: Above this many bytes of weights an ONNX file keeps them in a side file (protobuf's 2 GB cap).
EXTERNAL_DATA_BYTES = 1_500_000_000

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ExportError(RuntimeError):
    """The export itself could not be produced (not a validation failure)."""


class ScorerModule(nn.Module):
    """The merged LM body and the score head: token ids -> residual of the last prompt token.

    Prompts are right-padded, so the last token of row ``i`` sits at ``mask[i].sum() - 1``.
    The 4-D additive mask is built here from the 2-D one, because transformers' own mask
    builder (vmap over index functions) does not trace under ``torch.export``; a 4-D mask is
    passed through unchanged.
    """

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device)
        causal = positions[None, :] <= positions[:, None]
        allowed = causal[None, None] & attention_mask[:, None, None, :].bool()
        mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
        hidden = self.body(input_ids=input_ids, attention_mask=mask, use_cache=False)
        states = hidden.last_hidden_state
        last = attention_mask.sum(dim=1) - 1
        rows = torch.arange(states.shape[0], device=states.device)
        residual: torch.Tensor = self.head(states[rows, last])
        return residual


# ---------------------------------------------------------------------------- references
def validation_features(count: int, seed: int = 0) -> list[ItemFeatures]:
    """Realistic item signals for validation: every trend shape, window length and metadata."""
    from model.tiny import SHAPES, synthetic_features

    rng = random.Random(seed)  # noqa: S311 - reproducible validation inputs, not security
    return [synthetic_features(rng, shape=SHAPES[i % len(SHAPES)]) for i in range(count)]


@torch.no_grad()
def torch_references(
    model: TrailModel, features: Sequence[ItemFeatures]
) -> tuple[np.ndarray, list[str], list[list[int]]]:
    """PyTorch residuals, explanation prompts and greedy token ids (cut after ``<|im_end|>``).

    The explanation prompts carry the forced forecast sentence of the prior, as served.
    """
    model.eval()
    prompts = [model.prompt_text(f) for f in features]
    residual, _ = model.forward(model.encode(prompts))
    forced = [forecast_sentence(f, prior_log_count(f, model.config.prior)) for f in features]
    explain_prompts = [p + o for p, o in zip(prompts, forced, strict=True)]
    tokenizer = model.tokenizer
    tokenizer.padding_side = "left"
    encoded = tokenizer(
        explain_prompts, add_special_tokens=False, return_tensors="pt", padding=True
    )
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    output = model.lm.generate(
        **encoded,
        max_new_tokens=model.config.max_explanation_tokens,
        do_sample=False,
        eos_token_id=end_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    tokens: list[list[int]] = []
    for row in output[:, encoded["input_ids"].shape[1] :].tolist():
        tokens.append(row[: row.index(end_id) + 1] if end_id in row else row)
    return residual.float().numpy(), explain_prompts, tokens


# ---------------------------------------------------------------------------- graphs
def export_generator(merged_dir: Path, out_dir: Path, opset: int) -> None:
    """optimum-onnx's decoder with a KV cache, then its logits cut to the last position."""
    from optimum.exporters.onnx import main_export

    main_export(
        str(merged_dir),
        output=str(out_dir),
        task="text-generation-with-past",
        opset=opset,
        device="cpu",
        # Validated below with the serving code itself, more strictly (identical tokens).
        do_validation=False,
    )
    last_position_logits(out_dir / "model.onnx")


def last_position_logits(path: Path) -> bool:
    """Insert ``Slice(axis=1, -1:)`` before the LM head so that ``logits`` is ``(B, 1, V)``.

    The serving loop reads only the last position; without the slice the first step of every
    explanation batch computes and copies ``batch x prompt x vocab`` floats (about 350 MB for
    16 SmolLM2 prompts). Returns whether the graph had the expected shape and was changed.
    """
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    graph = model.graph
    producer = next((n for n in graph.node if "logits" in n.output), None)
    if producer is None or producer.op_type != "MatMul":
        return False
    hidden = producer.input[0]
    constants = {
        "trail_last_start": -1,
        "trail_last_end": np.iinfo(np.int64).max,
        "trail_last_axis": 1,
    }
    for name, value in constants.items():
        graph.initializer.append(
            onnx.numpy_helper.from_array(np.array([value], dtype=np.int64), name)
        )
    sliced = f"{hidden}_last_position"
    node = helper.make_node(
        "Slice", [hidden, *constants], [sliced], name="trail_last_position_slice"
    )
    index = list(graph.node).index(producer)
    graph.node.insert(index, node)
    producer.input[0] = sliced
    for output in graph.output:
        if output.name == "logits":
            dim = output.type.tensor_type.shape.dim[1]
            dim.Clear()
            dim.dim_value = 1
    size = sum(t.ByteSize() for t in graph.initializer)
    external = size > EXTERNAL_DATA_BYTES
    if external:
        for stale in path.parent.glob(f"{path.name}*data"):
            stale.unlink()
    onnx.save(
        model,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=f"{path.name}.data" if external else None,
    )
    return True


def export_scorer(model: TrailModel, merged: Any, path: Path, opset: int) -> None:
    """The score head on the merged LM body, with ``torch.onnx.export(dynamo=True)``."""
    module = ScorerModule(merged.base_model, model.head).eval()
    sample = model.encode([model.prompt_text(f) for f in validation_features(2, seed=1)])
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            (sample.input_ids, sample.attention_mask),
            dynamo=True,
            opset_version=opset,
            input_names=["input_ids", "attention_mask"],
            output_names=["residual"],
            # Named string axes become Dim.DYNAMIC: named torch.export.Dims fail on the
            # attention's implicit "batch != 1" guard, which holds for real batches anyway.
            dynamic_shapes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
            },
            verbose=False,
        )
    if program is None:  # only the TorchScript path returns None
        raise ExportError("torch.onnx.export returned no program")
    program.save(str(path), external_data=weights > EXTERNAL_DATA_BYTES)


# ---------------------------------------------------------------------------- manifest
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
    manifest = {**manifest, "files": file_entries(out_dir, export_files(out_dir))}
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _prepare_out(out_dir: Path) -> Path:
    """The staging folder beside ``out_dir`` (hidden from watchers); refuses foreign folders."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"{out_dir} exists and is not a folder")
        if any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).is_file():
            raise ExportError(
                f"{out_dir} is not empty and not a previous export: choose another --out"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


def _publish(staging: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)


# ---------------------------------------------------------------------------- the command
def export_model(
    adapter_dir: Path,
    out_dir: Path,
    *,
    base_model: str | None = None,
    opset: int = DEFAULT_OPSET,
    max_abs_diff: float = DEFAULT_MAX_ABS_DIFF,
    prompts: int = DEFAULT_PROMPTS,
    log: Log = _stderr,
) -> dict[str, Any]:
    """Export ``adapter_dir`` to ``out_dir``; returns the manifest (``status`` ok or failed)."""
    adapter_dir = Path(adapter_dir)
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def step(name: str, began: float) -> None:
        timings[name] = round(time.perf_counter() - began, 2)
        log(f"  done in {timings[name]:.1f} s")

    log(f"[1/6] loading the adapter {adapter_dir}")
    began = time.perf_counter()
    model = TrailModel.load(adapter_dir, base_model=base_model)
    features = validation_features(prompts)
    reference, explain_prompts, reference_tokens = torch_references(model, features)
    step("load_and_reference", began)

    staging = _prepare_out(out_dir)
    try:
        with tempfile.TemporaryDirectory(prefix="trail-merged-") as tmp:
            merged_dir = Path(tmp)
            log("[2/6] merging LoRA into the base model")
            began = time.perf_counter()
            merged = (
                model.lm.merge_and_unload() if hasattr(model.lm, "merge_and_unload") else model.lm
            )
            merged.eval()
            merged.save_pretrained(str(merged_dir))
            model.tokenizer.padding_side = "right"
            model.tokenizer.save_pretrained(str(merged_dir))
            model.tokenizer.save_pretrained(str(staging / TOKENIZER_DIR))
            step("merge", began)

            log(f"[3/6] exporting the generator (optimum-onnx, KV cache, opset {opset})")
            began = time.perf_counter()
            export_generator(merged_dir, staging / GENERATOR_DIR, opset)
            step("generator_export", began)

        log(f"[4/6] exporting the scorer (torch.onnx dynamo, opset {opset})")
        began = time.perf_counter()
        export_scorer(model, merged, staging / SCORER_FILE, opset)
        step("scorer_export", began)
        del merged, model

        log(f"[5/6] validating against PyTorch on {len(features)} prompts (CPU)")
        began = time.perf_counter()
        config = json.loads((adapter_dir / "trail_config.json").read_text())
        version = f"{adapter_version(adapter_dir)}+onnx"
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "version": version,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
            "status": "validating",
            "scorer": SCORER_FILE,
            "generator": GENERATOR_FILE,
            "tokenizer": TOKENIZER_DIR,
            "generator_logits": "last-position",
            "dtype": "float32",
            "opset": opset,
            "versions": library_versions(),
            "base_model": base_model or config.get("base_model"),
            "adapter": {"dir": str(adapter_dir.resolve()), "version": adapter_version(adapter_dir)},
            "trail_config": config,
            "prior": config.get("prior"),
        }
        # The runtime refuses unvalidated exports, so validation loads this provisional one.
        write_manifest(staging, {**manifest, "status": "ok"})
        validation = validate(
            staging, features, reference, explain_prompts, reference_tokens, max_abs_diff
        )
        step("validation", began)
        manifest["status"] = "ok" if validation["passed"] else "failed"
        manifest["validation"] = validation
        timings["total"] = round(time.perf_counter() - started, 2)
        manifest["export_seconds"] = timings

        log("[6/6] writing the manifest")
        manifest = write_manifest(staging, manifest)
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def validate(
    export_dir: Path,
    features: Sequence[ItemFeatures],
    reference: np.ndarray,
    explain_prompts: Sequence[str],
    reference_tokens: Sequence[Sequence[int]],
    max_abs_diff: float,
) -> dict[str, Any]:
    """Compare the export, run by the serving code on the CPU, with the PyTorch references.

    Scores go through small length buckets (so several batch shapes are checked); the greedy
    check decodes all prompts as one left-padded batch, like the reference, so that both
    sides see the same padding.
    """
    runtime = OrtTrailModel(export_dir, providers=[CPU], verify=False)
    prompts = [runtime.prompt_text(f) for f in features]
    residual = runtime.residuals(prompts, batch_size=3)
    score_diff = float(np.max(np.abs(residual - reference))) if len(reference) else 0.0
    rows = runtime.tokenize(explain_prompts)
    tokens = runtime.generator.greedy(
        rows,
        max_new_tokens=runtime.info.max_explanation_tokens,
        eos_id=runtime.end_id,
        pad_id=runtime.pad_id,
    )
    same = [list(a) == list(b) for a, b in zip(tokens, reference_tokens, strict=True)]
    return {
        "score_max_abs_diff": score_diff,
        "score_threshold": max_abs_diff,
        "greedy_tokens_identical": all(same),
        "greedy_prompts_identical": int(sum(same)),
        "greedy_tokens_checked": int(sum(len(t) for t in reference_tokens)),
        "prompts_checked": len(features),
        "provider": runtime.provider,
        "passed": bool(score_diff <= max_abs_diff and all(same)),
    }
