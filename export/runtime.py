"""Serving an exported TRAIL model with ONNX Runtime, behind the engine's Scorer protocol.

An export folder (written by ``trail export``, see :mod:`export.onnx_export`) holds::

    manifest.json         format, sha256 of every file, versions, validation results
    scorer.onnx           the score head on the LM body: ids (and a cached past) -> residual
    generator/model.onnx  causal LM with a KV cache (optimum-onnx layout), for explanations
    tokenizer/            the tokenizer (tokenizer.json) with its chat template
    prompt.json           the chat template's text around the user turn, rendered once
    scorer.int8.onnx      optional: both graphs with int8 dynamic quantization, validated
    generator/model.int8.onnx   against fp32 (the manifest's ``int8`` section)

:class:`OrtTrailScorer` serves one export exactly like the PyTorch
:class:`model.scorer.TrailScorer`: the online ranker orders every item, its top
``rescore_top`` get the LM's residual blended in, and explanations are the forced forecast
sentence followed by greedy ORT generation. :class:`ReloadingScorer` watches a folder and
swaps in a newer export between windows, keeping the old one when the new one does not load.

This module imports no torch and, for exports with ``prompt.json``, no transformers: prompts
are tokenized with ``tokenizers`` directly, their template pieces once. The prior, the
forecast sentence, the cascade and the explanation guard are the torch-free ones the PyTorch
scorer uses too. All ORT work is synchronous; an asyncio caller runs it off the event loop
with :meth:`OrtTrailScorer.score_async` / :meth:`OrtTrailScorer.explain_async`.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from model.explain import complete_sentences, forecast_sentence
from model.priors import prior_log_count
from model.prompts import ChatPieces, PromptEncoder, build_prompt, chat_pieces, chat_prompt
from model.scorer import CascadeScorer
from schemas import ItemFeatures
from streams.trend.features import FeatureFrame
from streams.trend.state import WindowOutcome

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

log = logging.getLogger("trail.export")

#: Layout version of the exports written now. ``@2``: the scorer is the generator's body with
#: the score head (it takes a KV cache), ``prompt.json`` holds the template's pieces, and
#: int8 graphs may sit beside the fp32 ones.
MANIFEST_FORMAT = "trail-onnx@2"
#: Layouts the runtime serves (``@1``: a separately exported scorer, right-padded, no cache).
SERVED_FORMATS = ("trail-onnx@1", MANIFEST_FORMAT)
MANIFEST_FILE = "manifest.json"
SCORER_FILE = "scorer.onnx"
GENERATOR_DIR = "generator"
GENERATOR_FILE = f"{GENERATOR_DIR}/model.onnx"
TOKENIZER_DIR = "tokenizer"
PROMPT_FILE = "prompt.json"
INT8_SCORER_FILE = "scorer.int8.onnx"
INT8_GENERATOR_FILE = f"{GENERATOR_DIR}/model.int8.onnx"
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
    """Every file of an export (relative POSIX paths), the manifest and hidden files (work in
    progress) excepted."""
    return sorted(
        path.relative_to(model_dir).as_posix()
        for path in model_dir.rglob("*")
        if path.is_file() and path.name != MANIFEST_FILE and not path.name.startswith(".")
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
    if not isinstance(manifest, dict) or manifest.get("format") not in SERVED_FORMATS:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ModelLoadError(
            f"{model_dir}: export format {found!r} is none of {', '.join(SERVED_FORMATS)}; "
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


def _past_layout(inputs: dict[str, Any]) -> tuple[dict[str, tuple[int, int]], dict[str, Any]]:
    """Cache tensors are ``(batch, kv_heads, length, head_dim)``: heads, dims and dtypes."""
    shapes: dict[str, tuple[int, int]] = {}
    types: dict[str, Any] = {}
    for name, spec in inputs.items():
        if name.startswith("past_key_values."):
            shapes[name] = (int(spec.shape[1]), int(spec.shape[3]))
            types[name] = _NUMPY_TYPES.get(spec.type, np.float32)
    return shapes, types


def left_padded(
    rows: Sequence[Sequence[int]], pad_id: int, past_length: int = 0
) -> tuple[IntArray, IntArray, IntArray]:
    """``(input_ids, attention_mask, position_ids)`` of left-padded rows after a past.

    The mask covers the past too; positions count real tokens only (``cumsum(mask) - 1``),
    as ``transformers``' ``generate`` computes them, and padding gets position 1.

    >>> ids, mask, positions = left_padded([[7, 8], [9]], pad_id=0, past_length=2)
    >>> ids.tolist(), mask.tolist(), positions.tolist()
    ([[7, 8], [0, 9]], [[1, 1, 1, 1], [1, 1, 0, 1]], [[2, 3], [1, 2]])
    """
    batch = len(rows)
    width = max(len(r) for r in rows)
    input_ids = np.full((batch, width), pad_id, dtype=np.int64)
    mask = np.zeros((batch, past_length + width), dtype=np.int64)
    mask[:, :past_length] = 1
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = row
        mask[i, past_length + width - len(row) :] = 1
    positions = np.cumsum(mask, axis=1)[:, past_length:] - 1
    positions[mask[:, past_length:] == 0] = 1
    return input_ids, mask, positions


class ScorerGraph:
    """The score head's graph: token ids -> residual of each row's last prompt token.

    Exports from ``trail-onnx@2`` on hold the head on the generator's own body, with its inputs
    (a KV cache among them): rows are left-padded, the head reads the last position, and the
    chat template's opening, the same for every item, can be passed once as a cached past.
    ``trail-onnx@1`` scorers take ``(input_ids, attention_mask)`` only and read the last real
    token of right-padded rows. :attr:`with_past` tells which.
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
        # IO binding pays off on the GPU (no implicit copies); on the CPU it is the same work.
        self.io_binding = self.device == "cuda" if io_binding is None else io_binding
        inputs = {i.name: i for i in self.session.get_inputs()}
        if "input_ids" not in inputs or "attention_mask" not in inputs:
            raise ModelLoadError(f"{path} is not a TRAIL scorer (inputs: {[*inputs]})")
        self.past_shapes, self.past_types = _past_layout(inputs)
        self.with_past = bool(self.past_shapes)
        self.uses_position_ids = "position_ids" in inputs

    def empty_past(self, batch: int) -> dict[str, npt.NDArray[Any]]:
        return {
            name: np.zeros((batch, heads, 0, dim), dtype=self.past_types[name])
            for name, (heads, dim) in self.past_shapes.items()
        }

    def __call__(
        self,
        input_ids: IntArray,
        attention_mask: IntArray,
        position_ids: IntArray | None = None,
        past: dict[str, npt.NDArray[Any]] | None = None,
    ) -> npt.NDArray[np.float32]:
        feeds: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.with_past:
            if position_ids is None:
                raise ValueError("this scorer reads left-padded rows: pass position_ids")
            if self.uses_position_ids:
                feeds["position_ids"] = position_ids
            feeds |= past if past is not None else self.empty_past(input_ids.shape[0])
        if not self.io_binding:
            outputs = self.session.run(["residual"], feeds)
            return np.asarray(outputs[0], dtype=np.float32).reshape(-1)
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output("residual", "cpu")
        self.session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32).reshape(-1)


