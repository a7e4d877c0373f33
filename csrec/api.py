"""The Python API: what the command line does, from a notebook or a script (docs/API.md).

    from csrec import api
    metrics = api.train("lastfm", "GRU4Rec", out="runs/gru4rec", epochs=20)
    directory = api.run("experiments/quickstart.yaml", overrides=["train.max_epochs=10"])
    results = api.results(directory)          # analysis.Collection: .results, .trials, .per_user(key)

Each function is its command's (`csrec train`, `run`, `resume`) with the same checks, files and
store; a mistake raises csrec.errors.CSRecError with the one-line message the command prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from csrec.errors import CSRecError


def train(data: str, model: str, out: str | Path, **options) -> dict:
    """`csrec train --data DATA --model MODEL --out OUT --OPTION VALUE ...`: train (or find in the
    store) one model, write OUT's files, return its metrics.json ({"best_epoch", "valid", "test"}).

    An option is the command's long option with '_' for '-' (epochs=20, method="csrec-m", beta=0.5,
    temperature=3, store="runs/store", retrain=True, overwrite=True); True gives a flag, None or
    False leaves the option out."""
    from csrec.cli import COMMANDS, build_parser

    argv = ["train", "--data", str(data), "--model", str(model), "--out", str(out)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    try:
        args = build_parser("csrec.api.train").parse_args(argv)
    except SystemExit:  # argparse has printed the option's problem on stderr
        raise CSRecError(f"api.train: the options {sorted(options)} do not parse as `csrec train`'s (see the line "
                         "above and `csrec train --help`)") from None
    COMMANDS["train"][1](args)
    return json.loads((Path(out) / "metrics.json").read_text())


def run(spec: str | Path, overrides: Iterable[str] = (), local: bool = False, address: str | None = None,
        allow_failed: bool = False, log=print) -> Path:
    """`csrec run SPEC --set KEY=VALUE ...`: every stage of the experiment (what is stored is not
    redone); returns its directory. `local=True` runs without Ray, one job after another; `log`
    receives the progress lines (`lambda line: None` for none)."""
    from csrec.config import load_spec
    from csrec.runner import run_experiment

    overrides = tuple(overrides)
    directory = load_spec(spec, overrides=overrides).directory
    run_experiment(spec, address=address, local=local, allow_failed=allow_failed, overrides=overrides, log=log)
    return directory


def resume(directory: str | Path, local: bool = False, address: str | None = None, allow_failed: bool = False,
           log=print) -> Path:
    """`csrec resume DIR`: go on with an interrupted experiment where it now is; returns DIR."""
    from csrec.runner import SPEC_FILE, run_experiment

    directory = Path(directory).resolve()
    if not (directory / SPEC_FILE).is_file():
        raise CSRecError(f"{directory} is not an experiment directory (no {SPEC_FILE})")
    run_experiment(directory / SPEC_FILE, address=address, local=local, directory=directory,
                   allow_failed=allow_failed, log=log)
    return directory


def results(directory: str | Path):
    """The experiment's finished trials as pandas DataFrames (analysis.collect): `.results` one row a
    (trial, split, metric), `.trials` one a trial, `.per_user(key)` a trial's per-user ranks."""
    from analysis import collect

    return collect(directory)


def cells(directory: str | Path, metrics=("recall@10", "ndcg@10"), **options):
    """Table 2 as a DataFrame, one row a (dataset, method, model, metric) cell: the selected
    configuration, its mean and std over runs, its p-value and marker against SoftRec
    (analysis.build_table's options: versus, test, correction, ties, exclude_search_run)."""
    from analysis import build_table, collect

    return build_table(collect(directory), metrics=metrics, **options).cells
