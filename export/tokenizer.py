"""An export's tokenizer: ``tokenizers`` on ``tokenizer.json`` (no transformers), or the
``transformers`` tokenizer for exports without ``prompt.json``; the same small interface."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from model.files import ModelLoadError


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


class TransformersTokenizer:
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
