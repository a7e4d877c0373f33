"""Training objectives: what `fit` minimises for a Base model, a student and CSRec-T's main teacher.

An objective is an nn.Module called as `objective(logits [B, N], batch) -> scalar`, with one row per
(prefix, next item) pair in either training layout (csrec.batching); one that reads no logits sets
`uses_logits = False` and is passed None (csrec.batching.training_loss). The teachers are frozen, so
everything of theirs that depends only on the training pair is computed once, before training: each
teacher's representation of every training pair's input (`FrozenTeachers`; in the `sequence`
layout from one pass per sequence too). A
student step then costs the teachers one [B, m*H] x [m*H, N] product instead of m full forward
passes (the reference code's on-the-fly teachers). Teachers run in eval mode (no dropout), so the
cached soft labels are exactly what an on-the-fly eval-mode teacher would give. The objectives
compute in float32 whatever train.precision (csrec.precision): the teachers' products and
probabilities, the soft labels and the losses.
"""

from __future__ import annotations

import torch
from torch import nn

from csrec import losses
from csrec.data.samples import Samples, TrainSequences
from csrec.models.base import PADDING_SCORE, SequentialRecommender
from csrec.precision import float32
from csrec.teachers import NoiseMatrix, ensemble_probs, ensemble_weights, popularity_logits


class CrossEntropy(nn.Module):
    """Plain training (Base, and every teacher trained on one-hot labels)."""

    @float32
    def forward(self, logits: torch.Tensor, batch) -> torch.Tensor:
        return losses.cross_entropy(logits, batch.targets)


