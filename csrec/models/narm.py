"""NARM (Li et al., CIKM 2017), built as RecBole builds it.

A GRU encodes the sequence; the global encoder's representation is the last real state h_t, the
local encoder attends over all real states with alpha_tj = v^T sigmoid(A1 h_j + A2 h_t) (NARM's
attention, no softmax) and c_local = sum_j alpha_tj h_j. The concatenation [c_local; c_global] goes
through dropout and NARM's bilinear decoder matrix B, which RecBole (and we) apply as a linear
projection to the embedding size, so that scores are tied to the item embedding.
CSRec paper 4.1.4: hidden 128, 1 layer, dropouts 0.25 (embedding) and 0.5 (context).

Every prefix at once (`encode_positions`): the prefix that ends at t has h_t as its global
representation and attends over h_0..h_t, so the attention becomes a [L, L] causal one, masked to
j <= t, in a single pass (O(L^2 H) per row, as the L prefixes cost when each is encoded alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from csrec.errors import CSRecError
from csrec.models.base import SequentialRecommender, gather_last


@dataclass(frozen=True)
class NARMConfig:
    embedding_size: int = 64  # item embedding and sequence representation size (scores are tied)
    hidden_size: int = 128  # GRU state size
    num_layers: int = 1  # stacked GRU layers
    embedding_dropout: float = 0.25  # dropout on the input item embeddings
    context_dropout: float = 0.5  # dropout on [c_local; c_global] before the projection B

    def __post_init__(self):
        for name in ("embedding_size", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise CSRecError(f"narm.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("embedding_dropout", "context_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise CSRecError(f"narm.{name} must be in [0, 1), got {getattr(self, name)}")


class NARM(SequentialRecommender):
    """GRU encoder with an attention over its states; padded positions get attention weight 0."""

    def __init__(self, n_items: int, max_len: int, config: NARMConfig = NARMConfig()):
        super().__init__(n_items, config.embedding_size)
        self.config = config
        hidden = config.hidden_size
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.gru = nn.GRU(config.embedding_size, hidden, config.num_layers, bias=False, batch_first=True)
        self.a1 = nn.Linear(hidden, hidden, bias=False)  # A1: applied to every state h_j
        self.a2 = nn.Linear(hidden, hidden, bias=False)  # A2: applied to the last state h_t
        self.v = nn.Linear(hidden, 1, bias=False)
        self.context_dropout = nn.Dropout(config.context_dropout)
        self.b = nn.Linear(2 * hidden, config.embedding_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # RecBole's initialisation: xavier normal for the embedding and every linear layer; the GRU
        # keeps PyTorch's default.
        for weight in (self.item_embedding.weight, self.a1.weight, self.a2.weight, self.v.weight, self.b.weight):
            nn.init.xavier_normal_(weight)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()  # padding row stays 0 (padding_idx gives it no gradient)

    def encode_positions(self, item_seq: torch.Tensor) -> torch.Tensor:
        x = self.embedding_dropout(self.item_embedding(item_seq))  # [B, L, E]
        states, _ = self.gru(x)  # [B, L, H]  h_t is c_global of the prefix ending at t
        length = item_seq.size(1)
        causal = torch.ones(length, length, dtype=torch.bool, device=item_seq.device).tril()  # [t, j]: j <= t
        keys, queries = self.a1(states), self.a2(states)  # [B, L, H] each
        alpha = self.v(torch.sigmoid(keys.unsqueeze(1) + queries.unsqueeze(2))).squeeze(3) * causal  # [B, t, j]
        local = torch.bmm(alpha, states)  # [B, L, H]  c_local of every prefix
        return self.b(self.context_dropout(torch.cat([local, states], dim=2)))  # [B, L, E]

    def encode(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.embedding_dropout(self.item_embedding(item_seq))  # [B, L, E]
        states, _ = self.gru(x)  # [B, L, H]
        last = gather_last(states, lengths)  # [B, H]  c_global = h_t
        # The padding that follows the real items is masked out of the attention: it would otherwise
        # add the GRU states of padding steps to c_local. v has no bias, so masking after v equals
        # RecBole's masking of sigmoid(...) before it.
        real = torch.arange(item_seq.size(1), device=item_seq.device) < lengths.unsqueeze(1)  # [B, L]
        alpha = self.v(torch.sigmoid(self.a1(states) + self.a2(last).unsqueeze(1))).squeeze(2) * real  # [B, L]
        local = torch.bmm(alpha.unsqueeze(1), states).squeeze(1)  # [B, H]  c_local = sum_j alpha_tj h_j
        context = self.context_dropout(torch.cat([local, last], dim=1))  # [B, 2H]
        return self.b(context)  # [B, E]
