"""The command line (`csrec`, or `python launch.py`): each command is (add_arguments, run, help).
Ray and analysis load lazily.

A mistake the user can fix (bad file, bad spec, bad value) prints one line and exits with status 2;
a run whose trials failed prints its (marked) table, names them and exits 3 (0 with --allow-failed);
Ctrl-C or SIGTERM stops a run with status 130 (`resume` goes on). docs/RELIABILITY.md lists them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import time
import uuid
import warnings
from pathlib import Path

from csrec import __version__
from csrec.errors import CSRecError, first_line
from csrec.storage import check_reachable, location, remove_tree, work_dir

# How much is printed: -q / default / -v, or CSREC_LOG_LEVEL (quiet, info, verbose) when neither is given.
LOG_LEVELS = ("quiet", "info", "verbose")
LOG_LEVEL_ENV = "CSREC_LOG_LEVEL"


def finite(text: str) -> float:
    """argparse type: a finite number (inf and nan are refused with the option's name)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def name_in(known):
    """argparse type: a name of `known` in any case (CSRec-M, GRU4Rec) -> its registered spelling; an
    unknown name is left as given, for argparse's `choices` to refuse with the list."""
    def name(text: str) -> str:
        return next((k for k in known if k.lower() == text.lower()), text)

    return name


def log_level() -> str:
    """quiet, info or verbose: set by main from -q / -v, else CSREC_LOG_LEVEL, else info."""
    level = os.environ.get(LOG_LEVEL_ENV, "info").strip().lower()
    level = {"warning": "quiet", "error": "quiet", "debug": "verbose"}.get(level, level)
    if level not in LOG_LEVELS:
        raise CSRecError(f"{LOG_LEVEL_ENV}={os.environ[LOG_LEVEL_ENV]!r}: use one of {', '.join(LOG_LEVELS)}")
    return level


def _add_train(p: argparse.ArgumentParser) -> None:
    from csrec.config import METHOD_NAMES
    from csrec.models import MODELS

    p.add_argument("--data", required=True,
                   help="a registered data set's name (`launch.py data list`: its file, checked, and its paper "
                        "protocol for the options below left out) or an interaction file: .inter (RecBole), "
                        ".txt (S3Rec), .csv (CSRec)")
    p.add_argument("--format", choices=["inter", "txt", "csv"], help="file format (default: from the suffix)")
    p.add_argument("--model", required=True, help=f"student model: {', '.join(MODELS)} (any case: GRU4Rec, SASRec)")
    p.add_argument("--out", required=True, help="folder for config.json, metrics.json, per_user.parquet: new or "
                                                 "empty, or one an earlier `train` wrote with --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files of an earlier `train` in --out (only once the new ones are complete)")
    p.add_argument("--retrain", action="store_true",
                   help="train the model again although the store holds it (its teachers are still reused); "
                        "without it a stored model is reused, and said so")
    d = p.add_argument_group("data protocol")
    d.add_argument("--protocol", choices=["windows", "user_loo"],
                   help="windows: histories cut into max_len sequences (paper; the default); user_loo: one per user")
    d.add_argument("--max-len", type=int,
                   help="sequence length (paper: 20 Last.FM, 10 others; default: a named data set's, else 20)")
    d.add_argument("--overlap-head", dest="overlap_head", action="store_true", default=None,
                   help="cut windows as the reference code does (head window overlaps the next; "
                        "default: a named data set's, else off)")
    d.add_argument("--no-overlap-head", dest="overlap_head", action="store_false",
                   help="cut windows without the overlapping head window, also for a named data set")
    d.add_argument("--exclude-history", dest="exclude_history", action="store_true", default=None,
                   help="mask items already in the input before ranking (default: on for windows)")
    d.add_argument("--no-exclude-history", dest="exclude_history", action="store_false",
                   help="rank every item, including those already in the input (default for user_loo)")
    d.add_argument("--user-min-count", type=int, default=5, help="k-core: least interactions per user")
    d.add_argument("--item-min-count", type=int, default=5, help="k-core: least interactions per item")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=100, help="most epochs")
    t.add_argument("--patience", type=int, default=10, help="epochs without a better --selection-metric before stopping")
    t.add_argument("--selection-metric", default="ndcg@10",
                   help="validation metric of the best epoch and of --patience (ndcg@K, recall@K, mrr@K; ELECRec's "
                        "authors: ndcg@20)")
    t.add_argument("--batch-size", type=int, default=256, help="training targets per Adam step (see --batch-unit)")
    t.add_argument("--layout", default="sequence", choices=["sequence", "prefix"],
                   help="sequence (default): every prefix of a sequence from one pass (same pairs, a fraction of "
                        "the encoder work, as accurate: docs/REPRODUCTION.md); prefix: each prefix encoded on its "
                        "own (the reference code's)")
    t.add_argument("--batch-unit", default="targets", choices=["targets", "sequences"],
                   help="sequence layout: --batch-size counts targets (default) or whole sequences")
    t.add_argument("--lr", type=finite, default=1e-3, help="Adam learning rate")
    t.add_argument("--seed", type=int, default=0, help="seed of the model's initialisation and the shuffling")
    t.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    t.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="the model and its output layer in autocast: bf16 (a CPU with AVX512-BF16 or AMX, or CUDA), "
                        "fp16 (CUDA, loss scaling); losses, soft labels and ranking stay float32 (docs/PERFORMANCE.md)")
    s = p.add_argument_group("soft labels (CSRec)")
    s.add_argument("--method", default="base", choices=METHOD_NAMES, type=name_in(METHOD_NAMES),
                   help="training method (any case: CSRec-M)")
    s.add_argument("--beta", type=finite, help="weight of the KL term, Eq. 15, in [0, 1] (no default: required by "
                                               "softrec and the csrec methods)")
    s.add_argument("--temperature", "-T", type=finite, help="soft-label temperature T > 0, Eq. 14 (no default: "
                                                            "required by softrec and the csrec methods)")
    s.add_argument("--alpha", type=finite, help="CSRec-T: weight of KL(P_g2 || P_g1), Eq. 12, in [0, 1] (no "
                                                "default: required by csrec-t)")
    s.add_argument("--m", type=int, default=2, help="number of teachers (CSRec-M, CSRec-D)")
    s.add_argument("--subsample-ratio", "-p", type=finite, default=0.8, help="p of the data-level teachers")
    s.add_argument("--ensemble", default="mean_logits", choices=["mean_logits", "mean_probs"],
                   help="mean of teacher logits (paper) or of tempered probabilities (reference code)")
    s.add_argument("--kl-direction", default="reference", choices=["reference", "paper"],
                   help="KL(r || P_student) (reference code) or KL(P_student || r) (Eq. 15 as written)")
    s.add_argument("--no-noise-term", dest="noise_term", action="store_false",
                   help="CSRec-T without the noise-matrix term (Fig. 7 ablation)")
    s.add_argument("--noise-parametrization", default="stochastic", choices=["stochastic", "reference"],
                   help="CSRec-T noise matrix h = M N: softmax factors whose columns sum to 1 (stochastic), "
                        "or the reference code's sigmoid form (its detached column bound drives h to uniform, "
                        "where the term carries no signal: kept to reproduce the reference)")
    s.add_argument("--store", default="runs/store",
                   help="where trained models (the student and its teachers) are kept and reused: a folder or a URI "
                        "such as s3://BUCKET/PREFIX")
    e = p.add_argument_group("ELECRec (sasrec, --layout sequence; defaults: ELECRec's own)")
    e.add_argument("--sample-ratio", type=finite,
                   help="share of positions given a generator draw, in [0, 1] (default: 0.7, the authors')")
    e.add_argument("--prob-power", type=finite,
                   help="the generator's softmax is raised to this power >= 0 (default: 1.0, the authors')")
    e.add_argument("--gen-loss-weight", type=finite,
                   help="weight of the generator's cross entropy (default: 1.0, the authors')")
    e.add_argument("--dis-loss-weight", type=finite,
                   help="weight of the discriminator's real/replaced BCE (default: 0.5, the authors')")
    e.add_argument("--model-shared-type", choices=["embed_only", "full"],
                   help="what the generator shares with the discriminator: item and position embeddings "
                        "(embed_only, the default), or those and the transformer layers (full)")
    e.add_argument("--generator-normalisation", choices=["padded", "targets"],
                   help="the generator CE's denominator: the batch's rows x max_len positions (padded, the "
                        "authors' and the default) or its real positions (targets)")
    e.add_argument("--preset", choices=["beauty", "yelp"],
                   help="the ELECRec authors' script for the data set: its weights, sample ratio, power and sharing "
                        "type, for the options not given (default: none, the options' own defaults)")
    r = p.add_argument_group("S3Rec (sasrec, --layout sequence; pretraining defaults: the S3Rec authors')")
    r.add_argument("--attributes", help="item attributes for the pretraining: a registered data set's name (its "
                                        "attribute file) or an item2attributes JSON file {item id: [attribute ids]} "
                                        "(no default: required by s3rec)")
    r.add_argument("--aap-weight", type=finite,
                   help="weight of associated attribute prediction >= 0 (default: 0.2, the authors')")
    r.add_argument("--mip-weight", type=finite,
                   help="weight of masked item prediction >= 0 (default: 1.0, the authors')")
    r.add_argument("--map-weight", type=finite,
                   help="weight of masked attribute prediction >= 0 (default: 1.0, the authors')")
    r.add_argument("--sp-weight", type=finite,
                   help="weight of segment prediction >= 0 (default: 0.5, the authors')")
    r.add_argument("--mask-ratio", type=finite,
                   help="probability that an item (but the last) is masked, in [0, 1] (default: 0.2, the authors')")
    r.add_argument("--pretrain-epochs", type=int, default=150, help="pretraining epochs (the authors' Beauty "
                                                                     "checkpoint's)")
    r.add_argument("--pretrain-batch-size", type=int, default=100, help="prefixes per pretraining Adam step")

    r.add_argument("--finetuning", choices=["bce", "ce"], default="bce",
                   help="fine-tuning objective: bce, one negative outside the user's sequence (the authors'), or ce, "
                        "full-softmax cross entropy")


