"""The TRAIL model: a small causal LM with LoRA adapters, a score head, and its text format.

One sequence per item serves both tasks::

    <chat prompt: system + signals> | Forecast: <n> events next <period>. <explanation><|im_end|>

* The score head reads the hidden state of the prompt's last token and predicts a *residual*
  on top of a recency prior (``log1p`` of the EW mean with a half-life of one window, the
  strongest baseline on our logs). A zero-initialised head therefore starts exactly at the
  prior, and the LM only has to learn what the signals and metadata add to it. Because the
  prior is on the same scale, the cascade can merge LM-scored and prior-scored items.
* The explanation is generated after a forced forecast sentence that carries the model's own
  score, so the text explains *that* score. In training the forced number is the realised next
  count (teacher forcing); the LM loss covers only the explanation.

An adapter folder holds the LoRA weights (``adapter_config.json``,
``adapter_model.safetensors``), the score head (``score_head.safetensors``), the model's shape
(``trail_config.json``) and ``manifest.json``: how it was trained and the sha256 of every file
that :meth:`TrailModel.load` reads, checked before anything is loaded. Nothing is unpickled:
tensors are safetensors, the rest JSON.

Torch, transformers and peft are imported by this module: only model code imports it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from model.base import IM_END
from model.explain import complete_sentences, forecast_sentence
from model.files import ModelLoadError, check_files, file_entries
from model.priors import PRIORS, prior_log_count
from model.prompts import PromptEncoder, chat_prompt, transformers_encoder
from schemas import ItemFeatures

ADAPTER_FORMAT = "trail-adapter@1"
HEAD_FILE = "score_head.safetensors"
CONFIG_FILE = "trail_config.json"
LORA_FILE = "adapter_model.safetensors"
LORA_CONFIG_FILE = "adapter_config.json"
MANIFEST_FILE = "manifest.json"
#: ``@1`` manifests listed no file hashes; ``@2`` lists the sha256 of every file load reads.
ADAPTER_MANIFEST_FORMAT = "trail-manifest@2"
#: The files :meth:`TrailModel.load` reads: the manifest must list them all.
ADAPTER_FILES = (LORA_CONFIG_FILE, LORA_FILE, HEAD_FILE, CONFIG_FILE)
#: The score head of adapters from before safetensors: a pickle, never loaded.
LEGACY_HEAD_FILE = "score_head.pt"
#: What to do about a broken adapter folder; ends every load error.
ADAPTER_FIX = (
    "restore the adapter folder from its source, or retrain it with "
    "`trail train SNAPSHOTS --out DIR`"
)


@dataclass(frozen=True)
class TrailConfig:
    """Shape of a TRAIL model; saved beside the adapter so that it reloads identically."""

    base_model: str = "smollm2-135m"
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    #: Adapt only the top fraction of layers: backward stops below them, which halves the
    #: cost of a training step on a CPU while the upper layers carry most task adaptation.
    lora_top_fraction: float = 0.34
    prior: str = "ewma-1"
    max_explanation_tokens: int = 36
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["lora_targets"] = list(self.lora_targets)
        data["format"] = ADAPTER_FORMAT
        return data

    @classmethod
    def from_json(cls, data: Any) -> TrailConfig:
        """Inverse of :meth:`to_json`; raises ``ValueError`` naming what is wrong.

        Every field must have its default's type (an int passes for a float), so that a hand
        edit is caught here and not as an odd failure deep in peft.
        """
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, found {type(data).__name__}")
        if data.get("format") != ADAPTER_FORMAT:
            raise ValueError(
                f"adapter format {data.get('format')!r} is not {ADAPTER_FORMAT!r}: "
                "retrain the adapter with this version of TRAIL"
            )
        values = {k: v for k, v in data.items() if k != "format"}
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown fields {', '.join(unknown)}")
        # A missing field would silently take today's default, which may not be the trained one.
        missing = sorted(set(known) - set(values))
        if missing:
            raise ValueError(f"missing fields {', '.join(missing)}")
        defaults = cls()
        for name, value in values.items():
            expected = type(getattr(defaults, name))
            if expected is tuple:
                valid = isinstance(value, list) and all(isinstance(v, str) for v in value)
            elif expected is float:
                valid = isinstance(value, int | float) and not isinstance(value, bool)
            else:
                valid = isinstance(value, expected) and not (
                    expected is int and isinstance(value, bool)
                )
            if not valid:
                raise ValueError(f"{name} must be {expected.__name__}, not {value!r}")
        if values["prior"] not in PRIORS:
            raise ValueError(f"prior {values['prior']!r} is none of {', '.join(PRIORS)}")
        values["lora_targets"] = tuple(values["lora_targets"])
        return cls(**values)


class ScoreHead(nn.Module):
    """Hidden state of the prompt's last token -> residual on the prior's log count."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.proj = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        residual: torch.Tensor = self.proj(self.norm(hidden)).squeeze(-1)
        return residual


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (library messages may span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def write_adapter_manifest(adapter_dir: Path, info: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json``: ``info`` plus the sha256 and size of every file load reads.

    Written last (after the files it lists) and atomically, so that a crash mid-save leaves a
    folder that fails its check instead of one that loads half old, half new.
    """
    adapter_dir = Path(adapter_dir)
    manifest = {
        "format": ADAPTER_MANIFEST_FORMAT,
        **{k: v for k, v in info.items() if k not in ("format", "files")},
        "files": file_entries(adapter_dir, ADAPTER_FILES),
    }
    temporary = adapter_dir / f".{MANIFEST_FILE}.tmp"
    temporary.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    temporary.replace(adapter_dir / MANIFEST_FILE)
    return manifest


def read_adapter_manifest(adapter_dir: Path, *, verify: bool = True) -> dict[str, Any]:
    """The manifest of ``adapter_dir``, its files checked; raises :class:`ModelLoadError`.

    With ``verify`` every file is hashed (milliseconds for a LoRA adapter), so a truncated or
    swapped file is named here instead of failing, or silently scoring wrong, later.
    """
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise ModelLoadError(
            f"no TRAIL adapter at {adapter_dir}: train one with `trail train SNAPSHOTS --out DIR`"
        )
    if (adapter_dir / LEGACY_HEAD_FILE).is_file() and not (adapter_dir / HEAD_FILE).is_file():
        raise ModelLoadError(
            f"{adapter_dir}: {LEGACY_HEAD_FILE} is a pickle from an older TRAIL and is never "
            f"loaded (a pickle can run code): retrain the adapter with "
            "`trail train SNAPSHOTS --out DIR`"
        )
    path = adapter_dir / MANIFEST_FILE
    if not path.is_file():
        raise ModelLoadError(f"{adapter_dir}: {MANIFEST_FILE} is missing: {ADAPTER_FIX}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{adapter_dir}: {MANIFEST_FILE} is not readable JSON ({one_line(exc)}): {ADAPTER_FIX}"
        ) from exc
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != ADAPTER_MANIFEST_FORMAT:
        raise ModelLoadError(
            f"{adapter_dir}: {MANIFEST_FILE} has format {found!r}, not "
            f"{ADAPTER_MANIFEST_FORMAT!r} (no file hashes): {ADAPTER_FIX}"
        )
    check_files(adapter_dir, manifest.get("files"), ADAPTER_FILES, verify=verify, fix=ADAPTER_FIX)
    return dict(manifest)


def read_trail_config(adapter_dir: Path) -> TrailConfig:
    """``trail_config.json`` of ``adapter_dir``; raises :class:`ModelLoadError` naming it."""
    path = Path(adapter_dir) / CONFIG_FILE
    try:
        return TrailConfig.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{adapter_dir}: {CONFIG_FILE} is not a valid TRAIL config ({one_line(exc)}): "
            f"{ADAPTER_FIX}"
        ) from exc


def read_score_head(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The score head's tensors (safetensors, on the CPU); raises :class:`ModelLoadError`."""
    path = Path(adapter_dir) / HEAD_FILE
    try:
        return load_file(path, device="cpu")
    except (OSError, SafetensorError) as exc:
        raise ModelLoadError(
            f"{adapter_dir}: {HEAD_FILE} is not a readable safetensors file ({one_line(exc)}): "
            f"{ADAPTER_FIX}"
        ) from exc


@dataclass
class Batch:
    """Token ids of a batch of sequences (right-padded) and where each prompt ends."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_last: torch.Tensor  # index of each prompt's last token
    labels: torch.Tensor | None  # -100 outside the explanation


class TrailModel(nn.Module):
    """Base LM (with LoRA when trained) + score head, with TRAIL's text format."""

    def __init__(self, lm: Any, tokenizer: Any, config: TrailConfig) -> None:
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.config = config
        self.head = ScoreHead(int(lm.config.hidden_size))
        self._prompt_encoder: PromptEncoder | None = None
        self._prompt_encoder_checked = False

    # ------------------------------------------------------------------ building
    @classmethod
    def from_base(cls, config: TrailConfig, *, with_lora: bool = True) -> TrailModel:
        """A fresh model: base weights from ``config.base_model``, new LoRA and head."""
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from model.base import resolve_base_model

        source = resolve_base_model(config.base_model)
        tokenizer = AutoTokenizer.from_pretrained(source)
        lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        if with_lora:
            layers = int(lm.config.num_hidden_layers)
            first = layers - max(1, round(layers * config.lora_top_fraction))
            lora = LoraConfig(
                r=config.lora_rank,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=list(config.lora_targets),
                layers_to_transform=list(range(first, layers)),
                task_type="CAUSAL_LM",
            )
            lm = get_peft_model(lm, lora)
        return cls(lm, tokenizer, config)

    @classmethod
    def load(
        cls, adapter_dir: Path, *, base_model: str | None = None, verify: bool = True
    ) -> TrailModel:
        """Load a trained adapter folder (LoRA weights, score head, config).

        The manifest's hashes, the config and the head are checked before the base LM is
        loaded, so a broken folder fails fast with one :class:`ModelLoadError` line.
        """
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from model.base import resolve_base_model

        adapter_dir = Path(adapter_dir)
        read_adapter_manifest(adapter_dir, verify=verify)
        config = read_trail_config(adapter_dir)
        head_state = read_score_head(adapter_dir)
        source = resolve_base_model(base_model or config.base_model)
        tokenizer = AutoTokenizer.from_pretrained(source)
        lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        try:
            lm = PeftModel.from_pretrained(lm, str(adapter_dir))
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
            raise ModelLoadError(
                f"{adapter_dir}: the LoRA weights ({LORA_FILE}, {LORA_CONFIG_FILE}) do not load "
                f"onto {source} ({one_line(exc)[:300]}): use the base model the adapter was "
                "trained on (--base-model), or retrain it"
            ) from exc
        model = cls(lm, tokenizer, config)
        try:
            model.head.load_state_dict(head_state)
        except RuntimeError as exc:  # missing, unexpected or misshapen tensors
            raise ModelLoadError(
                f"{adapter_dir}: {HEAD_FILE} does not fit a score head on {source} "
                f"({one_line(exc)[:300]}): {ADAPTER_FIX}"
            ) from exc
        model.eval()
        return model

    def save(self, adapter_dir: Path, info: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write the adapter folder, ``info`` (e.g. how it was trained) in its manifest.

        Returns the manifest; it is written last, with the hashes of the files above.
        """
        adapter_dir = Path(adapter_dir)
        adapter_dir.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(str(adapter_dir))
        head = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(head, adapter_dir / HEAD_FILE)
        (adapter_dir / CONFIG_FILE).write_text(json.dumps(self.config.to_json(), indent=2))
        return write_adapter_manifest(adapter_dir, {"model": self.config.to_json(), **(info or {})})

    @property
    def device(self) -> torch.device:
        return self.head.proj.weight.device

    # ------------------------------------------------------------------ text
    def prompt_text(self, features: ItemFeatures) -> str:
        return chat_prompt(self.tokenizer, features)

    @property
    def prompt_encoder(self) -> PromptEncoder | None:
        """Batched prompt ids with the template's pieces tokenized once (None: no pieces)."""
        if not self._prompt_encoder_checked:
            self._prompt_encoder = transformers_encoder(self.tokenizer)
            self._prompt_encoder_checked = True
        return self._prompt_encoder

    def prompt_ids(
        self, features: Sequence[ItemFeatures], continuations: Sequence[str] | None = None
    ) -> list[list[int]]:
        """Each item's prompt ids (then its continuation's): those of tokenizing
        :meth:`prompt_text` (plus the continuation), without rendering the template per item."""
        encoder = self.prompt_encoder
        if encoder is not None:
            if continuations is None:
                return encoder.encode(features)
            return encoder.encode_with(features, continuations)
        texts = [self.prompt_text(f) for f in features]
        if continuations is not None:
            texts = [t + c for t, c in zip(texts, continuations, strict=True)]
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [list(ids) for ids in encoded]

    def batch_of(self, rows: Sequence[Sequence[int]]) -> Batch:
        """Right-padded token ids, as :meth:`encode` makes them from the same prompts' texts."""
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
            mask[i, : len(ids)] = 1
        last = torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)
        return Batch(input_ids, mask, last, None)

    def encode(
        self,
        prompts: Sequence[str],
        answers: Sequence[str] | None = None,
        forced: Sequence[str] | None = None,
    ) -> Batch:
        """Tokenize prompts (and optional forced forecast + answer) into a right-padded batch.

        Labels cover only ``answers`` and the closing ``<|im_end|>``: the prompt and the
        forced forecast are given, never learned.
        """
        end_id = self.tokenizer.convert_tokens_to_ids(IM_END)
        rows: list[list[int]] = []
        label_rows: list[list[int]] = []
        prompt_last: list[int] = []
        for i, prompt in enumerate(prompts):
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            labels = [-100] * len(ids)
            prompt_last.append(len(ids) - 1)
            if forced is not None:
                extra = self.tokenizer(forced[i], add_special_tokens=False)["input_ids"]
                ids = ids + extra
                labels += [-100] * len(extra)
            if answers is not None:
                answer = self.tokenizer(answers[i], add_special_tokens=False)["input_ids"]
                answer = answer[: self.config.max_explanation_tokens] + [end_id]
                ids = ids + answer
                labels += answer
            rows.append(ids)
            label_rows.append(labels)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels_tensor = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (ids, labels) in enumerate(zip(rows, label_rows, strict=True)):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
            labels_tensor[i, : len(labels)] = torch.tensor(labels)
        return Batch(
            input_ids,
            mask,
            torch.tensor(prompt_last, dtype=torch.long),
            labels_tensor if answers is not None else None,
        )

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Residual scores ``(B,)`` and, with labels, the mean token NLL of each answer."""
        device = self.device
        # The vocabulary projection is a fifth of the model's FLOPs per token: compute logits
        # only at the positions that predict an answer token (none when only scoring).
        if batch.labels is None:
            keep: int | torch.Tensor = 1
        else:
            keep = torch.nonzero((batch.labels[:, 1:] != -100).any(dim=0)).flatten()
        output = self.lm(
            input_ids=batch.input_ids.to(device),
            attention_mask=batch.attention_mask.to(device),
            output_hidden_states=True,
            use_cache=False,
            logits_to_keep=keep.to(device) if isinstance(keep, torch.Tensor) else keep,
        )
        hidden = output.hidden_states[-1]
        rows = torch.arange(hidden.shape[0], device=device)
        # The head's own dtype: float32 when trained (under bf16 autocast), half when a caller
        # converted the whole model.
        last = hidden[rows, batch.prompt_last.to(device)].to(self.head.proj.weight.dtype)
        residual: torch.Tensor = self.head(last)
        if batch.labels is None:
            return residual, None
        logits = output.logits.float()
        targets = batch.labels[:, 1:][:, keep].to(device)
        nll = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=-100,
            reduction="none",
        ).view(targets.shape)
        counted = (targets != -100).sum(dim=1).clamp(min=1)
        return residual, nll.sum(dim=1) / counted

    @torch.no_grad()
    def score(self, features: Sequence[ItemFeatures], batch_size: int = 32) -> np.ndarray:
        """Predicted ``log(1 + next count)`` of each item: prior + residual."""
        self.eval()
        results = []
        for start in range(0, len(features), batch_size):
            chunk = features[start : start + batch_size]
            residual, _ = self.forward(self.batch_of(self.prompt_ids(chunk)))
            prior = torch.tensor([prior_log_count(f, self.config.prior) for f in chunk])
            results.append((prior + residual.float().cpu()).clamp(min=0.0).numpy())
        return np.concatenate(results) if results else np.zeros(0)

    @torch.no_grad()
    def explain(
        self, features: Sequence[ItemFeatures], scores: Sequence[float], batch_size: int = 16
    ) -> list[str]:
        """Greedy explanations of ``scores``, each opening with the forced forecast sentence."""
        self.eval()
        texts: list[str] = []
        for start in range(0, len(features), batch_size):
            chunk = features[start : start + batch_size]
            forced = [
                forecast_sentence(f, float(s))
                for f, s in zip(chunk, scores[start : start + batch_size], strict=True)
            ]
            generated = self.generate_from_ids(self.prompt_ids(chunk, forced))
            texts += [
                complete_sentences(opening + text)
                for opening, text in zip(forced, generated, strict=True)
            ]
        return texts

    def generate(self, prompts: Sequence[str]) -> list[str]:
        """Greedy continuation of each prompt (left-padded batch), up to ``<|im_end|>``."""
        encoded = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        return self.generate_from_ids(encoded)

    def generate_from_ids(self, rows: Sequence[Sequence[int]]) -> list[str]:
        """Greedy continuation of each row of prompt ids (one left-padded batch)."""
        tokenizer = self.tokenizer
        pad = tokenizer.pad_token_id
        width = max(len(r) for r in rows)
        # Left padding, as tokenizer(..., padding=True) with padding_side="left" gives it.
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):
            input_ids[i, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
            mask[i, width - len(ids) :] = 1
        end_id = tokenizer.convert_tokens_to_ids(IM_END)
        output = self.lm.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=self.config.max_explanation_tokens,
            do_sample=False,
            eos_token_id=end_id,
            pad_token_id=pad,
        )
        new_tokens = output[:, width:]
        return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]