@torch.no_grad()
@float32  # the teachers' cached representations: float32 even if built under a student's autocast
def encode_samples(model: SequentialRecommender, samples: Samples | TrainSequences,
                   batch_size: int = 2048) -> torch.Tensor:
    """The representation of every training pair's input, in eval mode: [N, H] on the model's device,
    in pair order. Samples are encoded one by one; TrainSequences once per row, every position at once."""
    model.eval()
    device = next(model.parameters()).device
    item_seq = torch.as_tensor(samples.item_seq)
    if isinstance(samples, TrainSequences):
        real = torch.as_tensor(samples.targets) > 0  # [R, L]
        rows = max(1, batch_size // item_seq.size(1))
        parts = [model.encode_positions(item_seq[i:i + rows].to(device))[real[i:i + rows].to(device)]
                 for i in range(0, len(item_seq), rows)]
        return torch.cat(parts)  # [N, H]
    lengths = torch.as_tensor(samples.lengths)
    parts = [
        model.encode(item_seq[i:i + batch_size].to(device), lengths[i:i + batch_size].to(device))
        for i in range(0, len(samples), batch_size)
    ]
    return torch.cat(parts)  # [N, H]


class FrozenTeachers(nn.Module):
    """m trained teachers reduced to what a student step needs: cached sample representations and
    item embeddings. `logits(index)` gives each teacher's logits for training samples `index`."""

    def __init__(self, teachers: list[SequentialRecommender], train: Samples | TrainSequences):
        super().__init__()
        hidden = torch.stack([encode_samples(t, train).cpu() for t in teachers], dim=1)  # [N, m, H]
        items = torch.stack([t.item_embedding.weight.detach().cpu() for t in teachers])  # [m, N_items, H]
        # Not persistent: rebuilt from the teacher artifacts, kept out of the student's checkpoints.
        self.register_buffer("hidden", hidden, persistent=False)
        self.register_buffer("items", items, persistent=False)
        self.register_buffer("items_side_by_side", items.permute(1, 0, 2).flatten(1), persistent=False)  # [N, m*H]
        targets = train.targets[train.targets > 0] if isinstance(train, TrainSequences) else train.targets
        self.register_buffer("targets", torch.as_tensor(targets, dtype=torch.int64), persistent=False)  # [N]

    @property
    def m(self) -> int:
        return self.items.size(0)

    def logits(self, index: torch.Tensor) -> torch.Tensor:
        """index [B] -> teacher logits [m, B, N_items] (padding column at PADDING_SCORE)."""
        h = self.hidden[index]  # [B, m, H]
        z = torch.einsum("bmh,mnh->mbn", h, self.items)  # [m, B, N]
        z[:, :, 0] = PADDING_SCORE
        return z

    def mean_logits(self, index: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """The paper's ensemble e = mean_k z_k in one product, times `scale` (1 / T folded into the
        small [B, m*H] factor): [B, m*H] x [m*H, N] -> [B, N]."""
        h = self.hidden[index].flatten(1) * (scale / self.m)  # [B, m*H]
        e = h @ self.items_side_by_side.T  # [B, N]
        e[:, 0] = PADDING_SCORE
        return e

    def mean_logits_probs(self, index: torch.Tensor, temperature: float) -> torch.Tensor:
        """softmax(e / T) over the real items for the paper's ensemble: [B, N], padding column 0."""
        e = self.mean_logits(index, 1.0 / temperature)  # [B, N]
        e[:, 0] = float("-inf")  # exactly 0 there, whatever T
        return torch.softmax(e, dim=-1)

    def mean_logits_log_probs(self, index: torch.Tensor, temperature: float) -> torch.Tensor:
        """log softmax(e / T) over the real items for the paper's ensemble: [B, N], padding -inf."""
        return losses.tempered_log_softmax(self.mean_logits(index, 1.0 / temperature), 1.0)


# The teacher probabilities of every training pair are kept in memory when they take at most this
# much (float32): Last.FM's 48,307 pairs x 3,647 items take 705 MB; Yelp's do not fit and are
# computed at each step from the cached representations.
PROBABILITY_TABLE_BYTES = 1 << 30


class SoftLabelStudent(nn.Module):
    """The student loss of Eq. 15 against the soft labels of Eq. 14 from a teacher module.

    `teacher` is a FrozenTeachers (CSRec-M, -D, -T) or None with `popularity` logits (SoftRec).
    """

    def __init__(self, beta: float, temperature: float, kl_direction: str = "reference",
                 teacher: FrozenTeachers | None = None, popularity: torch.Tensor | None = None,
                 ensemble: str = "mean_logits", weights: list[float] | None = None):
        super().__init__()
        if (teacher is None) == (popularity is None):
            raise ValueError("give exactly one of teacher and popularity")
        if weights is not None and (teacher is None or ensemble != "mean_probs"):
            # mean_logits is the paper's plain mean (FrozenTeachers.mean_logits): weights would be ignored
            raise ValueError(f"ensemble weights {weights} apply to the mean_probs ensemble of teachers only")
        self.beta, self.temperature, self.kl_direction = beta, temperature, kl_direction
        self.teacher, self.ensemble, self.weights = teacher, ensemble, weights
        if popularity is not None:  # the same distribution for every input: computed once
            self.register_buffer("popularity_log_probs", losses.tempered_log_softmax(popularity, temperature),
                                 persistent=False)  # [N]
        # Computed once, at the first step, on the training device (prepare); not checkpointed.
        self.self_information = None  # [pairs] (or [N] per target item for SoftRec): sum_j r_j log r_j
        self.probability_table = None  # [pairs, N] teacher probabilities, when they fit

    def teacher_probs(self, index: torch.Tensor) -> torch.Tensor:
        """softmax(e / T) of the teacher module for training pairs `index`: [B, N]."""
        if self.teacher is None:
            return self.popularity_log_probs.exp().expand(len(index), -1)
        if self.teacher.m == 1 or self.ensemble == "mean_logits":
            return self.teacher.mean_logits_probs(index, self.temperature)
        return ensemble_probs(self.teacher.logits(index), self.temperature, "mean_probs", self.weights)

    def teacher_log_probs(self, index: torch.Tensor) -> torch.Tensor:
        """log softmax(e / T) of the teacher module, without underflow: [B, N], padding -inf."""
        if self.teacher is None:
            return self.popularity_log_probs.expand(len(index), -1)
        if self.teacher.m == 1 or self.ensemble == "mean_logits":
            return self.teacher.mean_logits_log_probs(index, self.temperature)
        w = ensemble_weights(self.teacher.m, self.weights, device=index.device).log().view(-1, 1, 1)  # [m, 1, 1]
        return torch.logsumexp(w + losses.tempered_log_softmax(self.teacher.logits(index), self.temperature), dim=0)

    @float32  # the teacher's products and probabilities too, not only the losses
    def forward(self, logits: torch.Tensor, batch) -> torch.Tensor:
        if self.kl_direction == "paper":
            return losses.student_loss_from_teacher(logits, batch.targets, None, self.beta, "paper",
                                                    teacher_log_probs=self.teacher_log_probs(batch.index))
        if self.self_information is None or self.self_information.device != batch.targets.device:
            self.prepare(batch.targets.device)
        if self.teacher is None:
            probs, information = self.teacher_probs(batch.index), self.self_information[batch.targets]
        else:
            table = self.probability_table
            probs = table[batch.index] if table is not None else self.teacher_probs(batch.index)  # [B, N]
            information = self.self_information[batch.index]  # [B]
        return losses.student_loss_from_teacher(logits, batch.targets, probs, self.beta, "reference",
                                                self_information=information)

    @torch.no_grad()
    @float32
    def prepare(self, device: torch.device) -> None:
        """What the frozen teacher module gives each training pair, once (at the first step, or here):
        sum_j r_j log r_j (per target item for SoftRec), whose entropy pass would otherwise cost as
        much as the rest of the soft-label work at every step; and, when they fit in
        PROBABILITY_TABLE_BYTES, the teacher probabilities themselves (the same values as computed
        at each step; a step then reads a row instead of a [B, m*H] x [m*H, N] product and a softmax)."""
        if self.teacher is None:  # one distribution p for every input: by target item, O(N)
            p = self.popularity_log_probs.exp().to(device)  # [N]
            items = torch.arange(len(p), device=device)  # [N]; item 0 (padding) is never a target
            entropy = torch.special.entr(p).sum().expand(len(p))  # [N]
            self.self_information = losses.soft_label_self_information(p.expand(len(p), -1), items, entropy)
            return
        targets = self.teacher.targets.to(device)  # [pairs]
        n_pairs, n_columns = len(targets), self.teacher.items.size(1)
        keep = n_pairs * n_columns * 4 <= PROBABILITY_TABLE_BYTES
        table = torch.empty(n_pairs, n_columns, device=device) if keep else None
        information = torch.empty(n_pairs, device=device)
        for chunk in torch.arange(n_pairs, device=device).split(1024):
            probs = self.teacher_probs(chunk)  # [C, N]
            information[chunk] = losses.soft_label_self_information(probs, targets[chunk])
            if keep:
                table[chunk] = probs
        # Set together, once complete: an error midway (out of memory) leaves nothing half-filled behind.
        self.probability_table, self.self_information = table, information


class TrainingLevelTeacher(nn.Module):
    """CSRec-T's main teacher objective l_t (Eq. 12-13): CE, the two KL terms against the frozen
    side teacher g2, and the learned noise matrix h = M N (trained with g1 in one optimiser)."""

    def __init__(self, side: FrozenTeachers, n_items: int, alpha: float, noise_term: bool = True,
                 noise_parametrization: str = "stochastic", rank: int = 64):
        super().__init__()
        self.side, self.alpha, self.noise_term = side, alpha, noise_term
        self.noise = NoiseMatrix(n_items, rank=rank, parametrization=noise_parametrization)

    @float32  # the side teacher's product and the noise matrix's rows too
    def forward(self, logits: torch.Tensor, batch) -> torch.Tensor:
        side_logits = self.side.logits(batch.index)[0]  # [B, N]
        log_rows = self.noise.log_rows(batch.targets) if self.noise_term else None
        return losses.training_level_loss(logits, side_logits, batch.targets, log_rows, self.alpha, self.noise_term)


def popularity_teacher(item_counts) -> torch.Tensor:
    """SoftRec's teacher logits from training counts only (see csrec.teachers.popularity)."""
    return popularity_logits(torch.as_tensor(item_counts))
