"""The four sequential models: the contract, padding, causality, gradients, dropout, the registry."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from csrec.errors import CSRecError
from csrec.models import MODELS, PADDING_SCORE, build_model, model_config

N_ITEMS, LENGTH, EXTRA = 30, 6, 7  # inputs of LENGTH items, also padded to LENGTH + EXTRA
MAX_LEN = LENGTH + EXTRA
CAUSAL = ["nextitnet", "sasrec"]  # models with a per-position output (`encode_positions`)

# Section 4.1.4 of the paper (and REFERENCE.md); RecBole's values for what the paper leaves out.
PAPER_DEFAULTS = {
    "gru4rec": dict(embedding_size=64, hidden_size=64, num_layers=2, dropout=0.5),
    "nextitnet": dict(embedding_size=64, kernel_size=3, num_blocks=5, dilation=1, reg_weight=5e-6),
    "narm": dict(embedding_size=64, hidden_size=128, num_layers=1, embedding_dropout=0.25, context_dropout=0.5),
    "sasrec": dict(embedding_size=64, num_layers=2, num_heads=2, inner_size=128, dropout=0.3,
                   attention_dropout=0.3, layer_norm_eps=1e-12, initializer_range=0.02, end_aligned_positions=0),
}


def model(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(name, N_ITEMS, MAX_LEN, **overrides)


def batch(seed: int = 0, size: int = 5):
    """Right-padded sequences [size, LENGTH] with lengths 1..LENGTH (the first row is full)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, LENGTH + 1, (size,), generator=g)
    lengths[0] = LENGTH
    items = torch.randint(1, N_ITEMS + 1, (size, LENGTH), generator=g)
    items[torch.arange(LENGTH) >= lengths.unsqueeze(1)] = 0  # [size, LENGTH]
    return items, lengths


@pytest.mark.parametrize("name", MODELS)
def test_scores_cover_the_catalogue_with_padding_column_fixed(name):
    m = model(name).eval()
    items, lengths = batch()
    logits = m(items, lengths)
    assert logits.shape == (len(items), N_ITEMS + 1)
    assert torch.all(logits[:, 0] == PADDING_SCORE)
    assert torch.isfinite(logits).all()
    assert m.encode(items, lengths).shape == (len(items), m.item_embedding.embedding_dim)


