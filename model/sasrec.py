"""SASRec (Kang & McAuley, ICDM 2018): the personalized reference of the evaluation protocol.

A faithful PyTorch version of "Self-Attentive Sequential Recommendation":

- input: the last ``n`` items of a user's sequence, left-padded with item 0; each position gets
  its item embedding (row 0 is the padding item, kept at zero) plus a learned positional
  embedding, then dropout;
- ``L`` self-attention blocks, each ``x + Dropout(SA(LayerNorm(x)))`` followed by
  ``x + Dropout(FFN(LayerNorm(x)))``, where SA is causal scaled dot-product attention
  (``softmax(Q K^T / sqrt(d)) V`` with ``Q, K, V = x W^Q, x W^K, x W^V``: position ``t`` sees
  positions ``<= t`` only) and FFN is point-wise ``ReLU(x W1 + b1) W2 + b2``; padded positions
  are zeroed after every block, and a final layer norm follows the last one;
- prediction: the relevance of item ``i`` after position ``t`` is ``F_t . M_i`` with the *shared*
  input item embedding ``M``;
- training: binary cross-entropy at every position, the true next item against one negative
  item sampled uniformly from the items the user never touched; Adam.

Under the protocol of DESIGN.md ("Evaluation protocol") SASRec is trained once, on the events
before the first ranking time (the start of the first judged window), so that no judged window
is ever seen in training. At each later ranking time the model reads the user's events up to
then (unseen items are dropped from the input: they have no embedding) and ranks every item it
knows, except the ones the user already touched. Items first seen after training cannot be
recommended at all: that is the model's honest cold-start cost.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from model.evaluation import KS, EvaluationReport, ScorerReport
from model.metrics import bootstrap_interval, build_targets, pair_metrics
from streams.datasets import EventLog, load_events
from streams.replay import EvaluationWindows, ReplaySummary
from streams.trend.features import TREND_CATEGORIES
from streams.trend.windows import parse_duration

NAME = "sasrec"
VERSION = "sasrec@1"

IntArray = npt.NDArray[np.int64]
_INTEGER_ID = re.compile(r"^[+-]?\d+$")
#: Users scored in one forward pass when ranking.
_RANK_BATCH = 256


@dataclass(frozen=True)
class SasRecConfig:
    """Hyper-parameters of SASRec and of its training.

    Attributes
    ----------
    hidden : int
        Embedding and hidden size ``d``.
    blocks : int
        Number of self-attention blocks.
    heads : int
        Attention heads (the paper uses one); ``hidden`` must be divisible by it.
    max_len : int
        Longest input sequence ``n``; longer histories keep their most recent ``n`` items.
    dropout : float
        Dropout rate on the embeddings, attention weights, FFN and residual branches.
    lr : float
        Adam learning rate.
    batch_size : int
        Training sequences per step.
    epochs : int
        Passes over the training users (one sequence each). 60 trained ML-1M in 5.2 minutes
        on one thread of a busy two-core machine, where two threads were four times slower;
        the loss was still falling slowly (0.53 after 30 epochs, 0.46 after 60).
    seed : int
        Seeds Python, NumPy and PyTorch: a run is reproducible on the same machine.
    threads : int
        PyTorch CPU threads while training and ranking (restored afterwards). Use 1 on a
        machine whose cores are already busy: threads that wait on each other cost more than
        they bring for a model this small.
    """

    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    max_len: int = 50
    dropout: float = 0.2
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 60
    seed: int = 0
    threads: int = 2


class CausalSelfAttention(nn.Module):
    """Scaled dot-product self-attention in which position ``t`` attends to ``<= t`` only."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        # The paper's SA(E) = Attention(E W^Q, E W^K, E W^V): plain projections, no output one.
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Attend over ``x`` (B, L, d); ``allowed`` (B, 1, L, L) is True where ``q`` may see
        ``k``."""
        batch, length, hidden = x.shape
        q, k, v = self.qkv(x).split(hidden, dim=2)
        # (B, L, d) -> (B, heads, L, d / heads)
        q, k, v = (
            t.view(batch, length, self.heads, hidden // self.heads).transpose(1, 2)
            for t in (q, k, v)
        )
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        return y.transpose(1, 2).reshape(batch, length, hidden)


class Block(nn.Module):
    """One SASRec block: causal self-attention, then a point-wise feed-forward network.

    Each sub-layer ``g`` is applied as ``x + Dropout(g(LayerNorm(x)))`` (the paper's Eq. 5).
    """

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_attention = nn.LayerNorm(hidden)
        self.attention = CausalSelfAttention(hidden, heads, dropout)
        self.norm_ffn = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm_attention(x), allowed))
        x = x + self.dropout(self.ffn(self.norm_ffn(x)))
        # Padded positions stay zero, as the padding item's embedding is (paper, Sec. III-A).
        return x * keep


class SasRec(nn.Module):
    """The SASRec network plus the item vocabulary it was trained on.

    Parameters
    ----------
    item_ids : Sequence[str]
        Known items in tie-break order (by id, numerically when every id is an integer);
        item ``item_ids[j]`` has index ``j + 1`` because index 0 is padding.
    config : SasRecConfig
        Sizes and dropout.

    Attributes
    ----------
    item_ids : list of str
        As given.
    item_index : dict of str to int
        Item id -> embedding row (1-based).
    train_events : int
        Events the model was trained on (set by :func:`train_sasrec`).
    final_loss : float
        Mean training loss of the last epoch (set by :func:`train_sasrec`).
    """

    def __init__(self, item_ids: Sequence[str], config: SasRecConfig) -> None:
        super().__init__()
        self.config = config
        self.item_ids = list(item_ids)
        self.item_index = {item: j + 1 for j, item in enumerate(self.item_ids)}
        self.train_events = 0
        self.final_loss = float("nan")
        d = config.hidden
        self.item_embedding = nn.Embedding(len(self.item_ids) + 1, d, padding_idx=0)
        self.position_embedding = nn.Embedding(config.max_len, d)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(d, config.heads, config.dropout) for _ in range(config.blocks)
        )
        self.final_norm = nn.LayerNorm(d)
        # Small embeddings (as in nanoGPT): the item table is also the output layer, and
        # N(0, 1) rows would start every logit far from zero.
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    @property
    def n_items(self) -> int:
        """Number of known items (padding excluded)."""
        return len(self.item_ids)

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        """Hidden state ``F_t`` of every position.

        Parameters
        ----------
        sequences : torch.Tensor
            (B, L) item indices, left-padded with 0, most recent last; ``L <= max_len``.

        Returns
        -------
        torch.Tensor
            (B, L, hidden); row ``t`` depends on positions ``<= t`` only.
        """
        batch, length = sequences.shape
        keep = (sequences != 0).unsqueeze(-1).to(self.item_embedding.weight.dtype)
        positions = torch.arange(length, device=sequences.device)
        x = self.item_embedding(sequences) + self.position_embedding(positions)
        x = self.embedding_dropout(x) * keep
        # Causal mask, and padded keys hidden as in the reference code. Each position may
        # always see itself, so that a padded query's softmax is never over an empty set
        # (its output is zeroed anyway).
        causal = torch.ones(length, length, dtype=torch.bool, device=sequences.device).tril()
        allowed = causal & (sequences != 0)[:, None, None, :]
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=sequences.device)
        for block in self.blocks:
            x = block(x, allowed, keep)
        return self.final_norm(x)

    def score_last(self, sequences: torch.Tensor) -> torch.Tensor:
        """Relevance of every item after the last position: (B, n_items + 1), column 0 is
        padding."""
        last = self(sequences)[:, -1, :]
        return last @ self.item_embedding.weight.T


# --------------------------------------------------------------------------- helpers


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Run with ``threads`` PyTorch CPU threads, then restore the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    np.random.seed(seed)  # for any library code that still draws from the global RNG
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _tie_order(item_ids: Sequence[str]) -> list[str]:
    """Item ids sorted as rankings break ties: numerically when every id is an integer."""
    if item_ids and all(_INTEGER_ID.match(item) for item in item_ids):
        return sorted(item_ids, key=lambda item: (int(item), item))
    return sorted(item_ids)


def _user_histories(
    log: EventLog, item_index: Mapping[str, int]
) -> dict[str, tuple[npt.NDArray[np.float64], IntArray]]:
    """Each user's event times and item indices in time order (index 0 = unknown item)."""
    log = log.sorted_by_time()
    codes = pd.Series(log.item_ids, dtype=object).map(item_index).fillna(0).to_numpy(dtype=np.int64)
    # A stable sort by user keeps each user's events in time order.
    order = np.argsort(log.user_ids, kind="stable")
    users = log.user_ids[order]
    times = np.asarray(log.timestamps)[order]
    codes = codes[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    stops = np.r_[starts[1:], len(users)]
    return {
        str(users[a]): (times[a:b], codes[a:b])
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True)
    }


def _left_pad(items: IntArray, length: int) -> IntArray:
    row = np.zeros(length, dtype=np.int64)
    if items.size:
        row[-items.size :] = items[-length:]
    return row


def _training_sequences(
    histories: Mapping[str, tuple[npt.NDArray[np.float64], IntArray]], max_len: int
) -> tuple[IntArray, IntArray, list[IntArray]]:
    """Inputs, next-item targets and touched items of every user with two or more events.

    As in the paper, a user contributes the most recent ``max_len + 1`` training items: inputs
    ``s_1 .. s_n`` and targets ``s_2 .. s_{n+1}``, both left-padded.
    """
    inputs, targets, touched = [], [], []
    for user in sorted(histories):
        items = histories[user][1]
        if items.size < 2:
            continue
        recent = items[-(max_len + 1) :]
        inputs.append(_left_pad(recent[:-1], max_len))
        targets.append(_left_pad(recent[1:], max_len))
        touched.append(np.unique(items))
    empty = np.zeros((0, max_len), dtype=np.int64)
    return (
        np.stack(inputs) if inputs else empty,
        np.stack(targets) if targets else empty,
        touched,
    )


def _sample_negatives(
    rng: np.random.Generator, targets: IntArray, touched: Sequence[IntArray], n_items: int
) -> IntArray:
    """One negative per position, uniform over the items the user never touched (0 where the
    position is padding or the user touched every item)."""
    seen = np.zeros((len(touched), n_items + 1), dtype=bool)
    for row, items in enumerate(touched):
        seen[row, items] = True
    hopeless = seen[:, 1:].all(axis=1)  # no item left to be a negative
    rows = np.arange(len(touched))[:, None]
    draw = rng.integers(1, n_items + 1, size=targets.shape)
    clash = seen[rows, draw] & ~hopeless[:, None]
    while clash.any():  # rejection sampling: users rarely touch most of the catalog
        draw[clash] = rng.integers(1, n_items + 1, size=int(clash.sum()))
        clash = seen[rows, draw] & ~hopeless[:, None]
    draw[hopeless] = 0
    return np.where(targets != 0, draw, 0)


def _top_k(scores: npt.NDArray[np.float32], k: int) -> IntArray:
    """Indices of the ``k`` best finite scores, ties by index (= item id) ascending."""
    finite = int(np.isfinite(scores).sum())
    m = min(k, finite)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    best = np.argpartition(-scores, m - 1)[:m]
    # Everything tied with the m-th best competes, so ties are broken by index, not by chance.
    candidates = np.flatnonzero(scores >= scores[best].min())
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order[:m]]


