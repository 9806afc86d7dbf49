"""The TRAIL model: a small causal LM with LoRA adapters, a score head, and its text format.

One sequence per item serves both tasks::

    <chat prompt: system + signals> | Forecast: <n> events next <period>. <explanation><|im_end|>

* The score head reads the hidden state of the prompt's last token and predicts a *residual*
  on top of a recency prior (:mod:`model.priors`, named in the adapter's config: the log of
  this window's returning users for the committed adapter, whose label is the next window's
  returning users). A zero-initialised head therefore starts exactly at the prior, and the LM
  only has to learn what the signals and metadata add to it; the cascade blends the residual
  into the ranker's scores.
* The explanation is generated after a forced forecast sentence that carries the model's own
  score, so the text explains *that* score. In training the forced number is the realised next
  count (teacher forcing); the LM loss covers only the explanation.

The adapter folder's files (LoRA weights, score head, config, manifest with the sha256 of
every file loading reads) are read and written by :mod:`model.adapter_files`.

Torch, transformers and peft are imported by this module: only model code imports it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from model.adapter_files import (
    ADAPTER_FIX,
    CONFIG_FILE,
    HEAD_FILE,
    LORA_CONFIG_FILE,
    LORA_FILE,
    TrailConfig,
    one_line,
    read_adapter_manifest,
    read_score_head,
    read_trail_config,
    write_adapter_manifest,
)
from model.base import IM_END
from model.explain import complete_sentences, forecast_sentence
from model.files import ModelLoadError
from model.priors import prior_log_count
from model.prompts import PromptEncoder, chat_prompt, transformers_encoder
from schemas import ItemFeatures


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
