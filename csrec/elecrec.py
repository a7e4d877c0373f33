"""ELECRec (Chen, Li and Xiong, SIGIR 2022): the recommender trained as a discriminator.

A generator (a SASRec encoder) learns next-item prediction with full-softmax cross entropy. At every
real position of a training sequence the next item is replaced, with probability `sample_ratio`,
by an item drawn from the generator's softmax raised to `prob_power`; a position is "real" wherever
the item put there equals the true next item (also when the generator drew it). The discriminator
(a SASRec encoder plus a linear head) reads the sequence of next items so made and tells, at each
position, real from replaced with a sigmoid cross entropy. One Adam minimises
`gen_loss_weight * generator CE + dis_loss_weight * discriminator BCE`. The discriminator is the
recommender that is evaluated and stored: its representation at the last input position, scored
against its item embeddings (the project's model contract).

Facts from the authors' code (github.com/YChen1993/ELECRec, src/), which this follows:
- trainers.py `iteration`: the generator reads `input_ids`; the discriminator reads
  `sampled_neg_ids`, the *target* sequence (`target_pos`, the inputs shifted by one) with
  replacements, so at position t it sees next items 1..t (replaced or not) and judges item t.
- `sample_from_generator`: probabilities softmax(h E^T) over items 1..n (padding excluded), to the
  power `prob_power`, one `torch.multinomial` draw per position; then positions with
  rand < 1 - sample_ratio get the true item back; labels `pos_ids == sampled_neg_ids`.
- `discriminator_cross_entropy` ("affine" projection, the default; "full" dis_opt_version, the
  default): sigmoid(Linear(H, 1)(h)), BCE summed over target positions / their number.
- main.py: defaults sample_ratio 0.7, prob_power 1.0, gen_loss_weight 1.0, dis_loss_weight 0.5,
  model_shared_type embed_only; "embed_only" shares the item and position embeddings, "full" those
  and the transformer layers (the embedding layer norm and the head stay the discriminator's own).
  One Adam over both models (lr 1e-3); the multinomial draw passes no gradient, so the
  discriminator loss reaches the generator only through what they share.

Loss normalisation (`generator_normalisation`, an option with two values):
- "padded" (the authors', the default): their generator loss is `nn.CrossEntropyLoss()` over all
  B x max_len positions of a batch of B left-padded rows, padding included as a target of class 0.
  We sum the CE over the real positions and divide by B x max_len (`generator_loss` with
  `padded_positions`): the same weight on every real position. The padding positions' own terms
  (they learn to predict class 0, which they do at once) are left out: no real position reads a
  padding position in our right-padded, causal rows. On Beauty (user_loo, max_len 50) real
  positions are 11.7% of B x max_len, so the generator term is about 0.12x the per-target mean.
- "targets": both losses are means over the real positions (this project's first version); with
  `full` sharing the encoder is then trained mostly by the generator (ELECRec drifts towards
  CE-trained SASRec). Its keys are those of the runs made before the option existed.
The discriminator BCE is a mean over the real positions under both (the authors' sum / sum(istarget)).

Presets (`PRESETS`, `search: {elecrec: {preset: beauty}}` or `launch.py train --preset beauty`):
the authors' src/scripts/beauty.sh and yelp.sh. Their main.py also trains with dropout 0.5 (hidden
and attention), batches of 256 sequences, max_len 50, 300 epochs, selection on validation NDCG@20
with patience 40: the spec's train and model_overrides sections (experiments/seed_methods_beauty.yaml).

Deviations, each without effect on the method's definition:
- Rows are right-padded (real items first, position 0 the oldest item of a row) where the authors
  left-pad (the last item always at position max_len - 1). With learned absolute position
  embeddings this changes which embedding each item gets: a row of n items uses positions 0..n-1
  here, max_len-n..max_len-1 there. The model is the same family (SASRec's own code right-pads
  nothing either; RecBole right-pads); the effect on Beauty is not measured (docs/REPRODUCTION.md).
- The replacement sampler draws with softmax(prob_power * logits), the same distribution as the
  reference's normalised softmax(logits) ** prob_power without its underflow for large powers, by
  inverse CDF (torch.multinomial took 38 ms of a 48 ms Last.FM step on one CPU thread), and only
  where a replacement is kept (the reference draws everywhere, then overwrites).
- Padding stays padding in the discriminator's input (the reference puts generator draws in its
  left padding, which real positions attend to); our rows are right-padded and causal, so padding
  never reaches a real position.
- BCE from the head's logit (`binary_cross_entropy_with_logits`) rather than log(sigmoid + 1e-24).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from csrec import losses
from csrec.errors import CSRecError
from csrec.models import SASRec
from csrec.precision import float32

SHARED_TYPES = ("embed_only", "full")  # what the generator shares with the discriminator (main.py)
NORMALISATIONS = ("padded", "targets")  # the generator CE's denominator (module docstring)

# The authors' scripts (src/scripts/beauty.sh, yelp.sh): the grid point and the sharing type.
PRESETS = {
    "beauty": {"sample_ratio": 0.45, "prob_power": 1.0, "gen_loss_weight": 1.0, "dis_loss_weight": 0.6,
               "model_shared_type": "full", "generator_normalisation": "padded"},
    "yelp": {"sample_ratio": 0.8, "prob_power": 4.4, "gen_loss_weight": 1.0, "dis_loss_weight": 0.7,
             "model_shared_type": "embed_only", "generator_normalisation": "padded"},
}
SETTINGS = ("model_shared_type", "generator_normalisation")  # a preset's entries that are not grid parameters


def preset(name: str) -> dict:
    """The preset `name` (PRESETS), or a CSRecError naming the known ones."""
    if name not in PRESETS:
        raise CSRecError(f"elecrec preset {name!r} is unknown; known: {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def expand_preset(raw: dict) -> dict:
    """A spec's raw mapping with `search.elecrec.preset` replaced by the preset's values: each grid
    parameter the entry does not give becomes a one-point list, and `teachers` gets the sharing type
    and normalisation it does not give. The recorded spec.yaml so holds the values, not the name."""
    search = raw.get("search")
    entry = search.get("elecrec") if isinstance(search, dict) else None
    if not isinstance(entry, dict) or "preset" not in entry:
        return raw
    values = preset(str(entry["preset"]))
    search["elecrec"] = {k: [v] for k, v in values.items() if k not in SETTINGS} | {
        k: v for k, v in entry.items() if k != "preset"}
    teachers = raw.get("teachers") if isinstance(raw.get("teachers"), dict) else {}
    raw["teachers"] = {k: values[k] for k in SETTINGS} | teachers
    return raw


@float32
def generator_loss(logits: torch.Tensor, targets: torch.Tensor, padded_positions: int | None = None) -> torch.Tensor:
    """Full-softmax CE of the generator at the T real positions: logits [T, N] (column 0 padding),
    targets [T] in 1..N-1 -> scalar. padded_positions None: the mean over the T positions
    ("targets"); else the sum over them divided by padded_positions, the B x max_len positions of
    the batch's padded rows ("padded", the authors' nn.CrossEntropyLoss mean: module docstring)."""
    if padded_positions is None:
        return losses.cross_entropy(logits, targets)
    return F.cross_entropy(logits, targets, reduction="sum") / padded_positions


@torch.no_grad()
@float32  # sampling from a softmax over the catalogue: float32 under train.precision bf16 too
def replace_items(logits: torch.Tensor, targets: torch.Tensor, sample_ratio: float,
                  prob_power: float) -> torch.Tensor:
    """The discriminator's next items: at each of the T positions, with probability `sample_ratio`,
    an item drawn from softmax(prob_power * logits) over items 1..N-1, else the true item.

    logits [T, N] the generator's (column 0 padding, never drawn), targets [T] -> items [T] int64.
    A position keeps its true item with probability (1 - sample_ratio) + sample_ratio * p_gen(target).
    """
    items = targets.clone()  # [T]
    replaced = torch.rand(len(targets), device=targets.device) < sample_ratio  # [T]
    if replaced.any():
        scaled = logits[replaced].float() * prob_power  # [R, N]
        scaled[:, 0] = float("-inf")  # padding is never an item, whatever the power (0 included)
        items[replaced] = sample_rows(torch.softmax(scaled, dim=-1))  # [R]
    return items


def sample_rows(probs: torch.Tensor) -> torch.Tensor:
    """One draw per row of probs [R, N] (rows summing to 1) by inverse CDF: [R] int64. The same
    distribution as torch.multinomial(probs, 1), several times faster on a CPU (module docstring); a
    zero-probability column (padding) is never drawn."""
    cdf = probs.double().cumsum(dim=-1)  # [R, N]; float64: a large catalogue sums without drift
    u = torch.rand(len(probs), 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]  # [R, 1] in [0, total)
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=probs.size(1) - 1)


@float32
def discriminator_loss(scores: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Sigmoid BCE of real (label 1) vs replaced (label 0): the head's logits [T] and real [T] bool
    -> scalar, mean over the T real positions (trainers.py `discriminator_cross_entropy`)."""
    return F.binary_cross_entropy_with_logits(scores, real.to(scores.dtype))


