"""TRAIL model speed: items/s scored and explanation tokens/s, ONNX Runtime (fp32 and int8)
against PyTorch.

The three serve the same adapter in the same run, alternately (best of ``--repeat``), on
the same prompts (about ``--prompt-tokens`` tokens each, drawn from realistic synthetic item
signals):

* items/s: prompt building, tokenization and the score forward pass, batches of ``--batch``
  (ORT: the export's scorer graph, fp32 and int8, with the template's opening cached;
  PyTorch: ``TrailModel.score``, what ``TrailScorer`` runs);
* tokens/s: greedy decoding of ``--new-tokens`` tokens after the forced forecast sentence,
  ``--gen-prompts`` prompts in one batch (end-of-text suppressed so both make every token).

Each runtime runs with one intra-op thread and with one per core, and is compared at its best:
on a loaded host one thread can be twice as fast (PyTorch's generation even more), and a
comparison of defaults would flatter whichever suffers more from oversubscription.

The model is the committed adapter (``model/adapters/trail-smollm2``), or ``--adapter DIR``;
when neither exists it falls back to an untrained SmolLM2 adapter (zero LoRA and head) and
says so: the speed is the same, the scores are the prior's. The export is the adapter's in
the export cache (made on first use, as ``trail replay`` does), or ``--model DIR``. The int8
graphs are measured whether or not they passed their validation (the row says which). Where
CUDA works, the same runs on the GPU in fp16 (ORT: the graphs converted to fp16; PyTorch:
``.half()``).

    .venv/bin/python bench/model.py [--model EXPORT_DIR] [--adapter DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import command_line, machine, record, today  # noqa: E402
from export.manifest import GENERATOR_FILE, MANIFEST_FILE, SCORER_FILE  # noqa: E402
from export.runtime import OrtTrailModel  # noqa: E402
from export.sessions import (  # noqa: E402
    CPU,
    CUDA,
    GeneratorGraph,
    ScorerGraph,
    cpu_threads,
    default_providers,
)
from model.explain import forecast_sentence  # noqa: E402
from model.priors import prior_log_count  # noqa: E402
from schemas import ItemFeatures  # noqa: E402

TARGET_CPU_RATIO = 1.3
TARGET_H100_ITEMS = 5_000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- inputs
def resolve_adapter(given: Path | None, work: Path) -> tuple[Path, str]:
    """The adapter to measure and how it was chosen (said in every output)."""
    from model.scorer import DEFAULT_ADAPTER

    if given is not None:
        return given, "given with --adapter" + untrained_note(given)
    if (DEFAULT_ADAPTER / "trail_config.json").is_file():
        return DEFAULT_ADAPTER, "committed" + untrained_note(DEFAULT_ADAPTER)
    from model.trail import TrailConfig, TrailModel

    log(f"no committed adapter at {DEFAULT_ADAPTER}: using an UNTRAINED SmolLM2 adapter")
    out = work / "untrained-adapter"
    TrailModel.from_base(TrailConfig()).save(out)
    return out, "UNTRAINED SmolLM2 fallback (no committed adapter yet)"


def untrained_note(adapter: Path) -> str:
    """``", UNTRAINED ..."`` when the score head is all zeros (a fresh, never trained adapter)."""
    from model.adapter_files import read_score_head

    head = read_score_head(adapter)
    if all(not bool(t.count_nonzero()) for k, t in head.items() if k.startswith("proj.")):
        return ", UNTRAINED (zero score head)"
    return ""


def prompts_near(
    tokenize: Callable[[list[str]], list[list[int]]],
    prompt_text: Callable[[ItemFeatures], str],
    count: int,
    tokens: int,
) -> list[ItemFeatures]:
    """``count`` synthetic items whose prompts are closest to ``tokens`` tokens long."""
    from model.tiny import synthetic_features

    rng = random.Random(0)
    pool = [synthetic_features(rng) for _ in range(max(20 * count, 400))]
    lengths = [len(ids) for ids in tokenize([prompt_text(f) for f in pool])]
    order = sorted(range(len(pool)), key=lambda i: (abs(lengths[i] - tokens), i))
    return [pool[i] for i in order[:count]]


# ---------------------------------------------------------------------------- runs
def best_rates(runs: dict[str, Callable[[], int]], repeat: int) -> dict[str, float]:
    """Units per second of each run, best of ``repeat``, the runs alternating.

    Alternating (rather than all of one, then all of the other) spreads any load from other
    processes over both sides.
    """
    best = dict.fromkeys(runs, 0.0)
    for _ in range(repeat):
        for name, run in runs.items():
            started = time.perf_counter()
            units = run()
            best[name] = max(best[name], units / (time.perf_counter() - started))
    return best


def torch_generate_runner(model: Any, prompts: list[str], new_tokens: int) -> Callable[[], int]:
    import torch

    tokenizer = model.tokenizer
    tokenizer.padding_side = "left"
    device = next(model.lm.parameters()).device
    encoded = tokenizer(prompts, add_special_tokens=False, return_tensors="pt", padding=True)
    encoded = {k: v.to(device) for k, v in encoded.items()}

    def run() -> int:
        with torch.no_grad():
            output = model.lm.generate(
                **encoded,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,  # no early end: both sides make every token
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        if device.type == "cuda":
            torch.cuda.synchronize()
        return int(output.shape[0] * (output.shape[1] - encoded["input_ids"].shape[1]))

    return run


def ort_generate_runner(
    runtime: OrtTrailModel, prompts: list[str], new_tokens: int
) -> Callable[[], int]:
    rows = runtime.tokenize(prompts)

    def run() -> int:
        # eos -1 never matches: every row makes new_tokens tokens, as on the PyTorch side.
        out = runtime.generator.greedy(
            rows, max_new_tokens=new_tokens, eos_id=-1, pad_id=runtime.pad_id
        )
        return sum(len(r) for r in out)

    return run


def float16_graphs(export_dir: Path, out: Path) -> tuple[Path, Path]:
    """fp16 copies of both graphs (float inputs/outputs kept fp32, so the runtime is unchanged)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # RMSNorm's square and mean stay fp32: hidden states of a few hundred overflow fp16 when
    # squared (PyTorch's LlamaRMSNorm upcasts for the same reason).
    blocked = [*DEFAULT_OP_BLOCK_LIST, "Pow", "ReduceMean", "Sqrt", "Reciprocal"]
    paths = []
    for name in (SCORER_FILE, GENERATOR_FILE):
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        model = convert_float_to_float16(
            onnx.load(str(export_dir / name)), keep_io_types=True, op_block_list=blocked
        )
        onnx.save(model, str(target))
        paths.append(target)
    return paths[0], paths[1]


