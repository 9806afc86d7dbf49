"""The recency priors that TRAIL's score head corrects, per record and per frame.

A prior is a cheap estimate of the score head's label from the trend signals alone:
``log(1 + next-window count)`` for the count priors, ``log(1 + next-window returning users)``
for ``returning-users`` (this window's returning users: the recency rule on the label HR@10
counts). The score head predicts a residual on top of it, and the cascade blends that residual
into the ranker's scores, so both runtimes (PyTorch and ONNX) and the training loop
must compute exactly the same numbers: they all call this module, which imports no torch.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from schemas.records import ItemFeatures
from streams.trend.features import FeatureFrame

#: Prior names, as stored in an adapter's ``trail_config.json``.
PRIORS = ("ewma-1", "ewma-2", "ewma-4", "last-window", "linear-trend", "returning-users")


def prior_log_count(features: ItemFeatures, prior: str = "ewma-1") -> float:
    """``log1p`` of the prior's next-window count estimate for one item.

    >>> from model.tiny import synthetic_features
    >>> import random
    >>> f = synthetic_features(random.Random(0))
    >>> prior_log_count(f) == math.log1p(f.ew_1)
    True
    >>> prior_log_count(f, "linear-trend") == math.log1p(max(0.0, f.count + f.slope))
    True
    """
    if prior == "ewma-1":
        return math.log1p(features.ew_1)
    if prior == "ewma-2":
        return math.log1p(features.ew_2)
    if prior == "ewma-4":
        return math.log1p(features.ew_4)
    if prior == "last-window":
        return math.log1p(features.count)
    if prior == "linear-trend":
        return math.log1p(max(0.0, features.count + features.slope))
    if prior == "returning-users":
        return math.log1p(features.returning_users)
    raise ValueError(f"unknown prior {prior!r}: use one of {', '.join(PRIORS)}")


def prior_scores(features: FeatureFrame, prior: str = "ewma-1") -> npt.NDArray[np.float64]:
    """The same prior for every item of a frame at once (the cascade's cheap ranker)."""
    if prior in ("ewma-1", "ewma-2", "ewma-4"):
        return np.log1p(features.ew_at(float(prior.split("-")[1])))
    if prior == "last-window":
        return np.log1p(features.count)
    if prior == "linear-trend":
        return np.log1p(np.maximum(0.0, features.count + features.slope))
    if prior == "returning-users":
        return np.log1p(features.returning)
    raise ValueError(f"unknown prior {prior!r}: use one of {', '.join(PRIORS)}")
