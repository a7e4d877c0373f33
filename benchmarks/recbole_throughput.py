"""RecBole 1.2.1's own training step rate on Last.FM, one JSON line per model (run in its venv).

    benchmarks/.recbole-venv/bin/python benchmarks/recbole_throughput.py [--models GRU4Rec SASRec]
        [--data ../shared/data/lastfm.csv] [--steps 30] [--threads 1]

Its venv comes from benchmarks/recbole_venv.sh; no CSRec code is needed. The CSV becomes a RecBole atomic .inter in
a temporary folder; RecBole prepares it its own way (data_augmentation: one row per prefix of at
most MAX_ITEM_LIST_LENGTH items, leave-one-out split) and its TrainDataLoader serves the batches.
A step is what RecBole's Trainer._train_epoch does: zero_grad, model.calculate_loss, backward,
Adam step. Reported, over `steps` steps after 2 warm-up steps, in training targets per second:

- samples_per_s: RecBole as it ships, its dataloader included (loader_ms_per_batch: its share);
- no_anomaly_samples_per_s: the same without autograd's anomaly detection, which RecBole 1.2.1
  switches on for every sequential model (recbole/model/sequential_recommender/sine.py, line 25,
  runs torch.autograd.set_detect_anomaly(True) at import), a debugging aid that checks every
  backward output for NaN.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

# torch >= 2.6 loads with weights_only=True, which RecBole 1.2.1's saved datasets and checkpoints
# fail; patched here rather than in site-packages (nothing here loads one, but RecBole may).
torch.load = functools.partial(torch.load, weights_only=False)

from recbole.config import Config  # noqa: E402  (after the patch)
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.utils import get_model, init_seed  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lastfm.csv"

# CSRec's paper settings (csrec/models/gru4rec.py, sasrec.py) in RecBole's names.
MODELS = {
    "GRU4Rec": {"embedding_size": 64, "hidden_size": 64, "num_layers": 2, "dropout_prob": 0.5},
    "SASRec": {"n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 128,
               "hidden_dropout_prob": 0.3, "attn_dropout_prob": 0.3, "hidden_act": "gelu",
               "layer_norm_eps": 1e-12, "initializer_range": 0.02},
}


def write_inter(csv: Path, folder: Path) -> None:
    """lastfm.csv (session_id,item_id,rating; file order is time order) -> folder/lastfm/lastfm.inter.

    RecBole sorts each user's rows by its time field, so the line number stands in for a timestamp.
    """
    lines = csv.read_text(encoding="utf-8-sig").splitlines()
    header = [name.strip() for name in lines[0].split(",")]
    user, item = header.index("session_id"), header.index("item_id")
    (folder / "lastfm").mkdir()
    with open(folder / "lastfm" / "lastfm.inter", "w") as out:
        out.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for number, line in enumerate(lines[1:]):
            if line.strip():
                fields = line.split(",")
                out.write(f"{fields[user].strip()}\t{fields[item].strip()}\t{number}\n")


def config(model: str, folder: Path, batch_size: int) -> Config:
    return Config(model=model, dataset="lastfm", config_dict={
        "data_path": str(folder), "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp", "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": 20, "loss_type": "CE", "train_neg_sample_args": None,
        "train_batch_size": batch_size, "learner": "adam", "learning_rate": 1e-3, "weight_decay": 0.0,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "use_gpu": False, "device": "cpu", "seed": 0, "reproducibility": True, "worker": 0,
        "show_progress": False, "save_dataset": False, "save_dataloaders": False, **MODELS[model]})


def step(model, optimizer, interaction) -> None:
    """One step of RecBole's Trainer._train_epoch (no gradient clipping: clip_grad_norm is unset)."""
    optimizer.zero_grad()
    model.calculate_loss(interaction).backward()
    optimizer.step()


def batches(train_data):
    """RecBole's training batches without end: a new (shuffled) epoch when one runs out."""
    while True:
        for interaction in train_data:
            yield interaction.to("cpu")


def rate(model, optimizer, stream, steps: int) -> tuple[float, float]:
    """(samples/s, loader ms per batch) over `steps` steps, each batch served by the dataloader as
    the step asks for it, as in RecBole's Trainer."""
    samples, loader, start = 0, 0.0, time.perf_counter()
    for _ in range(steps):
        asked = time.perf_counter()
        interaction = next(stream)
        loader += time.perf_counter() - asked
        step(model, optimizer, interaction)
        samples += len(interaction)
    return samples / (time.perf_counter() - start), 1e3 * loader / steps


def measure(name: str, folder: Path, batch_size: int, steps: int) -> dict:
    cfg = config(name, folder, batch_size)
    init_seed(cfg["seed"], cfg["reproducibility"])
    dataset = create_dataset(cfg)
    train_data, _, _ = data_preparation(cfg, dataset)
    model = get_model(cfg["model"])(cfg, train_data.dataset).to(cfg["device"]).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["learning_rate"])
    stream = batches(train_data)
    # get_model imported recbole.model.sequential_recommender, whose sine.py switches autograd's
    # anomaly detection on for the whole process at import: every RecBole sequential model trains so.
    anomaly = torch.is_anomaly_enabled()
    for _ in range(2):  # warm-up
        step(model, optimizer, next(stream))
    shipped, loader_ms = rate(model, optimizer, stream, steps)
    torch.autograd.set_detect_anomaly(False)  # the same steps without it: RecBole's model and loader alone
    step(model, optimizer, next(stream))
    no_anomaly, _ = rate(model, optimizer, stream, steps)
    torch.autograd.set_detect_anomaly(anomaly)  # as shipped again, for the next model
    return {"model": name, "samples_per_s": shipped, "anomaly_detection": anomaly,
            "no_anomaly_samples_per_s": no_anomaly, "loader_ms_per_batch": loader_ms,
            "train_samples": len(train_data.dataset), "n_items": dataset.item_num - 1,
            "batch_size": batch_size, "steps": steps, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config reads `--key=value` from the command line too
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        write_inter(args.data, Path(tmp))
        for name in args.models:
            print(json.dumps(measure(name, Path(tmp), args.batch_size, args.steps)), flush=True)


if __name__ == "__main__":
    main()
