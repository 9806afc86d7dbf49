"""ONNX Runtime sessions of an export's graphs: the providers, the one session options, and
the two graphs TRAIL runs (the scorer and the generator with its KV cache).

Every session TRAIL opens takes its options from :func:`session_options`: full graph
optimisation, one batch at a time, idle threads that sleep instead of spinning.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from export.kv_cache import Past, stacked
from model.files import ModelLoadError

IntArray = npt.NDArray[np.int64]

log = logging.getLogger("trail.export")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


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
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def session_options(threads: int | None = None) -> Any:
    """The ``onnxruntime.SessionOptions`` of every session TRAIL opens.

    Parameters
    ----------
    threads
        Intra-op threads; None: every core this process may run on (:func:`cpu_threads`).

    Returns
    -------
    onnxruntime.SessionOptions
        Full graph optimisation, sequential execution, and pool threads that sleep when idle.
    """
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
    return options


def make_session(
    path: Path, providers: Sequence[str] | None = None, threads: int | None = None
) -> Any:
    """An ORT session of the graph at ``path`` with :func:`session_options`.

    ``providers`` None: :func:`default_providers`. Raises :class:`ModelLoadError` when ORT
    cannot load the graph; a provider ORT falls back from is logged.
    """
    import onnxruntime as ort

    options = session_options(threads)
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
    """``cuda`` or ``cpu``: where ``session`` runs."""
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


def presents_of(names: Iterable[str]) -> dict[str, str]:
    """The ``present.*`` output that returns each ``past_key_values.*`` input of ``names``.

    >>> presents_of(["input_ids", "past_key_values.0.key"])
    {'present.0.key': 'past_key_values.0.key'}
    """
    return {
        name.replace("past_key_values.", "present.", 1): name
        for name in names
        if name.startswith("past_key_values.")
    }


def left_padded(
    rows: Sequence[Sequence[int]],
    pad_id: int,
    past_length: int = 0,
    past_mask: IntArray | None = None,
) -> tuple[IntArray, IntArray, IntArray]:
    """``(input_ids, attention_mask, position_ids)`` of left-padded rows after a past.

    The mask covers the past too: every one of its ``past_length`` positions, or as
    ``past_mask`` (batch x past length) says when the rows' pasts have padding of their own.
    Positions count real tokens only (``cumsum(mask) - 1``), as ``transformers``'
    ``generate`` computes them, and padding gets position 1.

    >>> ids, mask, positions = left_padded([[7, 8], [9]], pad_id=0, past_length=2)
    >>> ids.tolist(), mask.tolist(), positions.tolist()
    ([[7, 8], [0, 9]], [[1, 1, 1, 1], [1, 1, 0, 1]], [[2, 3], [1, 2]])
    >>> _, mask, positions = left_padded([[7], [9]], 0, past_mask=np.array([[0, 1], [1, 1]]))
    >>> mask.tolist(), positions.tolist()
    ([[0, 1, 1], [1, 1, 1]], [[1], [2]])
    """
    batch = len(rows)
    width = max(len(r) for r in rows)
    if past_mask is not None:
        past_length = past_mask.shape[1]
    input_ids = np.full((batch, width), pad_id, dtype=np.int64)
    mask = np.zeros((batch, past_length + width), dtype=np.int64)
    mask[:, :past_length] = 1 if past_mask is None else past_mask
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = row
        mask[i, past_length + width - len(row) :] = 1
    positions = np.cumsum(mask, axis=1)[:, past_length:] - 1
    positions[mask[:, past_length:] == 0] = 1
    return input_ids, mask, positions


class _Graph:
    """What both graphs share: the session, where it runs, IO binding, the KV-cache layout.

    Raises :class:`ModelLoadError` when the graph at ``path`` is not the one the subclass
    serves (:meth:`_check`).
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
        self._check(path, inputs)
        self.past_shapes, self.past_types = _past_layout(inputs)
        self.uses_position_ids = "position_ids" in inputs

    def _check(self, path: Path, inputs: dict[str, Any]) -> None:
        """Raise :class:`ModelLoadError` unless the session's inputs (by name) and outputs are
        this graph's; keep what else it needs of them."""
        raise NotImplementedError

    @property
    def token_bytes(self) -> int:
        """Bytes of KV cache one token takes in one row."""
        return sum(
            heads * dim * np.dtype(self.past_types[name]).itemsize
            for name, (heads, dim) in self.past_shapes.items()
        )

    def empty_past(self, batch: int) -> dict[str, npt.NDArray[Any]]:
        return {
            name: np.zeros((batch, heads, 0, dim), dtype=self.past_types[name])
            for name, (heads, dim) in self.past_shapes.items()
        }


