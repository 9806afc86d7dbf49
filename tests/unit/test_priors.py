"""The recency priors: one item at a time and a whole frame at once give the same numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_engine import config, run, synthetic_stream

from model.baselines import EWMA, LastWindow, LinearTrend
from model.priors import PRIORS, prior_log_count, prior_scores
from streams.engine import Engine


@pytest.fixture(scope="module")
def frames():
    ids, ts = synthetic_stream(seed=3)
    return [r.features for r in run(Engine(config(), LastWindow()), ids, ts, batch=500)]


@pytest.mark.parametrize("prior", PRIORS)
def test_frame_and_record_priors_agree(frames, prior: str) -> None:
    for frame in frames[-5:]:
        columnar = prior_scores(frame, prior)
        one_by_one = [prior_log_count(frame.record(i), prior) for i in range(len(columnar))]
        # Records carry rounded signals; the frame carries the exact ones.
        np.testing.assert_allclose(columnar, one_by_one, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("prior", "baseline"),
    [("ewma-2", EWMA(2)), ("last-window", LastWindow()), ("linear-trend", LinearTrend())],
)
def test_priors_rank_like_the_baselines_of_the_same_name(frames, prior, baseline) -> None:
    for frame in frames[-5:]:
        np.testing.assert_allclose(prior_scores(frame, prior), baseline.score(frame))


def test_an_unknown_prior_names_the_known_ones(frames) -> None:
    with pytest.raises(ValueError, match="linear-trend"):
        prior_scores(frames[-1], "ewma-3")
    with pytest.raises(ValueError, match="ewma-1"):
        prior_log_count(frames[-1].record(0), "median")
    assert math.isfinite(prior_log_count(frames[-1].record(0), "ewma-4"))
