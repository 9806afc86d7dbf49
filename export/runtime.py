"""Serving an exported TRAIL model with ONNX Runtime, behind the engine's Scorer protocol.

An export folder (written by ``trail export``, see :mod:`export.onnx_export`) holds::

    manifest.json         format, sha256 of every file, versions, validation results
    scorer.onnx           (input_ids, attention_mask) -> residual of the score head
    generator/model.onnx  causal LM with a KV cache (optimum-onnx layout), for explanations
    tokenizer/            the tokenizer with its chat template

:class:`OrtTrailScorer` serves one export exactly like the PyTorch
:class:`model.scorer.TrailScorer`: the recency prior scores every item, the prior's top
``rescore_top`` get prior + ORT residual, and explanations are the forced forecast sentence
followed by greedy ORT generation. :class:`ReloadingScorer` watches a folder and swaps in a
newer export between windows, keeping the old one when the new one does not load.

This module imports no torch itself (transformers may, to load the tokenizer): the prior, the
forecast sentence, the cascade and the explanation guard are the torch-free ones the PyTorch
scorer uses too. All ORT work is
synchronous; an asyncio caller runs it off the event loop with
:meth:`OrtTrailScorer.score_async` / :meth:`OrtTrailScorer.explain_async`.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from model.explain import complete_sentences, forecast_sentence
from model.priors import prior_log_count
from model.prompts import chat_prompt
from model.scorer import CascadeScorer
from schemas import ItemFeatures
from streams.trend.features import FeatureFrame
from streams.trend.state import WindowOutcome

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

log = logging.getLogger("trail.export")

#: Layout version of an export folder; the runtime refuses any other.
MANIFEST_FORMAT = "trail-onnx@1"
MANIFEST_FILE = "manifest.json"
SCORER_FILE = "scorer.onnx"
GENERATOR_DIR = "generator"
GENERATOR_FILE = f"{GENERATOR_DIR}/model.onnx"
TOKENIZER_DIR = "tokenizer"
#: Files an export cannot serve without (beyond what the manifest lists).
REQUIRED_FILES = (SCORER_FILE, GENERATOR_FILE, f"{TOKENIZER_DIR}/tokenizer_config.json")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


class ModelLoadError(ValueError):
    """An export or adapter folder that cannot be served: missing, corrupt, mismatched or failed.

    A ``ValueError`` so that the ``trail`` command line reports it as a clear error.
    """


# ---------------------------------------------------------------------------- manifest
def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entries(folder: Path, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"sha256", "bytes"}}`` of each of ``names`` in ``folder``: a manifest's files."""
    return {
        name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
        for name in names
    }


def check_files(
    folder: Path, files: Any, required: Sequence[str], *, verify: bool = True, fix: str = ""
) -> None:
    """Check a manifest's ``files`` against ``folder``; raises :class:`ModelLoadError`.

    Every listed file must be there, inside ``folder``, with its size and (with ``verify``) its
    sha256; ``required`` names must be listed. ``fix`` ends every message: what to do.
    """
    tail = f": {fix}" if fix else ""
    if not isinstance(files, dict):
        raise ModelLoadError(f"{folder}: the manifest lists no files{tail}")
    missing = [name for name in required if name not in files]
    if missing:
        raise ModelLoadError(f"{folder}: the manifest does not list {', '.join(missing)}{tail}")
    root = folder.resolve()
    for name, entry in sorted(files.items()):
        file = folder / str(name)
        if not file.resolve().is_relative_to(root) or not isinstance(entry, dict):
            raise ModelLoadError(f"{folder}: the manifest's entry for {name!r} is invalid{tail}")
        if not file.is_file():
            raise ModelLoadError(f"{folder}: {name} is missing{tail}")
        if file.stat().st_size != entry.get("bytes"):
            raise ModelLoadError(
                f"{folder}: {name} has {file.stat().st_size} bytes, the manifest says "
                f"{entry.get('bytes')} (truncated or replaced){tail}"
            )
        if verify and sha256_file(file) != entry.get("sha256"):
            raise ModelLoadError(
                f"{folder}: {name} does not match its sha256 in the manifest{tail}"
            )


