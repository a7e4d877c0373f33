"""The contract every sequential model follows (RecBole's: encode, then full-catalogue scores).

Item ids run 1..n_items; id 0 is padding. Sequences are right-padded: the real items of a row
sit at positions 0..length-1 and padding follows, so the representation is read at length-1.

Every model is causal: its representation at position t depends on positions 0..t only. So one
pass over a sequence gives the representation of every prefix (`encode_positions`, [B, L, H]),
which the `sequence` training layout uses; `encode` reads one position per row ([B, H]).
"""

from __future__ import annotations

import abc

import torch
from torch import nn

# Score given to the padding column so that it is never ranked nor predicted. Finite (not -inf)
# so that soft-label losses see probability exactly 0 there without 0 * inf = NaN.
PADDING_SCORE = -1e4


class SequentialRecommender(nn.Module, abc.ABC):
    """Base class: subclasses implement `encode`; scores are tied to the input item embedding."""

    def __init__(self, n_items: int, embedding_size: int):
        super().__init__()
        self.n_items = n_items
        self.item_embedding = nn.Embedding(n_items + 1, embedding_size, padding_idx=0)

    @abc.abstractmethod
    def encode_positions(self, item_seq: torch.Tensor) -> torch.Tensor:
        """item_seq [B, L] int64 right-padded -> the representation after each prefix [B, L, H]:
        position t equals `encode` of the row cut to its first t + 1 items (t + 1 <= length)."""

    def encode(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """item_seq [B, L] int64 right-padded, lengths [B] int64 >= 1 -> sequence representation [B, H]."""
        return gather_last(self.encode_positions(item_seq), lengths)  # [B, H]

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, H] -> logits [B, n_items + 1] over the full catalogue; column 0 is padding."""
        logits = hidden @ self.item_embedding.weight.T  # [B, n_items + 1]
        logits[:, 0] = PADDING_SCORE
        return logits

    def regularization(self) -> torch.Tensor | float:
        """Extra penalty added to the training loss (NextItNet's L2 on its convolutions); 0 by default."""
        return 0.0

    def forward(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.scores(self.encode(item_seq, lengths))


def gather_last(output: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """output [B, L, H], lengths [B] -> output at each row's last real position [B, H]."""
    index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, output.size(-1))  # [B, 1, H]
    return output.gather(1, index).squeeze(1)