def _run_train(args: argparse.Namespace) -> int:
    from csrec.config import TeacherSettings, registered_name, resolve_attributes
    from csrec.data import DataConfig
    from csrec.jobs import MODELS, train_job
    from csrec.methods import GRID_PARAMS, base_job, dependencies, student_job
    from csrec.store import Store
    from csrec.precision import check_precision
    from csrec.train import TrainConfig, resolve_device

    from csrec.models import MODELS as MODEL_REGISTRY

    model = registered_name(args.model, MODEL_REGISTRY)
    if model is None:
        raise CSRecError(f"--model {args.model}: unknown model; choose one of {', '.join(MODEL_REGISTRY)} (any case)")
    args.model = model
    out = Path(args.out)
    check_out(out, args.overwrite)
    unused = [f"--{k}".replace("_", "-") for k in sorted({p for ps in GRID_PARAMS.values() for p in ps})
              if getattr(args, k) is not None and k not in GRID_PARAMS[args.method]]
    if unused:
        raise CSRecError(f"{', '.join(unused)} do(es) not apply to --method {args.method} (it uses "
                         f"{', '.join(('--' + k).replace('_', '-') for k in GRID_PARAMS[args.method]) or 'none of them'}); remove "
                         f"{'it' if len(unused) == 1 else 'them'} or choose the method that uses it")
    attributes = None
    if args.attributes is not None:
        try:
            attributes = resolve_attributes(args.attributes)
        except CSRecError as error:
            raise CSRecError(f"--attributes {args.attributes}: {error}") from None
    data = DataConfig(**_train_data(args), format=args.format, user_min_count=args.user_min_count,
                      item_min_count=args.item_min_count, exclude_history=args.exclude_history, attributes=attributes)
    train = TrainConfig(batch_size=args.batch_size, learning_rate=args.lr, max_epochs=args.epochs,
                        patience=args.patience, seed=args.seed, device=args.device, num_threads=args.threads,
                        layout=args.layout, batch_unit=args.batch_unit, selection_metric=args.selection_metric,
                        precision=args.precision, progress=log_level() != "quiet")
    try:  # this machine's checks before the store: a stored model must not hide a device it lacks
        device = resolve_device(train.device)
    except CSRecError as error:
        raise CSRecError(f"--device {args.device}: {error}") from None
    try:  # nor a precision it cannot train in
        check_precision(train.precision, device)
    except CSRecError as error:
        raise CSRecError(f"--precision {args.precision}: {error}") from None
    settings = TeacherSettings(m=args.m, subsample_ratio=args.subsample_ratio, ensemble=args.ensemble,
                               kl_direction=args.kl_direction, noise_term=args.noise_term,
                               noise_parametrization=args.noise_parametrization,
                               model_shared_type=args.model_shared_type or "embed_only",
                               generator_normalisation=args.generator_normalisation or "padded",
                               pretrain_epochs=args.pretrain_epochs,
                               pretrain_batch_size=args.pretrain_batch_size, s3rec_finetuning=args.finetuning)
    params = {k: getattr(args, k) for k in GRID_PARAMS[args.method] if getattr(args, k) is not None}
    if args.preset is not None:  # the ELECRec authors' script, under the options given
        from csrec.elecrec import SETTINGS, preset
        if args.method != "elecrec":
            raise CSRecError(f"--preset applies to --method elecrec, not {args.method}; remove it or use elecrec")
        values = preset(args.preset)
        params = {k: v for k, v in values.items() if k not in SETTINGS} | params
        settings = dataclasses.replace(settings, **{k: getattr(args, k) or values[k] for k in SETTINGS})
    job = student_job(args.method, base_job(data, args.model, train), params, settings)
    store_place = location(args.store, "--store")
    check_reachable(store_place, what="--store")
    if store_place.exists() and not store_place.is_dir():
        raise CSRecError(f"--store {args.store} is a file; give a folder for the store (default runs/store)")
    store = Store(store_place)
    work = work_dir(store.root)
    say = print if log_level() != "quiet" else (lambda *_, **__: None)
    for teacher in dependencies(job):
        state = "from the store" if store.verify(MODELS, teacher.key) else "training"
        say(f"teacher {teacher.describe()} [{teacher.key}]: {state}", flush=True)
        train_job(teacher, store, work)
    if store.verify(MODELS, job.key) and args.retrain:
        remove_tree(store.path(MODELS, job.key))
        say(f"--retrain: the stored model {job.key} is removed from {store.root} and trained again", flush=True)
    if store.verify(MODELS, job.key):
        say(stored_model_line(store, job), flush=True)
    else:
        say(f"student {job.describe()} [{job.key}]: training", flush=True)
    result = train_job(job, store, work)
    _write_out(out, job, store, result, vars(args))
    _print_metrics(result)
    return 0


