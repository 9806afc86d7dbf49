"""The residual blend moves the ranking only as far as the LM has earned on judged windows."""

from __future__ import annotations

import numpy as np
import orjson

from model.cascade import ResidualBlend

RANKER = np.array([3.0, 2.0, 1.0, 0.5])
# The LM pushes the last item ("d") to the top.
LM_PICKS_D = np.array([0.0, 0.0, 0.0, 4.0])


def _judge(blend: ResidualBlend, end: int, returning: dict[str, float]) -> float:
    blend.remember(end, ["a", "b", "c", "d"], RANKER, LM_PICKS_D)
    blend.judge(end, returning)
    return blend.alpha


def test_one_lucky_window_among_many_does_not_move_the_ranking() -> None:
    blend = ResidualBlend(top=1)
    # d came back once in six windows; a, the ranker's pick, came back in the other five.
    outcomes = [{"d": 5.0}] + [{"a": 1.0}] * 5
    alphas = [_judge(blend, 100 * (k + 1), o) for k, o in enumerate(outcomes)]
    assert alphas == [0.0] * 6


def test_an_lm_that_keeps_being_right_moves_the_ranking() -> None:
    blend = ResidualBlend(top=1)
    alphas = [_judge(blend, 100 * (k + 1), {"d": 2.0 + k % 2}) for k in range(4)]
    assert alphas[0] == 0.0  # one window is never enough
    assert all(a > 0.0 for a in alphas[1:])


def test_a_window_never_judged_leaves_alpha_alone_and_the_state_round_trips() -> None:
    blend = ResidualBlend(top=1)
    for k in range(3):
        _judge(blend, 100 * (k + 1), {"d": 3.0})
    before = blend.alpha
    blend.judge(12345, {"a": 100.0})  # no window ended there: nothing remembered
    assert blend.alpha == before > 0.0
    copy = ResidualBlend(top=1)
    copy.load_state_dict(orjson.loads(orjson.dumps(blend.state_dict())))
    assert copy.alpha == blend.alpha
    assert _judge(copy, 400, {"a": 1.0}) == _judge(blend, 400, {"a": 1.0})