# --------------------------------------------------------------------------- public API


def train_sasrec(
    log: EventLog, train_end_ts: float, config: SasRecConfig, progress: bool = True
) -> SasRec:
    """Train SASRec on the events of ``log`` before ``train_end_ts``.

    Parameters
    ----------
    log : EventLog
        Any event log; events at or after ``train_end_ts`` are ignored.
    train_end_ts : float
        Unix seconds: the start of the first judged window, so that no judged event is seen.
    config : SasRecConfig
        Model and training settings.
    progress : bool
        Show a progress bar per epoch with the running loss.

    Returns
    -------
    SasRec
        The trained model in eval mode. Its items are those seen before ``train_end_ts``.

    Raises
    ------
    ValueError
        No user has two events before ``train_end_ts``: there is nothing to learn from.
    """
    rng = _seed_everything(config.seed)
    train = log.sorted_by_time().slice_time(None, train_end_ts)
    items = _tie_order(sorted(set(train.item_ids.tolist())))
    with _torch_threads(config.threads):
        model = SasRec(items, config)
        histories = _user_histories(train, model.item_index)
        inputs, targets, touched = _training_sequences(histories, config.max_len)
        if not len(inputs):
            raise ValueError("no user has two events before train_end_ts: nothing to train on")
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.98))
        steps = math.ceil(len(inputs) / config.batch_size)
        model.train()
        for epoch in range(config.epochs):
            order = rng.permutation(len(inputs))
            bar = tqdm(
                range(steps),
                desc=f"sasrec epoch {epoch + 1}/{config.epochs}",
                disable=not progress,
                leave=False,
            )
            total = 0.0
            for step in bar:
                rows = order[step * config.batch_size : (step + 1) * config.batch_size]
                negatives = _sample_negatives(
                    rng, targets[rows], [touched[r] for r in rows], model.n_items
                )
                seq = torch.from_numpy(inputs[rows])
                pos = torch.from_numpy(targets[rows])
                neg = torch.from_numpy(negatives)

                hidden = model(seq)
                pos_logits = (hidden * model.item_embedding(pos)).sum(-1)
                neg_logits = (hidden * model.item_embedding(neg)).sum(-1)
                # Only real positions count; a negative may be missing (0) where the user
                # touched every item.
                is_pos, is_neg = pos != 0, neg != 0
                loss = (
                    F.binary_cross_entropy_with_logits(
                        pos_logits[is_pos], torch.ones_like(pos_logits[is_pos]), reduction="sum"
                    )
                    + F.binary_cross_entropy_with_logits(
                        neg_logits[is_neg], torch.zeros_like(neg_logits[is_neg]), reduction="sum"
                    )
                ) / is_pos.sum()

                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

                total += loss.item()
                bar.set_postfix(loss=f"{total / (step + 1):.4f}")
            bar.close()
            model.final_loss = total / steps
            if progress:
                tqdm.write(f"sasrec epoch {epoch + 1}/{config.epochs}: loss {model.final_loss:.4f}")
        model.eval()
    model.train_events = len(train)
    return model