def measure(
    runtimes: dict[str, OrtTrailModel],
    torch_threads: dict[str, int | None],
    model: Any,
    features: list[ItemFeatures],
    explain_prompts: list[str],
    args: argparse.Namespace,
) -> dict[str, dict[str, float]]:
    """Items/s and tokens/s of every configuration, after one warm-up of each.

    ``runtimes`` are ORT configurations by name; ``torch_threads`` PyTorch ones (thread count,
    or ``None`` for a GPU model). PyTorch scores with ``TrailModel.score``, what the served
    ``TrailScorer`` runs, on the model's device.
    """
    import torch

    def torch_config(threads: int | None, run: Callable[[], int]) -> Callable[[], int]:
        def configured() -> int:
            if threads is not None:
                torch.set_num_threads(threads)
            return run()

        return configured

    def ort_score(runtime: OrtTrailModel) -> Callable[[], int]:
        return lambda: (runtime.score(features, batch_size=args.batch), len(features))[1]

    def torch_score() -> int:
        model.score(features, batch_size=args.batch)
        return len(features)

    scoring = {name: ort_score(r) for name, r in runtimes.items()}
    scoring |= {name: torch_config(n, torch_score) for name, n in torch_threads.items()}
    generating = {
        name: ort_generate_runner(r, explain_prompts, args.new_tokens)
        for name, r in runtimes.items()
    }
    torch_generate = torch_generate_runner(model, explain_prompts, args.new_tokens)
    generating |= {name: torch_config(n, torch_generate) for name, n in torch_threads.items()}
    log("  warm-up")
    for runtime in runtimes.values():
        runtime.score(features[: args.batch], batch_size=args.batch)
    for threads in torch_threads.values():
        torch_config(threads, lambda: model.score(features[:4], batch_size=4))()
    log(f"  scoring {len(features)} items, batch {args.batch}, best of {args.repeat}")
    items = best_rates(scoring, args.repeat)
    log(f"  greedy {args.new_tokens} tokens x {len(explain_prompts)} prompts")
    tokens = best_rates(generating, args.repeat)
    return {name: {"items_per_s": items[name], "tokens_per_s": tokens[name]} for name in items}