def stored_model_line(store, job) -> str:
    """What `train` says when the store already holds the model: which, where, when, its recorded scores."""
    from csrec.jobs import MODELS, read_result

    result = read_result(store, job)
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(store.meta(MODELS, job.key).get("created", 0)))
    scores = ", ".join(f"valid {k} {v:.4f}" for k, v in sorted(result["valid"].items()) if k.endswith("@10"))
    return (f"student {job.describe()} [{job.key}]: from the store, not trained again ({store.path(MODELS, job.key)}, "
            f"trained {created}, best epoch {result['best_epoch']}, {scores}); --retrain trains it again")


TRAIN_FILES = ("config.json", "metrics.json", "per_user.parquet", "tensorboard")


def check_out(out: Path, overwrite: bool) -> None:
    """--out is new, an empty folder, or (with --overwrite) a folder that only an earlier `train` wrote:
    --overwrite never removes files it did not write (a mistyped --out must not cost a user a folder)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise CSRecError(f"--out {out} is a file; choose a folder")
    names = {p.name for p in out.iterdir()}
    if not names:
        return
    if not overwrite:
        raise CSRecError(f"--out {out} exists and is not empty; choose a new folder, or add --overwrite to replace "
                         "an earlier `train`'s files in it")
    foreign = sorted(names - set(TRAIN_FILES))
    if foreign or "config.json" not in names:
        what = ", ".join(foreign[:3]) if foreign else "and no config.json"
        raise CSRecError(f"--out {out} holds files that `train` does not write ({what}); --overwrite replaces only "
                         "an earlier `train`'s folder: choose another --out")


def _train_data(args: argparse.Namespace) -> dict:
    """--data as a file, or a registered name: its checked file, its paper protocol for the
    protocol options not given (csrec.datasets)."""
    from csrec import datasets

    given = {k: v for k in ("protocol", "max_len", "overlap_head") if (v := getattr(args, k)) is not None}
    if args.data not in datasets.REGISTRY:
        if Path(args.data).is_dir():
            raise CSRecError(f"--data {args.data} is a folder; give an interaction file (.inter, .txt, .csv) in it, "
                             "or a registered data set's name (`launch.py data list`)")
        if not Path(args.data).is_file():
            also = " and not a registered data set (`launch.py data list`)" if datasets.looks_like_name(args.data) else ""
            raise CSRecError(f"--data {args.data}: no such file{also}")
        return given | {"path": args.data}
    try:
        path = datasets.resolve(args.data)
    except CSRecError as error:
        raise CSRecError(f"--data {args.data}: {error}") from None
    return datasets.protocol_settings(datasets.REGISTRY[args.data], given) | given | {"path": str(path)}


def _write_out(out: Path, job, store, result: dict, arguments: dict) -> None:
    """config.json, metrics.json, per_user.parquet and tensorboard/, all or nothing (temp folder, then
    rename). An earlier `train`'s folder (--overwrite, checked by check_out) is replaced only once the
    new one is complete."""
    from csrec.jobs import MODELS
    from csrec.tensorboard import hparams, write_history

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    old = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.old"
    try:
        config = {"arguments": arguments, "job": job.config(), "key": job.key,
                  "data": dataclasses.asdict(job.data), "train": dataclasses.asdict(job.train)}
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        metrics = {k: result[k] for k in ("valid", "test", "best_epoch")}
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        shutil.copy(store.require(MODELS, job.key, f"the model of {job.describe()}") / "per_user.parquet",
                    tmp / "per_user.parquet")
        write_history(tmp / "tensorboard", result, job.describe(), hparams(job))
        if out.exists():
            os.rename(out, old)  # empty, or an earlier train's (check_out): removed below, once replaced
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _print_metrics(result: dict) -> None:
    print(f"best epoch {result['best_epoch']}")
    for split in ("valid", "test"):
        line = "  ".join(f"{k} {v:.4f}" for k, v in sorted(result[split].items()))
        print(f"{split:5s} {line}")


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="experiment YAML (see experiments/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change one setting of the spec: a dotted key and a YAML value, e.g. --set "
                        "train.max_epochs=10 --set storage=runs/x (repeatable; checked like the file; recorded in "
                        "the experiment's spec.yaml and experiment.json; a relative path in it is read against the "
                        "current directory)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (what is in the store, what to train) and stop")
    _add_backend(p)


def _add_resume(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="experiment directory (the spec's storage)")
    _add_backend(p)


def _add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else Ray in this process)")
    p.add_argument("--local", action="store_true", help="run in this process without Ray (debugging)")
    p.add_argument("--allow-failed", action="store_true",
                   help="exit 0 although trials failed (their cells are marked ‡ in the table); without it such "
                        "a run exits 3 and names them")


def _run_run(args: argparse.Namespace) -> int:
    from csrec.runner import run_experiment

    return run_experiment(args.spec, dry_run=args.dry_run, address=args.address, local=args.local,
                          allow_failed=args.allow_failed, overrides=tuple(args.overrides), **_runner_logs())


def _runner_logs() -> dict:
    """-q: the runner's progress lines go, the table stays (warnings and errors go to stderr anyway)."""
    return {"log": (lambda _line: None), "table_log": print} if log_level() == "quiet" else {}