class GeneratorGraph:
    """``generator/model.onnx`` (optimum-onnx text-generation-with-past): greedy decoding.

    The KV cache is fed back step by step. On the CPU a row that has finished leaves the
    batch (its cache rows are dropped), so the steps after it cost only the rows still
    writing. With IO binding (the default on CUDA) the cache never leaves the device: each
    step's ``present.*`` outputs are bound as the next step's ``past_key_values.*`` inputs,
    finished rows stay in the batch fed with padding, and only the last position's logits
    come back to the host.
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
        self.past_shapes, self.past_types = _past_layout(inputs)

    def empty_past(self, batch: int) -> dict[str, npt.NDArray[Any]]:
        return {
            name: np.zeros((batch, heads, 0, dim), dtype=self.past_types[name])
            for name, (heads, dim) in self.past_shapes.items()
        }

    def cache_of(self, ids: Sequence[int]) -> dict[str, npt.NDArray[Any]]:
        """The KV cache after one row of tokens (on the host), by ``past_key_values`` name."""
        input_ids, mask, positions = left_padded([ids], pad_id=0)
        feeds: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
        if self.uses_position_ids:
            feeds["position_ids"] = positions
        outputs = self.session.run(list(self.present_of), {**feeds, **self.empty_past(1)})
        return {self.present_of[p]: v for p, v in zip(self.present_of, outputs, strict=True)}

    def greedy(
        self,
        rows: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        eos_id: int,
        pad_id: int,
        compact: bool | None = None,
    ) -> list[list[int]]:
        """Greedy continuations of one left-padded batch, each cut after ``eos_id``.

        Mirrors ``transformers``' ``generate(do_sample=False)``: positions count real tokens
        only (``cumsum(mask) - 1``), and the loop stops when every row has finished or after
        ``max_new_tokens``. With ``compact`` (the default without IO binding) a row leaves
        the batch at its ``eos_id``; otherwise it stays, fed ``pad_id`` and masked. Rows do
        not interact in a forward pass, so both give the same tokens.
        """
        compact = not self.io_binding if compact is None else compact
        input_ids, mask, positions = left_padded(rows, pad_id)
        past: dict[str, Any] = self.empty_past(len(rows))
        generated: list[list[int]] = [[] for _ in rows]
        active = np.arange(len(rows))
        done = np.zeros(len(rows), dtype=bool)
        for _ in range(max_new_tokens):
            logits, past = self._step(input_ids, mask, positions, past)
            # fp16 graphs return fp16 logits: compare in fp32 so argmax ties break the same way.
            tokens = np.argmax(logits.astype(np.float32, copy=False), axis=-1)
            for row, token, finished in zip(active.tolist(), tokens.tolist(), done, strict=True):
                if not finished:
                    generated[row].append(int(token))
            done = done | (tokens == eos_id)
            if done.all():
                break
            if compact and done.any():
                keep = ~done
                active, tokens, mask, positions = (
                    active[keep],
                    tokens[keep],
                    mask[keep],
                    positions[keep],
                )
                past = {name: value[keep] for name, value in past.items()}
                done = done[keep]
            tokens = np.where(done, pad_id, tokens)
            input_ids = tokens[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=np.int64)], axis=1)
            positions = positions[:, -1:] + 1
        return generated

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


# ---------------------------------------------------------------------------- text
def clean_up_tokenization(text: str) -> str:
    """What ``transformers``' ``decode`` does after the tokenizer when its config asks for
    ``clean_up_tokenization_spaces`` (SmolLM2's does): spaces before punctuation and
    English contractions removed. A copy, so that decoding needs no transformers.

    >>> clean_up_tokenization("It is up 4.1x , rising . It 's new")
    "It is up 4.1x, rising. It's new"
    """
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


class ExportTokenizer:
    """The export's tokenizer without transformers: ``tokenizers`` on ``tokenizer.json``.

    Encoding adds no special tokens (the chat template holds them all) and decoding skips
    them and cleans up spaces as the tokenizer's config says, so that ids and texts are
    exactly those of the ``transformers`` tokenizer saved beside it.
    """

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        try:
            self.backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
            config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        except Exception as exc:  # tokenizers raises its own Exception type
            raise ModelLoadError(f"{folder}: cannot load the tokenizer: {exc}") from exc
        # tokenizer.json keeps the padding and truncation transformers last used (left
        # padding, after a batched generate): ids must be each text's own, as transformers
        # gives them without padding=True.
        self.backend.no_padding()
        self.backend.no_truncation()
        self.clean_up = bool(config.get("clean_up_tokenization_spaces", False))
        end = self.backend.token_to_id("<|im_end|>")
        if end is None:
            raise ModelLoadError(f"{folder}: the tokenizer has no <|im_end|> token")
        self.end_id = int(end)
        pad = config.get("pad_token")
        if isinstance(pad, dict):
            pad = pad.get("content")
        pad_id = self.backend.token_to_id(pad) if isinstance(pad, str) else None
        self.pad_id = int(pad_id if pad_id is not None else self.end_id)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return [list(e.ids) for e in encoded]

    def decode_batch(self, rows: Sequence[Sequence[int]]) -> list[str]:
        texts = self.backend.decode_batch([list(r) for r in rows], skip_special_tokens=True)
        return [clean_up_tokenization(t) if self.clean_up else t for t in texts]


class _TransformersTokenizer:
    """The same interface over a ``transformers`` tokenizer (exports without prompt.json)."""

    def __init__(self, folder: Path) -> None:
        try:
            from transformers import AutoTokenizer

            self.backend = AutoTokenizer.from_pretrained(str(folder))
        except Exception as exc:  # transformers raises OSError, ValueError, ...
            raise ModelLoadError(f"{folder}: cannot load the tokenizer: {exc}") from exc
        self.end_id = int(self.backend.convert_tokens_to_ids("<|im_end|>"))
        pad = self.backend.pad_token_id
        self.pad_id = int(pad if pad is not None else self.end_id)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self.backend(list(texts), add_special_tokens=False)["input_ids"]
        return [list(ids) for ids in encoded]

    def decode_batch(self, rows: Sequence[Sequence[int]]) -> list[str]:
        return [str(self.backend.decode(r, skip_special_tokens=True)) for r in rows]


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


#: Prompts per scorer batch: on two CPU cores 8-16 ran faster than 32 or 50 (smaller
#: activations stay in cache; bench/model.py and bench/window.py measure it).
SCORE_BATCH = 16

#: Precisions an export can be served in: ``int8-scorer`` scores with the int8 graph and
#: explains with the fp32 one; ``auto`` picks per :func:`choose_precision`.
PRECISIONS = ("auto", "fp32", "int8-scorer", "int8")


def int8_status(manifest: dict[str, Any], part: str = "all") -> str:
    """``ok``, ``failed`` or ``missing``: whether the export holds int8 graphs that held, both
    (``part="all"``) or the scorer's (``"scorer"``). Graphs still ``validating``, or left so
    by a crash, count as failed."""
    int8 = manifest.get("int8")
    if not isinstance(int8, dict):
        return "missing"
    key = "status" if part == "all" else "scorer_status"
    return "ok" if int8.get(key) == "ok" else "failed"


def choose_precision(
    manifest: dict[str, Any],
    precision: str,
    providers: Sequence[str],
    *,
    int8_on_cpu: bool | None = None,
    int8_generation: bool | None = None,
) -> str:
    """The precision to serve: ``precision`` checked, or ``auto`` resolved.

    ``auto`` uses int8 only on the CPU and only where the export's int8 graphs passed their
    validation against fp32: the scorer's where ``int8_on_cpu`` (default
    :data:`export.INT8_DEFAULT_ON_CPU`), the generator's too where ``int8_generation``
    (default :data:`export.INT8_GENERATION_DEFAULT_ON_CPU`).

    >>> ok = {"int8": {"status": "ok", "scorer_status": "ok"}}
    >>> choose_precision(ok, "auto", [CPU], int8_on_cpu=True, int8_generation=False)
    'int8-scorer'
    >>> choose_precision(ok, "auto", [CPU], int8_on_cpu=True, int8_generation=True)
    'int8'
    >>> choose_precision({"int8": {"status": "failed"}}, "auto", [CPU], int8_on_cpu=True)
    'fp32'
    >>> choose_precision(ok, "auto", [CUDA, CPU], int8_on_cpu=True)
    'fp32'
    """
    from export import INT8_DEFAULT_ON_CPU, INT8_GENERATION_DEFAULT_ON_CPU

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is none of {', '.join(PRECISIONS)}")
    part = "all" if precision == "int8" else "scorer"
    status = int8_status(manifest, part)
    if precision in ("int8", "int8-scorer") and status != "ok":
        why = "it has no int8 graphs" if status == "missing" else "its int8 graphs failed"
        raise ModelLoadError(
            f"{precision} requested but {why} their validation against fp32 "
            f"({manifest.get('int8', {}).get('validation', {})}): serve it in fp32"
        )
    if precision != "auto":
        return precision
    if not (bool(providers) and providers[0] == CPU):
        return "fp32"
    scorer = INT8_DEFAULT_ON_CPU if int8_on_cpu is None else int8_on_cpu
    generation = INT8_GENERATION_DEFAULT_ON_CPU if int8_generation is None else int8_generation
    if scorer and generation and int8_status(manifest) == "ok":
        return "int8"
    if scorer and int8_status(manifest, "scorer") == "ok":
        return "int8-scorer"
    return "fp32"


class OrtTrailModel:
    """The graphs and the tokenizer of one export: residuals and greedy explanations.

    Prompts are built and tokenized in batches: the chat template's pieces (``prompt.json``,
    rendered once at export) are tokenized once and joined to each item's tokenized prompt
    body, which gives exactly the ids of tokenizing the whole rendered template (checked at
    load, see :class:`model.prompts.PromptEncoder`). The scorer runs the template's common
    opening once and passes it to every batch as a cached past. ``timings`` accumulates the
    seconds spent building prompts, scoring and generating.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        providers: Sequence[str] | None = None,
        io_binding: bool | None = None,
        verify: bool = True,
        threads: int | None = None,
        precision: str = "fp32",
        unvalidated_int8: bool = False,
    ) -> None:
        self.model_dir = Path(model_dir)
        # Sizes of every file now, hashes below of the files this precision serves only: the
        # other precision's graphs are a third or more of the export's bytes.
        self.manifest = read_manifest(self.model_dir, verify=False)
        config = self.manifest.get("trail_config", {})
        self.info = ExportInfo(
            version=str(self.manifest["version"]),
            prior=str(config.get("prior", "ewma-1")),
            max_explanation_tokens=int(config.get("max_explanation_tokens", 36)),
            manifest_sha256=sha256_file(self.model_dir / MANIFEST_FILE),
        )
        chosen = list(providers) if providers is not None else default_providers()
        if (
            unvalidated_int8
            and precision in ("int8", "int8-scorer")
            and int8_status(self.manifest) != "missing"
        ):
            # The int8 validation itself, and benchmarks of what int8 would cost even where it
            # failed its validation, load graphs that are not (yet) accepted.
            self.precision = precision
        else:
            self.precision = choose_precision(self.manifest, precision, chosen)
        int8 = self.manifest.get("int8", {})
        files = int8.get("files", {}) if self.precision != "fp32" else {}
        scorer_file = str(files.get("scorer", SCORER_FILE))
        generator_file = str(
            files.get("generator", GENERATOR_FILE) if self.precision == "int8" else GENERATOR_FILE
        )
        if verify:
            graphs = {SCORER_FILE, GENERATOR_FILE, *int8.get("files", {}).values()}
            unserved = graphs - {scorer_file, generator_file}
            listed = self.manifest["files"]
            check_files(
                self.model_dir,
                {name: entry for name, entry in listed.items() if name not in unserved},
                [scorer_file, generator_file],
                fix="re-export it with `trail export ADAPTER --out DIR`",
            )
        self.timings: dict[str, float] = dict.fromkeys(TIMED, 0.0)
        self.pieces = self._read_pieces()
        tokenizer_dir = self.model_dir / TOKENIZER_DIR
        self.tokenizer: ExportTokenizer | _TransformersTokenizer = (
            ExportTokenizer(tokenizer_dir)
            if self.pieces is not None
            else _TransformersTokenizer(tokenizer_dir)
        )
        if self.pieces is None and isinstance(self.tokenizer, _TransformersTokenizer):
            self.pieces = chat_pieces(self.tokenizer.backend)
        self.encoder = (
            PromptEncoder(self.pieces, self.tokenizer.encode_batch)
            if self.pieces is not None
            else None
        )
        self.scorer = ScorerGraph(
            self.model_dir / scorer_file, chosen, io_binding=io_binding, threads=threads
        )
        self.generator = GeneratorGraph(
            self.model_dir / generator_file, chosen, io_binding=io_binding, threads=threads
        )
        self.provider = self.scorer.provider
        self.end_id = self.tokenizer.end_id
        self.pad_id = self.tokenizer.pad_id
        # The template's opening (system turn), computed once: every scorer batch starts there.
        self._prefix: list[int] = []
        self._prefix_past: dict[str, npt.NDArray[Any]] = {}
        if self.scorer.with_past and self.encoder is not None and self.encoder.joined:
            self._prefix = list(self.encoder.prefix_ids)
            self._prefix_past = self.generator.cache_of(self._prefix)

    def _read_pieces(self) -> ChatPieces | None:
        path = self.model_dir / PROMPT_FILE
        if not path.is_file():
            return None
        try:
            return ChatPieces.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path} is not a valid prompt file ({exc}): re-export") from exc

    # ------------------------------------------------------------------ text
    def prompt_text(self, features: ItemFeatures) -> str:
        """The chat prompt's text (as :func:`model.prompts.chat_prompt` renders it)."""
        if self.pieces is not None:
            return self.pieces.wrap(build_prompt(features))
        assert isinstance(self.tokenizer, _TransformersTokenizer)  # noqa: S101 - set above
        return chat_prompt(self.tokenizer.backend, features)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        # As TrailModel.encode: the chat template already holds every special token.
        return self.tokenizer.encode_batch(texts)

    def prompt_ids(
        self, features: Sequence[ItemFeatures], continuations: Sequence[str] | None = None
    ) -> list[list[int]]:
        """Each item's prompt ids (then its continuation's), tokenized in one batch."""
        if self.encoder is None:
            texts = [self.prompt_text(f) for f in features]
            if continuations is not None:
                texts = [t + c for t, c in zip(texts, continuations, strict=True)]
            return self.tokenize(texts)
        if continuations is None:
            return self.encoder.encode(features)
        return self.encoder.encode_with(features, continuations)

    # ------------------------------------------------------------------ scores
    def residuals(
        self, prompts: Sequence[str], batch_size: int = SCORE_BATCH
    ) -> npt.NDArray[np.float32]:
        """Score-head residual of each prompt text (length-bucketed batches)."""
        return self.residuals_of(self.tokenize(prompts), batch_size)

    def residuals_of(
        self, rows: Sequence[Sequence[int]], batch_size: int = SCORE_BATCH
    ) -> npt.NDArray[np.float32]:
        """Score-head residual of each row of prompt ids (length-bucketed batches)."""
        out = np.zeros(len(rows), dtype=np.float32)
        prefix = self._prefix
        for bucket in _buckets([len(r) for r in rows], batch_size):
            chunk = [rows[i] for i in bucket]
            if not self.scorer.with_past:  # trail-onnx@1: right-padded, no cache
                width = max(len(r) for r in chunk)
                ids = np.full((len(chunk), width), self.pad_id, dtype=np.int64)
                mask = np.zeros((len(chunk), width), dtype=np.int64)
                for j, row in enumerate(chunk):
                    ids[j, : len(row)] = row
                    mask[j, : len(row)] = 1
                out[bucket] = self.scorer(ids, mask)
                continue
            cached = bool(prefix) and all(
                len(r) > len(prefix) and list(r[: len(prefix)]) == prefix for r in chunk
            )
            tails = [r[len(prefix) :] for r in chunk] if cached else chunk
            ids, mask, positions = left_padded(tails, self.pad_id, len(prefix) if cached else 0)
            past = (
                {k: np.repeat(v, len(chunk), axis=0) for k, v in self._prefix_past.items()}
                if cached
                else None
            )
            out[bucket] = self.scorer(ids, mask, positions, past)
        return out

    def score(self, features: Sequence[ItemFeatures], batch_size: int = SCORE_BATCH) -> FloatArray:
        """Predicted ``log(1 + next count)``: prior + residual, clamped at zero.

        Computed in float32 like :meth:`model.trail.TrailModel.score`, so that both runtimes
        round identically and rank identically.
        """
        if not features:
            return np.zeros(0)
        started = time.perf_counter()
        rows = self.prompt_ids(features)
        prior = np.array([prior_log_count(f, self.info.prior) for f in features], np.float32)
        scoring = time.perf_counter()
        residual = self.residuals_of(rows, batch_size)
        self.timings["prompt_s"] += scoring - started
        self.timings["score_s"] += time.perf_counter() - scoring
        return np.maximum(prior + residual, np.float32(0.0)).astype(np.float64)

    # ------------------------------------------------------------------ explanations
    def generate_ids(
        self, prompts: Sequence[str], batch_size: int = 16, max_new_tokens: int | None = None
    ) -> list[list[int]]:
        """Greedy token ids after each prompt text (length-bucketed, left-padded batches)."""
        return self.generate_ids_of(self.tokenize(prompts), batch_size, max_new_tokens)

    def generate_ids_of(
        self,
        rows: Sequence[Sequence[int]],
        batch_size: int = 16,
        max_new_tokens: int | None = None,
    ) -> list[list[int]]:
        """Greedy token ids after each row of prompt ids, cut after ``<|im_end|>``."""
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

    def decode(self, rows: Sequence[Sequence[int]]) -> list[str]:
        return [text.strip() for text in self.tokenizer.decode_batch(rows)]

    def generate(self, prompts: Sequence[str], batch_size: int = 16) -> list[str]:
        return self.decode(self.generate_ids(prompts, batch_size))

    def explain(self, features: Sequence[ItemFeatures], scores: Sequence[float]) -> list[str]:
        """The forced forecast sentence of each score, then the model's greedy explanation."""
        if not features:
            return []
        started = time.perf_counter()
        openings = [forecast_sentence(f, float(s)) for f, s in zip(features, scores, strict=True)]
        rows = self.prompt_ids(features, openings)
        generating = time.perf_counter()
        texts = self.decode(self.generate_ids_of(rows))
        self.timings["prompt_s"] += generating - started
        self.timings["generate_s"] += time.perf_counter() - generating
        return [complete_sentences(o + t) for o, t in zip(openings, texts, strict=True)]