@pytest.mark.parametrize("name", MODELS)
def test_more_padding_gives_the_same_scores(name):
    m = model(name).eval()
    items, lengths = batch()
    longer = F.pad(items, (0, EXTRA))  # the same sequences padded to LENGTH + EXTRA
    with torch.no_grad():
        assert torch.allclose(m(items, lengths), m(longer, lengths), atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_items_after_the_last_real_position_are_ignored(name):
    """Whatever follows a row's length (padding or not) never reaches its representation."""
    m = model(name).eval()
    items, lengths = batch()
    tail = torch.arange(LENGTH) >= lengths.unsqueeze(1)  # [B, L]
    filled = torch.where(tail, torch.randint(1, N_ITEMS + 1, items.shape), items)
    assert not torch.equal(filled, items)
    with torch.no_grad():
        assert torch.allclose(m.encode(items, lengths), m.encode(filled, lengths), atol=1e-5)
        # ...while an item before the last real position does change it
        changed = items.clone()
        changed[0, 0] = changed[0, 0] % N_ITEMS + 1
        assert not torch.allclose(m.encode(items, lengths)[0], m.encode(changed, lengths)[0], atol=1e-5)


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_models_never_see_later_items(name):
    m = model(name).eval()
    items = torch.randint(1, N_ITEMS + 1, (3, LENGTH))
    with torch.no_grad():
        before = m.encode_positions(items)  # [B, L, H]
        for position in range(LENGTH):
            changed = items.clone()
            changed[:, position] = changed[:, position] % N_ITEMS + 1
            after = m.encode_positions(changed)
            assert torch.allclose(before[:, :position], after[:, :position], atol=1e-5)
            assert not torch.allclose(before[:, position], after[:, position], atol=1e-5)


@pytest.mark.parametrize("name", CAUSAL)
def test_encode_reads_the_per_position_output_at_the_last_real_item(name):
    m = model(name).eval()
    items, lengths = batch()
    with torch.no_grad():
        positions = m.encode_positions(items)  # [B, L, H]
        expected = positions[torch.arange(len(items)), lengths - 1]  # [B, H]
        assert torch.allclose(m.encode(items, lengths), expected, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient_except_the_padding_row(name):
    m = model(name).train()
    items, lengths = batch(size=16)
    targets = torch.randint(1, N_ITEMS + 1, (len(items),))
    loss = F.cross_entropy(m(items, lengths), targets) + m.regularization()
    loss.backward()
    for param_name, param in m.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name
    embedding_grad = m.item_embedding.weight.grad
    assert torch.all(embedding_grad[0] == 0)  # padding is never an input feature nor a label
    assert torch.all(embedding_grad[1:].abs().sum(1) > 0)  # every item is scored, so every item learns


@pytest.mark.parametrize("name", MODELS)
def test_training_keeps_the_padding_row_at_zero_and_learns(name):
    m = model(name)
    items, lengths = batch(size=16)
    targets = torch.randint(1, N_ITEMS + 1, (len(items),))
    optimizer = torch.optim.Adam(m.parameters(), lr=1e-2)
    assert torch.all(m.item_embedding.weight[0] == 0)

    def eval_loss() -> float:
        with torch.no_grad():
            return F.cross_entropy(m.eval()(items, lengths), targets).item()

    initial = eval_loss()
    for _ in range(30):
        m.train()
        optimizer.zero_grad()
        (F.cross_entropy(m(items, lengths), targets) + m.regularization()).backward()
        optimizer.step()
    assert torch.all(m.item_embedding.weight[0] == 0)
    assert eval_loss() < 0.5 * initial


@pytest.mark.parametrize("name", MODELS)
def test_dropout_is_off_in_eval_and_on_in_training(name):
    m = model(name)
    items, lengths = batch()
    with torch.no_grad():
        m.eval()
        assert torch.equal(m(items, lengths), m(items, lengths))
        m.train()
        has_dropout = any(v > 0 for k, v in dataclasses.asdict(m.config).items() if k.endswith("dropout"))
        assert has_dropout == (name != "nextitnet")  # NextItNet has no dropout (RecBole, reference)
        if has_dropout:
            assert not torch.equal(m(items, lengths), m(items, lengths))


# Each model's dropout modules, and how often each acts in one train-mode `encode_positions` pass.
DROPOUT_CALLS = {
    "gru4rec": {"embedding_dropout": 1},
    "nextitnet": {},  # RecBole and the reference have none
    "narm": {"embedding_dropout": 1, "context_dropout": 1},
    "sasrec": {"embedding_dropout": 1, "layers.0.dropout": 2, "layers.1.dropout": 2},  # + attention (below)
}


@pytest.mark.parametrize("name", MODELS)
def test_every_dropout_acts_in_encode_positions_in_training_only(name):
    """A hook on every nn.Dropout: removing one from encode_positions (the sequence layout's path)
    fails here; each call zeroes about its p of the entries, and none in eval mode."""
    m = model(name)
    calls, zeroed = {}, {}

    def hook(label, p):
        def record(module, inputs, output):
            calls[label] = calls.get(label, 0) + 1
            real = inputs[0] != 0
            zeroed.setdefault(label, []).append(((output == 0) & real).sum().item() / max(real.sum().item(), 1))
        return record

    for label, module in m.named_modules():
        if isinstance(module, torch.nn.Dropout):
            module.register_forward_hook(hook(label, module.p))
    items, _ = batch(size=64)
    m.train()
    torch.manual_seed(0)
    m.encode_positions(items)
    assert calls == DROPOUT_CALLS[name]
    for label, shares in zeroed.items():
        p = dict(m.named_modules())[label].p
        assert all(share == pytest.approx(p, abs=0.06) for share in shares), (label, shares)
    calls.clear(), zeroed.clear()
    m.eval()
    m.encode_positions(items)
    assert all(share == 0 for shares in zeroed.values() for share in shares)


@pytest.mark.parametrize("name, rate", [("sasrec", "attention_dropout")] + [
    (name, rate) for name in MODELS for rate in dataclasses.asdict(model_config(name)) if rate.endswith("dropout")])
def test_each_dropout_rate_alone_makes_training_passes_random(name, rate):
    """Only `rate` above 0: two train-mode passes differ (SASRec's attention dropout, inside the fused
    kernel, has no module to hook), eval-mode passes and the all-zero rates do not."""
    rates = [r for r in dataclasses.asdict(model_config(name)) if r.endswith("dropout")]
    items, _ = batch(size=16)
    for p, differ in ((0.5, True), (0.0, False)):
        m = model(name, **{r: 0.0 for r in rates} | {rate: p})
        m.train()
        torch.manual_seed(1)
        first = m.encode_positions(items)
        torch.manual_seed(2)
        assert (not torch.allclose(first, m.encode_positions(items))) == differ, (rate, p)
        m.eval()
        assert torch.equal(m.encode_positions(items), m.encode_positions(items))


def test_registry_holds_the_four_models_with_the_papers_defaults():
    assert list(MODELS) == ["gru4rec", "nextitnet", "narm", "sasrec"]
    for name, expected in PAPER_DEFAULTS.items():
        assert dataclasses.asdict(model_config(name)) == expected
        assert dataclasses.asdict(model(name).config) == expected


def test_overrides_reach_the_model_and_the_saved_config_rebuilds_it():
    config = model_config("sasrec", dropout=0.35, attention_dropout=0.35, num_layers=1)
    assert (config.dropout, config.attention_dropout, config.num_layers) == (0.35, 0.35, 1)
    m = build_model("sasrec", N_ITEMS, MAX_LEN, dropout=0.35, num_layers=1)
    assert len(m.layers) == 1 and m.layers[0].dropout.p == 0.35
    assert isinstance(model_config("narm", context_dropout=0).context_dropout, float)  # YAML 0 -> 0.0
    for name in MODELS:
        saved = dataclasses.asdict(model_config(name, embedding_size=32))
        rebuilt = model(name, **saved)
        assert rebuilt.item_embedding.weight.shape == (N_ITEMS + 1, 32)
        assert model(name).state_dict().keys() == rebuilt.state_dict().keys()


@pytest.mark.parametrize("call, message", [
    (lambda: build_model("bert4rec", 10, 5), "known: gru4rec, nextitnet, narm, sasrec"),
    (lambda: model_config("bert4rec"), "known: gru4rec, nextitnet, narm, sasrec"),
    (lambda: build_model("gru4rec", 10, 5, hidden=32), "valid keys: embedding_size, hidden_size, num_layers, dropout"),
    (lambda: build_model("narm", 10, 5, dropout=0.1), "unknown key(s) dropout"),
    (lambda: build_model("nextitnet", 10, 5, reg_weight="5e-6"), "write 5.0e-6"),
    (lambda: build_model("sasrec", 10, 5, num_heads=2.0), "must be an integer"),
    (lambda: build_model("sasrec", 10, 5, num_heads=3), "must divide sasrec.embedding_size"),
    (lambda: build_model("gru4rec", 10, 5, dropout=1.0), "gru4rec.dropout must be in [0, 1)"),
    (lambda: build_model("narm", 10, 5, hidden_size=0), "narm.hidden_size must be >= 1"),
    (lambda: build_model("nextitnet", 10, 5, reg_weight=-1), "reg_weight must be >= 0"),
    (lambda: build_model("gru4rec", 0, 5), "n_items >= 1"),
])
def test_bad_names_and_values_are_user_errors_that_say_what_to_change(call, message):
    with pytest.raises(CSRecError) as error:
        call()
    assert message in str(error.value)


def test_sasrec_refuses_inputs_longer_than_its_positions():
    m = build_model("sasrec", N_ITEMS, 4)
    with pytest.raises(CSRecError, match="larger max_len"):
        m.encode(torch.ones(2, 5, dtype=torch.long), torch.tensor([5, 3]))


def test_nextitnet_penalty_is_recboles_sum_of_weight_norms():
    m = model("nextitnet")
    block_weights = [p for n, p in m.residual_blocks.named_parameters() if n.endswith("weight")]
    assert len(block_weights) == 5 * 4  # two convolutions and two layer norms per block
    with torch.no_grad():
        norms = [m.item_embedding.weight.norm(), m.final_layer.weight.norm()] + [w.norm() for w in block_weights]
        assert math.isclose(float(m.regularization()), 5e-6 * float(sum(norms)), rel_tol=1e-5)
    assert model("nextitnet", reg_weight=0.0).regularization() == 0.0
    for name in ("gru4rec", "narm", "sasrec"):
        assert model(name).regularization() == 0.0


def test_nextitnet_convolution_matches_a_left_padded_conv1d():
    block = model("nextitnet", embedding_size=8, num_blocks=1, dilation=2).residual_blocks[0]
    x = torch.randn(3, LENGTH, 8)  # [B, L, C]
    for conv in (block.conv1, block.conv2):
        pad = (conv.kernel_size[0] - 1) * conv.dilation[0]
        expected = F.conv1d(F.pad(x.transpose(1, 2), (pad, 0)), conv.weight, conv.bias, dilation=conv.dilation)
        assert torch.allclose(conv(x), expected.transpose(1, 2), atol=1e-5)
    assert (block.conv1.dilation[0], block.conv2.dilation[0]) == (2, 4)  # RecBole's block (b): d, then 2d


@torch.no_grad()
def test_initialisation_follows_recbole():
    sasrec = model("sasrec", embedding_size=64)
    layer = sasrec.layers[0]
    weights = (layer.qkv.weight, layer.ffn_in.weight, sasrec.position_embedding.weight, sasrec.item_embedding.weight[1:])
    for weight in weights:
        assert 0.017 < float(weight.std()) < 0.023  # normal(0, 0.02)
    assert torch.all(layer.qkv.bias == 0) and torch.all(layer.attention_norm.weight == 1)
    nextitnet = model("nextitnet")
    assert torch.all(nextitnet.final_layer.bias == 0.1)
    assert float(nextitnet.item_embedding.weight.abs().max()) <= math.sqrt(1 / N_ITEMS)
    for name in MODELS:
        assert torch.all(model(name).item_embedding.weight[0] == 0)
