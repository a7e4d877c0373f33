"""The sequential models: one registry, `build_model` and `model_config`.

Every model follows the contract in `csrec.models.base` (encode, then full-catalogue scores tied to
the item embedding). A model's hyperparameters are a frozen dataclass whose defaults are the
paper's values (section 4.1.4); an experiment changes them through `model_overrides`, and the
resolved config (`dataclasses.asdict(model_config(...))`) is saved next to every checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from csrec.errors import CSRecError
from csrec.models.base import PADDING_SCORE, SequentialRecommender, gather_last
from csrec.models.gru4rec import GRU4Rec, GRU4RecConfig
from csrec.models.narm import NARM, NARMConfig
from csrec.models.nextitnet import NextItNet, NextItNetConfig
from csrec.models.sasrec import SASRec, SASRecConfig

MODELS = {
    "gru4rec": (GRU4RecConfig, GRU4Rec),
    "nextitnet": (NextItNetConfig, NextItNet),
    "narm": (NARMConfig, NARM),
    "sasrec": (SASRecConfig, SASRec),
}


def model_config(name: str, **overrides: Any):
    """The resolved config of model `name`: its paper defaults with `overrides` applied.

    Raises CSRecError for an unknown model, an unknown key, a value of the wrong type or out of range.
    """
    if name not in MODELS:
        raise CSRecError(f"unknown model '{name}'; known: {', '.join(MODELS)}")
    config_class = MODELS[name][0]
    defaults = config_class()
    valid = [field.name for field in dataclasses.fields(config_class)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise CSRecError(f"model_overrides.{name}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
    resolved = {key: _checked(name, key, value, getattr(defaults, key)) for key, value in overrides.items()}
    return config_class(**resolved)


def _checked(name: str, key: str, value: Any, default: Any) -> Any:
    """`value` as the type of the field's default: int fields take ints, float fields take numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = " (YAML reads 5e-6 as text: write 5.0e-6)" if isinstance(value, str) else ""
        raise CSRecError(f"model_overrides.{name}.{key} must be a number, got {value!r}{hint}")
    if isinstance(default, int) and not isinstance(value, int):
        raise CSRecError(f"model_overrides.{name}.{key} must be an integer, got {value!r}")
    return float(value) if isinstance(default, float) else value


def build_model(name: str, n_items: int, max_len: int, **overrides: Any) -> SequentialRecommender:
    """A freshly initialised model `name` over items 1..n_items with inputs of at most max_len items."""
    config = model_config(name, **overrides)
    if n_items < 1 or max_len < 1:
        raise CSRecError(f"a model needs n_items >= 1 and max_len >= 1, got n_items={n_items}, max_len={max_len}")
    return MODELS[name][1](n_items, max_len, config)


__all__ = ["MODELS", "PADDING_SCORE", "SequentialRecommender", "build_model", "gather_last", "model_config",
           "GRU4Rec", "GRU4RecConfig", "NARM", "NARMConfig", "NextItNet", "NextItNetConfig", "SASRec", "SASRecConfig"]
