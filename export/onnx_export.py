"""Merge a TRAIL adapter into its base LM, export it to ONNX, validate it, write a manifest.

Steps (each prints a progress line):

1. load the adapter (:meth:`model.trail.TrailModel.load`) and compute the PyTorch references
   on real prompts: the score head's residuals and greedy explanation tokens, both from the
   unmerged PEFT model, i.e. exactly what :class:`model.scorer.TrailScorer` serves;
2. merge the LoRA weights into the base (``merge_and_unload``) and save the merged LM and the
   tokenizer to a temporary folder; ``prompt.json`` gets the chat template's text around the
   user turn, so that the runtime tokenizes prompts in batches without rendering a template;
3. the generator: optimum-onnx ``main_export(task="text-generation-with-past")`` into
   ``generator/``; its ``logits`` output is then cut to the last position (only that one is
   ever read, and the full ``(batch, prompt, vocab)`` tensor of the first step is large);
4. the scorer: the generator's graph with the score head (LayerNorm and Linear) on the last
   position's final hidden state; its outputs are ``residual`` and the generator's grown KV
   cache (``present.*``). It keeps the generator's inputs, so the runtime passes the
   template's common opening as a cached past, and no second tracing of the model is needed;
5. validation with the serving code (:mod:`export.runtime`) on the CPU: the residuals' max abs
   difference against a threshold, greedy tokens identical for every prompt, and the batched
   prompt ids identical to the chat template's; and whether greedy tokens generated from the
   scorer's own cache of each prompt are identical too (the runtime reuses that cache for a
   scored item's explanation only where they are);
6. with ``int8``: both graphs quantized (:mod:`export.quantize`) and judged against fp32;
7. ``manifest.json`` last (:func:`export.manifest.write_manifest`): hashes, opset, versions,
   base model, adapter, config, validation.

The export is staged in a hidden sibling folder and renamed into place at the end, so a
:class:`export.runtime.ModelWatcher` never sees half of one.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export import DEFAULT_MAX_ABS_DIFF, DEFAULT_OPSET, DEFAULT_PROMPTS
from export.manifest import (
    GENERATOR_DIR,
    GENERATOR_FILE,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    PROMPT_FILE,
    SCORER_FILE,
    TOKENIZER_DIR,
    library_versions,
    write_manifest,
)
from export.runtime import OrtTrailModel
from export.sessions import CPU
from model.explain import forecast_sentence
from model.priors import prior_log_count
from model.prompts import chat_pieces
from model.scorer import adapter_version
from model.tiny import validation_features
from model.trail import TrailModel
from schemas import ItemFeatures

#: Above this many bytes of weights an ONNX file keeps them in a side file (protobuf's 2 GB cap).
EXTERNAL_DATA_BYTES = 1_500_000_000

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ExportError(RuntimeError):
    """The export itself could not be produced (not a validation failure)."""


# ---------------------------------------------------------------------------- references
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


def attach_score_head(generator: Path, head: nn.Module, path: Path) -> None:
    """The scorer: ``generator``'s graph with the score head on its last position, saved.

    The head reads the final (normed) hidden state of the last position, which is where
    :func:`last_position_logits` cut the LM head's input, so rows are left-padded. The
    outputs are ``residual`` and the grown KV cache (``present.*``, which the attention
    computes anyway, so an explanation can start from it); the nodes they do not need (the
    LM head) are pruned, the inputs (a KV cache among them) are kept.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(generator))
    graph = model.graph
    slicer = next((n for n in graph.node if n.name == "trail_last_position_slice"), None)
    if slicer is None:
        raise ExportError(f"{generator}: no last-position slice before the LM head")
    hidden = slicer.output[0]
    norm, proj = head.norm, head.proj  # type: ignore[union-attr]
    tensors = {
        "trail_head_norm_weight": norm.weight.detach().float().numpy(),
        "trail_head_norm_bias": norm.bias.detach().float().numpy(),
        "trail_head_weight": proj.weight.detach().float().numpy().T.copy(),  # (hidden, 1)
        "trail_head_bias": proj.bias.detach().float().numpy(),
        "trail_head_shape": np.array([-1], dtype=np.int64),
    }
    for name, value in tensors.items():
        graph.initializer.append(numpy_helper.from_array(value, name))
    graph.node.extend(
        [
            helper.make_node(
                "LayerNormalization",
                [hidden, "trail_head_norm_weight", "trail_head_norm_bias"],
                ["trail_head_normed"],
                name="trail_head_norm",
                axis=-1,
                epsilon=float(norm.eps),
            ),
            helper.make_node(
                "MatMul",
                ["trail_head_normed", "trail_head_weight"],
                ["trail_head_projected"],
                name="trail_head_proj",
            ),
            helper.make_node(
                "Add",
                ["trail_head_projected", "trail_head_bias"],
                ["trail_head_sum"],
                name="trail_head_add",
            ),
            helper.make_node(
                "Reshape",
                ["trail_head_sum", "trail_head_shape"],
                ["residual"],
                name="trail_head_reshape",
            ),
        ]
    )
    presents = [o for o in graph.output if o.name.startswith("present.")]
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("residual", onnx.TensorProto.FLOAT, [None]))
    graph.output.extend(presents)
    _prune(graph)
    size = sum(t.ByteSize() for t in graph.initializer)
    onnx.save(
        model,
        str(path),
        save_as_external_data=size > EXTERNAL_DATA_BYTES,
        all_tensors_to_one_file=True,
        location=f"{path.name}.data" if size > EXTERNAL_DATA_BYTES else None,
    )