def export_files(model_dir: Path) -> list[str]:
    """Every file of an export (relative POSIX paths), the manifest excepted."""
    return sorted(
        path.relative_to(model_dir).as_posix()
        for path in model_dir.rglob("*")
        if path.is_file() and path.name != MANIFEST_FILE
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
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ModelLoadError(
            f"{model_dir}: export format {found!r} is not {MANIFEST_FORMAT!r}; "
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


# ---------------------------------------------------------------------------- sessions
def cuda_device_present() -> bool:
    """Whether the CUDA driver sees a GPU, asked without torch and without ORT's noise.

    Creating a CUDA session on a machine without a GPU or CUDA libraries works (ORT falls back
    to the CPU) but prints a page of errors, so the provider is only asked for when a device
    exists.
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return False
    return count.value > 0


def default_providers() -> list[str]:
    """CUDA then CPU where a GPU is present, CPU alone otherwise (never TensorRT)."""
    import onnxruntime as ort

    if CUDA in ort.get_available_providers() and cuda_device_present():
        # The CUDA provider needs cuDNN/cuBLAS; pip's nvidia-* wheels (or torch's) carry them,
        # and this makes ORT find them without LD_LIBRARY_PATH.
        preload = getattr(ort, "preload_dlls", None)
        if preload is not None:
            try:
                preload()
            except Exception as exc:  # noqa: BLE001 - optional: ORT's own search still runs
                log.debug("onnxruntime.preload_dlls failed: %s", exc)
        return [CUDA, CPU]
    return [CPU]


def cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def make_session(
    path: Path, providers: Sequence[str] | None = None, threads: int | None = None
) -> Any:
    """An ORT session with full graph optimisation; ``threads`` intra-op threads (all cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # One batch at a time: the parallelism is inside the matrix products.
    options.intra_op_num_threads = threads or cpu_threads()
    options.inter_op_num_threads = 1
    # Idle pool threads sleep instead of spinning: the worker shares its cores with the
    # engine and the Kafka client, and on a busy 2-core host spinning cost 20-40% here.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    chosen = list(providers) if providers is not None else default_providers()
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise ModelLoadError(f"onnxruntime cannot load {path}: {exc}") from exc
    running = session.get_providers()[0]
    if chosen and chosen[0] != running:
        # ORT falls back silently (bar its own log); a GPU host serving on the CPU is news.
        log.warning("%s: %s is not usable here, running on %s", path.name, chosen[0], running)
    return session


def _device_of(session: Any) -> str:
    return "cuda" if session.get_providers()[0] == CUDA else "cpu"


class ScorerGraph:
    """``scorer.onnx``: right-padded token ids -> residual of the score head, one per row."""

    def __init__(
        self,
        path: Path,
        providers: Sequence[str] | None = None,
        *,
        io_binding: bool | None = None,
        threads: int | None = None,
    ) -> None:
        self.session = make_session(path, providers, threads)
        self.provider: str = self.session.get_providers()[0]
        self.device = _device_of(self.session)
        # IO binding pays off on the GPU (no implicit copies); on the CPU it is the same work.
        self.io_binding = self.device == "cuda" if io_binding is None else io_binding

    def __call__(self, input_ids: IntArray, attention_mask: IntArray) -> npt.NDArray[np.float32]:
        if not self.io_binding:
            outputs = self.session.run(
                ["residual"], {"input_ids": input_ids, "attention_mask": attention_mask}
            )
            return np.asarray(outputs[0], dtype=np.float32)
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", input_ids)
        binding.bind_cpu_input("attention_mask", attention_mask)
        binding.bind_output("residual", "cpu")
        self.session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)


class GeneratorGraph:
    """``generator/model.onnx`` (optimum-onnx text-generation-with-past): greedy decoding.

    The KV cache is fed back step by step. With IO binding (the default on CUDA) the cache
    never leaves the device: each step's ``present.*`` outputs are bound as the next step's
    ``past_key_values.*`` inputs, and only the last position's logits come back to the host.
    """

    def __init__(
        self,
        path: Path,
        providers: Sequence[str] | None = None,
        *,
        io_binding: bool | None = None,
        threads: int | None = None,
    ) -> None:
        self.session = make_session(path, providers, threads)
        self.provider: str = self.session.get_providers()[0]
        self.device = _device_of(self.session)
        self.io_binding = self.device == "cuda" if io_binding is None else io_binding
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [name for name in inputs if name.startswith("past_key_values.")]
        if not self.past_names or "input_ids" not in inputs:
            raise ModelLoadError(f"{path} is not a generator with a KV cache (inputs: {[*inputs]})")
        self.uses_position_ids = "position_ids" in inputs
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.present_of = {
            name.replace("past_key_values.", "present.", 1): name for name in self.past_names
        }
        missing = [p for p in self.present_of if p not in self.output_names]
        if missing or "logits" not in self.output_names:
            raise ModelLoadError(f"{path}: outputs {missing or ['logits']} are missing")
        # Cache tensors are (batch, kv_heads, length, head_dim); length starts at zero.
        self.past_shapes = {}
        self.past_types = {}
        for name in self.past_names:
            shape = inputs[name].shape
            self.past_shapes[name] = (int(shape[1]), int(shape[3]))
            self.past_types[name] = _NUMPY_TYPES.get(inputs[name].type, np.float32)

    def greedy(
        self,
        rows: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        eos_id: int,
        pad_id: int,
    ) -> list[list[int]]:
        """Greedy continuations of one left-padded batch, each cut after ``eos_id``.

        Mirrors ``transformers``' ``generate(do_sample=False)``: positions count real tokens
        only (``cumsum(mask) - 1``), finished rows are fed ``pad_id`` and masked, and the loop
        stops when every row has finished or after ``max_new_tokens``.
        """
        batch = len(rows)
        width = max(len(r) for r in rows)
        input_ids = np.full((batch, width), pad_id, dtype=np.int64)
        mask = np.zeros((batch, width), dtype=np.int64)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row) :] = row
            mask[i, width - len(row) :] = 1
        positions = np.cumsum(mask, axis=1) - 1
        positions[mask == 0] = 1
        past: dict[str, Any] = {
            name: np.zeros((batch, heads, 0, dim), dtype=self.past_types[name])
            for name, (heads, dim) in self.past_shapes.items()
        }
        generated = np.full((batch, max_new_tokens), pad_id, dtype=np.int64)
        done = np.zeros(batch, dtype=bool)
        steps = 0
        for step in range(max_new_tokens):
            logits, past = self._step(input_ids, mask, positions, past)
            # fp16 graphs return fp16 logits: compare in fp32 so argmax ties break the same way.
            tokens = np.argmax(logits.astype(np.float32, copy=False), axis=-1)
            tokens = np.where(done, pad_id, tokens)
            generated[:, step] = tokens
            steps = step + 1
            done |= tokens == eos_id
            if done.all():
                break
            input_ids = tokens[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
            positions = positions[:, -1:] + 1
        results: list[list[int]] = []
        for row in generated[:, :steps].tolist():
            results.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
        return results

    def _step(
        self, input_ids: IntArray, mask: IntArray, positions: IntArray, past: dict[str, Any]
    ) -> tuple[npt.NDArray[Any], dict[str, Any]]:
        """One forward pass: logits of the last position and the grown cache."""
        feeds: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
        if self.uses_position_ids:
            feeds["position_ids"] = positions
        if not self.io_binding:
            outputs = self.session.run(None, {**feeds, **past})
            named = dict(zip(self.output_names, outputs, strict=True))
            new_past = {self.present_of[p]: named[p] for p in self.present_of}
            return named["logits"][:, -1], new_past
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name, value in past.items():
            if isinstance(value, np.ndarray):  # the empty cache of the first step
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for present in self.present_of:
            binding.bind_output(present, self.device)
        self.session.run_with_iobinding(binding)
        values = dict(zip(["logits", *self.present_of], binding.get_outputs(), strict=True))
        logits = values.pop("logits").numpy()
        return logits[:, -1], {self.present_of[p]: v for p, v in values.items()}


# ---------------------------------------------------------------------------- the model
def _buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, so that padding costs little.

    >>> _buckets([5, 1, 4, 2, 3], 2)
    [[1, 3], [4, 2], [0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@dataclass
class ExportInfo:
    """What the runtime needs from a manifest."""

    version: str
    prior: str
    max_explanation_tokens: int
    manifest_sha256: str


class OrtTrailModel:
    """The two graphs and the tokenizer of one export: residuals and greedy explanations."""

    def __init__(
        self,
        model_dir: Path,
        *,
        providers: Sequence[str] | None = None,
        io_binding: bool | None = None,
        verify: bool = True,
        threads: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = read_manifest(self.model_dir, verify=verify)
        config = self.manifest.get("trail_config", {})
        self.info = ExportInfo(
            version=str(self.manifest["version"]),
            prior=str(config.get("prior", "ewma-1")),
            max_explanation_tokens=int(config.get("max_explanation_tokens", 36)),
            manifest_sha256=sha256_file(self.model_dir / MANIFEST_FILE),
        )
        try:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir / TOKENIZER_DIR))
        except Exception as exc:  # transformers raises OSError, ValueError, ...
            raise ModelLoadError(f"{self.model_dir}: cannot load the tokenizer: {exc}") from exc
        self.scorer = ScorerGraph(
            self.model_dir / SCORER_FILE, providers, io_binding=io_binding, threads=threads
        )
        self.generator = GeneratorGraph(
            self.model_dir / GENERATOR_FILE, providers, io_binding=io_binding, threads=threads
        )
        self.provider = self.scorer.provider
        self.end_id = int(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.end_id)

    def prompt_text(self, features: ItemFeatures) -> str:
        return chat_prompt(self.tokenizer, features)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        # As TrailModel.encode: the chat template already holds every special token.
        encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [list(ids) for ids in encoded]

    def residuals(self, prompts: Sequence[str], batch_size: int = 32) -> npt.NDArray[np.float32]:
        """Score-head residual of each prompt (length-bucketed, right-padded batches)."""
        rows = self.tokenize(prompts)
        out = np.zeros(len(rows), dtype=np.float32)
        for bucket in _buckets([len(r) for r in rows], batch_size):
            width = max(len(rows[i]) for i in bucket)
            ids = np.full((len(bucket), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(bucket), width), dtype=np.int64)
            for j, i in enumerate(bucket):
                ids[j, : len(rows[i])] = rows[i]
                mask[j, : len(rows[i])] = 1
            out[bucket] = self.scorer(ids, mask)
        return out

    def score(self, features: Sequence[ItemFeatures], batch_size: int = 32) -> FloatArray:
        """Predicted ``log(1 + next count)``: prior + residual, clamped at zero.

        Computed in float32 like :meth:`model.trail.TrailModel.score`, so that both runtimes
        round identically and rank identically.
        """
        if not features:
            return np.zeros(0)
        residual = self.residuals([self.prompt_text(f) for f in features], batch_size)
        prior = np.array([prior_log_count(f, self.info.prior) for f in features], np.float32)
        return np.maximum(prior + residual, np.float32(0.0)).astype(np.float64)

    def generate_ids(
        self, prompts: Sequence[str], batch_size: int = 16, max_new_tokens: int | None = None
    ) -> list[list[int]]:
        """Greedy token ids after each prompt (length-bucketed, left-padded batches)."""
        rows = self.tokenize(prompts)
        limit = self.info.max_explanation_tokens if max_new_tokens is None else max_new_tokens
        out: list[list[int]] = [[] for _ in rows]
        for bucket in _buckets([len(r) for r in rows], batch_size):
            generated = self.generator.greedy(
                [rows[i] for i in bucket],
                max_new_tokens=limit,
                eos_id=self.end_id,
                pad_id=self.pad_id,
            )
            for i, ids in zip(bucket, generated, strict=True):
                out[i] = ids
        return out

    def generate(self, prompts: Sequence[str], batch_size: int = 16) -> list[str]:
        return [
            str(self.tokenizer.decode(ids, skip_special_tokens=True)).strip()
            for ids in self.generate_ids(prompts, batch_size)
        ]

    def explain(self, features: Sequence[ItemFeatures], scores: Sequence[float]) -> list[str]:
        """The forced forecast sentence of each score, then the model's greedy explanation."""
        openings = [forecast_sentence(f, float(s)) for f, s in zip(features, scores, strict=True)]
        prompts = [self.prompt_text(f) + o for f, o in zip(features, openings, strict=True)]
        generated = self.generate(prompts)
        return [complete_sentences(o + t) for o, t in zip(openings, generated, strict=True)]


class OrtTrailScorer(CascadeScorer):
    """TRAIL served by ONNX Runtime: the same cascade and texts as the PyTorch TrailScorer.

    Explanations pass the same :class:`model.scorer.ExplanationGuard` (``guard=False`` turns
    its replacing off; it still counts). Raises :class:`ModelLoadError` at construction when
    ``model_dir`` is missing, corrupt (a hash mismatch), of another format, or an export that
    failed validation.
    """

    def __init__(
        self,
        model_dir: Path,
        rescore_top: int = 50,
        providers: Sequence[str] | None = None,
        *,
        batch_size: int = 32,
        io_binding: bool | None = None,
        guard: bool = True,
        threads: int | None = None,
    ) -> None:
        from model.scorer import ExplanationGuard

        self.model_dir = Path(model_dir)
        self.model = OrtTrailModel(
            self.model_dir, providers=providers, io_binding=io_binding, threads=threads
        )
        self.rescore_top = rescore_top
        self.prior = self.model.info.prior
        self.batch_size = batch_size
        self.provider = self.model.provider
        self.manifest_sha256 = self.model.info.manifest_sha256
        self.guard = ExplanationGuard(guard)
        log.info("serving %s from %s on %s", self.version, self.model_dir, self.provider)

    @property
    def version(self) -> str:
        return self.model.info.version

    def _rescore(self, records: list[Any]) -> FloatArray:
        return np.asarray(self.model.score(records, self.batch_size), dtype=np.float64)

    async def score_async(self, features: FeatureFrame) -> FloatArray:
        """:meth:`score` in a worker thread: ORT releases the GIL, the event loop keeps going."""
        return await asyncio.to_thread(self.score, features)

    async def explain_async(self, features: FeatureFrame, scores: FloatArray) -> list[str | None]:
        return await asyncio.to_thread(self.explain, features, scores)


# ---------------------------------------------------------------------------- hot reload
def _created(path: Path) -> tuple[str, float]:
    """Sort key of an export: the manifest's creation time, then the file's mtime."""
    manifest = path / MANIFEST_FILE
    try:
        created = str(json.loads(manifest.read_text()).get("created_at", ""))
    except (OSError, ValueError, AttributeError):
        created = ""
    return created, manifest.stat().st_mtime


class ModelWatcher:
    """Serves the newest export of ``folder`` and picks up newer ones when asked.

    ``folder`` is either one export (reloaded when its manifest changes, e.g. after an export
    in place) or a folder of exports (the newest subfolder with a manifest is served; names
    starting with ``.`` are ignored, which is where ``trail export`` stages its work). A newer
    export that fails to load is logged once and skipped; the current one keeps serving.
    """

    def __init__(self, folder: Path, load: Callable[[Path], OrtTrailScorer]) -> None:
        self.folder = Path(folder)
        self._load = load
        self._failed: set[tuple[Path, str]] = set()
        errors: list[str] = []
        for path in self.candidates():
            try:
                self.current = load(path)
            except ModelLoadError as exc:
                errors.append(str(exc))
                self._failed.add((path, self._manifest_key(path)))
                log.error("cannot serve %s: %s", path, exc)
                continue
            self._key = (path, self.current.manifest_sha256)
            return
        if errors:
            listed = "\n  ".join(errors)
            raise ModelLoadError(f"no export in {folder} can be served:\n  {listed}")
        read_manifest(self.folder)  # raises the clear "missing / not an export" error
        raise ModelLoadError(f"no export in {folder}")  # pragma: no cover - read_manifest raised

    def candidates(self) -> list[Path]:
        """Export folders, newest first."""
        if (self.folder / MANIFEST_FILE).is_file():
            return [self.folder]
        if not self.folder.is_dir():
            return []
        found = [
            sub
            for sub in self.folder.iterdir()
            if sub.is_dir() and not sub.name.startswith(".") and (sub / MANIFEST_FILE).is_file()
        ]
        return sorted(found, key=lambda p: (_created(p), p.name), reverse=True)

    @staticmethod
    def _manifest_key(path: Path) -> str:
        try:
            return sha256_file(path / MANIFEST_FILE)
        except OSError:
            return ""

    def maybe_reload(self) -> bool:
        """Load the newest export if it is not the one serving; ``True`` when it switched.

        Cheap when nothing changed (a directory listing and a hash of small manifests), so it
        can run at every window's close.
        """
        candidates = self.candidates()
        if not candidates:
            return False
        newest = candidates[0]
        key = (newest, self._manifest_key(newest))
        if key == self._key or key in self._failed:
            return False
        try:
            scorer = self._load(newest)
        except Exception as exc:  # noqa: BLE001 - whatever broke, the old model keeps serving
            self._failed.add(key)
            log.error("cannot load %s, still serving %s: %s", newest, self.current.version, exc)
            return False
        log.info("reloaded: %s -> %s (%s)", self.current.version, scorer.version, newest)
        self.current = scorer
        self._key = key
        return True


class ReloadingScorer:
    """A Scorer over a watched folder: a newer export is swapped in between windows.

    :meth:`score` opens every window, so it first asks the watcher for a newer export; the
    window is then scored and explained by one model, and ``version`` (which the engine writes
    into every ScoreUpdate) names the export that served it.
    """

    name = "trail"
    learns_online = True

    def __init__(
        self,
        folder: Path,
        rescore_top: int = 50,
        providers: Sequence[str] | None = None,
        *,
        batch_size: int = 32,
        io_binding: bool | None = None,
        guard: bool = True,
        threads: int | None = None,
    ) -> None:
        from model.cascade import RankingStage
        from model.scorer import ExplanationGuard

        # One guard and one online ranking stage across reloads: counts cover the whole run,
        # and a new export keeps what the ranker has learned.
        self.guard = ExplanationGuard(guard)
        self.stage = RankingStage()

        def load(path: Path) -> OrtTrailScorer:
            scorer = OrtTrailScorer(
                path,
                rescore_top,
                providers,
                batch_size=batch_size,
                io_binding=io_binding,
                threads=threads,
            )
            scorer.guard = self.guard
            scorer.stage = self.stage
            return scorer

        self.watcher = ModelWatcher(folder, load)

    @property
    def current(self) -> OrtTrailScorer:
        return self.watcher.current

    @property
    def version(self) -> str:
        return self.watcher.current.version

    @property
    def provider(self) -> str:
        return self.watcher.current.provider

    def score(self, features: FeatureFrame) -> FloatArray:
        self.watcher.maybe_reload()
        return self.watcher.current.score(features)

    def explain(self, features: FeatureFrame, scores: FloatArray) -> list[str | None]:
        return self.watcher.current.explain(features, scores)

    def learn(self, features: FeatureFrame, outcome: WindowOutcome) -> None:
        self.stage.learn(features, outcome)

    def forecast(self, features: FeatureFrame) -> tuple[FloatArray, FloatArray]:
        return self.stage.ranker.forecast(features)

    def state_dict(self) -> dict[str, Any]:
        return self.watcher.current.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.watcher.current.load_state_dict(state)

    async def score_async(self, features: FeatureFrame) -> FloatArray:
        return await asyncio.to_thread(self.score, features)

    async def explain_async(self, features: FeatureFrame, scores: FloatArray) -> list[str | None]:
        return await asyncio.to_thread(self.explain, features, scores)
