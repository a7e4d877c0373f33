"""Combining m teachers' logits into the teacher probabilities of Eq. 14 (CSRec-M, CSRec-D).

Two ways, both offered because the paper and the authors' code differ:

- "mean_logits" (paper, Alg. 1-2 line "e_u = sum_k g_k(s_u) / m"): average the logits, then
  temper: softmax(e / T) with e = sum_k w_k z_k (w_k = 1/m by default).
- "mean_probs" (authors' code): temper each teacher, then average: sum_k w_k softmax(z_k / T),
  with weights such as [0.5, 0.5].

With m = 1 both equal the single teacher's softmax(z / T). The padding column gets probability 0.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from csrec.errors import CSRecError
from csrec.losses import tempered_softmax

ENSEMBLE_METHODS = ("mean_logits", "mean_probs")


def ensemble_weights(m: int, weights: Sequence[float] | None, dtype=torch.float32, device=None) -> torch.Tensor:
    """Checked weights [m]: uniform when None; otherwise m values >= 0 that sum to 1."""
    if m < 1:
        raise CSRecError(f"an ensemble needs at least one teacher (m >= 1), got m = {m}")
    if weights is None:
        return torch.full((m,), 1.0 / m, dtype=dtype, device=device)
    weights = [float(w) for w in weights]
    if len(weights) != m:
        raise CSRecError(f"ensemble weights: give one weight per teacher ({m}), got {len(weights)}")
    if any(not w >= 0 for w in weights) or not math.isclose(sum(weights), 1.0, abs_tol=1e-6):
        raise CSRecError(f"ensemble weights must be >= 0 and sum to 1, got {weights}")
    return torch.tensor(weights, dtype=dtype, device=device)


def ensemble_probs(logits: torch.Tensor | Sequence[torch.Tensor], temperature: float,
                   method: str = "mean_logits", weights: Sequence[float] | None = None) -> torch.Tensor:
    """logits: m teachers' logits, a list of [B, N] or a stacked [m, B, N] tensor; temperature T > 0;
    method "mean_logits" (paper) or "mean_probs" (reference); weights [m] (default uniform) ->
    teacher probabilities [B, N] (rows sum to 1, padding column 0), ready for `losses.soft_label`."""
    if method not in ENSEMBLE_METHODS:
        raise CSRecError(f"ensemble method must be one of {ENSEMBLE_METHODS}, got '{method}'")
    if not temperature > 0:
        raise CSRecError(f"temperature T must be > 0, got {temperature}")
    if not isinstance(logits, torch.Tensor):
        if len(logits) == 0:
            raise CSRecError("an ensemble needs at least one teacher (m >= 1), got none")
        logits = torch.stack(list(logits))  # [m, B, N]
    if logits.dim() != 3:
        raise ValueError(f"teacher logits must be stacked as [m, B, N], got shape {tuple(logits.shape)}")
    w = ensemble_weights(logits.size(0), weights, logits.dtype, logits.device).view(-1, 1, 1)  # [m, 1, 1]
    if method == "mean_logits":
        return tempered_softmax((w * logits).sum(dim=0), temperature)  # [B, N]
    return (w * tempered_softmax(logits, temperature)).sum(dim=0)  # [B, N]