def _prune(graph: Any) -> None:
    """Drop the nodes and weights no output needs (graph inputs are kept)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
            for attribute in node.attribute:  # subgraphs (If/Loop) read outer names too
                for sub in [attribute.g, *attribute.graphs]:
                    needed.update(i for n in sub.node for i in n.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    weights = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(weights)


# ---------------------------------------------------------------------------- staging
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
    int8: bool = False,
    log: Log = _stderr,
) -> dict[str, Any]:
    """Export ``adapter_dir`` to ``out_dir``; returns the manifest (``status`` ok or failed).

    With ``int8`` the export also holds int8 graphs, judged against the fp32 ones in the
    manifest's ``int8`` section (served only where they held; see :mod:`export.quantize`).
    """
    adapter_dir = Path(adapter_dir)
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    steps = 7

    def step(name: str, began: float) -> None:
        timings[name] = round(time.perf_counter() - began, 2)
        log(f"  done in {timings[name]:.1f} s ({time.perf_counter() - started:.0f} s so far)")

    log(f"[1/{steps}] loading the adapter {adapter_dir} and its PyTorch references")
    began = time.perf_counter()
    model = TrailModel.load(adapter_dir, base_model=base_model)
    features = validation_features(prompts)
    reference, explain_prompts, reference_tokens = torch_references(model, features)
    step("load_and_reference", began)

    staging = _prepare_out(out_dir)
    try:
        with tempfile.TemporaryDirectory(prefix="trail-merged-") as tmp, warnings.catch_warnings():
            # The tracers warn about every shape-dependent branch of the Llama code: pages of
            # noise that say nothing about this export (the validation below does).
            warnings.simplefilter("ignore")
            merged_dir = Path(tmp)
            log(f"[2/{steps}] merging LoRA into the base model")
            began = time.perf_counter()
            merged = (
                model.lm.merge_and_unload() if hasattr(model.lm, "merge_and_unload") else model.lm
            )
            merged.eval()
            merged.save_pretrained(str(merged_dir))
            model.tokenizer.padding_side = "right"
            model.tokenizer.save_pretrained(str(merged_dir))
            model.tokenizer.save_pretrained(str(staging / TOKENIZER_DIR))
            pieces = chat_pieces(model.tokenizer)
            if pieces is not None:
                (staging / PROMPT_FILE).write_text(json.dumps(pieces.to_json(), indent=2) + "\n")
            step("merge", began)
            del merged

            log(f"[3/{steps}] exporting the generator (optimum-onnx, KV cache, opset {opset})")
            began = time.perf_counter()
            export_generator(merged_dir, staging / GENERATOR_DIR, opset)
            step("generator_export", began)

        log(f"[4/{steps}] the scorer: the score head on the generator's last position")
        began = time.perf_counter()
        attach_score_head(staging / GENERATOR_FILE, model.head, staging / SCORER_FILE)
        step("scorer_export", began)
        tokenizer = model.tokenizer
        del model

        log(f"[5/{steps}] validating against PyTorch on {len(features)} prompts (CPU)")
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
            "prompt": PROMPT_FILE if pieces is not None else None,
            "scorer_graph": "generator body + score head, last position, left-padded, KV out",
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
        validation["prompt_ids_identical"] = prompt_ids_identical(staging, tokenizer, features)
        validation["passed"] = bool(validation["passed"] and validation["prompt_ids_identical"])
        step("validation", began)
        manifest["status"] = "ok" if validation["passed"] else "failed"
        manifest["validation"] = validation

        if int8 and manifest["status"] == "ok":
            from export.quantize import quantize_export

            log(f"[6/{steps}] int8: calibrating, quantizing and validating against fp32")
            began = time.perf_counter()
            manifest["int8"] = quantize_export(staging, manifest, write_manifest, log)
            step("int8", began)
        else:
            reason = "not asked for" if not int8 else "the fp32 export failed its validation"
            log(f"[6/{steps}] int8: skipped ({reason})")
        timings["total"] = round(time.perf_counter() - started, 2)
        manifest["export_seconds"] = timings

        log(f"[7/{steps}] writing the manifest")
        manifest = write_manifest(staging, manifest)
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def prompt_ids_identical(
    export_dir: Path, tokenizer: Any, features: Sequence[ItemFeatures]
) -> bool:
    """Whether the runtime's batched prompt ids (with and without the forced forecast) are the
    ids of tokenizing the chat template's rendering with ``tokenizer``, as in training."""
    from model.prompts import chat_prompt

    runtime = OrtTrailModel(export_dir, providers=[CPU], verify=False)
    openings = [forecast_sentence(f, prior_log_count(f)) for f in features]
    texts = [chat_prompt(tokenizer, f) for f in features]
    expected = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    expected += [
        tokenizer(t + o, add_special_tokens=False)["input_ids"]
        for t, o in zip(texts, openings, strict=True)
    ]
    found = runtime.prompt_ids(features) + runtime.prompt_ids(features, openings)
    return [list(e) for e in expected] == found