class ELECRec(nn.Module):
    """The ELECRec objective: owns the generator and the discriminator head; the discriminator is
    the trained model (`fit`'s `model`), held here too so that a step can run it on the replaced
    items. Needs the `sequence` layout (every position of a row at once).

    ELECRec has no loss on the discriminator's logits on the real input (its discriminator never
    scores items while training): `uses_logits = False` tells `fit` not to compute them.
    """

    uses_logits = False  # csrec.batching.training_loss

    def __init__(self, discriminator: SASRec, sample_ratio: float = 0.7, prob_power: float = 1.0,
                 gen_loss_weight: float = 1.0, dis_loss_weight: float = 0.5, model_shared_type: str = "embed_only",
                 generator_normalisation: str = "padded"):
        super().__init__()
        if not isinstance(discriminator, SASRec):
            raise CSRecError(f"elecrec trains SASRec encoders as generator and discriminator, not "
                             f"{type(discriminator).__name__}; use the model sasrec")
        if model_shared_type not in SHARED_TYPES:
            raise CSRecError(f"elecrec model_shared_type must be one of {', '.join(SHARED_TYPES)}, "
                             f"got {model_shared_type!r}")
        if generator_normalisation not in NORMALISATIONS:
            raise CSRecError(f"elecrec generator_normalisation must be one of {', '.join(NORMALISATIONS)}, "
                             f"got {generator_normalisation!r}")
        self.generator_normalisation = generator_normalisation
        self.sample_ratio, self.prob_power = sample_ratio, prob_power
        self.gen_loss_weight, self.dis_loss_weight = gen_loss_weight, dis_loss_weight
        self.model_shared_type = model_shared_type
        self.discriminator = discriminator  # the same module as fit's model: its parameters are shared, not copied
        width = discriminator.config.embedding_size
        self.generator = SASRec(discriminator.n_items, discriminator.max_len, discriminator.config)
        self.generator.item_embedding = discriminator.item_embedding
        self.generator.position_embedding = discriminator.position_embedding
        if model_shared_type == "full":
            self.generator.layers = discriminator.layers
        self.head = nn.Linear(width, 1)  # the reference's dis_projection, initialised as its Linear layers
        nn.init.normal_(self.head.weight, std=discriminator.config.initializer_range)
        nn.init.zeros_(self.head.bias)

    def forward(self, logits: None, batch) -> torch.Tensor:
        return self.losses(batch)["total"]

    def losses(self, batch) -> dict[str, torch.Tensor]:
        """generator, discriminator and total loss of one batch (and the items the discriminator read)."""
        if batch.positions is None:
            raise CSRecError("elecrec trains on every position of a sequence at once: set train.layout: sequence "
                             "(launch.py train --layout sequence)")
        positions, targets = batch.positions, batch.targets  # [B, W] bool, [T]
        generated = self.generator.scores(self.generator.encode_positions(batch.item_seq)[positions])  # [T, N]
        padded = len(batch.item_seq) * self.discriminator.max_len if self.generator_normalisation == "padded" else None
        generator = generator_loss(generated, targets, padded)
        items = replace_items(generated.detach(), targets, self.sample_ratio, self.prob_power)  # [T]
        next_items = torch.zeros_like(batch.item_seq)  # [B, W]; padding stays 0
        next_items[positions] = items
        hidden = self.discriminator.encode_positions(next_items)[positions]  # [T, H]
        discriminator = discriminator_loss(self.head(hidden).squeeze(-1), items == targets)
        total = self.gen_loss_weight * generator + self.dis_loss_weight * discriminator
        return {"generator": generator, "discriminator": discriminator, "total": total, "items": items}
