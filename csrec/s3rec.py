"""S3Rec (Zhou et al., CIKM 2020): a SASRec pretrained with four self-supervised objectives on item
attributes and masked sequences, then fine-tuned for next-item prediction.

Pretraining (`S3RecPretraining`, `pretrain`) reads every prefix of each training part and encodes it
bidirectionally (every position sees every non-padding item of its row). With h_t the encoder's
output at position t, e_i an item's and a_j an attribute's embedding, each objective is a bilinear
score with its own matrix W (the authors' `aap_norm`, `mip_norm`, `map_norm`, `sp_norm`):
- AAP, associated attribute prediction: sigmoid BCE of (W_AAP h_t) . a_j against "item t has
  attribute j", over every attribute, at the positions left unmasked;
- MIP, masked item prediction: at masked positions, -log sigmoid(F(h_t, e_pos) - F(h_t, e_neg)) with
  F(h, e) = sigmoid((W_MIP h) . e), e_pos the masked item, e_neg an item not in the prefix;
- MAP, masked attribute prediction: AAP's BCE with W_MAP, at the masked positions;
- SP, segment prediction: a segment of the prefix is replaced by mask tokens; the context (that
  sequence's encoding at its last position) must score the segment itself (the prefix with every
  other position masked, encoded, last position) above a segment of the same length cut from the
  concatenation of all training parts: -log sigmoid(F(c, s_pos) - F(c, s_neg)), F with W_SP.
Total: aap_weight * AAP + mip_weight * MIP + map_weight * MAP + sp_weight * SP, one Adam.

Fine-tuning (csrec.jobs) starts the student SASRec from the pretrained encoder and item embeddings
(`student_state`); the pretraining heads and attribute embeddings are left behind, as in the
authors' run_finetune_full.py. Its objective (`teachers.s3rec_finetuning`, part of the key):
- "bce" (the authors', the default; `FineTuningBCE`): at every real position, with s the score of
  the next item and s' that of one negative drawn uniformly among the items outside the user's
  whole sequence (validation and test items included, as their `neg_sample(set(items))`),
  -log sigmoid(s) - log(1 - sigmoid(s')), averaged over the real positions (trainers.py
  `FinetuneTrainer.cross_entropy`); they select on validation NDCG@20 with patience 10
  (train.selection_metric, train.patience);
- "ce": full-softmax cross entropy over the catalogue (the project's objective; the first version's,
  whose keys it keeps).

Facts from the authors' code (RUCAIBox/CIKM2020-S3Rec: models.py `pretrain`, datasets.py
`PretrainDataset`, run_pretrain.py), which this follows:
- samples: every prefix input_ids[:i+1] of input_ids = seq[-(max_len+2):-2] (the training part's
  last max_len items); fresh masks and segments every epoch;
- masking: each item but the last is replaced by the mask token with probability mask_p, and the
  last item always is; the mask token is one more item id (item_size = max_item + 2, so the
  pretrained item embedding has one row more than the catalogue);
- negatives: MIP's drawn uniformly among items not in the prefix; SP's segment from a random start
  in the concatenation of all sequences; segment length uniform in 1..len // 2, start uniform;
- BCELoss(reduction="none") summed over positions (and attributes) and over the batch;
- defaults: aap 0.2, mip 1.0, map 1.0, sp 0.5, mask_p 0.2, pre_batch_size 100, lr 1e-3; the
  published checkpoints are from pretraining epoch 150 (Beauty) and 100 (Yelp); the script's
  pre_epochs is 300. RecBole's S3Rec page: aap 1.0, mip 0.2, map 1.0, sp 0.5, mask_ratio 0.2,
  pretrain_epochs 500 (its tuning range 50/100/150).

Cost (issue 22): a batch of prefixes is sampled at full width (max_len columns: the draws of the
padded computation), then by default (`pretrain(cut_batches=True)`) its rows are split by length
(`length_groups`) and each group is cut to its longest prefix (`cut`) before encoding. Every
objective is a sum over rows, attention masks the padded keys and a row's positions depend on its
length only, so the losses and gradients are the padded batch's (same masks, negatives and
segments; float rounding aside) over a fraction of the positions: on Beauty the mean prefix holds 7
items of 50. Dropout draws differ (other shapes), not their distribution. cut_batches=False
encodes every row at max_len as the authors do (the reference of benchmarks/s3rec_pretraining_cost.py).

Deviations, each without effect on what is optimised except where said:
- Rows are right-padded (real items first) as everywhere in this project, where the reference
  left-pads; the encoder reads the last real position where the reference reads column -1. With
  learned absolute position embeddings this does change the model: a prefix of n items uses
  positions 0..n-1 here, max_len-n..max_len-1 there. `model_overrides: sasrec:
  {end_aligned_positions: 1}` gives the authors' positions (needed to fine-tune their checkpoint,
  `authors_student_state`); the default keeps RecBole's. Effect on Beauty not yet measured.
- Each loss is divided by the number of rows in the batch (a per-prefix mean of the reference's
  sums): the same relative weights, and Adam's steps do not depend on a constant loss scale.
- AAP and MAP leave out attribute column 0 (padding: never an attribute, its embedding fixed at 0,
  so the reference's term there is the constant log 2); SP leaves out prefixes of one item (the
  reference gives them identical context and segments: the constant log 2).
- MIP's negatives are drawn from items 1..n (the reference's range also holds the mask token); SP's
  negative segments come from the training parts only (the reference's long sequence also holds
  the validation and test items, a leak into pretraining).
- BCE from the scores' logits (binary_cross_entropy_with_logits) rather than BCE of a sigmoid.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from csrec.batching import epoch_generator
from csrec.data.samples import SequenceData
from csrec.errors import NonFiniteLossError, first_line
from csrec.models import SASRec, SASRecConfig, gather_last
from csrec.precision import float32
from csrec.train import TrainConfig, resolve_device, save_atomic

OBJECTIVES = ("aap", "mip", "map", "sp")
# What one more length group costs, in padded positions (rows x width): an encoder pass over a group
# is some hundred small ops whatever its size. On one loaded CPU thread with Beauty's settings, 50 to
# 400 time within noise (benchmarks/s3rec_pretraining_cost.py --group-costs, docs/PERFORMANCE.md);
# the value changes the time only, never the losses.
GROUP_COST = 100
NEGATIVE_DRAWS = 64  # rejection rounds for MIP negatives; a prefix holding (almost) every item keeps its last draw


def attribute_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AAP / MAP: sigmoid BCE of logits [P, A] (one row per position, one column per attribute)
    against labels [P, A] bool, summed over positions and attributes."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="sum")


def pairwise_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """MIP / SP: -log sigmoid(sigmoid(positive) - sigmoid(negative)), scores [P] -> summed scalar
    (the authors' BCE of sigmoid(F(pos) - F(neg)) against 1, F = sigmoid of the bilinear score)."""
    return -F.logsigmoid(torch.sigmoid(positive) - torch.sigmoid(negative)).sum()


FINETUNING = ("bce", "ce")  # the fine-tuning objectives (module docstring)


@float32
def finetuning_bce(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """The authors' fine-tuning loss: scores of the next items positive [T] and of one negative each
    negative [T] -> mean over T of -log sigmoid(positive) - log(1 - sigmoid(negative))."""
    return (F.softplus(-positive) + F.softplus(negative)).mean()


class FineTuningBCE(nn.Module):
    """The authors' fine-tuning objective (module docstring): `fit`'s logits [T, N] of the T pairs,
    one negative per pair drawn outside the pair's whole sequence.

    sequences: every sequence of the data (item ids); pair_sequence [n_pairs]: the sequence of each
    training pair, indexed by the pair numbers of the batches (`Batch.index`)."""

    def __init__(self, sequences: list[np.ndarray], pair_sequence: np.ndarray, n_items: int):
        super().__init__()
        self.n_items = n_items
        lengths = np.array([len(x) for x in sequences], dtype=np.int64)
        owner = np.repeat(np.arange(len(sequences), dtype=np.int64), lengths)
        # (sequence, item) as one sorted int64 code: membership is a searchsorted, on any device
        codes = np.unique(owner * (n_items + 1) + np.concatenate(sequences).astype(np.int64))
        self.register_buffer("codes", torch.from_numpy(codes), persistent=False)  # [sum of lengths] sorted
        self.register_buffer("pair_sequence", torch.as_tensor(np.asarray(pair_sequence, np.int64)), persistent=False)

    def negatives(self, index: torch.Tensor) -> torch.Tensor:
        """One item per pair [T], uniform over 1..n_items outside the pair's sequence (rejection
        sampling, NEGATIVE_DRAWS rounds; a sequence holding almost every item keeps its last draw)."""
        base = self.pair_sequence[index] * (self.n_items + 1)  # [T]
        draws = torch.randint(1, self.n_items + 1, index.shape, device=index.device)  # [T]
        for _ in range(NEGATIVE_DRAWS):
            code = base + draws
            position = torch.searchsorted(self.codes, code).clamp_(max=len(self.codes) - 1)
            inside = self.codes[position] == code  # [T]
            if not inside.any():
                break
            draws = torch.where(inside, torch.randint(1, self.n_items + 1, index.shape, device=index.device), draws)
        return draws

    def forward(self, logits: torch.Tensor, batch) -> torch.Tensor:
        positive = logits.gather(1, batch.targets[:, None]).squeeze(1)  # [T]
        negative = logits.gather(1, self.negatives(batch.index)[:, None]).squeeze(1)  # [T]
        return finetuning_bce(positive.float(), negative.float())


def pair_sequences(train) -> np.ndarray:
    """The sequence of every training pair, in pair order: Samples -> sequence_index; TrainSequences
    -> each row's sequence repeated over its pairs (pairs are numbered row by row)."""
    if hasattr(train, "pair_index"):
        return np.repeat(np.asarray(train.sequence_index), np.asarray(train.lengths))
    return np.asarray(train.sequence_index)


@dataclass(frozen=True)
class PretrainingData:
    """Every prefix of each training part's last max_len items, and the training parts end to end."""

    prefixes: torch.Tensor  # [P, L] int64 right-padded
    lengths: torch.Tensor  # [P] int64 >= 1
    long_sequence: torch.Tensor  # [N] int64, where SP's negative segments are cut

    def __len__(self) -> int:
        return len(self.lengths)


def pretraining_data(data: SequenceData) -> PretrainingData:
    """The authors' PretrainDataset samples from the training parts seq[:-2] (module docstring)."""
    parts = [s[:-2] for s in data.sequences]
    kept = [p[-data.max_len:] for p in parts]  # [S] each of length n_s in 1..max_len
    n = np.array([len(p) for p in kept], dtype=np.int64)  # [S]
    flat = np.concatenate(kept).astype(np.int64)  # [sum n]
    offsets = np.concatenate([[0], np.cumsum(n)[:-1]])  # [S]
    sequence = np.repeat(np.arange(len(kept)), n)  # [P] the part each prefix comes from
    length = np.arange(len(sequence)) - np.repeat(offsets, n) + 1  # [P] 1..n_s
    column = np.arange(data.max_len)  # [L]
    real = column[None, :] < length[:, None]  # [P, L]
    padded = np.append(flat, 0)
    prefixes = padded[np.where(real, offsets[sequence][:, None] + column[None, :], len(flat))]  # [P, L]
    return PretrainingData(torch.from_numpy(prefixes), torch.from_numpy(length),
                           torch.from_numpy(np.concatenate(parts).astype(np.int64)))


@dataclass(frozen=True)
class PretrainingBatch:
    """One batch of prefixes with its masks and negatives (`sample_batch`), all [B, L] but lengths."""

    items: torch.Tensor  # the prefixes, right-padded
    lengths: torch.Tensor  # [B]
    masked_items: torch.Tensor  # items, with the mask token where masked (MIP, MAP, AAP)
    negative_items: torch.Tensor  # MIP's negative at each masked position (elsewhere the item itself)
    masked_segment: torch.Tensor  # items with the segment masked (SP's context)
    positive_segment: torch.Tensor  # the segment, every other real position masked
    negative_segment: torch.Tensor  # as positive_segment, its segment cut at random from the long sequence
    has_segment: torch.Tensor  # [B] bool: length >= 2 (SP needs a segment and a context)


def sample_batch(items: torch.Tensor, lengths: torch.Tensor, long_sequence: torch.Tensor, mask_item: int,
                 mask_ratio: float, generator: torch.Generator) -> PretrainingBatch:
    """Masks, MIP negatives and SP segments of the prefixes `items` [B, L] (module docstring); every
    draw from `generator`. Item ids run 1..mask_item - 1."""
    batch, width = items.shape
    column = torch.arange(width)  # [L]
    real = column < lengths[:, None]  # [B, L]
    last = column == (lengths - 1)[:, None]  # [B, L]
    masked = real & ((torch.rand(batch, width, generator=generator) < mask_ratio) | last)  # [B, L]
    masked_items = torch.where(masked, mask_item, items)
    negative_items = torch.where(masked, _negatives(items, mask_item - 1, generator), items)
    half = torch.div(lengths, 2, rounding_mode="floor").clamp(min=1)  # [B]
    segment_length = 1 + (torch.rand(batch, generator=generator) * half).long()  # [B] in 1..len // 2
    start = (torch.rand(batch, generator=generator) * (lengths - segment_length + 1)).long()  # [B]
    negative_start = (torch.rand(batch, generator=generator) * (len(long_sequence) - segment_length + 1)).long()
    inside = (column >= start[:, None]) & (column < (start + segment_length)[:, None])  # [B, L]
    source = (negative_start[:, None] + column - start[:, None]).clamp(0, len(long_sequence) - 1)  # [B, L]
    return PretrainingBatch(
        items=items, lengths=lengths, masked_items=masked_items, negative_items=negative_items,
        masked_segment=torch.where(inside, mask_item, items),
        positive_segment=torch.where(real & ~inside, mask_item, items),
        negative_segment=torch.where(inside, long_sequence[source], torch.where(real, mask_item, 0)),
        has_segment=lengths >= 2)


def length_groups(lengths: torch.Tensor, group_cost: float = GROUP_COST) -> list[torch.Tensor]:
    """The rows of a batch (lengths [B], on the host) in groups of similar length, each group's row
    indices [B_g] ascending by length: the split of the sorted lengths that minimises the positions
    encoded, sum over groups of rows x longest length, plus `group_cost` per group (exact, dynamic
    programming over the distinct lengths; rows of one length are never split)."""
    order = torch.argsort(lengths, stable=True)  # [B]
    values, counts = torch.unique_consecutive(lengths[order], return_counts=True)
    values, ends = values.tolist(), torch.cumsum(counts, 0).tolist()  # [D]: group k ends at row ends[k]
    best, first = [0.0], [0]  # best[k]: cost of the shortest k distinct lengths; first[k]: its last group's start
    for k in range(1, len(values) + 1):
        options = [best[i] + (ends[k - 1] - (ends[i - 1] if i else 0)) * values[k - 1] + group_cost
                   for i in range(k)]
        first.append(min(range(k), key=options.__getitem__))
        best.append(options[first[-1]])
    groups, k = [], len(values)
    while k:
        start = ends[first[k] - 1] if first[k] else 0
        groups.append(order[start:ends[k - 1]])
        k = first[k]
    return groups[::-1]


def cut(batch: PretrainingBatch, rows: torch.Tensor | None = None) -> PretrainingBatch:
    """The rows `rows` of `batch` (all by default) cut to their longest prefix: the columns dropped
    hold padding only in every [B, L] field, and a row's positions depend on its length, not on the
    width (SASRec.positions: t, or max_len - n + t as under the authors' left padding)."""
    lengths = batch.lengths if rows is None else batch.lengths[rows]
    width = int(lengths.max())

    def take(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor if rows is None else tensor[rows]
        return tensor[:, :width] if tensor.dim() == 2 else tensor

    return PretrainingBatch(**{f.name: take(getattr(batch, f.name)) for f in dataclasses.fields(batch)})


def _negatives(items: torch.Tensor, n_items: int, generator: torch.Generator) -> torch.Tensor:
    """[B, L] items drawn uniformly from 1..n_items outside each row's items (rejection sampling)."""
    draws = torch.randint(1, n_items + 1, items.shape, generator=generator)  # [B, L]
    for _ in range(NEGATIVE_DRAWS):
        inside = (draws[:, :, None] == items[:, None, :]).any(-1)  # [B, L]
        if not inside.any():
            break
        draws = torch.where(inside, torch.randint(1, n_items + 1, items.shape, generator=generator), draws)
    return draws


class S3RecPretraining(nn.Module):
    """The pretraining model: a SASRec `encoder` over items 1..n_items plus the mask token
    (n_items + 1), attribute embeddings and the four objectives' bilinear matrices."""

    def __init__(self, n_items: int, max_len: int, config: SASRecConfig, n_attributes: int):
        super().__init__()
        width = config.embedding_size
        self.mask_item = n_items + 1
        self.encoder = SASRec(n_items + 1, max_len, config)
        self.attribute_embedding = nn.Embedding(n_attributes + 1, width, padding_idx=0)  # row 0: padding
        self.aap_projection = nn.Linear(width, width)  # W_AAP
        self.mip_projection = nn.Linear(width, width)  # W_MIP
        self.map_projection = nn.Linear(width, width)  # W_MAP
        self.sp_projection = nn.Linear(width, width)  # W_SP
        for module in (self.attribute_embedding, self.aap_projection, self.mip_projection,
                       self.map_projection, self.sp_projection):
            self.encoder._init_weights(module)  # the encoder's initialisation (normal 0.02, zero biases)
        with torch.no_grad():
            self.attribute_embedding.weight[0].zero_()

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_positions(items, bidirectional=True)  # [B, L, H]

    def losses(self, batch: PretrainingBatch | list[PretrainingBatch], attributes: torch.Tensor
               ) -> dict[str, torch.Tensor]:
        """Each objective's loss per prefix of the batch (module docstring), or of the batch given in
        parts (its length groups, each `cut`): their sums over the parts' rows / the number of rows.
        attributes [n_items + 1, A + 1] bool: the multi-hot attributes of every item id."""
        parts = [batch] if isinstance(batch, PretrainingBatch) else batch
        sums = [self.loss_sums(part, attributes) for part in parts]
        size = sum(len(part.lengths) for part in parts)
        return {name: sum(s[name] for s in sums) / size for name in OBJECTIVES}

    def loss_sums(self, batch: PretrainingBatch, attributes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each objective's loss summed over the prefixes of the batch."""
        hidden = self.encode(batch.masked_items)  # [B, L, H]
        real, masked = batch.items > 0, batch.masked_items == self.mask_item  # [B, L]
        shown = real & ~masked
        table = self.attribute_embedding.weight[1:]  # [A, H]; column 0 (padding) left out
        aap = attribute_loss(self.aap_projection(hidden[shown]) @ table.T, attributes[batch.items[shown], 1:])
        map_ = attribute_loss(self.map_projection(hidden[masked]) @ table.T, attributes[batch.items[masked], 1:])
        query = self.mip_projection(hidden[masked])  # [M, H]
        embedding = self.encoder.item_embedding
        mip = pairwise_loss((query * embedding(batch.items[masked])).sum(-1),
                            (query * embedding(batch.negative_items[masked])).sum(-1))
        rows, lengths = batch.has_segment, batch.lengths[batch.has_segment]
        context = self.sp_projection(gather_last(self.encode(batch.masked_segment[rows]), lengths))  # [B', H]
        positive = gather_last(self.encode(batch.positive_segment[rows]), lengths)  # [B', H]
        negative = gather_last(self.encode(batch.negative_segment[rows]), lengths)  # [B', H]
        sp = pairwise_loss((context * positive).sum(-1), (context * negative).sum(-1))
        return {"aap": aap, "mip": mip, "map": map_, "sp": sp}


def total_loss(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """sum over the four objectives of weights[f"{name}_weight"] * loss."""
    return sum(weights[f"{name}_weight"] * losses[name] for name in OBJECTIVES)


def student_state(pretrained: dict[str, torch.Tensor], n_items: int) -> dict[str, torch.Tensor]:
    """The fine-tuned SASRec's initial weights: the pretrained encoder's, its item embedding without
    the mask token's row (the student scores items 1..n_items)."""
    prefix = "encoder."
    state = {k[len(prefix):]: v for k, v in pretrained.items() if k.startswith(prefix)}
    state["item_embedding.weight"] = state["item_embedding.weight"][: n_items + 1]
    return state


_AUTHORS_LAYER = {"attention.dense": "attention_out", "attention.LayerNorm": "attention_norm",
                  "intermediate.dense_1": "ffn_in", "intermediate.dense_2": "ffn_out",
                  "intermediate.LayerNorm": "ffn_norm"}


def authors_student_state(authors: dict[str, torch.Tensor], item_tokens: np.ndarray) -> dict[str, torch.Tensor]:
    """The S3Rec authors' pretrained state dict (their S3RecModel: `item_embeddings`,
    `position_embeddings`, `LayerNorm`, `item_encoder.layer.<i>.attention.query/key/value/dense/
    LayerNorm`, `intermediate.dense_1/dense_2/LayerNorm`) -> our SASRec's, for a data set whose item i
    is the authors' item int(item_tokens[i]) (their ids are the file's). Query, key and value become
    our fused `qkv`; the mask token's row, attribute embeddings and pretraining heads are left out.
    Their model left-pads: build the SASRec with end_aligned_positions 1 to read it as they do."""
    rows = torch.as_tensor([0] + [int(t) for t in item_tokens[1:]])  # [n_items + 1]: ours -> theirs
    state = {"item_embedding.weight": authors["item_embeddings.weight"][rows],
             "position_embedding.weight": authors["position_embeddings.weight"],
             "embedding_norm.weight": authors["LayerNorm.weight"], "embedding_norm.bias": authors["LayerNorm.bias"]}
    state["item_embedding.weight"][0] = 0.0
    layers = sorted({int(k.split(".")[2]) for k in authors if k.startswith("item_encoder.layer.")})
    for i in layers:
        theirs, ours = f"item_encoder.layer.{i}.", f"layers.{i}."
        for kind in ("weight", "bias"):
            state[ours + "qkv." + kind] = torch.cat([authors[f"{theirs}attention.{n}.{kind}"]
                                                     for n in ("query", "key", "value")])
            for name, mine in _AUTHORS_LAYER.items():
                state[f"{ours}{mine}.{kind}"] = authors[f"{theirs}{name}.{kind}"]
    return state


@dataclass(frozen=True)
class PretrainingEpoch:
    epoch: int  # 1-based
    losses: dict[str, float]  # each objective's mean per prefix, and the weighted total
    seconds: float


def pretrain(module: S3RecPretraining, data: PretrainingData, attributes: torch.Tensor, params: dict[str, float],
             config: TrainConfig, checkpoint: Path, log=print, cut_batches: bool = True) -> list[PretrainingEpoch]:
    """`config.max_epochs` epochs of Adam on shuffled batches of `config.batch_size` prefixes;
    `params`: the four `<objective>_weight`s and `mask_ratio`. cut_batches: each batch encoded in length
    groups cut to their longest prefix (the same losses, module docstring); False: padded to max_len.

    Every draw of an epoch (order, masks, negatives, segments, dropout) comes from (config.seed,
    epoch), so a run resumed from the epoch checkpoint `checkpoint` ends as an uninterrupted one. A
    damaged or foreign checkpoint is discarded with a warning. A NaN or inf loss stops with an error
    naming the epoch and batch."""
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    module.to(device)
    attributes = attributes.to(device)
    optimizer = torch.optim.Adam(module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    history = _resume(checkpoint, module, optimizer, config, len(data))
    for epoch in range(len(history) + 1, config.max_epochs + 1):
        started = time.perf_counter()
        generator = epoch_generator(config.seed, epoch)
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))  # dropout: this epoch's stream
        module.train()
        names = (*OBJECTIVES, "total")
        # Losses stay on the device and are checked once per epoch (as csrec.train does): no host sync
        # per batch; a non-finite batch spoils only weights that the error below keeps from the checkpoint.
        sums = []  # per batch: [len(names)] losses times the batch's size
        order = torch.randperm(len(data), generator=generator)
        for rows in order.split(config.batch_size):
            batch = sample_batch(data.prefixes[rows], data.lengths[rows], data.long_sequence, module.mask_item,
                                 params["mask_ratio"], generator)
            parts = [cut(batch, group) for group in length_groups(batch.lengths)] if cut_batches else [batch]
            losses = module.losses([_to(part, device) for part in parts], attributes)
            losses["total"] = total_loss(losses, params)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            sums.append(torch.stack([losses[name].detach() for name in names]) * len(rows))
        sums = torch.stack(sums)  # [n_batches, len(names)]
        finite = torch.isfinite(sums[:, -1])
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0])
            raise NonFiniteLossError(f"the S3Rec pretraining loss is {float(sums[bad, -1])} at epoch {epoch}, "
                                     f"batch {bad + 1}: lower train.learning_rate (now {config.learning_rate})")
        totals = (sums.sum(0) / len(data)).tolist()
        history.append(PretrainingEpoch(epoch, dict(zip(names, totals)), time.perf_counter() - started))
        _save(checkpoint, module, optimizer, config, len(data), history)
        if config.progress:
            log(f"pretraining epoch {epoch:3d}  " + "  ".join(f"{k} {v:.4f}" for k, v in history[-1].losses.items())
                + f"  {history[-1].seconds:.1f}s")
    return history


def _to(batch: PretrainingBatch, device: torch.device) -> PretrainingBatch:
    return PretrainingBatch(**{f.name: getattr(batch, f.name).to(device) for f in dataclasses.fields(batch)})


def _save(path: Path, module, optimizer, config: TrainConfig, n_prefixes: int, history: list) -> None:
    """The epoch checkpoint, written beside `path` and renamed over it (never half a file)."""
    payload = {"module": module.state_dict(), "optimizer": optimizer.state_dict(), "n_prefixes": n_prefixes,
               "config": config.key_fields, "history": [dataclasses.asdict(h) for h in history]}
    save_atomic(payload, path)


def _resume(path: Path, module, optimizer, config: TrainConfig, n_prefixes: int) -> list[PretrainingEpoch]:
    """The finished epochs of the checkpoint at `path`, loaded into module and optimizer; [] when
    there is none or it cannot be used (then discarded, said, and pretraining starts at epoch 1)."""
    if not path.exists():
        return []
    try:  # weights_only: a file in a shared experiment directory must never run code when read
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload["n_prefixes"] != n_prefixes or payload["config"] != config.key_fields:
            raise ValueError("written by another pretraining (other data or settings)")
        module.load_state_dict(payload["module"])
        optimizer.load_state_dict(payload["optimizer"])
        return [PretrainingEpoch(**h) for h in payload["history"]][: config.max_epochs]
    except Exception as error:  # noqa: BLE001 - any unusable file: start over, never fail every resume
        warnings.warn(f"pretraining checkpoint {path} cannot be used ({first_line(error)}); discarded, "
                      "pretraining starts from epoch 1")
        path.unlink(missing_ok=True)
        return []