def validate(
    export_dir: Path,
    features: Sequence[ItemFeatures],
    reference: np.ndarray,
    explain_prompts: Sequence[str],
    reference_tokens: Sequence[Sequence[int]],
    max_abs_diff: float,
) -> dict[str, Any]:
    """Compare the export, run by the serving code on the CPU, with the PyTorch references.

    Scores go through small length buckets (so several batch shapes are checked) with the
    template's opening as a cached past, as served; the greedy check decodes all prompts as
    one left-padded batch, like the reference, so that both sides see the same padding. The
    scorer's cache of each prompt is then the past of a second greedy run, as
    :meth:`~export.runtime.OrtTrailModel.explain` serves a scored item.
    """
    runtime = OrtTrailModel(export_dir, providers=[CPU], verify=False)
    prompt_rows = runtime.tokenize([runtime.prompt_text(f) for f in features])
    residual = runtime.residuals_of(prompt_rows, batch_size=3, keep_caches=True)
    score_diff = float(np.max(np.abs(residual - reference))) if len(reference) else 0.0
    rows = runtime.tokenize(explain_prompts)
    tokens = runtime.generator.greedy(
        rows,
        max_new_tokens=runtime.info.max_explanation_tokens,
        eos_id=runtime.end_id,
        pad_id=runtime.pad_id,
    )
    same = [list(a) == list(b) for a, b in zip(tokens, reference_tokens, strict=True)]
    from_cache: bool | None = None
    if runtime.scorer.returns_cache and all(
        runtime.row_caches.get(p) is not None for p in prompt_rows
    ):
        cached = runtime.generate_ids_of(rows, prompts=prompt_rows)
        from_cache = [list(a) for a in cached] == [list(b) for b in reference_tokens]
    return {
        "score_max_abs_diff": score_diff,
        "score_threshold": max_abs_diff,
        "greedy_tokens_identical": all(same),
        "greedy_prompts_identical": int(sum(same)),
        "greedy_tokens_checked": int(sum(len(t) for t in reference_tokens)),
        "greedy_after_scorer_cache_identical": from_cache,
        "prompts_checked": len(features),
        "provider": runtime.provider,
        "passed": bool(score_diff <= max_abs_diff and all(same)),
    }
