"""SASRec: it learns sequences, its attention is causal, and it never trains on the future.

Everything uses tiny configurations and synthetic logs: seconds on a CPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from model.sasrec import SasRec, SasRecConfig, sasrec_rankings, train_sasrec
from model.sasrec.data import tie_order
from streams.evaluation.sasrec import evaluate_sasrec
from streams.eventlog import EventLog

TINY = SasRecConfig(
    hidden=32,
    blocks=2,
    heads=1,
    max_len=8,
    dropout=0.1,
    lr=5e-3,
    batch_size=32,
    epochs=40,
    threads=1,
)
CYCLE = 20
DAY = 86_400


def _cycle_log(users: int = 120, steps: int = 8, seed: int = 0) -> tuple[EventLog, float]:
    """Each user walks one of two fixed cycles over ``CYCLE`` items from a random start, one
    event per hour. The two cycles disagree on successors, so the next item depends on more
    than the last one. Returns the log and the time right after everyone's ``steps`` events.
    """
    rng = np.random.default_rng(seed)
    cycles = [np.arange(CYCLE), rng.permutation(CYCLE)]
    user_ids, item_ids, timestamps = [], [], []
    for user in range(users):
        cycle = cycles[user % 2]
        start = int(rng.integers(CYCLE))
        for step in range(steps + 1):  # the last step is the held-out next item
            user_ids.append(f"u{user}")
            item_ids.append(str(cycle[(start + step) % CYCLE]))
            timestamps.append(float(step * 3600 + user))
    log = EventLog(
        "cycles",
        np.array(user_ids, dtype=object),
        np.array(item_ids, dtype=object),
        np.array(timestamps),
    )
    return log, float(steps * 3600)


def test_learns_the_next_item_of_a_cycle() -> None:
    log, train_end = _cycle_log()
    model = train_sasrec(log, train_end, TINY, progress=False)
    users = sorted(set(log.user_ids.tolist()))
    rankings = sasrec_rankings(model, log, [int(train_end)], {int(train_end): users}, k=3)
    later = log.timestamps >= train_end
    truth = dict(zip(log.user_ids[later].tolist(), log.item_ids[later].tolist(), strict=True))
    hits = np.mean([truth[u] in rankings[int(train_end)][u] for u in users])
    # Random guessing among the 12 untouched items would hit 3/12 = 0.25 of the time.
    assert hits >= 0.8, hits


def test_rankings_skip_touched_items_and_break_ties_by_id() -> None:
    items = tie_order([str(i) for i in range(2, 12)])
    assert items[-3:] == ["9", "10", "11"]  # every id is an integer: numeric order
    assert tie_order(["b", "10", "9"]) == ["10", "9", "b"]
    model = SasRec(items, TINY)
    with torch.no_grad():
        model.item_embedding.weight.zero_()  # every score ties
    log = EventLog(
        "ties",
        np.array(["u", "u"], dtype=object),
        np.array(["3", "9"], dtype=object),
        np.array([1.0, 2.0]),
    )
    ranking = sasrec_rankings(model, log, [10], {10: ["u", "stranger"]}, k=4)[10]
    # Ties by id, without the touched items 3 and 9.
    assert ranking["u"] == ["2", "4", "5", "6"]
    assert ranking["stranger"] == []  # no history: nothing to condition on


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    model = SasRec([str(i) for i in range(30)], TINY).eval()
    sequence = torch.tensor([[0, 0, 5, 9, 2, 17, 4, 11]])
    changed = sequence.clone()
    changed[0, 5] = 23  # a different item at position 5
    with torch.no_grad():
        before, after = model(sequence), model(changed)
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_trains_only_on_events_before_the_cutoff() -> None:
    log, train_end = _cycle_log(users=40)
    # The future: a new item everyone touches, and a changed last step for every user.
    later = log.timestamps >= train_end
    future_items = np.where(later, "brand-new", log.item_ids).astype(object)
    extra = EventLog(
        "future",
        np.concatenate([log.user_ids, np.array(["newcomer"], dtype=object)]),
        np.concatenate([future_items, np.array(["brand-new"], dtype=object)]),
        np.concatenate([log.timestamps, [train_end + 10.0]]),
    )
    config = SasRecConfig(hidden=16, blocks=1, max_len=8, batch_size=16, epochs=2, threads=1)
    model = train_sasrec(log, train_end, config, progress=False)
    other = train_sasrec(extra, train_end, config, progress=False)
    assert "brand-new" not in other.item_index
    assert model.item_ids == other.item_ids
    for (name, a), (_, b) in zip(
        model.state_dict().items(), other.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
    end = int(train_end + 3600)
    users = sorted(set(extra.user_ids.tolist()))
    ranked = sasrec_rankings(other, extra, [end], {end: users}, k=CYCLE)[end]
    assert all("brand-new" not in items for items in ranked.values())
    assert ranked["newcomer"] == []  # only an unseen item in the history


def test_evaluate_fills_the_report() -> None:
    rng = np.random.default_rng(1)
    n = 1500
    log = EventLog(
        "random",
        np.array([f"u{i}" for i in rng.integers(0, 30, n)], dtype=object),
        np.array([str(i) for i in rng.integers(0, 40, n)], dtype=object),
        np.sort(rng.uniform(0, 12 * DAY, n)),
    )
    config = SasRecConfig(hidden=16, blocks=1, max_len=8, batch_size=16, epochs=1, threads=1)
    report = evaluate_sasrec(log, DAY, test_windows=3, config=config, progress=False)
    m = report.metrics
    assert report.name == "sasrec" and report.version == "sasrec@1"
    assert m["pairs"] > 0 and len(report.hr10_per_window) == 3
    for key in ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20"):
        assert 0.0 <= m[key] <= 1.0
    assert m["HR@5"] <= m["HR@10"] <= m["HR@20"]
    lo, hi = m["HR@10_ci"]
    assert lo <= m["HR@10"] <= hi
    assert math.isnan(m["spearman"]) and math.isnan(m["HR@10_new"])
    assert report.summary.windows_scored == 3