@torch.no_grad()
def sasrec_rankings(
    model: SasRec,
    log: EventLog,
    window_ends: list[int],
    users_per_window: dict[int, list[str]],
    k: int = 20,
) -> dict[int, dict[str, list[str]]]:
    """Each user's top-``k`` items at each ranking time.

    Parameters
    ----------
    model : SasRec
        A trained model.
    log : EventLog
        The events; at ranking time ``end`` only those with ``timestamp < end`` are read.
    window_ends : list of int
        Ranking times (unix seconds).
    users_per_window : dict of int to list of str
        The users to rank for at each time.
    k : int
        Ranking depth.

    Returns
    -------
    dict of int to dict of str to list of str
        ``end -> user -> item ids``, best first, ties by item id ascending. Items the user
        touched before ``end`` and items the model does not know are never recommended; a
        user with no known item before ``end`` gets an empty ranking (nothing to condition on).
    """
    histories = _user_histories(log, model.item_index)
    max_len = model.config.max_len
    model.eval()
    rankings: dict[int, dict[str, list[str]]] = {}
    with _torch_threads(model.config.threads):
        for end in window_ends:
            per_user: dict[str, list[str]] = {}
            users = users_per_window.get(end, [])
            for start in range(0, len(users), _RANK_BATCH):
                batch, sequences, touched = [], [], []
                for user in users[start : start + _RANK_BATCH]:
                    times, codes = histories.get(user, (np.zeros(0), np.zeros(0, np.int64)))
                    known = codes[: np.searchsorted(times, end, side="left")]
                    known = known[known != 0]  # unseen items have no embedding
                    if not known.size:
                        per_user[user] = []
                        continue
                    batch.append(user)
                    sequences.append(_left_pad(known, max_len))
                    touched.append(known)
                if not batch:
                    continue
                scores = model.score_last(torch.from_numpy(np.stack(sequences))).numpy()
                scores[:, 0] = -np.inf  # padding is not an item
                for row, user in enumerate(batch):
                    scores[row, touched[row]] = -np.inf
                    top = _top_k(scores[row], k)
                    per_user[user] = [model.item_ids[j - 1] for j in top.tolist()]
            rankings[end] = per_user
    return rankings