#: The parts of a window's LM work that :attr:`OrtTrailModel.timings` adds up.
TIMED = ("prompt_s", "score_s", "generate_s")


class OrtTrailScorer(CascadeScorer):
    """TRAIL served by ONNX Runtime: the same cascade and texts as the PyTorch TrailScorer.

    Explanations pass the same :class:`model.scorer.ExplanationGuard` (``guard=False`` turns
    its replacing off; it still counts). Raises :class:`ModelLoadError` at construction when
    ``model_dir`` is missing, corrupt (a hash mismatch), of another format, or an export that
    failed validation. ``precision`` is ``fp32``, ``int8`` or ``auto`` (see
    :func:`choose_precision`).
    """

    def __init__(
        self,
        model_dir: Path,
        rescore_top: int = 50,
        providers: Sequence[str] | None = None,
        *,
        batch_size: int = SCORE_BATCH,
        io_binding: bool | None = None,
        guard: bool = True,
        threads: int | None = None,
        precision: str = "fp32",
        unvalidated_int8: bool = False,
    ) -> None:
        from model.scorer import ExplanationGuard

        self.model_dir = Path(model_dir)
        self.model = OrtTrailModel(
            self.model_dir,
            providers=providers,
            io_binding=io_binding,
            threads=threads,
            precision=precision,
            unvalidated_int8=unvalidated_int8,
        )
        self.rescore_top = rescore_top
        self.prior = self.model.info.prior
        self.batch_size = batch_size
        self.provider = self.model.provider
        self.precision = self.model.precision
        self.manifest_sha256 = self.model.info.manifest_sha256
        self.guard = ExplanationGuard(guard)
        log.info(
            "serving %s from %s on %s (%s)",
            self.version,
            self.model_dir,
            self.provider,
            self.precision,
        )

    @property
    def version(self) -> str:
        """The export's version; int8 graphs score differently, so they say so."""
        suffix = "" if self.precision == "fp32" else f"+{self.precision}"
        return self.model.info.version + suffix

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
        batch_size: int = SCORE_BATCH,
        io_binding: bool | None = None,
        guard: bool = True,
        threads: int | None = None,
        precision: str = "fp32",
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
                precision=precision,
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