def summarise(configs: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Each runtime at its best configuration (items and tokens chosen separately)."""
    summary: dict[str, Any] = {}
    for side in ("ort", "int8", "torch"):
        names = [n for n in configs if n.startswith(side)]
        if not names:
            continue
        for measure_name in ("items_per_s", "tokens_per_s"):
            best = max(names, key=lambda n: configs[n][measure_name])
            summary[f"{side}_{measure_name}"] = round(configs[best][measure_name], 2)
            summary[f"{side}_{measure_name.split('_')[0]}_config"] = best
    summary["ort_vs_torch"] = round(summary["ort_items_per_s"] / summary["torch_items_per_s"], 2)
    summary["ort_vs_torch_tokens"] = round(
        summary["ort_tokens_per_s"] / summary["torch_tokens_per_s"], 2
    )
    if "int8_items_per_s" in summary:
        summary["int8_vs_ort"] = round(summary["int8_items_per_s"] / summary["ort_items_per_s"], 2)
        summary["int8_vs_ort_tokens"] = round(
            summary["int8_tokens_per_s"] / summary["ort_tokens_per_s"], 2
        )
    return summary


def gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    return None


# ---------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", type=Path, default=None, help="adapter (default: committed)")
    parser.add_argument(
        "--model", type=Path, default=None, help="existing export of that adapter (else exported)"
    )
    parser.add_argument("--items", type=int, default=32, help="items scored per timed run")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=96)
    parser.add_argument("--gen-prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2, help="best of N timed runs")
    parser.add_argument("--gpu-items", type=int, default=2048, help="items per GPU timed run")
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU even if present")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--no-record", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()

    import torch

    from export.cache import ensure_export
    from export.manifest import int8_status
    from model.scorer import adapter_version
    from model.trail import TrailModel
    from streams.settings import Settings

    threads = cpu_threads()
    torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="trail-bench-") as tmp:
        work = Path(tmp)
        adapter, provenance = resolve_adapter(args.adapter, work)
        export_dir = args.model
        if export_dir is None:
            export_dir = ensure_export(adapter, cache_dir=Settings().cache_dir, log=log)
            log(f"the cached export {export_dir}")
        manifest = json.loads((export_dir / MANIFEST_FILE).read_text())
        int8 = int8_status(manifest)
        if manifest["adapter"]["version"] != adapter_version(adapter):
            log(
                f"WARNING: {export_dir} was exported from {manifest['adapter']['version']}, "
                f"not from {adapter_version(adapter)} ({adapter})"
            )

        counts = sorted({1, threads})
        log(f"CPU: loading both runtimes ({' and '.join(map(str, counts))} threads)")
        runtimes = {
            f"ort, {n} thr": OrtTrailModel(export_dir, providers=[CPU], threads=n) for n in counts
        }
        if int8 != "missing":
            # Measured even where they failed their validation: what int8 would buy.
            runtimes |= {
                f"int8, {n} thr": OrtTrailModel(
                    export_dir, providers=[CPU], threads=n, precision="int8", unvalidated_int8=True
                )
                for n in counts
            }
        model = TrailModel.load(adapter)
        first = next(iter(runtimes.values()))
        features = prompts_near(first.tokenize, first.prompt_text, args.items, args.prompt_tokens)
        prompt_tokens = float(
            np.mean([len(r) for r in first.tokenize([first.prompt_text(f) for f in features])])
        )
        explain_prompts = [
            first.prompt_text(f) + forecast_sentence(f, prior_log_count(f))
            for f in features[: args.gen_prompts]
        ]
        configs = measure(
            runtimes,
            {f"torch, {n} thr": n for n in counts},
            model,
            features,
            explain_prompts,
            args,
        )
        results: dict[str, Any] = {
            **summarise(configs),
            "provider": first.provider,
            "prompt_tokens": round(prompt_tokens, 1),
            "model": f"{manifest['version']} ({provenance})",
            "int8_validation": (
                f"scorer {int8_status(manifest, 'scorer')}, scorer and generator {int8}"
                if int8 != "missing"
                else "missing"
            ),
            "load_average": round(load_before, 2),
            "configs": {k: {m: round(v, 2) for m, v in c.items()} for k, c in configs.items()},
        }
        del model, runtimes, first

        card = gpu_name()
        if card and not args.cpu_only and CUDA in default_providers():
            log(f"GPU ({card}): fp16 graphs and fp16 PyTorch")
            scorer16, generator16 = float16_graphs(export_dir, work / "fp16")
            runtime = OrtTrailModel(export_dir, providers=[CUDA, CPU], verify=False)
            runtime.scorer = ScorerGraph(scorer16, [CUDA, CPU])
            runtime.generator = GeneratorGraph(generator16, [CUDA, CPU])
            model = TrailModel.load(adapter)
            model.lm.half().cuda()
            model.head.half().cuda()
            gpu_features = (features * (args.gpu_items // len(features) + 1))[: args.gpu_items]
            gpu = measure(
                {"ort fp16": runtime},
                {"torch fp16": None},
                model,
                gpu_features,
                explain_prompts,
                args,
            )
            results["gpu"] = {
                "card": card,
                "provider": runtime.scorer.provider,
                **summarise(gpu),
                "configs": {k: {m: round(v, 1) for m, v in c.items()} for k, c in gpu.items()},
            }
        elif card is None:
            log("no CUDA GPU here: GPU figures not measured")

    print(
        f"TRAIL model speed: {results['model']}, prompts {results['prompt_tokens']} tokens, "
        f"batch {args.batch}, {args.new_tokens} new tokens x {args.gen_prompts} prompts, "
        f"best of {args.repeat}; load average at start {results['load_average']}"
    )
    print(f"{'device':<26}{'runtime':<18}{'items/s':>10}{'tokens/s':>10}")
    print(f"(int8 graphs: their validation against fp32 {results['int8_validation']})")
    for name, rates in results["configs"].items():
        print(f"{'CPU':<26}{name:<18}{rates['items_per_s']:>10.2f}{rates['tokens_per_s']:>10.1f}")
    if "gpu" in results:
        gpu = results["gpu"]
        for name, rates in gpu["configs"].items():
            print(
                f"{gpu['card'][:25]:<26}{name:<18}"
                f"{rates['items_per_s']:>10.1f}{rates['tokens_per_s']:>10.1f}"
            )
    ratio = results["ort_vs_torch"]
    verdict = "met" if ratio >= TARGET_CPU_RATIO else "NOT met"
    print(
        f"ORT / PyTorch on the CPU, each at its best thread count: {ratio}x items/s "
        f"({results['ort_items_config']} vs {results['torch_items_config']}), "
        f"{results['ort_vs_torch_tokens']}x tokens/s (target >= {TARGET_CPU_RATIO}x items/s: "
        f"{verdict})"
    )
    if "int8_vs_ort" in results:
        print(
            f"ORT int8 / ORT fp32 on the CPU: {results['int8_vs_ort']}x items/s, "
            f"{results['int8_vs_ort_tokens']}x tokens/s"
        )
    if "gpu" in results:
        gpu_items = results["gpu"]["ort_items_per_s"]
        print(f"GPU ORT fp16 items/s {gpu_items:,.0f} (H100 target >= {TARGET_H100_ITEMS:,})")

    if not args.no_record:
        gpu_cell = "not measured (no CUDA GPU)"
        if "gpu" in results:
            gpu = results["gpu"]
            gpu_cell = (
                f"{gpu['card']}: ORT fp16 {gpu['ort_items_per_s']:,.0f} items/s, "
                f"{gpu['ort_tokens_per_s']:,.0f} tok/s; PyTorch fp16 "
                f"{gpu['torch_items_per_s']:,.0f} items/s, {gpu['torch_tokens_per_s']:,.0f} tok/s"
            )
        int8_cell = "no int8 graphs"
        if "int8_items_per_s" in results:
            int8_cell = (
                f"{results['int8_items_per_s']} items/s ({results['int8_items_config']}), "
                f"{results['int8_tokens_per_s']} tokens/s, {results['int8_vs_ort']}x / "
                f"{results['int8_vs_ort_tokens']}x fp32; validation {results['int8_validation']}"
            )
        record(
            "model",
            "| date | machine | command | model | prompt tokens | ORT items/s | PyTorch items/s "
            "| ratio | ORT tokens/s | PyTorch tokens/s | GPU |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {today()} | {machine()}, load avg {results['load_average']} "
            f"| `{command_line()}` | {results['model']} | {results['prompt_tokens']} "
            f"| fp32 {results['ort_items_per_s']} ({results['ort_items_config']}); "
            f"int8 {int8_cell} "
            f"| {results['torch_items_per_s']} ({results['torch_items_config']}) "
            f"| {ratio}x | {results['ort_tokens_per_s']} ({results['ort_tokens_config']}) "
            f"| {results['torch_tokens_per_s']} ({results['torch_tokens_config']}) "
            f"| {gpu_cell} |",
        )
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
