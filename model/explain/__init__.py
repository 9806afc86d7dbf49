"""Explanations grounded in the trend signals: a verbalizer, a claim checker and a perturber.

All pure (no torch) and deterministic, in one module per piece:

* :func:`verbalize` turns an item's :class:`~schemas.records.ItemFeatures` (and optionally the
  predicted next-window score) into one or two short sentences that are *true* by
  construction. It is the source of the explanation targets the model is fine-tuned on; the
  ``variant`` argument varies the wording so the model learns content, not one template.
* :func:`extract_claims` parses any explanation (verbalized or generated) back into claims of
  five kinds: ``direction`` (rising / falling / steady, and the age words brand-new / new /
  established), ``magnitude`` (momentum multiplier, event count, forecast, traffic share),
  ``recency`` (age), ``category`` (the genre's own momentum) and ``item`` (a quoted title).
  :func:`check_explanation` scores the claims against the signals: faithfulness is the share
  of true claims, and a contradiction is a claim the signals (or the model's own score) refute.
* :func:`perturb` makes an unfaithful variant of an explanation (direction flipped, a number
  changed, or the item swapped): the negative of the contrastive explanation loss.

The rules that decide what is "rising" live in :func:`read_signals`, so the verbalizer and the
checker cannot drift apart.

Modules: :mod:`~model.explain.signals` (what the numbers say: :func:`read_signals`,
:func:`baseline_level` and the thresholds), :mod:`~model.explain.wording` (how numbers and
periods are written, shared by the verbalizer and the perturber so rounding is predictable),
:mod:`~model.explain.verbalizer`, :mod:`~model.explain.claims` (:func:`extract_claims`),
:mod:`~model.explain.checker` (:func:`check_explanation`), :mod:`~model.explain.perturbations`
(:func:`perturb`) and :mod:`~model.explain.sentences` (the forecast opening and the cut at the
last complete sentence). Everything public is importable from ``model.explain`` itself.

What a reader understands, and so what the checker accepts and the verbalizer says:

* **Ages.** "brand-new", "new this week", "first seen this week", "in its first week", "just
  launched" mean first seen in *this* window (``age_windows == 0``). "new", "a newcomer",
  "recently introduced" cover the first :data:`RECENT_MAX_AGE` windows (ages 0-3: the ages the
  prompt's trend category calls ``new``). "established" and "long-running" need
  :data:`ESTABLISHED_MIN_AGE` windows; between the two, neither word is true or refuted.
  "first seen N weeks ago" (in the window's own unit) is exact up to N = 3 and within
  :data:`TOLERANCE` beyond; other units are converted to windows.
* **Ratios.** "up 2.6x vs its long-run average", "at 2.6x its usual level" quote momentum, a
  ratio of EW means that start at zero when the item is first seen. Such a claim means what a
  reader thinks only when the item has a usual level (:func:`baseline_level`): at least
  :data:`RATIO_MIN_AGE` earlier windows, so the zero start moves momentum by less than
  :data:`TOLERANCE`, and a long-run level of at least :data:`RATIO_MIN_BASELINE` events per
  window before this one. Otherwise a ratio claim is false (a contradiction for an item first
  seen this window, which has no earlier level at all), and the verbalizer never makes one.
* **Repetition.** Two claims that state the same fact ("brand-new, first seen this week";
  "rising ... growing") count once: the repeat is flagged (:attr:`Verdict.repeated`, counted
  in :attr:`Faithfulness.repeated`) and left out of the claim, true-claim and contradiction
  counts, so padding neither raises nor lowers faithfulness. Claims on one topic that say
  different things ("new" and "first seen 2 weeks ago") are each judged. The verbalizer is
  stricter: it states each topic (age, direction, count, ratio, share, category, title) at
  most once, and never restates the forecast that :func:`forecast_sentence` opens with.

>>> from schemas.records import ItemFeatures
>>> f = ItemFeatures(item_id="1", window_end=604800, window_seconds=604800, count=45.0,
...     total=300.0, recent_counts=(10, 12, 15, 20, 30, 45), ew_1=35.0, ew_2=28.0, ew_4=20.0,
...     ew_8=13.0, momentum=2.57, slope=6.8, accel=1.0, burstiness=0.1, age_windows=20,
...     share=0.004, category_momentum=1.4, trend="rising", title="Toy Story (1995)",
...     categories=("Comedy",))
>>> text = verbalize(f, None, variant=0)
>>> print(text)  # doctest: +NORMALIZE_WHITESPACE
"Toy Story (1995)" is rising, up 2.6x vs its long-run average with 45 events this week.
Its category Comedy is also heating up.
>>> check_explanation(text, f, None).faithfulness
1.0
>>> check_explanation("It is falling.", f, None).contradictions
1
>>> newcomer = f.model_copy(update={"age_windows": 0})
>>> check_explanation("It is brand-new, at 2.6x its usual level.", newcomer, None).faithfulness
0.5
"""

from model.explain.checker import Faithfulness, Verdict, age_range, check_explanation, claim_fact
from model.explain.claims import Claim, ClaimKind, extract_claims
from model.explain.perturbations import PerturbKind, perturb
from model.explain.sentences import complete_sentences, forecast_sentence
from model.explain.signals import (
    ESTABLISHED_MIN_AGE,
    FLAT_SLOPE,
    LONG_HALF_LIFE,
    MOVE_RATIO,
    NEW_MAX_AGE,
    RATIO_MIN_AGE,
    RATIO_MIN_BASELINE,
    RECENT_MAX_AGE,
    STRONG_RATIO,
    TOLERANCE,
    Direction,
    Signals,
    baseline_level,
    period_name,
    read_signals,
)
from model.explain.verbalizer import verbalize
from model.explain.wording import (
    clean_title,
    format_count,
    format_percent,
    format_ratio,
    next_period,
    this_period,
)

__all__ = [
    "ESTABLISHED_MIN_AGE",
    "FLAT_SLOPE",
    "LONG_HALF_LIFE",
    "MOVE_RATIO",
    "NEW_MAX_AGE",
    "RATIO_MIN_AGE",
    "RATIO_MIN_BASELINE",
    "RECENT_MAX_AGE",
    "STRONG_RATIO",
    "TOLERANCE",
    "Claim",
    "ClaimKind",
    "Direction",
    "Faithfulness",
    "PerturbKind",
    "Signals",
    "Verdict",
    "age_range",
    "baseline_level",
    "check_explanation",
    "claim_fact",
    "clean_title",
    "complete_sentences",
    "extract_claims",
    "forecast_sentence",
    "format_count",
    "format_percent",
    "format_ratio",
    "next_period",
    "perturb",
    "period_name",
    "read_signals",
    "this_period",
    "verbalize",
]