def _run_resume(args: argparse.Namespace) -> int:
    from csrec.runner import SPEC_FILE, run_experiment

    directory = _experiment_directory(args.directory)
    if not (directory / SPEC_FILE).is_file():
        raise CSRecError(f"{directory} is not an experiment directory (no {SPEC_FILE}); give the spec's storage folder")
    # The experiment is where DIR is now (moved or copied), whatever storage its spec.yaml recorded.
    return run_experiment(directory / SPEC_FILE, address=args.address, local=args.local, directory=directory,
                          allow_failed=args.allow_failed, **_runner_logs())


def _experiment_directory(value: str):
    """An experiment directory that exists: a local Path, or a RemotePath whose bucket can be read."""
    directory = location(value, "experiment directory")
    check_reachable(directory, write=False, what="experiment directory")
    if not directory.is_dir():
        what = "is a file" if directory.exists() else "does not exist"
        raise CSRecError(f"{value} {what}; give an experiment directory (a spec's storage folder)")
    return directory


def _add_directory(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="experiment directory")


def _run_status(args: argparse.Namespace) -> int:
    from csrec.runner.status import status

    print(status(_experiment_directory(args.directory)))
    return 0


def metric_argument(text: str) -> str:
    """argparse type: a metric in any spelling (csrec.metrics.metric_name) -> ours."""
    from csrec.metrics import metric_name

    try:
        return metric_name(text)
    except CSRecError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_table(p: argparse.ArgumentParser) -> None:
    from csrec.metrics import METRIC_NAMES

    p.add_argument("directory", help="experiment directory")
    p.add_argument("--format", default="md", choices=["md", "latex", "csv", "published"],
                   help="Markdown, LaTeX, CSV, or published: each cell beside the paper's Table 2 (Last.FM, Yelp)")
    p.add_argument("--metric", nargs="+", default=["recall@10", "ndcg@10"], type=metric_argument,
                   help=f"metrics (columns per model): NAME@K with NAME one of {', '.join(METRIC_NAMES)}, any case; "
                        "RecBole's NDCG@10, Recall@10, MRR@10 and Hit@10 (= recall@10: one target per user) are taken")
    p.add_argument("--vs", default="softrec", choices=["softrec", "base"], type=name_in(["softrec", "base"]),
                   help="the method every other is tested against (any case)")
    p.add_argument("--test", default="ttest",
                   choices=["ttest", "wilcoxon", "randomisation", "seed-permutation", "seed-welch", "seed-ttest"],
                   help="per user (the paper's; do these trained models differ on these users?): ttest, wilcoxon, "
                        "randomisation; seed-level (is the method better across training seeds, on this test set?): "
                        "seed-permutation (exact, on the runs' means; >= 4 runs a method reach p < 0.05), seed-welch "
                        "(Welch's t on the runs' means), seed-ttest (per-seed means paired by seed, >= 5 seeds)")
    p.add_argument("--correction", choices=["holm"],
                   help="multiple-comparison correction across the table (default: none)")
    _add_table_choices(p)


