"""NextItNet (Yuan et al., WSDM 2019), built as RecBole and the CSRec reference build it.

A stack of residual blocks of causal dilated 1-D convolutions over the item embeddings, then a
dense layer, read at the last real position. CSRec paper 4.1.4: kernel 3, 5 residual blocks,
"dilations set to 1", L2 regularisation 5e-6.

RecBole's residual block (b): conv(dilation d) -> layer norm -> ReLU -> conv(dilation 2d) -> layer
norm -> ReLU, plus the block's input. With `dilation = 1` each block's second convolution therefore
has dilation 2, as in RecBole and the reference code with `dilations = [1]`.

Deviation: RecBole and the reference read the last column (`[:, -1]`), which is the last real item
only for left-padded input; our input is right-padded, so the output is read at each row's last
real position (`gather_last`). Convolutions are causal (left zero padding), so no later position,
and no trailing padding, reaches it. This is not the same function for a short row: the reference
left-pads the input once with item 0, and its padding positions then carry activations (layer
norm, ReLU, the residual) that every layer's kernel reads at the first real items; here every
layer sees zeros before the row's first item. Unmeasured; under `windows` (rows of at most max_len
items, most of them full) few rows are short.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from csrec.errors import CSRecError
from csrec.models.base import SequentialRecommender, gather_last


@dataclass(frozen=True)
class NextItNetConfig:
    embedding_size: int = 64  # item embedding = residual channels = representation size
    kernel_size: int = 3  # width of every causal convolution
    num_blocks: int = 5  # residual blocks
    dilation: int = 1  # first convolution of every block; the second uses 2 * dilation (RecBole's block b)
    reg_weight: float = 5e-6  # weight of the L2 penalty on the weights (see NextItNet.regularization)

    def __post_init__(self):
        for name in ("embedding_size", "kernel_size", "num_blocks", "dilation"):
            if getattr(self, name) < 1:
                raise CSRecError(f"nextitnet.{name} must be >= 1, got {getattr(self, name)}")
        if self.reg_weight < 0:
            raise CSRecError(f"nextitnet.reg_weight must be >= 0, got {self.reg_weight}")


class CausalConv(nn.Conv1d):
    """Dilated 1-D convolution whose output at position t sees positions <= t only: [B, L, C] -> [B, L, C].

    Computed as one matrix product over the k shifted copies of the input (left zero padding), in
    the [B, L, C] layout that layer norm needs: on CPU this is faster than F.conv1d's backward and
    needs no transposes. The weight is Conv1d's [C_out, C_in, k], with Conv1d's initialisation.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__(channels, channels, kernel_size, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, channels = x.shape
        k, d = self.kernel_size[0], self.dilation[0]
        padded = F.pad(x, (0, 0, (k - 1) * d, 0))  # [B, L + (k-1)d, C]
        taps = torch.stack([padded[:, i * d: i * d + length] for i in range(k)], dim=3)  # [B, L, C, k]
        return F.linear(taps.view(batch, length, channels * k), self.weight.view(self.out_channels, -1), self.bias)


class ResidualBlock(nn.Module):
    """RecBole's residual block (b): two causal convolutions, each followed by layer norm and ReLU."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.conv1 = CausalConv(channels, kernel_size, dilation)
        self.norm1 = nn.LayerNorm(channels, eps=1e-8)
        self.conv2 = CausalConv(channels, kernel_size, 2 * dilation)
        self.norm2 = nn.LayerNorm(channels, eps=1e-8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))  # [B, L, C]
        h = F.relu(self.norm2(self.conv2(h)))  # [B, L, C]
        return x + h  # [B, L, C]


class NextItNet(SequentialRecommender):
    """Convolutional next-item model with RecBole's L2 penalty on its weights."""

    def __init__(self, n_items: int, max_len: int, config: NextItNetConfig = NextItNetConfig()):
        super().__init__(n_items, config.embedding_size)
        self.config = config
        channels = config.embedding_size
        self.residual_blocks = nn.Sequential(
            *[ResidualBlock(channels, config.kernel_size, config.dilation) for _ in range(config.num_blocks)])
        self.final_layer = nn.Linear(channels, config.embedding_size)
        self._init_weights()

    def _init_weights(self) -> None:
        # RecBole's initialisation: embeddings uniform in +-sqrt(1 / n_items), the dense layer xavier
        # normal with bias 0.1; convolutions and layer norms keep PyTorch's defaults.
        bound = math.sqrt(1.0 / self.n_items)
        nn.init.uniform_(self.item_embedding.weight, -bound, bound)
        nn.init.xavier_normal_(self.final_layer.weight)
        nn.init.constant_(self.final_layer.bias, 0.1)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()  # padding row stays 0 (padding_idx gives it no gradient)

    def encode_positions(self, item_seq: torch.Tensor) -> torch.Tensor:
        """item_seq [B, L] -> the representation after each prefix [B, L, E] (position t sees items 0..t)."""
        x = self.item_embedding(item_seq)  # [B, L, C]
        return self.final_layer(self.residual_blocks(x))  # [B, L, E]

    def encode(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = gather_last(self.residual_blocks(self.item_embedding(item_seq)), lengths)  # [B, C]
        return self.final_layer(h)  # [B, E]: the dense layer on one position only

    def regularization(self) -> torch.Tensor | float:
        """RecBole's NextItNet penalty: reg_weight * (sum of the L2 norms, not squared, of the item
        embedding, the final layer's weight and every residual-block weight, layer norms included)."""
        if self.config.reg_weight == 0:
            return 0.0
        weights = [self.item_embedding.weight, self.final_layer.weight]
        weights += [p for name, p in self.residual_blocks.named_parameters() if name.endswith("weight")]
        return self.config.reg_weight * torch.stack([torch.linalg.vector_norm(w) for w in weights]).sum()
