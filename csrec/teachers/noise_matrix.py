"""CSRec-T's learned noise matrix h = M N (Eq. 10-12), trained with the main teacher g1.

h(i, j) ~ P(i | j): the probability of observing item i when the user really preferred item j,
for the real items i, j in 1..n (the padding id 0 has no row or column). Its rank is d = 64
(the paper: "d ... fixed to 64"). The loss needs only log h(i, :) for each batch row's observed
item i (`log_rows`), never the n x n matrix.

Two parametrisations (`parametrization`):

- "stochastic" (default): M = softmax over the items of a free [n, d] matrix (column k is a
  distribution P(i | k)), N = softmax over the d factors of a free [d, n] matrix (column j is
  P(k | j)). Then every column of h = M N sums to 1, as P(i | j) must, and its rank is <= d.
  log h(i, :) = log(M[i] @ N). M's columns are mixed with the uniform distribution with weight
  1e-6, which floors h at 1e-6 / n: without it an underflowed h gives log 0 = -inf, and a nearly
  underflowed one a gradient 1 / h that overflows in the matrix product's backward.
- "reference" (the authors' code): log h(i, j) = log sigmoid((M N)[i, j]) - c_j - log n, where
  c_j is a running maximum over the rows seen so far of log sigmoid((M N)[:, j]) (a constant for
  autograd, updated in training mode; in eval mode the batch's rows count but are not stored).
  Since sum_i sigmoid(x_ij) <= n max_i sigmoid(x_ij), this h(i, j) is at most the
  column-normalised sigmoid whenever c_j has caught up with the column's current maximum, and the
  noise term is then an upper bound of the normalised one. It is a bound, not a normalisation;
  the exact column maximum would cost the full n x n product every step.
  Its limit carries no signal: c_j is a constant for autograd, so nothing holds a column's mass
  down, and the term's gradient, -P_g1(j | s) (1 - sigmoid((M N)[i, j])) on (M N)[i, j], raises
  every entry of every observed row. Training drives sigmoid(M N) to 1, c_j to 0 and h(i, j) to
  1 / n for all i, j: uniform. The term is then log n whatever P_g1 is (P_g1 sums to 1), and its
  gradient to the main teacher vanishes; it acts only while h is still far from uniform. (The
  noise term alone, n = 50, rank 8, Adam lr 1e-2: n h lies in [0.71, 1] at the start and in
  [0.999, 1] after 1,000 steps, the term at log n.) Use "stochastic" for a noise model that
  learns P(i | j).
  M and N are initialised with Xavier-uniform as there. (Our reading of the authors' code: the
  prior model that returns the column maximum is not in the version we could read, and the
  trainers/loss.py of commit 1152cec computes this term but leaves it out of the returned loss.)

Cost per batch, for n = 20,000 items, d = 64, B = 256, float32 (the same for both forms: the
work is one [B, d] x [d, n] product; only the O(n d) or O(B n) extras differ):

- parameters M and N: 2 n d = 2.56 M (10.2 MB), plus Adam's two moments.
- forward: 2 B d n = 0.66 GFLOP; stochastic adds O(n d) = 1.3 M exponentials (softmax of N, the
  normaliser of M, whose gradient then touches all of M); reference adds O(B n) for log sigmoid
  and the column maximum ([n], 80 kB).
- forward + backward: about 3 x 0.66 = 2.0 GFLOP.
- activations: [B, n] tensors of 20.5 MB each, two or three of them (product, log, padded
  output), plus softmax(N) [d, n] 5.1 MB for the stochastic form: about 50-70 MB.
- never built: the dense h, n^2 = 400 M entries (1.6 GB) and 2 n^2 d = 51 GFLOP.

Measured (`python benchmarks/noise_matrix_cost.py`, docs/PERFORMANCE.md): GRU4Rec on Yelp (20,033
items), batch 64, one thread: a main-teacher step costs 1.61x (stochastic) and 1.60x (reference)
one without the noise term, 3.25x a Base step; both forms cost the same.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from csrec.errors import CSRecError

PARAMETRIZATIONS = ("stochastic", "reference")

# Each factor distribution M[:, k] is mixed with the uniform one with this weight, so that
# h(i, j) >= UNIFORM_MIX / n: log h stays finite (>= -23.7 at n = 20,000) and its gradient 1 / h
# bounded (n / eps) however extreme the free parameters get. Columns still sum to 1, rank <= d.
UNIFORM_MIX = 1e-6

# Free logits start near 0, so h starts close to uniform (no prior knowledge of the noise) while
# the small random spread breaks the symmetry between the d factors.
STOCHASTIC_INIT_STD = 0.02


class NoiseMatrix(nn.Module):
    """h = M N of Eq. 11 over n_items real items with rank d (paper: 64)."""

    def __init__(self, n_items: int, rank: int = 64, parametrization: str = "stochastic"):
        super().__init__()
        if parametrization not in PARAMETRIZATIONS:
            raise CSRecError(f"noise parametrization must be one of {PARAMETRIZATIONS}, got '{parametrization}'")
        if n_items < 1 or rank < 1:
            raise CSRecError(f"the noise matrix needs n_items >= 1 and rank d >= 1, got {n_items} and {rank}")
        self.n_items, self.rank, self.parametrization = n_items, rank, parametrization
        self.M = nn.Parameter(torch.empty(n_items, rank))  # [n, d]; row i-1 is observed item i
        self.N = nn.Parameter(torch.empty(rank, n_items))  # [d, n]; column j-1 is true item j
        if parametrization == "stochastic":
            nn.init.normal_(self.M, std=STOCHASTIC_INIT_STD)
            nn.init.normal_(self.N, std=STOCHASTIC_INIT_STD)
        else:
            nn.init.xavier_uniform_(self.M)
            nn.init.xavier_uniform_(self.N)
            # Persistent: a resumed teacher keeps its bound. -inf: no row seen yet.
            self.register_buffer("column_max", torch.full((n_items,), -math.inf))

    def log_rows(self, observed: torch.Tensor) -> torch.Tensor:
        """observed [B] item ids in 1..n -> log h(i, :) [B, n + 1], column 0 (padding) = 0.

        Finite everywhere, so that P_g1 (exactly 0 on the padding column) times it is never NaN.
        In training mode the reference form also updates its running column maximum.
        """
        return F.pad(self._log_h(observed, update=self.training), (1, 0))  # [B, n + 1]

    @torch.no_grad()
    def dense(self) -> torch.Tensor:
        """The full h over the real items [n, n] (h[i-1, j-1] = h(i, j)). O(n^2): small catalogues only."""
        rows = torch.arange(1, self.n_items + 1, device=self.M.device)  # [n]
        return self._log_h(rows, update=False).exp()  # [n, n]

    def _log_h(self, observed: torch.Tensor, update: bool) -> torch.Tensor:
        rows = self.M[observed - 1]  # [B, d]
        if self.parametrization == "stochastic":
            return self._log_h_stochastic(rows)
        return self._log_h_reference(rows, update)

    def _log_h_stochastic(self, rows: torch.Tensor) -> torch.Tensor:
        m_rows = torch.exp(rows - torch.logsumexp(self.M, dim=0))  # [B, d]: P(i | k), softmax over items
        m_rows = (1.0 - UNIFORM_MIX) * m_rows + UNIFORM_MIX / self.n_items  # [B, d], >= eps / n
        n_cols = torch.softmax(self.N, dim=0)  # [d, n]: P(k | j), softmax over factors
        return torch.log(m_rows @ n_cols)  # [B, n]

    def _log_h_reference(self, rows: torch.Tensor, update: bool) -> torch.Tensor:
        log_sigmoid = F.logsigmoid(rows @ self.N)  # [B, n]
        with torch.no_grad():
            bound = torch.maximum(self.column_max, log_sigmoid.amax(dim=0))  # [n]
            if update:
                self.column_max.copy_(bound)
        return log_sigmoid - bound - math.log(self.n_items)  # [B, n]

    def extra_repr(self) -> str:
        return f"n_items={self.n_items}, rank={self.rank}, parametrization={self.parametrization}"