def _add_table_choices(p: argparse.ArgumentParser) -> None:
    """What the numbers are: the tie rule and the runs behind them (table and report)."""
    p.add_argument("--ties", default="expected", choices=["expected", "pessimistic"],
                   help="items scored exactly as the target: broken at random (expected metric) or counted against it")
    p.add_argument("--exclude-search-run", action="store_true",
                   help="report the selected configuration's seed reruns only, not the search run that won the selection")


def _run_table(args: argparse.Namespace) -> int:
    from analysis import comparison_table

    print(comparison_table(args.directory, fmt=args.format, metrics=tuple(args.metric), versus=args.vs,
                           test=args.test, correction=args.correction, ties=args.ties,
                           exclude_search_run=args.exclude_search_run))
    return 0


def _add_power(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="experiment directory")
    p.add_argument("--format", default="md", choices=["md", "csv"], help="Markdown or CSV")
    p.add_argument("--metric", nargs="+", default=["recall@10", "ndcg@10"], type=metric_argument,
                   help="metrics, as for `table`")
    p.add_argument("--vs", default="softrec", choices=["softrec", "base"], type=name_in(["softrec", "base"]),
                   help="the reference method (any case)")
    p.add_argument("--power", default=0.8, type=finite, help="the power to plan for, at the tables' level of 0.05")
    _add_table_choices(p)


