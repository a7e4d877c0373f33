"""SASRec (Kang and McAuley, ICDM 2018), built as RecBole builds it.

Item embedding + learned position embedding -> layer norm -> dropout -> causal transformer layers,
read at the last real position. RecBole's layers are post-norm (BERT's):
x = LN(x + Dropout(Attention(x))), then x = LN(x + Dropout(W2 GELU(W1 x))), with dropout on the
attention weights too. CSRec paper 4.1.4: 2 layers, 2 heads, dropout 0.3, inner size 128; the
reference code uses dropout 0.35 (`dropout=0.35, attention_dropout=0.35` reproduces it).

Positions: right padding puts item t of a row at position t (RecBole). The S3Rec and ELECRec
authors left-pad, so the last item always sits at position max_len - 1; with learned absolute
position embeddings that is a different model of the same family, and their pretrained weights
expect it: `end_aligned_positions: 1` gives each row those positions (its real items at
max_len - n .. max_len - 1), without moving the items (the layouts and `gather_last` are unchanged).

Padding: RecBole masks padded keys and future positions. Our input is right-padded, so every
padded key lies after the last real position, and the causal mask alone keeps it out of every real
position; that lets attention run as one fused causal kernel (F.scaled_dot_product_attention).
The query, key and value projections are one fused linear layer (same initialisation per weight).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from csrec.errors import CSRecError
from csrec.models.base import SequentialRecommender


@dataclass(frozen=True)
class SASRecConfig:
    embedding_size: int = 64  # item/position embedding = transformer width = representation size
    num_layers: int = 2  # transformer layers
    num_heads: int = 2  # attention heads (must divide embedding_size)
    inner_size: int = 128  # width of the position-wise feed-forward layer
    dropout: float = 0.3  # on the input embeddings and on each sub-layer's output (reference: 0.35)
    attention_dropout: float = 0.3  # on the attention weights (reference: 0.35)
    layer_norm_eps: float = 1e-12  # RecBole's value
    initializer_range: float = 0.02  # std of the normal initialisation of linear and embedding weights
    # 0: item t of a row sits at position t (right padding, RecBole); 1: at max_len - n + t for a row
    # of n items, the positions of the S3Rec and ELECRec authors' left padding (the last item at max_len - 1)
    end_aligned_positions: int = 0

    def __post_init__(self):
        for name in ("embedding_size", "num_layers", "num_heads", "inner_size"):
            if getattr(self, name) < 1:
                raise CSRecError(f"sasrec.{name} must be >= 1, got {getattr(self, name)}")
        if self.embedding_size % self.num_heads:
            raise CSRecError(f"sasrec.num_heads ({self.num_heads}) must divide sasrec.embedding_size "
                             f"({self.embedding_size})")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise CSRecError(f"sasrec.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.layer_norm_eps <= 0 or self.initializer_range <= 0:
            raise CSRecError("sasrec.layer_norm_eps and sasrec.initializer_range must be > 0")


class TransformerLayer(nn.Module):
    """One post-norm causal transformer layer (RecBole's TransformerLayer): [B, L, H] -> [B, L, H]."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        width = config.embedding_size
        self.num_heads = config.num_heads
        self.attention_dropout = config.attention_dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.attention_out = nn.Linear(width, width)
        self.attention_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(width, config.inner_size)
        self.ffn_out = nn.Linear(config.inner_size, width)
        self.ffn_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        """Causal by default; with `real` [B, L] bool, bidirectional over the real keys (S3Rec's
        pretraining, csrec.s3rec)."""
        batch, length, width = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, width // self.num_heads)  # [B, L, 3, h, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, h, L, d]
        p = self.attention_dropout if self.training else 0.0
        mask = None if real is None else real[:, None, None, :]  # [B, 1, 1, L]: True keys take part
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                  is_causal=real is None)  # [B, h, L, d]
        attended = attended.transpose(1, 2).reshape(batch, length, width)  # [B, L, H]
        x = self.attention_norm(x + self.dropout(self.attention_out(attended)))  # [B, L, H]
        ffn = self.ffn_out(F.gelu(self.ffn_in(x)))  # [B, L, H]
        return self.ffn_norm(x + self.dropout(ffn))  # [B, L, H]


class SASRec(SequentialRecommender):
    """Causal self-attention next-item model with learned absolute positions (max_len of them)."""

    def __init__(self, n_items: int, max_len: int, config: SASRecConfig = SASRecConfig()):
        super().__init__(n_items, config.embedding_size)
        self.config = config
        self.max_len = max_len
        self.position_embedding = nn.Embedding(max_len, config.embedding_size)
        self.embedding_norm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([TransformerLayer(config) for _ in range(config.num_layers)])
        self.apply(self._init_weights)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()  # padding row stays 0 (padding_idx gives it no gradient)

    def _init_weights(self, module: nn.Module) -> None:
        # RecBole's initialisation: normal(0, 0.02) weights, zero biases, identity layer norms.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def positions(self, item_seq: torch.Tensor) -> torch.Tensor:
        """The position index of every column [B, L] (or [L] when not end-aligned): t, or with
        end_aligned_positions max_len - n + t for a row of n real items (padding columns clamped)."""
        column = torch.arange(item_seq.size(1), device=item_seq.device)  # [L]
        if not self.config.end_aligned_positions:
            return column
        n = (item_seq > 0).sum(1, keepdim=True)  # [B, 1] right-padded: the real items come first
        return (self.max_len - n + column).clamp(0, self.max_len - 1)  # [B, L]

    def encode_positions(self, item_seq: torch.Tensor, bidirectional: bool = False) -> torch.Tensor:
        """item_seq [B, L] -> the representation after each prefix [B, L, H] (position t sees items 0..t).

        bidirectional: every position sees every non-padding item of its row instead (S3Rec's
        pretraining encoder, as RecBole's `get_attention_mask(bidirectional=True)`)."""
        length = item_seq.size(1)
        if length > self.max_len:
            raise CSRecError(f"sasrec: input of length {length} but the model has {self.max_len} positions; "
                             f"truncate inputs to max_len or build the model with a larger max_len")
        x = self.item_embedding(item_seq) + self.position_embedding(self.positions(item_seq))  # [B, L, H]
        x = self.embedding_dropout(self.embedding_norm(x))  # [B, L, H]
        real = (item_seq > 0) if bidirectional else None  # [B, L]
        for layer in self.layers:
            x = layer(x, real)  # [B, L, H]
        return x
