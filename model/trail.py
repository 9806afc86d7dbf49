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

Torch, transformers and peft are imported by this module: only model code imports it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.explain import complete_sentences, forecast_sentence
from model.priors import prior_log_count
from model.prompts import chat_prompt
from schemas import ItemFeatures

ADAPTER_FORMAT = "trail-adapter@1"
HEAD_FILE = "score_head.pt"
CONFIG_FILE = "trail_config.json"


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
    def from_json(cls, data: dict[str, Any]) -> TrailConfig:
        if data.get("format") != ADAPTER_FORMAT:
            raise ValueError(
                f"adapter format {data.get('format')!r} is not {ADAPTER_FORMAT!r}: "
                "retrain the adapter with this version of TRAIL"
            )
        values = {k: v for k, v in data.items() if k != "format"}
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
    def load(cls, adapter_dir: Path, *, base_model: str | None = None) -> TrailModel:
        """Load a trained adapter folder (LoRA weights, score head, config)."""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from model.base import resolve_base_model

        adapter_dir = Path(adapter_dir)
        config_path = adapter_dir / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{adapter_dir} is not a TRAIL adapter: {CONFIG_FILE} is missing "
                "(train one with `trail train SNAPSHOTS --out DIR`)"
            )
        config = TrailConfig.from_json(json.loads(config_path.read_text()))
        source = resolve_base_model(base_model or config.base_model)
        tokenizer = AutoTokenizer.from_pretrained(source)
        lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        lm = PeftModel.from_pretrained(lm, str(adapter_dir))
        model = cls(lm, tokenizer, config)
        head_state = torch.load(adapter_dir / HEAD_FILE, map_location="cpu", weights_only=True)
        model.head.load_state_dict(head_state)
        model.eval()
        return model

    def save(self, adapter_dir: Path) -> None:
        adapter_dir = Path(adapter_dir)
        adapter_dir.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(str(adapter_dir))
        torch.save(self.head.state_dict(), adapter_dir / HEAD_FILE)
        (adapter_dir / CONFIG_FILE).write_text(json.dumps(self.config.to_json(), indent=2))

    @property
    def device(self) -> torch.device:
        return self.head.proj.weight.device

    # ------------------------------------------------------------------ text
    def prompt_text(self, features: ItemFeatures) -> str:
        return chat_prompt(self.tokenizer, features)

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
        end_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
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
        output = self.lm(
            input_ids=batch.input_ids.to(device),
            attention_mask=batch.attention_mask.to(device),
            output_hidden_states=True,
            use_cache=False,
        )
        hidden = output.hidden_states[-1]
        rows = torch.arange(hidden.shape[0], device=device)
        # The head's own dtype: float32 when trained (under bf16 autocast), half when a caller
        # converted the whole model.
        last = hidden[rows, batch.prompt_last.to(device)].to(self.head.proj.weight.dtype)
        residual: torch.Tensor = self.head(last)
        if batch.labels is None:
            return residual, None
        logits = output.logits[:, :-1].float()
        targets = batch.labels[:, 1:].to(device)
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
            batch = self.encode([self.prompt_text(f) for f in chunk])
            residual, _ = self.forward(batch)
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
            prompts = [
                self.prompt_text(f) + opening for f, opening in zip(chunk, forced, strict=True)
            ]
            generated = self.generate(prompts)
            texts += [
                complete_sentences(opening + text)
                for opening, text in zip(forced, generated, strict=True)
            ]
        return texts

    def generate(self, prompts: Sequence[str]) -> list[str]:
        """Greedy continuation of each prompt (left-padded batch), up to ``<|im_end|>``."""
        tokenizer = self.tokenizer
        tokenizer.padding_side = "left"
        encoded = tokenizer(
            list(prompts), add_special_tokens=False, return_tensors="pt", padding=True
        )
        end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        output = self.lm.generate(
            **encoded.to(self.device),
            max_new_tokens=self.config.max_explanation_tokens,
            do_sample=False,
            eos_token_id=end_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = output[:, encoded["input_ids"].shape[1] :]
        return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]