class ScorerGraph(_Graph):
    """The score head's graph: token ids -> residual of each row's last prompt token.

    Exports from ``trail-onnx@2`` on hold the head on the generator's own body, with its inputs
    (a KV cache among them): rows are left-padded, the head reads the last position, and the
    chat template's opening, the same for every item, can be passed once as a cached past.
    From ``trail-onnx@3`` the graph also returns the grown cache (``present.*``), so a scored
    prompt's explanation can start from it (:attr:`returns_cache`). ``trail-onnx@1`` scorers
    take ``(input_ids, attention_mask)`` only and read the last real token of right-padded
    rows. :attr:`with_past` tells which.
    """

    def _check(self, path: Path, inputs: dict[str, Any]) -> None:
        if "input_ids" not in inputs or "attention_mask" not in inputs:
            raise ModelLoadError(f"{path} is not a TRAIL scorer (inputs: {[*inputs]})")
        outputs = {o.name for o in self.session.get_outputs()}
        self.present_of = presents_of(inputs)
        if not set(self.present_of) <= outputs:
            self.present_of = {}

    @property
    def with_past(self) -> bool:
        """Whether the graph takes a KV cache (``trail-onnx@2`` on)."""
        return bool(self.past_shapes)

    @property
    def returns_cache(self) -> bool:
        """Whether the graph returns the KV cache of what it scored (``trail-onnx@3`` on)."""
        return bool(self.present_of)

    def run(
        self,
        input_ids: IntArray,
        attention_mask: IntArray,
        position_ids: IntArray | None = None,
        past: dict[str, npt.NDArray[Any]] | None = None,
        *,
        with_cache: bool = False,
    ) -> tuple[npt.NDArray[np.float32], dict[str, npt.NDArray[Any]]]:
        """The residual of each row and, ``with_cache`` (where :attr:`returns_cache`), the
        grown cache on the host by ``past_key_values`` name (empty otherwise)."""
        feeds: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.with_past:
            if position_ids is None:
                raise ValueError("this scorer reads left-padded rows: pass position_ids")
            if self.uses_position_ids:
                feeds["position_ids"] = position_ids
            feeds |= past if past is not None else self.empty_past(input_ids.shape[0])
        names = ["residual", *(self.present_of if with_cache else ())]
        if not self.io_binding:
            outputs = self.session.run(names, feeds)
        else:
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            for name in names:
                binding.bind_output(name, "cpu")
            self.session.run_with_iobinding(binding)
            outputs = binding.copy_outputs_to_cpu()
        residual = np.asarray(outputs[0], dtype=np.float32).reshape(-1)
        cache = {self.present_of[n]: v for n, v in zip(names[1:], outputs[1:], strict=True)}
        return residual, cache


class GeneratorGraph(_Graph):
    """``generator/model.onnx`` (optimum-onnx text-generation-with-past): greedy decoding.

    The KV cache is fed back step by step. On the CPU a row that has finished leaves the
    batch (its cache rows are dropped), so the steps after it cost only the rows still
    writing. With IO binding (the default on CUDA) the cache never leaves the device: each
    step's ``present.*`` outputs are bound as the next step's ``past_key_values.*`` inputs,
    finished rows stay in the batch fed with padding, and only the last position's logits
    come back to the host.
    """

    def _check(self, path: Path, inputs: dict[str, Any]) -> None:
        self.past_names = [name for name in inputs if name.startswith("past_key_values.")]
        if not self.past_names or "input_ids" not in inputs:
            raise ModelLoadError(f"{path} is not a generator with a KV cache (inputs: {[*inputs]})")
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.present_of = presents_of(self.past_names)
        missing = [p for p in self.present_of if p not in self.output_names]
        if missing or "logits" not in self.output_names:
            raise ModelLoadError(f"{path}: outputs {missing or ['logits']} are missing")

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
        pasts: Sequence[Past] | None = None,
    ) -> list[list[int]]:
        """Greedy continuations of one left-padded batch, each cut after ``eos_id``.

        Mirrors ``transformers``' ``generate(do_sample=False)``: positions count real tokens
        only (``cumsum(mask) - 1``), and the loop stops when every row has finished or after
        ``max_new_tokens``. With ``compact`` (the default without IO binding) a row leaves
        the batch at its ``eos_id``; otherwise it stays, fed ``pad_id`` and masked. Rows do
        not interact in a forward pass, so both give the same tokens. ``pasts``: each row's
        cache of the tokens before it (:mod:`export.kv_cache`), where ``rows`` hold only the
        tokens after those.
        """
        compact = not self.io_binding if compact is None else compact
        past: dict[str, Any]
        if pasts is None:
            input_ids, mask, positions = left_padded(rows, pad_id)
            past = self.empty_past(len(rows))
        else:
            past, past_mask = stacked(pasts)
            input_ids, mask, positions = left_padded(rows, pad_id, past_mask=past_mask)
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
