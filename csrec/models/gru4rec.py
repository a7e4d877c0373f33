"""GRU4Rec (Hidasi et al., ICLR 2016; Tan et al., DLRS 2016), built as RecBole and the CSRec reference build it.

Item embedding -> dropout -> stacked GRU (no bias) -> dense hidden -> embedding size, read at the
last real position. CSRec paper 4.1.4: 2 GRU layers, dropout 0.5; reference code: embedding 64,
hidden 64, dense 64 -> 64.

As in RecBole and the reference code, the dropout acts on the input item embeddings only (nn.GRU's
own inter-layer dropout is not used). The dense layer is applied after gathering the last real
position rather than to every position: it is position-wise, so the result is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from csrec.errors import CSRecError
from csrec.models.base import SequentialRecommender, gather_last


@dataclass(frozen=True)
class GRU4RecConfig:
    embedding_size: int = 64  # item embedding and sequence representation size (scores are tied)
    hidden_size: int = 64  # GRU state size
    num_layers: int = 2  # stacked GRU layers
    dropout: float = 0.5  # dropout on the input item embeddings

    def __post_init__(self):
        for name in ("embedding_size", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise CSRecError(f"gru4rec.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise CSRecError(f"gru4rec.dropout must be in [0, 1), got {self.dropout}")


class GRU4Rec(SequentialRecommender):
    """Recurrent next-item model: the GRU state after the last real item is the representation.

    Right padding is exact without packing: a recurrent state at position t depends on positions
    0..t only, so the padding that follows the last real item never reaches it.
    """

    def __init__(self, n_items: int, max_len: int, config: GRU4RecConfig = GRU4RecConfig()):
        super().__init__(n_items, config.embedding_size)
        self.config = config
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.gru = nn.GRU(config.embedding_size, config.hidden_size, config.num_layers, bias=False, batch_first=True)
        self.dense = nn.Linear(config.hidden_size, config.embedding_size)
        self._init_weights()

    def _init_weights(self) -> None:
        # RecBole's initialisation: xavier normal embeddings, xavier uniform on the first GRU layer's
        # matrices; deeper GRU layers and the dense layer keep PyTorch's defaults (as in RecBole).
        nn.init.xavier_normal_(self.item_embedding.weight)
        nn.init.xavier_uniform_(self.gru.weight_ih_l0)
        nn.init.xavier_uniform_(self.gru.weight_hh_l0)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()  # padding row stays 0 (padding_idx gives it no gradient)

    def encode_positions(self, item_seq: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(self.embedding_dropout(self.item_embedding(item_seq)))  # [B, L, hidden]
        return self.dense(states)  # [B, L, E]

    def encode(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.embedding_dropout(self.item_embedding(item_seq))  # [B, L, E]
        states, _ = self.gru(x)  # [B, L, hidden]
        return self.dense(gather_last(states, lengths))  # [B, E]: the dense layer on one position only