def _run_power(args: argparse.Namespace) -> int:
    from analysis.formats import seed_power_table

    print(seed_power_table(args.directory, fmt=args.format, metrics=tuple(args.metric), versus=args.vs,
                           power=args.power, ties=args.ties, exclude_search_run=args.exclude_search_run), end="")
    return 0


def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", nargs="+", help="experiment directory (several with --study)")
    p.add_argument("--out", help="Markdown file to write (default DIR/report.md; for DIR on object storage "
                                 "./report-NAME/report.md); the HTML and figures go beside it")
    p.add_argument("--study", choices=["m", "subsample_ratio", "noise_term", "user_fraction"],
                   help="compare the experiments given, which differ in this setting (Fig. 4b, 5, 6, 7); needs --out "
                        "(default: none, a report of one experiment)")
    p.add_argument("--labels", nargs="+", type=float,
                   help="with --study: the setting's value per directory (default: read from the stored job configs)")
    p.add_argument("--x", default="value", choices=["value", "sparsity"],
                   help="with --study: plot against the setting or the data's sparsity")
    p.add_argument("--no-html", action="store_true", help="write the Markdown only")
    _add_table_choices(p)


def _run_report(args: argparse.Namespace) -> int:
    from analysis import write_report, write_study_report

    for out in [Path(args.out)] if args.out is not None else []:
        if out.is_dir() or (out.exists() and not _written_by_report(out)):
            raise CSRecError(f"--out {out} exists and is {'a folder' if out.is_dir() else 'not a report'}; give a new "
                             "file name (a report is written over only by another report)")
    if args.study is None:
        if len(args.directory) != 1:
            raise CSRecError("report takes one experiment directory; add --study SETTING --out PATH to compare several")
        path = write_report(args.directory[0], out=args.out, html_too=not args.no_html, ties=args.ties,
                            exclude_search_run=args.exclude_search_run)
    else:
        if args.out is None:
            raise CSRecError("--study needs --out PATH (where the study's Markdown goes)")
        path = write_study_report(args.directory, args.study, args.out, labels=args.labels, x=args.x,
                                  html_too=not args.no_html)
    print(f"report: {path}" + ("" if args.no_html else f" (and {path.with_suffix('.html')})"))
    return 0


