"""Serving an exported TRAIL model with ONNX Runtime, behind the engine's Scorer protocol.

An export folder (written by ``trail export``, see :mod:`export.onnx_export`; its manifest
read and written by :mod:`export.manifest`) holds::

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
sentence followed by greedy ORT generation. The graphs' sessions are in
:mod:`export.sessions`, the tokenizer in :mod:`export.tokenizer`, and
:class:`export.reload.ReloadingScorer` swaps in a newer export between windows.

This module imports no torch and, for exports with ``prompt.json``, no transformers: prompts
are tokenized with ``tokenizers`` directly, their template pieces once. The prior, the
forecast sentence, the cascade and the explanation guard are the torch-free ones the PyTorch
scorer uses too. All ORT work is synchronous; an asyncio caller runs it off the event loop
with ``asyncio.to_thread`` (ORT releases the GIL while it computes).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

from export.kv_cache import Past, RowCacheStore, row_caches
from export.manifest import (
    GENERATOR_FILE,
    MANIFEST_FILE,
    PROMPT_FILE,
    SCORER_FILE,
    TOKENIZER_DIR,
    int8_status,
    read_manifest,
)
from export.sessions import CPU, GeneratorGraph, ScorerGraph, default_providers, left_padded
from export.tokenizer import ExportTokenizer, TransformersTokenizer
from model.explain import complete_sentences, forecast_sentence
from model.files import ModelLoadError, check_files, sha256_file
from model.priors import prior_log_count
from model.prompts import ChatPieces, PromptEncoder, build_prompt, chat_pieces, chat_prompt
from model.scorer import CascadeScorer
from schemas import ItemFeatures
from streams.scoring import DEFAULT_RESCORE_TOP

FloatArray = npt.NDArray[np.float64]

log = logging.getLogger("trail.export")


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

    >>> from export.sessions import CPU, CUDA
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
    opening once and passes it to every batch as a cached past. Where the export's validation
    showed that explanations generated from the scorer's own KV cache are token for token the
    PyTorch ones (``trail-onnx@3`` on, fp32), :meth:`score` keeps the cache of the prompts it
    scored (:attr:`row_caches`, within a byte budget) and :meth:`explain` starts each of them
    from it, so only the forecast sentence is computed before decoding. ``timings``
    accumulates the seconds spent building prompts, scoring and generating.
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
        self.tokenizer: ExportTokenizer | TransformersTokenizer = (
            ExportTokenizer(tokenizer_dir)
            if self.pieces is not None
            else TransformersTokenizer(tokenizer_dir)
        )
        if self.pieces is None and isinstance(self.tokenizer, TransformersTokenizer):
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
        validation = self.manifest.get("validation", {})
        # int8 scorers compute another cache than the fp32 generator would.
        self.reuses_scorer_cache = (
            self.scorer.returns_cache
            and self.precision == "fp32"
            and validation.get("greedy_after_scorer_cache_identical") is True
        )
        self.row_caches = RowCacheStore()

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
        assert isinstance(self.tokenizer, TransformersTokenizer)  # noqa: S101 - set above
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
        self,
        rows: Sequence[Sequence[int]],
        batch_size: int = SCORE_BATCH,
        *,
        keep_caches: bool = False,
    ) -> npt.NDArray[np.float32]:
        """Score-head residual of each row of prompt ids (length-bucketed batches).

        ``keep_caches``: put each row's KV cache into :attr:`row_caches`, as many rows as its
        budget holds, first rows first (where the scorer returns its cache).
        """
        out = np.zeros(len(rows), dtype=np.float32)
        prefix = self._prefix
        keep = (
            self.row_caches.admitted([len(r) for r in rows], self.scorer.token_bytes)
            if keep_caches and self.scorer.returns_cache
            else [False] * len(rows)
        )
        for bucket in _buckets([len(r) for r in rows], batch_size):
            chunk = [rows[i] for i in bucket]
            if not self.scorer.with_past:  # trail-onnx@1: right-padded, no cache
                width = max(len(r) for r in chunk)
                ids = np.full((len(chunk), width), self.pad_id, dtype=np.int64)
                mask = np.zeros((len(chunk), width), dtype=np.int64)
                for j, row in enumerate(chunk):
                    ids[j, : len(row)] = row
                    mask[j, : len(row)] = 1
                out[bucket] = self.scorer.run(ids, mask)[0]
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
            kept = [j for j, i in enumerate(bucket) if keep[i]]
            out[bucket], cache = self.scorer.run(ids, mask, positions, past, with_cache=bool(kept))
            if kept:
                selected = {name: value[kept] for name, value in cache.items()}
                for j, row_cache in zip(kept, row_caches(selected, mask[kept]), strict=True):
                    self.row_caches.put(rows[bucket[j]], row_cache)
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
        self.row_caches.clear()
        residual = self.residuals_of(rows, batch_size, keep_caches=self.reuses_scorer_cache)
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
        prompts: Sequence[Sequence[int]] | None = None,
    ) -> list[list[int]]:
        """Greedy token ids after each row of prompt ids, cut after ``<|im_end|>``.

        ``prompts``: where ``rows[i]`` starts with ``prompts[i]`` and :attr:`row_caches`
        holds that prompt's cache, the row is generated from it (only the rest is fed in).
        """
        limit = self.info.max_explanation_tokens if max_new_tokens is None else max_new_tokens
        pasts: list[Past | None] = [None] * len(rows)
        tails = list(rows)
        if prompts is not None and len(self.row_caches):
            for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
                if len(row) > len(prompt) and list(row[: len(prompt)]) == list(prompt):
                    pasts[i] = self.row_caches.get(prompt)
                    tails[i] = row[len(prompt) :] if pasts[i] is not None else row
        out: list[list[int]] = [[] for _ in rows]
        for cached in (False, True):
            group = [i for i in range(len(rows)) if (pasts[i] is not None) == cached]
            for part in _buckets([len(rows[i]) for i in group], batch_size):
                bucket = [group[j] for j in part]
                row_pasts = [p for i in bucket if (p := pasts[i]) is not None]
                generated = self.generator.greedy(
                    [tails[i] for i in bucket],
                    max_new_tokens=limit,
                    eos_id=self.end_id,
                    pad_id=self.pad_id,
                    pasts=row_pasts or None,
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
        prompts = self.prompt_ids(features) if len(self.row_caches) else None
        generating = time.perf_counter()
        texts = self.decode(self.generate_ids_of(rows, prompts=prompts))
        self.timings["prompt_s"] += generating - started
        self.timings["generate_s"] += time.perf_counter() - generating
        return [complete_sentences(o + t) for o, t in zip(openings, texts, strict=True)]


#: The parts of a window's LM work that :attr:`OrtTrailModel.timings` adds up.
TIMED = ("prompt_s", "score_s", "generate_s")


class ServingOptions(TypedDict, total=False):
    """How an export is served: the keyword arguments of :class:`OrtTrailScorer` that
    :class:`~export.reload.ReloadingScorer` hands to every export it loads."""

    rescore_top: int
    providers: Sequence[str] | None
    batch_size: int
    io_binding: bool | None
    threads: int | None
    precision: str


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
        rescore_top: int = DEFAULT_RESCORE_TOP,
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
