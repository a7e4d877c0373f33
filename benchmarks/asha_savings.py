"""What early stopping saved: epochs trained, search wall time, the selected point, per experiment.

    python benchmarks/asha_savings.py runs/asha_lastfm_gru4rec_fifo runs/asha_lastfm_gru4rec_asha

For each experiment directory (a FIFO one and an ASHA one of the same grid), per search point:
the epochs trained in this experiment (a model copied in by `reuse` trained none here; a point
still training counts its work checkpoint's epochs), whether the scheduler stopped it, its best
validation NDCG@10 and test numbers; then the totals and the point selected on validation
(analysis.collect.select). Wall time: the search stage's, from tune/search.timing.json (written
when the stage ends; a stage cut short and resumed has none, and says so).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from analysis import collect
from analysis.collect import select
from csrec.jobs import MODELS
from csrec.runner.experiment import store_root
from csrec.store import Store


def reused_keys(directory: Path) -> set[str]:
    # From the raw spec.yaml, not load_spec: this reads finished experiments whose data paths may
    # be gone (load_spec checks every file).
    spec = yaml.safe_load((directory / "spec.yaml").read_text())  # resolved: absolute reuse paths
    roots = [store_root(Path(folder)) for folder in spec.get("reuse") or []]
    return {key for root in roots if root is not None for key in Store(root).keys(MODELS)}


def epochs_trained(directory: Path, key: str, record: dict | None, reused: set[str]) -> tuple[int, str]:
    """(epochs trained here, how the point ended: stopped | full | copied | training | not started)."""
    if record is not None and "stopped" in record:
        return int(record["stopped"]["epochs"]), f"stopped at {record['stopped']['epoch']}"
    model = directory / "store" / "models" / key / "result.json"
    if model.is_file():
        if key in reused:
            return 0, "copied (reuse)"
        return len(json.loads(model.read_text())["history"]), "full"
    checkpoint = directory / "store" / "work" / key / "last.pt"
    decision = directory / "store" / "work" / key / "stopped.json"
    if decision.is_file():  # decided; its record is written when the stage ends
        epoch = int(json.loads(decision.read_text())["epoch"])
        return epoch, f"stopped at {epoch}"
    if checkpoint.is_file():
        return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["state"]["epoch"]), "unfinished"
    return 0, "not started"


def describe(directory: Path) -> None:
    plan = json.loads((directory / "plan.json").read_text())
    reused = reused_keys(directory)
    folder = directory / "store" / "trials"
    scheduler = yaml.safe_load((directory / "spec.yaml").read_text()).get("scheduler") or {"kind": "fifo"}
    print(f"## {directory.name}: scheduler {scheduler}")
    print("| beta | T | how it ended | epochs trained here | best epoch | valid NDCG@10 | test Recall@10 | test NDCG@10 |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    total = 0
    for row in plan["trials"]:
        if row["stage"] != "search" or row["method"] == "base":
            continue
        path = folder / row["key"] / "result.json"
        record = json.loads(path.read_text()) if (folder / row["key"] / "meta.json").is_file() else None
        epochs, how = epochs_trained(directory, row["key"], record, reused)
        total += epochs
        numbers = ([record["best_epoch"], f"{record['valid']['ndcg@10'] * 100:.3f}",
                    f"{record['test']['recall@10'] * 100:.3f}", f"{record['test']['ndcg@10'] * 100:.3f}"]
                   if record else ["", "", "", ""])
        print(f"| {row['params']['beta']} | {row['params']['temperature']} | {how} | {epochs} | "
              + " | ".join(map(str, numbers)) + " |")
    timing = directory / "tune" / "search.timing.json"
    wall = (f"{json.loads(timing.read_text())['seconds'] / 60:.1f} min" if timing.is_file()
            else "no search.timing.json (the stage did not end in one driver)")
    print(f"\nepochs trained in this experiment's search: {total}; search stage wall time: {wall}")
    for cell, chosen in select(collect(directory)).items():
        print(f"selected for {'/'.join(cell)}: {chosen.config} (valid NDCG@10 {chosen.valid_score * 100:.3f}, "
              f"from {chosen.n_configs} finished points)")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directories", nargs="+")
    for directory in parser.parse_args().directories:
        describe(Path(directory))


if __name__ == "__main__":
    main()