def _written_by_report(path: Path) -> bool:
    """Whether `path` begins as `report` begins its Markdown (# Report: / # Study:)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.readline().startswith(("# Report: ", "# Study: "))
    except OSError:
        return False


def _add_data(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION",
                               help="list: every registered data set; fetch NAME...: download; path NAME: its file")
    actions.add_parser("list", help="every name: present or not (sha256 checked), size, source, protocol, terms")
    fetch = actions.add_parser("fetch", help="download into the cache ($CSREC_DATA, else ~/.cache/csrec), checked")
    fetch.add_argument("names", nargs="+", metavar="NAME", help="registered data sets (with their attribute files)")
    path = actions.add_parser("path", help="print the file a name resolves to (shipped, cached, else downloaded)")
    path.add_argument("name", help="a registered data set")
    path.add_argument("--attributes", action="store_true", help="the item attribute file instead of the interactions")


def _run_data(args: argparse.Namespace) -> int:
    from csrec import datasets

    if args.action == "list":
        print(f"cache: {datasets.cache_dir()} (set CSREC_DATA to use another folder)")
        for record in datasets.REGISTRY.values():
            print("\n".join(datasets.describe(record)))
    elif args.action == "fetch":
        for name in dict.fromkeys(args.names):
            for path in datasets.fetch(name):
                print(f"{name}: {path}")
    else:
        print(datasets.resolve(args.name, attributes=args.attributes))
    return 0


def _add_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", nargs="?", default="runs",
                   help="folder to look in: its experiments, and those one level further down")


def _run_list(args: argparse.Namespace) -> int:
    from csrec.runner.status import experiments_under, list_lines

    folder = Path(args.directory)
    if not folder.is_dir():
        raise CSRecError(f"{folder} is not a folder; give the folder that holds experiment directories (default runs)")
    found = experiments_under(folder)
    print("\n".join(list_lines(found)) if found else f"no experiment directories under {folder}")
    return 0


def _run_teachers(args: argparse.Namespace) -> int:
    from csrec.runner.teacher_quality import teacher_quality, to_markdown

    frame = teacher_quality(args.directory)
    if frame.empty:
        raise CSRecError(f"{args.directory}: no finished soft-label student in the store yet")
    print(to_markdown(frame))
    return 0


COMMANDS = {
    "train": (_add_train, _run_train, "train one model (Base or a soft-label method) and evaluate it"),
    "run": (_add_run, _run_run, "run an experiment spec: teachers, student grid, seeds, table"),
    "resume": (_add_resume, _run_resume, "go on with an interrupted experiment; nothing finished is redone"),
    "status": (_add_directory, _run_status, "what an experiment has done, is doing and has failed"),
    "table": (_add_table, _run_table, "Table 2-style comparison with paired significance markers"),
    "power": (_add_power, _run_power, "seeds needed: per cell, the difference to the reference, each side's seed sd "
                                      "and the runs per method that would detect it"),
    "teachers": (_add_directory, _run_teachers, "each soft-label student's teacher module as a recommender, next to the student"),
    "report": (_add_report, _run_report, "Markdown/HTML report: tables, popular/niche and input-length plots, plan, failures"),
    "data": (_add_data, _run_data, "data sets by name: list them, fetch them (checked against sha256), print a file's path"),
    "list": (_add_list, _run_list, "the experiments under a folder: name, stage, trials finished, last update"),
}


class Parser(argparse.ArgumentParser):
    """argparse whose usage mistakes are one line too (`COMMAND --help` shows the usage)."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


