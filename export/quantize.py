"""int8 dynamic quantization of an export's graphs, validated against its fp32 graphs.

ONNX Runtime's dynamic quantization stores each weight matrix in int8 (one scale per output
channel) and quantizes each input activation on the fly with one scale per tensor, so matrix
products run on the CPU's int8 dot-product instructions (VNNI where present). A per-tensor
scale cannot resolve inputs whose largest values are thousands of times their typical ones:
SmolLM2 has such outliers in the MLP down-projections of a few layers. A short calibration
on real prompts measures every weight matrix's input (largest over mean magnitude) and keeps
the outlier ones in fp32 (:data:`export.INT8_OUTLIER_RATIO`).

The quantized graphs are then judged against the fp32 ones, served by the runtime on the
CPU, and the verdict goes into the manifest's ``int8`` section: the largest and mean
difference of a residual, the share of the top 10 kept in every validation window (ranking
by the cascade's blend at its largest LM weight, the ranking most sensitive to the LM), and
the explanations' faithfulness (the checker's, before the guard) under both. Only exports
whose int8 graphs hold all of :data:`export.INT8_MAX_ABS_DIFF`,
:data:`export.INT8_MIN_TOP10_OVERLAP` and :data:`export.INT8_MAX_FAITHFULNESS_DROP` serve
int8 (see :func:`export.runtime.choose_precision`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.manifest import GENERATOR_FILE, INT8_GENERATOR_FILE, INT8_SCORER_FILE, SCORER_FILE
from export.runtime import OrtTrailModel
from export.sessions import CPU, left_padded, session_options
from schemas import ItemFeatures

#: Validation windows of synthetic items, and items in each (the cascade re-scores 50).
INT8_WINDOWS = 2
INT8_WINDOW_ITEMS = 40
#: Explanations compared for faithfulness.
INT8_EXPLANATIONS = 16
#: Prompts the outlier calibration runs.
CALIBRATION_PROMPTS = 4
#: The score head's own weights stay fp32 (tiny, and read directly by the score).
HEAD_PREFIX = "trail_head_"


def weighted_matmuls(model: Any) -> list[Any]:
    """The MatMul nodes whose second input is a stored weight matrix."""
    weights = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


@dataclass(frozen=True)
class Calibration:
    """Each weighted MatMul's input on real prompts: ``max|x| / mean|x|`` and per-channel
    ``max|x|`` (over real tokens, not padding)."""

    ratios: dict[str, float]
    channel_max: dict[str, np.ndarray]


def calibrate(generator: Path, rows: Sequence[Sequence[int]], pad_id: int) -> Calibration:
    """Run ``generator`` once on ``rows`` (empty cache) with every weighted MatMul's input
    added as an output, and measure those inputs."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(generator))
    nodes = weighted_matmuls(model)
    taps = {n.name: n.input[0] for n in nodes}
    known = {o.name for o in model.graph.output}
    for tensor in sorted(set(taps.values()) - known):
        model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, 1, None))
    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=session_options(), providers=[CPU]
    )
    del model
    inputs = {i.name: i for i in session.get_inputs()}
    ids, mask, positions = left_padded(rows, pad_id)
    feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    if "position_ids" in inputs:
        feeds["position_ids"] = positions
    for name, spec in inputs.items():
        if name.startswith("past_key_values."):
            heads, dim = int(spec.shape[1]), int(spec.shape[3])
            feeds[name] = np.zeros((len(rows), heads, 0, dim), np.float32)
    names = sorted(set(taps.values()))
    values = dict(zip(names, session.run(names, feeds), strict=True))
    valid = mask.astype(bool)
    ratios: dict[str, float] = {}
    channel_max: dict[str, np.ndarray] = {}
    for node, tensor in taps.items():
        magnitude = np.abs(values[tensor][valid])  # (real tokens, channels)
        ratios[node] = float(magnitude.max() / max(float(magnitude.mean()), 1e-12))
        channel_max[node] = magnitude.max(axis=0).astype(np.float64)
    return Calibration(ratios, channel_max)


