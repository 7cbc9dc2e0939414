"""The language model: embedding → stacked recurrent layers → linear softmax.

Dropout acts on the non-recurrent connections (Zaremba et al., 2014): on the embedding's
output, between stacked layers (the layer's own ``dropout``) and on the last layer's output.
Embedding dropout (Gal & Ghahramani, 2016; AWD-LSTM's ``dropoute``) zeroes whole rows of the
embedding matrix for a batch — every occurrence of a dropped word — and scales the rest by
1 / (1 − p).  The recurrent connections' own regularisers are cell options.  With
``tie_weights`` the output layer reuses the embedding matrix (Press & Wolf, 2017).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from carousel import kernels
from carousel.layers import State, make_layer
from carousel.lm.config import LMConfig


class RNNLM(nn.Module):
    """Token ids (T, B) → logits (T, B, V) and the final recurrent state; or, given the
    targets (T, B), the mean cross-entropy in nats (the output layer and its loss fused on
    the CPU, :mod:`carousel.kernels.softmax`) and the state.

    Args:
        vocab_size: V, tokens in the vocabulary.
        cfg: the run's settings (``cell``, ``embed_size``, ``hidden_size``, ``num_layers``,
            ``dropout``, ``tie_weights``).
    """

    def __init__(self, vocab_size: int, cfg: LMConfig) -> None:
        super().__init__()
        E, H = cfg.embed, cfg.hidden_size
        self.embedding = nn.Embedding(vocab_size, E)
        self.drop = nn.Dropout(cfg.dropout)
        self.embed_dropout = cfg.embed_dropout
        between = cfg.dropout if cfg.num_layers > 1 else 0.0
        self.rnn = make_layer(
            cfg.cell, E, H, num_layers=cfg.num_layers, dropout=between, **cfg.cell_options()
        )
        self.decoder = nn.Linear(H, vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if cfg.tie_weights:
            self.decoder.weight = self.embedding.weight

    def embed(self, ids: Tensor) -> Tensor:
        """The embeddings of ``ids`` (T, B) → (T, B, E), with embedding dropout in training."""
        w, p = self.embedding.weight, self.embed_dropout
        if not (self.training and p > 0):
            return self.embedding(ids)
        keep = w.new_empty(w.size(0), 1).bernoulli_(1 - p) / (1 - p)  # (V, 1): one per word
        return nn.functional.embedding(ids, w * keep)

    def forward(
        self, ids: Tensor, state: State | None = None, targets: Tensor | None = None
    ) -> tuple[Tensor, State]:
        x = self.drop(self.embed(ids))  # (T, B, E)
        y, state = self.rnn(x, state)  # (T, B, H)
        y = self.drop(y)
        if targets is None:
            return self.decoder(y), state  # (T, B, V)
        y = y.reshape(-1, y.size(-1))  # (T·B, H)
        w, b = self.decoder.weight, self.decoder.bias
        fused = y.device.type == "cpu" and y.dtype in (torch.float32, torch.float64)
        if fused and kernels.available():
            from carousel.kernels.softmax import linear_cross_entropy

            return linear_cross_entropy(y, w, b, targets.reshape(-1)), state
        logits = nn.functional.linear(y, w, b).float()  # the softmax in float32
        return nn.functional.cross_entropy(logits, targets.reshape(-1)), state
