"""SoftRec's popularity teacher (Cheng et al. 2021), the paper's main baseline.

The same logits for every input sequence: e_i = 5 (2 c_i / (c_max + c_min) - 1), with c_i the
number of training interactions of item i. The logits are symmetric (e_min = -e_max) and lie in
[-5, 5], reaching the bounds when the rarest item has count 0. Deviation from the authors' code, which counts
validation and test targets too (a leak): the caller passes training counts only
(`csrec.data.protocols.train_item_counts`).
"""

from __future__ import annotations

import numpy as np
import torch

from csrec.errors import CSRecError
from csrec.models.base import PADDING_SCORE

# SoftRec's scale: logits span [-5, 5], so softmax(e / T) is sharp at T = 1 and flat at T = 9.
POPULARITY_SCALE = 5.0


def popularity_logits(item_counts) -> torch.Tensor:
    """item_counts [N] (array or tensor indexed by item id; entry 0, padding, is ignored) ->
    teacher logits [N] float32, column 0 = PADDING_SCORE."""
    if isinstance(item_counts, torch.Tensor):
        counts = item_counts.detach().to("cpu", torch.float64)  # [N]
    else:
        counts = torch.as_tensor(np.asarray(item_counts), dtype=torch.float64)  # [N]
    if counts.dim() != 1 or counts.numel() < 2:
        raise CSRecError(f"item counts must be one count per item id (padding at 0), got shape {tuple(counts.shape)}")
    real = counts[1:]  # [N - 1]
    if (real < 0).any() or not torch.isfinite(real).all():
        raise CSRecError("item counts must be finite and >= 0; pass the training interaction counts")
    c_min, c_max = real.min(), real.max()
    if c_max + c_min <= 0:
        raise CSRecError("every item count is 0: the popularity teacher needs training interactions")
    logits = POPULARITY_SCALE * (2.0 * real / (c_max + c_min) - 1.0)  # [N - 1]
    padding = torch.full((1,), PADDING_SCORE, dtype=logits.dtype)
    return torch.cat([padding, logits]).to(torch.float32)  # [N]