def evaluate_sasrec(
    log: EventLog,
    window_seconds: int,
    test_windows: int = 8,
    config: SasRecConfig | None = None,
    progress: bool = True,
) -> ScorerReport:
    """Train SASRec and score it under the evaluation protocol of DESIGN.md.

    The windows and targets are exactly those of :func:`model.evaluation.evaluate`; the model
    is trained once on the events before the first ranking time, and each (user, window) pair
    is judged against the user's *own* ranking.

    Parameters
    ----------
    log : EventLog
        The event log.
    window_seconds : int
        Window length ``W``.
    test_windows : int
        Number of evaluated (judged) windows.
    config : SasRecConfig, optional
        Defaults to :class:`SasRecConfig()`.
    progress : bool
        Show training progress.

    Returns
    -------
    ScorerReport
        HR@K and NDCG@K for K in 5, 10, 20, 95% bootstrap intervals of HR@10 and NDCG@10,
        ``pairs``, HR@10 per window and a replay summary. Non-personalized diagnostics
        (Spearman, trend categories, cold/warm) are NaN. Extra keys: ``train_seconds``,
        ``rank_seconds``, ``train_events``, ``final_loss``, ``pairs_unranked`` (pairs whose user
        had no known item yet) and ``config``.
    """
    started = time.perf_counter()
    config = config or SasRecConfig()
    log = log.sorted_by_time()
    windows = EvaluationWindows.of(log.timestamps, window_seconds, test_windows)
    ends = [(w + 1) * window_seconds for w in range(windows.first, windows.last + 1)]
    targets = build_targets(log.user_ids, log.item_ids, log.timestamps, window_seconds, ends)

    model = train_sasrec(log, float(ends[0]), config, progress=progress)
    trained = time.perf_counter()
    users = {t.window_end: sorted(t.relevant) for t in targets}
    rankings = sasrec_rankings(model, log, ends, users, k=max(KS))
    ranked = time.perf_counter()

    hr: dict[int, list[float]] = {k: [] for k in KS}
    ndcg: dict[int, list[float]] = {k: [] for k in KS}
    pair_windows: list[int] = []
    unranked = 0
    for target in targets:
        for user in sorted(target.relevant):
            ranking = rankings[target.window_end][user]
            unranked += not ranking
            for k in KS:
                h, n = pair_metrics(ranking, target.relevant[user], k)
                hr[k].append(h)
                ndcg[k].append(n)
            pair_windows.append(target.window_end)
    hr_arrays = {k: np.asarray(v, dtype=np.float64) for k, v in hr.items()}
    ndcg_arrays = {k: np.asarray(v, dtype=np.float64) for k, v in ndcg.items()}
    window_of_pair = np.asarray(pair_windows, dtype=np.int64)

    nan = float("nan")
    metrics: dict[str, object] = {}
    for k in KS:
        metrics[f"HR@{k}"] = float(hr_arrays[k].mean()) if hr_arrays[k].size else nan
        metrics[f"NDCG@{k}"] = float(ndcg_arrays[k].mean()) if ndcg_arrays[k].size else nan
    metrics["HR@10_ci"] = list(bootstrap_interval(hr_arrays[10]))
    metrics["NDCG@10_ci"] = list(bootstrap_interval(ndcg_arrays[10]))
    metrics["pairs"] = int(hr_arrays[10].size)
    # A personalized model has no single score per item: the item-level diagnostics of the
    # trend scorers do not apply.
    metrics["spearman"] = nan
    for group in (*TREND_CATEGORIES, "cold", "warm"):
        metrics[f"HR@10_{group}"] = nan
    metrics["pairs_unranked"] = unranked
    metrics["train_seconds"] = trained - started
    metrics["rank_seconds"] = ranked - trained
    metrics["train_events"] = model.train_events
    metrics["final_loss"] = model.final_loss
    metrics["config"] = asdict(config)

    per_window = {
        int(end): float(hr_arrays[10][window_of_pair == end].mean())
        for end in ends
        if (window_of_pair == end).any()
    }
    usable_end = (windows.last_complete + 1) * window_seconds
    first_window = int(log.timestamps.min() // window_seconds)
    summary = ReplaySummary(
        events=int(np.searchsorted(log.timestamps, usable_end, side="left")),
        bad_rows=log.bad_row_count,
        late_events=0,  # nothing streams: the model reads the sorted log
        windows_closed=windows.last_complete - first_window + 1,
        windows_scored=len(windows),
        seconds=time.perf_counter() - started,
        items=model.n_items,
    )
    return ScorerReport(NAME, VERSION, metrics, per_window, summary)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m model.sasrec DATASET --window 7d``: train, evaluate and print the table."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("events", help="dataset name or event-log path")
    parser.add_argument("--window", default="7d", help="window length, e.g. 7d or 30d")
    parser.add_argument("--test-windows", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=SasRecConfig.epochs)
    parser.add_argument("--seed", type=int, default=SasRecConfig.seed)
    parser.add_argument("--threads", type=int, default=SasRecConfig.threads)
    args = parser.parse_args(argv)
    log = load_events(args.events)
    window = parse_duration(args.window)
    config = SasRecConfig(epochs=args.epochs, seed=args.seed, threads=args.threads)
    report = evaluate_sasrec(log, window, args.test_windows, config)
    windows = EvaluationWindows.of(log.sorted_by_time().timestamps, window, args.test_windows)
    print(EvaluationReport(log.name, window, windows, [report]).table())
    m = report.metrics
    print(
        f"{report.summary.describe()}\ntrain {m['train_seconds']:.1f} s, "
        f"rank {m['rank_seconds']:.1f} s, final loss {m['final_loss']:.4f}, "
        f"unranked pairs {m['pairs_unranked']}"
    )


if __name__ == "__main__":
    main()
