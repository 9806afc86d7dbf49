"""Training SASRec: binary cross-entropy of the next item against one sampled negative."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.sasrec.data import sample_negatives, tie_order, training_sequences, user_histories
from model.sasrec.network import SasRec, SasRecConfig
from streams.eventlog import EventLog


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
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
    items = tie_order(sorted(set(train.item_ids.tolist())))
    with torch_threads(config.threads):
        model = SasRec(items, config)
        histories = user_histories(train, model.item_index)
        inputs, targets, touched = training_sequences(histories, config.max_len)
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
                negatives = sample_negatives(
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