class DefaultsHelp(argparse.HelpFormatter):
    """--help ends each option's line with its default, unless the text already says it (an option
    whose default depends on others says so in its words). Flags (on when given) have none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.nargs == 0 or action.default in (None, argparse.SUPPRESS)
                or "default" in text):
            return text
        shown = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
        return text + f" (default: {shown})".replace("%", "%%")


def build_parser(prog: str = "csrec") -> Parser:
    """The command line: one subcommand each of COMMANDS, each with -v / -q."""
    parser = Parser(prog=prog, description=__doc__.split("\n\n")[0].replace("\n", " "), formatter_class=DefaultsHelp)
    parser.add_argument("--version", action="version", version=f"csrec {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, _run, help_text) in COMMANDS.items():
        command = commands.add_parser(name, help=help_text, description=help_text, formatter_class=DefaultsHelp)
        add_arguments(command)
        loudness = command.add_mutually_exclusive_group()
        loudness.add_argument("-v", "--verbose", action="store_true",
                              help=f"also Ray's and Tune's own output (default: ${LOG_LEVEL_ENV}, else our lines only)")
        loudness.add_argument("-q", "--quiet", action="store_true",
                              help="results, warnings and errors only (no progress lines)")
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None, prog: str = "csrec") -> int:
    """`csrec` (the console script) and `python launch.py`: parse, run the command, turn a user's
    mistake into one line and its exit status."""
    from csrec.runner.signals import sigterm_as_ctrl_c

    args = build_parser(prog).parse_args(argv)
    level = os.environ.get(LOG_LEVEL_ENV)
    if args.verbose or args.quiet:  # read by log_level here and by the runner (csrec.runner.quiet_ray)
        os.environ[LOG_LEVEL_ENV] = "verbose" if args.verbose else "quiet"
    previous = sigterm_as_ctrl_c()  # Slurm, Kubernetes and `timeout` stop a driver with SIGTERM: as Ctrl-C
    show = warnings.showwarning
    warnings.showwarning = _one_line_warning  # "warning: ..." lines, not Python's source-line format
    try:
        log_level()  # a bad CSREC_LOG_LEVEL is one line, before anything runs
        return COMMANDS[args.command][1](args) or 0
    except CSRecError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # the machine or the storage: full, read-only, unreachable, credentials expired
        print(f"error: {first_line(error)}; finished work is kept: fix the disk, permissions, network or credentials "
              f"and run the command again (`{prog} resume DIR` for a run)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: finished work is kept; `{prog} resume DIR` goes on from there", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = show
        if level is None:  # this call's -v / -q end with it (main runs many times in one test process)
            os.environ.pop(LOG_LEVEL_ENV, None)
        else:
            os.environ[LOG_LEVEL_ENV] = level
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def console_script() -> int:
    """The `csrec` command pip installs (setup.cfg's entry point)."""
    sys.exit(main())