def smooth(graph: Any, calibration: Calibration, nodes: Sequence[str]) -> int:
    """SmoothQuant: move each channel's activation range into the weights, exactly.

    For a group of weighted MatMuls that read one input ``x`` (q/k/v, gate/up, down), channel
    ``j`` is divided by ``s_j = sqrt(max|x_j| / max|W_j|)`` where ``x`` is made (the RMSNorm's
    weight, or the columns of the up-projection whose product with the gate is ``x``) and
    the rows ``W_j`` are multiplied by it, so every product is unchanged while ``x``'s
    channels come out even and the int8 scales fit them. Groups whose input comes from
    anything else are left as they are. Returns the number of groups smoothed.
    """
    from onnx import numpy_helper

    weights = {t.name: t for t in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    wanted = set(nodes)
    groups: dict[str, list[Any]] = {}
    for node in graph.node:
        if node.name in wanted:
            groups.setdefault(node.input[0], []).append(node)
    smoothed = 0
    for source, members in groups.items():
        if len(users.get(source, [])) != len(members):
            continue  # x feeds something else too: dividing it would change that
        make = producer.get(source)
        if make is None or make.op_type != "Mul":
            continue
        target = _absorber(make, weights, producer, users)
        if target is None:
            continue
        activation = np.max([calibration.channel_max[m.name] for m in members], axis=0)
        matrices = [numpy_helper.to_array(weights[m.input[1]]) for m in members]
        peak = np.max([np.abs(w).max(axis=1) for w in matrices], axis=0)
        scale = np.sqrt(np.maximum(activation, 1e-5) / np.maximum(peak, 1e-5))
        scale = np.clip(scale, 1e-2, 1e2).astype(np.float32)
        name, axis = target
        absorbed = numpy_helper.to_array(weights[name]).astype(np.float32)
        absorbed = absorbed / (scale if axis is None else scale[None, :])
        weights[name].CopyFrom(numpy_helper.from_array(absorbed.astype(np.float32), name))
        for member, matrix in zip(members, matrices, strict=True):
            scaled = (matrix * scale[:, None]).astype(np.float32)
            weights[member.input[1]].CopyFrom(numpy_helper.from_array(scaled, member.input[1]))
        smoothed += 1
    return smoothed


def _absorber(
    make: Any, weights: dict[str, Any], producer: dict[str, Any], users: dict[str, list[Any]]
) -> tuple[str, int | None] | None:
    """Where ``x = Mul(a, b)`` can absorb a per-channel divisor: a weight vector of its own
    (an RMSNorm's, axis None), or the weight columns of a MatMul that only it reads (axis 1)."""
    for name in make.input:
        if name in weights and len(weights[name].dims) == 1 and len(users[name]) == 1:
            return name, None
    for name in make.input:
        previous = producer.get(name)
        if (
            previous is not None
            and previous.op_type == "MatMul"
            and previous.input[1] in weights
            and len(users[name]) == 1
            and len(users[previous.input[1]]) == 1
        ):
            return previous.input[1], 1
    return None


def quantize_graph(
    source: Path, target: Path, nodes: Sequence[str], calibration: Calibration | None = None
) -> None:
    """int8 dynamic quantization of ``nodes`` (weighted MatMuls) of ``source`` into ``target``,
    smoothed first (:func:`smooth`) when a ``calibration`` is given."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    if calibration is not None:
        smooth(model.graph, calibration, nodes)
    # Stale intermediate shapes (the exporters leave some) make the quantizer's shape
    # inference fail; it recomputes them.
    del model.graph.value_info[:]
    stripped = target.parent / f".{target.name}.input.onnx"
    onnx.save(model, str(stripped))
    del model
    quiet = logging.getLogger()
    level = quiet.level
    # The quantizer logs a generic "consider pre-processing" warning per graph to the root
    # logger; it does not apply to these (already optimised) transformer graphs.
    quiet.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(stripped),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_quantize=list(nodes),
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        quiet.setLevel(level)
        stripped.unlink(missing_ok=True)
    quantized = onnx.load(str(target))
    per_row_activations(quantized.graph)
    onnx.save(quantized, str(target))


def per_row_activations(graph: Any) -> int:
    """Make each dynamically quantized input's int8 scale per row (token) instead of per tensor.

    ``DynamicQuantizeLinear`` picks one scale for a whole ``(batch, tokens, channels)``
    input, so a single token with large activations (SmolLM2's first token has them) coarsens
    every other token's int8 steps. Dividing each row by its largest magnitude ``r`` first
    and multiplying each product's row by ``r`` after is exact arithmetic (``(x / r) W =
    (x W) / r`` row by row) and leaves one common scale that fits every row. Returns the
    number of inputs rewritten.
    """
    from onnx import helper, numpy_helper

    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "trail_row_axes"),
            numpy_helper.from_array(np.array(1e-12, dtype=np.float32), "trail_row_floor"),
        ]
    )
    before: dict[str, list[Any]] = {}
    after: dict[str, list[Any]] = {}
    quantizers = [n for n in graph.node if n.op_type == "DynamicQuantizeLinear"]
    for number, quantizer in enumerate(quantizers):
        source, tag = quantizer.input[0], f"trail_row_{number}"
        row_max = f"{tag}_max"
        before[quantizer.name] = [
            helper.make_node("Abs", [source], [f"{tag}_abs"], name=f"{tag}_abs"),
            helper.make_node(
                "ReduceMax",
                [f"{tag}_abs", "trail_row_axes"],
                [f"{tag}_peak"],
                name=f"{tag}_peak",
                keepdims=1,
            ),
            helper.make_node("Max", [f"{tag}_peak", "trail_row_floor"], [row_max], name=row_max),
            helper.make_node("Div", [source, row_max], [f"{tag}_input"], name=f"{tag}_div"),
        ]
        quantizer.input[0] = f"{tag}_input"
        # scale -> Mul(scale, weight scales) -> Mul(product, that) -> the float output
        for scales in consumers.get(quantizer.output[1], []):
            for final in consumers.get(scales.output[0], []):
                if final.op_type != "Mul":
                    raise ValueError(f"unexpected {final.op_type} after {scales.name}")
                output = final.output[0]
                final.output[0] = f"{output}_per_row"
                after.setdefault(final.name, []).append(
                    helper.make_node(
                        "Mul", [f"{output}_per_row", row_max], [output], name=f"{final.name}_row"
                    )
                )
    nodes = []
    for node in graph.node:
        nodes += before.get(node.name, [])
        nodes.append(node)
        nodes += after.get(node.name, [])
    del graph.node[:]
    graph.node.extend(nodes)
    return len(quantizers)


def _top(scores: np.ndarray, k: int = 10) -> set[int]:
    return set(np.argsort(-scores, kind="stable")[:k].tolist())


def compare_int8(
    export_dir: Path, windows: Sequence[Sequence[ItemFeatures]], explained: Sequence[ItemFeatures]
) -> dict[str, Any]:
    """fp32 against int8, all served by the runtime on the CPU (verdicts included).

    Scores are compared for the int8 scorer alone (``int8-scorer``: as served beside the
    fp32 generator) and for both int8 graphs; explanations for both int8 graphs.
    """
    from export import (
        INT8_MAX_ABS_DIFF,
        INT8_MAX_FAITHFULNESS_DROP,
        INT8_MAX_TRUSTED_DROP,
        INT8_MIN_TOP10_OVERLAP,
    )
    from model.cascade import ALPHAS, blended
    from model.explain import check_explanation
    from model.metrics import lm_written_part
    from model.priors import prior_log_count

    runtimes = {
        p: OrtTrailModel(
            export_dir, providers=[CPU], verify=False, precision=p, unvalidated_int8=True
        )
        for p in ("fp32", "int8-scorer", "int8")
    }
    diffs: dict[str, list[np.ndarray]] = {"int8-scorer": [], "int8": []}
    overlaps: dict[str, list[float]] = {"int8-scorer": [], "int8": []}
    prior_name = runtimes["fp32"].info.prior
    for window in windows:
        # Residuals, not scores: a score is clamped at zero, and with a prior of zero (no
        # returning users yet) every score of a window can be 0 in both precisions alike.
        residuals = {p: r.residuals_of(r.prompt_ids(list(window))) for p, r in runtimes.items()}
        prior = np.array([prior_log_count(f, prior_name) for f in window])
        reference = _top(blended(prior, residuals["fp32"].astype(np.float64), max(ALPHAS)))
        for name in diffs:
            diffs[name].append(np.abs(residuals["fp32"] - residuals[name]))
            top = _top(blended(prior, residuals[name].astype(np.float64), max(ALPHAS)))
            overlaps[name].append(len(reference & top) / 10)

    def scores_verdict(name: str) -> dict[str, Any]:
        every = np.concatenate(diffs[name])
        verdict = {
            "score_max_abs_diff": float(every.max()),
            "score_mean_abs_diff": float(every.mean()),
            "top10_overlap_per_window": overlaps[name],
        }
        verdict["passed"] = bool(
            verdict["score_max_abs_diff"] <= INT8_MAX_ABS_DIFF
            and min(overlaps[name]) >= INT8_MIN_TOP10_OVERLAP
        )
        return verdict

    forecasts = [float(s) for s in runtimes["fp32"].score(list(explained))]
    texts: dict[str, list[str]] = {}
    judged: dict[str, dict[str, float]] = {}
    for precision in ("fp32", "int8"):
        texts[precision] = runtimes[precision].explain(list(explained), forecasts)
        checks = [
            check_explanation(lm_written_part(t), f, s)
            for t, f, s in zip(texts[precision], explained, forecasts, strict=True)
        ]
        judged[precision] = {
            "faithfulness": float(np.mean([c.faithfulness for c in checks])),
            "contradiction_rate": float(np.mean([c.contradiction_rate for c in checks])),
            # What the guard keeps: some claim, every claim true.
            "trusted": float(np.mean([not c.empty and c.true_claims == c.claims for c in checks])),
        }
    both = scores_verdict("int8")
    result: dict[str, Any] = {
        **{k: v for k, v in both.items() if k != "passed"},
        "top10_ranking": f"blend of prior and residual at alpha {max(ALPHAS)}",
        "scorer_only": scores_verdict("int8-scorer"),
        **{f"{k}_{p}": v for p, values in judged.items() for k, v in values.items()},
        "explanations_identical": int(
            sum(a == b for a, b in zip(texts["fp32"], texts["int8"], strict=True))
        ),
        "explanations_checked": len(explained),
        "items_scored": int(sum(len(w) for w in windows)),
        "tolerance": {
            "score_max_abs_diff": INT8_MAX_ABS_DIFF,
            "min_top10_overlap": INT8_MIN_TOP10_OVERLAP,
            "max_faithfulness_drop": INT8_MAX_FAITHFULNESS_DROP,
            "max_trusted_drop": INT8_MAX_TRUSTED_DROP,
        },
    }
    fp32, int8 = judged["fp32"], judged["int8"]
    result["explanations_passed"] = bool(
        int8["faithfulness"] >= fp32["faithfulness"] - INT8_MAX_FAITHFULNESS_DROP
        and int8["trusted"] >= fp32["trusted"] - INT8_MAX_TRUSTED_DROP
    )
    result["passed"] = bool(both["passed"] and result["explanations_passed"])
    return result


def quantize_export(
    export_dir: Path,
    manifest: dict[str, Any],
    write_manifest: Callable[[Path, dict[str, Any]], dict[str, Any]],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Add int8 graphs to the fp32 export in ``export_dir``; returns the manifest's ``int8``.

    ``manifest`` is the export's (status ``ok``); it is rewritten with the int8 graphs listed
    and ``validating`` (never served) so that the runtime can load them for their validation;
    the caller writes the verdict.
    """
    from export import INT8_OUTLIER_RATIO
    from model.tiny import validation_features

    fp32 = OrtTrailModel(export_dir, providers=[CPU], verify=False)
    calibration = validation_features(CALIBRATION_PROMPTS, seed=5)
    rows = fp32.prompt_ids(calibration)
    del fp32
    log(f"  calibrating on {len(rows)} prompts")
    calibration = calibrate(export_dir / GENERATOR_FILE, rows, pad_id=0)
    ratios = calibration.ratios
    kept = sorted(n for n, r in ratios.items() if r > INT8_OUTLIER_RATIO)
    quantized = sorted(n for n in ratios if n not in kept and not n.startswith(HEAD_PREFIX))
    log(f"  quantizing {len(quantized)} weight matrices ({len(kept)} outlier ones kept fp32)")
    for source, target in ((GENERATOR_FILE, INT8_GENERATOR_FILE), (SCORER_FILE, INT8_SCORER_FILE)):
        quantize_graph(export_dir / source, export_dir / target, quantized, calibration)
    int8: dict[str, Any] = {
        "status": "validating",
        "files": {"scorer": INT8_SCORER_FILE, "generator": INT8_GENERATOR_FILE},
        "method": "onnxruntime quantize_dynamic: int8 weights per output channel, inputs "
        "quantized on the fly per row (token); MatMul inputs above "
        f"{INT8_OUTLIER_RATIO:g}x max/mean magnitude kept fp32",
        "quantized_matmuls": len(quantized),
        "fp32_matmuls": kept,
        "outlier_ratios": {n: round(ratios[n], 1) for n in kept},
    }
    write_manifest(export_dir, {**manifest, "int8": int8})
    count = INT8_WINDOWS * INT8_WINDOW_ITEMS
    log(f"  validating int8 against fp32: {count} items, {INT8_EXPLANATIONS} explanations")
    items = validation_features(count + INT8_EXPLANATIONS, seed=9)
    windows = [
        items[i * INT8_WINDOW_ITEMS : (i + 1) * INT8_WINDOW_ITEMS] for i in range(INT8_WINDOWS)
    ]
    validation = compare_int8(export_dir, windows, items[count:])
    int8["validation"] = validation
    int8["status"] = "ok" if validation["passed"] else "failed"
    scorer = validation["scorer_only"]
    int8["scorer_status"] = "ok" if scorer["passed"] else "failed"
    log(
        f"  int8 scorer {'passed' if scorer['passed'] else 'FAILED'}: score max abs diff "
        f"{scorer['score_max_abs_diff']:.3g}, top-10 overlap "
        f"{min(scorer['top10_overlap_per_window']):.0%} at worst"
    )
    log(
        f"  int8 scorer and generator {'passed' if validation['passed'] else 'FAILED'}: score "
        f"max abs diff {validation['score_max_abs_diff']:.3g}, top-10 overlap "
        f"{min(validation['top10_overlap_per_window']):.0%} at worst; explanations' "
        f"faithfulness {validation['faithfulness_int8']:.2f} (fp32 "
        f"{validation['faithfulness_fp32']:.2f}), kept by the guard "
        f"{validation['trusted_int8']:.0%} (fp32 {validation['trusted_fp32']:.0%})"
    )
    return int8
