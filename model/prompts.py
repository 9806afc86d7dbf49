"""The model's input text: an item's metadata and trend signals, compact and deterministic.

The prompt is the model's whole view of an item, and its length sets the cost of every score
(one forward pass per changed item per window), so it is short: about 80-115 SmolLM2 tokens.
SmolLM2 tokenizes digits one by one, so numbers are rounded to about three significant digits.

Nothing in the prompt identifies an item except its title and categories: no item id, no
timestamp. The model can then only learn from what generalises (signals and metadata), never
memorise an id's history, and a new item is described exactly like an old one.

>>> from model.tiny import synthetic_features
>>> import random
>>> features = synthetic_features(random.Random(7), shape="rising", with_metadata=True)
>>> print(build_prompt(features))  # doctest: +ELLIPSIS
"..." [...]
per ..., first seen ..., trend rising
counts ..., this ..., total ...
...
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from model.explain import clean_title, period_name, read_signals
from model.explain.wording import plural, this_period
from schemas.records import ItemFeatures

#: The system turn of the chat prompt: what to do, in as few tokens as possible.
SYSTEM_PROMPT = "Forecast next-window popularity; explain it with the numbers."

#: At most this many categories are listed: the rest add tokens, not signal.
MAX_CATEGORIES = 2
#: At most this many recent counts (the newest) are listed.
MAX_RECENT = 6


def format_number(value: float, digits: int = 3) -> str:
    """``digits`` significant digits (whole numbers from 100 up), no exponent or trailing zeros.

    >>> [format_number(v) for v in (0, 3.0, 27.126, 1234.6, 0.04567, -2.5, 1e-9)]
    ['0', '3', '27.1', '1235', '0.0457', '-2.5', '0']
    >>> format_number(2.567, 2), format_number(0.0926, 2)
    ('2.6', '0.093')
    """
    if not math.isfinite(value):
        return "0"
    magnitude = abs(value)
    if magnitude < 5e-4:
        return "0"
    if magnitude >= 100:
        return str(round(value))
    decimals = max(0, digits - 1 - math.floor(math.log10(magnitude)))
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _signed(value: float) -> str:
    text = format_number(value, 2)
    return text if text.startswith("-") or text == "0" else f"+{text}"


def _window_name(seconds: int) -> str:
    name = period_name(seconds)
    if name != "window":
        return name
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds}s"


def build_prompt(features: ItemFeatures) -> str:
    """Render an item's signals as the model's prompt.

    Parameters
    ----------
    features
        The item's signals at a window's close (metadata included when known).

    Returns
    -------
    str
        Six short lines: item (title, categories); window length, age and trend category;
        recent counts (oldest first) and total; EW means, momentum and the direction the
        checker reads from momentum and slope; slope, traffic share and category momentum
        (with its direction); the window's distinct and returning users (what HR@10 counts)
        and the events of its last quarter (how late in the window they fell; the finer
        sub-window signals are the ranker's, and cost tokens here). Counts keep three significant
        digits, derived signals two (SmolLM2 spends a token per digit). The same features
        always give the same string.

    Examples
    --------
    >>> from schemas.records import ItemFeatures
    >>> f = ItemFeatures(item_id="1", window_end=604800, window_seconds=604800, count=45.0,
    ...     total=300.0, recent_counts=(10, 12, 15, 20, 30, 45), ew_1=35.0, ew_2=28.0,
    ...     ew_4=20.0, ew_8=13.0, momentum=2.57, slope=6.8, accel=1.0, burstiness=0.1,
    ...     age_windows=20, share=0.004, category_momentum=1.4, trend="rising",
    ...     title="Toy Story (1995)", categories=("Animation", "Comedy"), users=40.0,
    ...     returning_users=31.0, last_quarter=14.0, return_rate=0.35)
    >>> print(build_prompt(f))
    "Toy Story (1995)" [Animation, Comedy]
    per week, first seen 20 weeks ago, trend rising
    counts 10 12 15 20 30, this week 45, total 300
    EW h1/h4/h8 35/20/13, momentum 2.6x, direction rising
    slope +6.8, share 0.4%, genre momentum 1.4x (rising)
    users 40 (31 returning), last quarter 14

    An item without a usual level (too young, or under one event a window before this one)
    shows no ratio at all, so the model has none to quote:

    >>> young = f.model_copy(update={"age_windows": 2})
    >>> print(build_prompt(young).splitlines()[1:4])  # doctest: +NORMALIZE_WHITESPACE
    ['per week, first seen 2 weeks ago, trend rising', 'counts 10 12 15 20 30, this week 45,
    total 300', 'EW h1/h4/h8 35/20/13, no usual level, direction rising']
    """
    title = clean_title(features.title)
    item = f'"{title}"' if title is not None else "untitled item"
    categories = [" ".join(c.split())[:30] for c in features.categories if c.strip()]
    if categories:
        item += " [" + ", ".join(categories[:MAX_CATEGORIES]) + "]"
    # The newest count is the window's own and is spelled out as such: the explanation says
    # "N events this week", and picking the last of a list is where the model miscounted.
    before = features.recent_counts[-MAX_RECENT:-1]
    counts = f"counts {' '.join(format_number(c) for c in before)}, " if before else ""
    # Ages and "this week" in the verbalizer's words ("window" for a length with no name).
    period = period_name(features.window_seconds)
    age = features.age_windows
    # The age in the explanation's own words, so "first seen this week" (age 0) and "first
    # seen 1 week ago" cannot be told apart only by a digit.
    seen = (
        f"first seen {this_period(period)}" if age == 0 else f"first seen {plural(age, period)} ago"
    )
    # h2 is left out: between h1 and h4 it adds tokens, not information.
    ew = (features.ew_1, features.ew_4, features.ew_8)
    # The rounded ratios cannot show which side of the checker's thresholds a value lies on
    # (1.1x may be 1.14 or 1.16), so the directions the checker reads are spelled out.
    sig = read_signals(features)
    # Momentum is a ratio to the item's usual level; where the checker says there is none
    # (baseline_level), the number would only invite a false "at 1.1x its usual level".
    level = (
        f"momentum {format_number(features.momentum, 2)}x"
        if sig.ratio_meaningful
        else "no usual level"
    )
    signals = f"slope {_signed(features.slope)}, share {format_number(features.share * 100, 2)}%"
    if features.category_momentum is not None:
        signals += f", genre momentum {format_number(features.category_momentum, 2)}x"
        if sig.category is not None:
            signals += f" ({sig.category})"
    return "\n".join(
        (
            item,
            f"per {_window_name(features.window_seconds)}, {seen}, trend {features.trend}",
            f"{counts}{this_period(period)} {format_number(features.count)}, "
            f"total {format_number(features.total)}",
            f"EW h1/h4/h8 {'/'.join(format_number(v, 2) for v in ew)}, {level}, "
            f"direction {sig.direction}",
            signals,
            f"users {format_number(features.users)} ({format_number(features.returning_users)} "
            f"returning), last quarter {format_number(features.last_quarter)}",
        )
    )


def chat_messages(features: ItemFeatures, explanation: str | None = None) -> list[dict[str, str]]:
    """The chat turns for one item: system instruction, prompt, and optionally the answer.

    >>> from model.tiny import synthetic_features
    >>> import random
    >>> [m["role"] for m in chat_messages(synthetic_features(random.Random(0)), "Rising.")]
    ['system', 'user', 'assistant']
    """
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": build_prompt(features)},
    ]
    if explanation is not None:
        messages.append({"role": "assistant", "content": explanation})
    return messages


def chat_prompt(tokenizer: Any, features: ItemFeatures) -> str:
    """The prompt wrapped in the tokenizer's chat template, ending where the answer starts.

    Parameters
    ----------
    tokenizer
        A transformers tokenizer with a chat template (SmolLM2's ChatML, or the tiny test
        tokenizer's copy of it).
    features
        The item's signals.

    Returns
    -------
    str
        Text to tokenize (without adding special tokens again): system turn, user turn with
        :func:`build_prompt`, and the opening of the assistant turn.
    """
    text = tokenizer.apply_chat_template(
        chat_messages(features), tokenize=False, add_generation_prompt=True
    )
    return str(text)


# --------------------------------------------------------------------------------------------
# Batched tokenization: the chat template rendered once, its pieces tokenized once

#: Stand-ins for the user turn when the chat template is rendered once to find its pieces.
#: Two different ones: a template that does anything to the content but paste it is caught.
_PROBES = ("\x00trail-probe-one\x00", "\x00trail-probe-two\x00")

#: Tokenizes a batch of texts without adding special tokens: one list of ids per text.
EncodeBatch = Callable[[Sequence[str]], list[list[int]]]


@dataclass(frozen=True)
class ChatPieces:
    """The chat prompt around the user turn: ``prefix + build_prompt(f) + suffix``.

    ``prefix`` holds the system turn and the opening of the user turn, ``suffix`` the end of
    the user turn and the opening of the assistant's; both are the same for every item.
    """

    prefix: str
    suffix: str

    def wrap(self, content: str) -> str:
        return self.prefix + content + self.suffix

    def to_json(self) -> dict[str, str]:
        return {"prefix": self.prefix, "suffix": self.suffix}

    @classmethod
    def from_json(cls, data: Any) -> ChatPieces:
        if not (
            isinstance(data, dict)
            and isinstance(data.get("prefix"), str)
            and isinstance(data.get("suffix"), str)
        ):
            raise ValueError("chat pieces need a string prefix and suffix")
        return cls(prefix=data["prefix"], suffix=data["suffix"])


def chat_pieces(tokenizer: Any) -> ChatPieces | None:
    """The pieces of ``tokenizer``'s chat template around the user turn, rendered once.

    Returns ``None`` when the template does not simply paste the user's text between two
    fixed pieces (it would change with the content), and then :func:`chat_prompt` must be
    rendered per item. SmolLM2's ChatML gives ``("<|im_start|>system\\n...<|im_end|>\\n"
    "<|im_start|>user\\n", "<|im_end|>\\n<|im_start|>assistant\\n")``.
    """
    rendered = []
    for probe in _PROBES:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": probe},
        ]
        text = str(
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )
        if text.count(probe) != 1:
            return None
        rendered.append(text.split(probe))
    (prefix, suffix), other = rendered
    if other != [prefix, suffix]:
        return None
    return ChatPieces(prefix=prefix, suffix=suffix)


class PromptEncoder:
    """Token ids of many prompts at once, with the template's pieces tokenized once.

    The ids are exactly those of tokenizing :func:`chat_prompt`'s text (what the adapter was
    trained on): at construction the encoder checks, on ``samples``, that tokenizing the
    prompt body alone and joining it to the pieces' ids gives the same ids as tokenizing the
    whole text (true for byte-level BPE when the pieces end and start at pre-token boundaries,
    as ChatML's do). Where it does not hold, whole texts are tokenized, still in one batch.

    Parameters
    ----------
    pieces
        The template's pieces (:func:`chat_pieces`).
    encode_batch
        The tokenizer: texts to ids, no special tokens added.
    samples
        Items whose prompts (and forecast openings) check that joining is exact; the default
        draws a few synthetic ones of every shape and window length.
    """

    def __init__(
        self,
        pieces: ChatPieces,
        encode_batch: EncodeBatch,
        samples: Sequence[ItemFeatures] | None = None,
    ) -> None:
        self.pieces = pieces
        self._encode = encode_batch
        prefix_ids, suffix_ids = encode_batch([pieces.prefix, pieces.suffix])
        self.prefix_ids: list[int] = list(prefix_ids)
        self.suffix_ids: list[int] = list(suffix_ids)
        if samples is None:
            samples = _sample_features()
        self.joined = self._joins_exactly(samples)

    def _joins_exactly(self, samples: Sequence[ItemFeatures]) -> bool:
        from model.explain import forecast_sentence

        bodies = [build_prompt(f) for f in samples]
        openings = [forecast_sentence(f, math.log1p(f.ew_1)) for f in samples]
        whole = self._encode(
            [self.pieces.wrap(b) for b in bodies]
            + [self.pieces.wrap(b) + o for b, o in zip(bodies, openings, strict=True)]
        )
        joined = self._join(self._encode(bodies))
        joined += self.extend(joined, openings, exact=True)
        return [list(ids) for ids in whole] == joined

    def _join(self, bodies: Sequence[Sequence[int]]) -> list[list[int]]:
        return [self.prefix_ids + list(ids) + self.suffix_ids for ids in bodies]

    def texts(self, features: Sequence[ItemFeatures]) -> list[str]:
        """The prompts as text (:func:`chat_prompt` of each item, without a template render)."""
        return [self.pieces.wrap(build_prompt(f)) for f in features]

    def encode(self, features: Sequence[ItemFeatures]) -> list[list[int]]:
        """Each item's prompt ids: ``tokenize(chat_prompt(tokenizer, f))``, in one batch."""
        if not features:
            return []
        bodies = [build_prompt(f) for f in features]
        if self.joined:
            return self._join(self._encode(bodies))
        return [list(ids) for ids in self._encode([self.pieces.wrap(b) for b in bodies])]

    def extend(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[str],
        *,
        exact: bool | None = None,
    ) -> list[list[int]]:
        """Ids of each prompt followed by its continuation text (the forced forecast)."""
        joined = self.joined if exact is None else exact
        if joined:
            tails = self._encode(list(continuations))
            return [list(p) + list(t) for p, t in zip(prompts, tails, strict=True)]
        raise ValueError("extend needs exact joining; tokenize the whole texts instead")

    def encode_with(
        self, features: Sequence[ItemFeatures], continuations: Sequence[str]
    ) -> list[list[int]]:
        """Each item's prompt ids followed by those of its continuation text, in one batch."""
        if not features:
            return []
        if self.joined:
            return self.extend(self.encode(features), continuations)
        texts = [
            self.pieces.wrap(build_prompt(f)) + c
            for f, c in zip(features, continuations, strict=True)
        ]
        return [list(ids) for ids in self._encode(texts)]


def _sample_features() -> list[ItemFeatures]:
    import random

    from model.tiny import SHAPES, WINDOW_LENGTHS, synthetic_features

    rng = random.Random(20260)  # noqa: S311 - fixed check inputs, not security
    return [
        synthetic_features(
            rng,
            shape=SHAPES[i % len(SHAPES)],
            window_seconds=WINDOW_LENGTHS[i % len(WINDOW_LENGTHS)],
            with_metadata=i % 4 != 3,
        )
        for i in range(10)
    ]


def transformers_encoder(tokenizer: Any) -> PromptEncoder | None:
    """A :class:`PromptEncoder` over a transformers tokenizer (``None`` without pieces)."""
    pieces = chat_pieces(tokenizer)
    if pieces is None:
        return None

    def encode_batch(texts: Sequence[str]) -> list[list[int]]:
        return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    return PromptEncoder(pieces, encode_batch)
