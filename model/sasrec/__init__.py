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

Under the evaluation protocol (docs/architecture.md, "Evaluation protocol") SASRec is trained
once, on the events before the first ranking time (the start of the first judged window), so
that no judged window is ever seen in training. At each later ranking time the model reads the
user's events up to then (unseen items are dropped from the input: they have no embedding) and
ranks every item it knows, except the ones the user already touched. Items first seen after
training cannot be recommended at all: that is the model's honest cold-start cost.

Modules, as in nanoGPT: :mod:`~model.sasrec.network` (the configuration and the network),
:mod:`~model.sasrec.data` (event logs as left-padded index sequences, and the negatives),
:mod:`~model.sasrec.training` (:func:`train_sasrec`) and :mod:`~model.sasrec.ranking` (each
user's top items at a ranking time). Its report under the protocol, and ``python -m
streams.evaluation.sasrec DATASET --window 7d``, are :mod:`streams.evaluation.sasrec`'s.
"""

from model.sasrec.network import SasRec, SasRecConfig
from model.sasrec.ranking import NAME, VERSION, sasrec_rankings
from model.sasrec.training import train_sasrec

__all__ = [
    "NAME",
    "VERSION",
    "SasRec",
    "SasRecConfig",
    "sasrec_rankings",
    "train_sasrec",
]
