"""The SASRec network (Kang & McAuley, ICDM 2018) and its hyper-parameters.

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
  input item embedding ``M``.

Training is in :mod:`model.sasrec.training`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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
