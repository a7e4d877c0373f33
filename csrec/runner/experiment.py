"""The experiment directory and the stages every backend goes through, in order.

    teachers (each model once, from the store when there) -> Base records -> search trials
    (grid, or TPE per cell) -> seed reruns of each cell's best point -> comparison table

Each stage skips what the store already holds, so `run` after a crash, `resume`, or a second `run`
of the same spec redo nothing that finished. A backend supplies `train_models` (teachers as
tasks), `run_trials` (a list of students) and `width` (how many trials it runs at once, the size
of a TPE round; the TPE search itself, csrec.runner.tpe, is the same for every backend).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Protocol

from csrec.config import ExperimentSpec, load_spec, read_yaml, spec_to_yaml
from csrec.datafiles import fingerprint, manifest, publish
from csrec.datasets import check_unchanged
from csrec.errors import CSRecError, FailedTrials
from csrec.jobs import MODELS
from csrec.methods import Job, dependencies
from csrec.runner.plan import Plan, Trial, make_plan, to_json, tpe_teachers, trial_for
from csrec.runner.tpe import run_tpe
from csrec.runner.trials import TRIALS, best_points, record_stored, trial_result
from csrec.storage import RemotePath, check_reachable, location, work_dir
from csrec.store import Store, config_key, read_json, write_json_atomic, write_text_atomic

SPEC_FILE = "spec.yaml"
FAILED_FILE = "failed.json"  # trial key -> what failed, for the trials a run left without a record
# Fields that may change between a run and its resume: how, not what, is computed (tracking too).
_RUNTIME_KEYS = ("teacher_resources", "trial_resources", "max_concurrent_trials", "storage", "reuse", "tracking")


class Backend(Protocol):
    def check(self, spec: ExperimentSpec) -> None: ...
    def check_nodes(self, experiment: "Experiment") -> None: ...
    def train_models(self, jobs: list[Job], experiment: "Experiment") -> None: ...
    def run_trials(self, stage: str, trials: list[Trial], experiment: "Experiment") -> dict[str, str]: ...
    def width(self, experiment: "Experiment") -> int: ...


@dataclasses.dataclass
class Experiment:
    spec: ExperimentSpec
    directory: Path | RemotePath  # a local folder or a folder on object storage (csrec.storage)
    log: Callable = print

    def __getstate__(self):  # Tune pickles its callbacks (LiveView holds the experiment): not the printer
        return {k: v for k, v in self.__dict__.items() if k != "log"} | {"log": print}

    @property
    def store(self) -> Store:
        return Store(self.directory / "store")

    @property
    def data_files(self) -> dict[str, str]:
        """{path: fingerprint} of the spec's data files, given to every task (csrec.datafiles)."""
        return manifest(self.spec.datasets.values())

    @property
    def work_dir(self) -> Path:
        """Epoch checkpoints: store/work, or a folder on this node for an experiment on object storage."""
        return work_dir(self.directory / "store")

    def adopt(self, jobs: list[Job], log=print) -> None:
        """Copy into this store the models of `jobs` (and of their teachers) that it lacks and a
        store of `spec.reuse` holds intact: a model's key is the resolved config that makes it, so
        a copy is the model this experiment would train. A reused experiment that has gone since
        this one started is said and passed over: what it held is trained here."""
        sources = reuse_stores(self.spec, log)
        if not sources:
            return
        wanted = {j.key for job in jobs for j in (job, *dependencies(job))} - set(self.store.keys(MODELS))
        copied: dict[str, int] = {}
        for key in sorted(wanted):
            source = next((s for s in sources if self.store.copy_from(s, MODELS, key)), None)
            if source is not None:
                copied[str(source.root)] = copied.get(str(source.root), 0) + 1
        for root, count in copied.items():
            log(f"reuse: {count} model(s) copied from {root}")

    @classmethod
    def open(cls, spec_path: str | Path, directory: str | Path | None = None, log=print,
             overrides: tuple[str, ...] = ()) -> "Experiment":
        """Load and check the spec; refuse a directory that belongs to another spec. `directory`
        (resume) replaces the spec's storage: an experiment resumes where it now is, moved or copied.
        On object storage the bucket is checked first (exists, may be listed and written). `overrides`:
        `run --set KEY=VALUE` changes to the spec file (config.load_spec)."""
        # The experiment's own spec.yaml (a resume) is read as recorded: fields it lacks mean what they meant then.
        recorded = directory is not None and (str(location(spec_path).resolve())
                                              == str((location(directory) / SPEC_FILE).resolve()))
        spec = read_recorded_spec(location(directory), log) if recorded else load_spec(spec_path, overrides=overrides)
        if directory is not None:
            spec = dataclasses.replace(spec, storage=str(location(directory).resolve()))
        directory = spec.directory
        check_reachable(directory)
        if directory.exists() and not directory.is_dir():
            raise CSRecError(f"storage: {directory} is a file; give the path of a folder for the experiment")
        if (directory / "experiment.json").exists() or (directory / SPEC_FILE).exists():
            _check_identity(directory, spec, log)
            plan = directory / "plan.json"
            if plan.is_file():  # the data files it started with, by content
                recorded = read_json(plan, log, "the data files cannot be checked against those the experiment "
                                           "started with; it is written again")
                if recorded is not None:
                    check_unchanged(recorded.get("datasets", {}), spec.datasets)
        elif directory.exists() and any(directory.iterdir()):
            raise CSRecError(f"storage: {directory} exists and is not an experiment directory (no experiment.json "
                             f"or {SPEC_FILE}); choose another storage folder")
        else:  # a new experiment: a `reuse` entry that names nothing is a mistake in the spec
            reuse_stores(spec, log=None)
        check_inputs(spec)
        return cls(spec, directory, log)

    def initialise(self, spec_path: str | Path) -> None:
        """Record the spec (resolved, so that `resume` works from any directory) and its fingerprint.
        Both are rewritten on every run: a spec changed in how it runs only (device, threads,
        resources) is the one a later resume uses."""
        self.directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.directory / SPEC_FILE, spec_to_yaml(self.spec))
        write_json_atomic(self.directory / "experiment.json",
                          {"fingerprint": spec_fingerprint(self.spec), "spec": str(location(spec_path).resolve()),
                           "name": self.spec.name})

    def progress(self, **fields) -> None:
        """progress.json: what `launch.py status` shows while the driver runs (rewritten if damaged)."""
        path = self.directory / "progress.json"
        current = read_json(path, self.log, "it is written again") or {}
        write_json_atomic(path, current | fields | {"updated": time.time(), "pid": os.getpid()})

    def note_failures(self, trials: list[Trial], errors: dict[str, str]) -> None:
        """failed.json: add the trials left without a record (with their error), drop those that have one."""
        path = self.directory / FAILED_FILE
        failed = read_json(path, self.log, "it is written again from this run's trials") or {}
        for trial in trials:
            if trial_result(self.store, trial) is not None:
                failed.pop(trial.job.key, None)
            else:
                failed[trial.job.key] = trial.record() | {
                    "label": trial.label(), "error": errors.get(trial.job.key, "no result (the error is in the log)")}
        write_json_atomic(path, failed)

    def failures(self) -> dict[str, dict]:
        """The trials of failed.json still without a record: key -> what failed."""
        failed = read_json(self.directory / FAILED_FILE, self.log, "failures of earlier runs are not known") or {}
        return {key: entry for key, entry in failed.items() if not self.store.verify(TRIALS, key)}


class Recording:
    """A backend whose `run_trials` also keeps failed.json: every stage and TPE round goes through it."""

    def __init__(self, backend: Backend, experiment: Experiment):
        self.backend, self.experiment = backend, experiment

    def train_models(self, jobs: list[Job], experiment: Experiment) -> None:
        self.backend.train_models(jobs, experiment)

    def width(self, experiment: Experiment) -> int:
        return self.backend.width(experiment)

    def run_trials(self, stage: str, trials: list[Trial], experiment: Experiment) -> dict[str, str]:
        errors = self.backend.run_trials(stage, trials, experiment) or {}
        experiment.note_failures(trials, errors)
        return errors


def failed_trials_error(experiment: Experiment, failures: dict[str, dict]) -> FailedTrials:
    listed = "; ".join(f"{entry['label']} ({entry['error']})" for entry in failures.values())
    return FailedTrials(f"{len(failures)} trial(s) failed: {listed}; the table marks their cells ‡ (selected "
                        f"without them); fix the cause and `launch.py resume {experiment.directory}` (finished work "
                        "is kept), or add --allow-failed to accept the table as it is")


def teacher_failed(job: Job, error: str) -> CSRecError:
    """A teacher out of retries: its students cannot run, so the run stops here, saying which."""
    return CSRecError(f"teacher {job.describe()} [{job.key}] failed: {error}; the models trained so far are kept: "
                      "fix the cause and `launch.py resume DIR`")


def check_inputs(spec: ExperimentSpec) -> None:
    """What a run would refuse later, refused before anything is written: every job of the plan
    (its config), and every data set read as training reads it (a bad file found by the first job
    used to leave a folder that the corrected spec was then refused as another spec's)."""
    from csrec.data import load_sequence_data

    make_plan(spec)
    for name, config in spec.datasets.items():
        try:
            load_sequence_data(config)
        except CSRecError as error:
            raise CSRecError(f"datasets.{name}: {error}") from None


def _check_identity(directory: Path, spec: ExperimentSpec, log) -> None:
    """The experiment in `directory` is this spec's: the fingerprint recorded in experiment.json, or
    the recorded spec.yaml equal to this spec in everything that is computed. A lost or damaged
    experiment.json is rebuilt from spec.yaml (said); with neither readable the directory is refused."""
    known = read_json(directory / "experiment.json")
    fingerprint = spec_fingerprint(spec)
    if known is not None and known.get("fingerprint") == fingerprint:
        return
    if known is not None and _recorded_spec_matches(directory, known, fingerprint):
        return
    recorded = _recorded_spec(directory)
    if recorded is not None and _computes_the_same(recorded, spec):
        if known is None:
            log(f"{directory / 'experiment.json'} is missing or unreadable; rebuilt from {SPEC_FILE}, which is this "
                "spec's")
            return
        if known.get("fingerprint") == spec_fingerprint(recorded):
            log(f"the spec differs from the one {directory} was run with in how it runs only (device, threads, "
                "progress); going on with it")
            return
        # The recorded spec is this one, but its fingerprint is not what this version computes for it:
        # an experiment made by an earlier csrec (whose specs had fewer fields). Its spec.yaml decides.
        log(f"{directory} was made by an earlier version of csrec; its {SPEC_FILE} is this spec, so it goes on "
            "(experiment.json is written again)")
        return
    if known is None and recorded is None:
        raise CSRecError(f"storage: {directory} has neither a readable experiment.json nor a readable {SPEC_FILE}, "
                         f"so its spec is unknown; put the spec it was run with at {directory / SPEC_FILE} to resume "
                         "it, or choose another storage folder")
    name = (known or {}).get("spec") or directory / SPEC_FILE
    if recorded is not None and recorded.train.layout != spec.train.layout and _computes_the_same(
            recorded, dataclasses.replace(spec, train=dataclasses.replace(spec.train, layout=recorded.train.layout))):
        raise CSRecError(f"storage: {directory} was run in the {recorded.train.layout} layout and this spec asks for "
                         f"the {spec.train.layout} layout (a spec without train.layout means sequence now, prefix before); add `layout: "
                         f"{recorded.train.layout}` to the spec's train section to go on with it, or give this spec "
                         "another storage folder")
    raise CSRecError(f"storage: {directory} holds the experiment of another spec ({name}); "
                     "give this spec its own storage directory, or resume that one")


def read_recorded_spec(directory: Path, log=None) -> ExperimentSpec:
    """The experiment's own spec.yaml, read as recorded (config.load_spec): a train section without
    `layout` was written before the layouts existed and means the prefix layout. Unless plan.json
    says otherwise: a spec.yaml put there by hand (a lost one replaced by the spec file, as
    docs/RELIABILITY.md advises) means today's default, and then the planned keys are the sequence
    layout's; the reading whose keys the plan holds is the one taken."""
    path = directory / SPEC_FILE
    legacy = load_spec(path, recorded=True)  # a mapping with a train mapping, or it raised
    train = read_yaml(path).get("train")
    planned = read_json(directory / "plan.json") or {}
    keys = {entry.get("key") for part in ("teachers", "trials") for entry in planned.get(part, [])
            if isinstance(entry, dict)} if isinstance(planned, dict) else set()
    if "layout" in (train or {}) or not keys or _planned_keys(legacy) & keys:
        return legacy
    current = load_spec(path)
    if _planned_keys(current) & keys:
        if log is not None:
            log(f"{path} has no train.layout and the keys in plan.json are those of the {current.train.layout} layout "
                "(today's default), not of the prefix layout of specs recorded before the layouts: read as such")
        return current
    return legacy


def _planned_keys(spec: ExperimentSpec) -> set[str]:
    plan = make_plan(spec)
    return {job.key for job in plan.teachers} | {trial.job.key for trial in plan.trials}


def _recorded_spec(directory: Path) -> ExperimentSpec | None:
    try:
        return read_recorded_spec(directory)
    except CSRecError:
        return None


def _computes_the_same(a: ExperimentSpec, b: ExperimentSpec) -> bool:
    """Equal but for how they run: the fingerprint's fields, with train's runtime fields left out too."""
    def substance(spec: ExperimentSpec) -> str:
        return config_key({"spec": spec_fingerprint(spec, train_runtime=False), "train": spec.train.key_fields})

    return substance(a) == substance(b)


def reuse_stores(spec: ExperimentSpec, log=print) -> list[Store]:
    """The stores `spec.reuse` names (an experiment directory or a store root each). A folder that
    is neither is an error with `log=None` (a spec being started), else said and passed over."""
    stores = []
    for folder in spec.reuse_directories:
        if (root := store_root(folder)) is not None:
            stores.append(Store(root))
        elif log is None:
            raise CSRecError(f"reuse: {folder} is neither an experiment directory nor a store (no store/models "
                             "or models folder in it); fix the path, run that experiment first, or remove the entry")
        else:
            log(f"reuse: {folder} holds no models any more (moved or deleted?); what it held is trained here")
    return stores


def store_root(folder):
    """The store of `folder`, an experiment directory or a store root; None when it is neither."""
    root = folder / "store" if (folder / "store" / "models").is_dir() else folder
    return root if (root / "models").is_dir() else None


def spec_fingerprint(spec: ExperimentSpec, by_content: bool = True, train_runtime: bool = True) -> str:
    """What makes two specs the same experiment: every field but the runtime ones, each data set by
    its file's content (a name and a path to the same file, or a moved file, are the same data).
    by_content=False gives the fingerprint of experiments made before that (data by path);
    train_runtime=False leaves the train section out (compared by its key fields instead)."""
    raw = {k: v for k, v in dataclasses.asdict(spec).items() if k not in _RUNTIME_KEYS}
    if not spec.scheduler.early_stopping:  # fifo, the default: experiments made before `scheduler` keep theirs
        del raw["scheduler"]
    if not train_runtime:
        del raw["train"]
    if by_content:
        for data in raw["datasets"].values():
            data["path"] = fingerprint(data["path"])
            attributes = data.pop("attributes")  # absent (None) as before the key existed
            if attributes is not None:
                data["attributes"] = fingerprint(attributes)
    return config_key(raw)


def _recorded_spec_matches(directory: Path, known: dict, fingerprint: str) -> bool:
    """An experiment made before data sets counted by content: its recorded spec (spec.yaml) is the
    one its fingerprint names, and by content it is the given spec's."""
    recorded = _recorded_spec(directory)
    if recorded is None:
        return False
    return (spec_fingerprint(recorded, by_content=False) == known.get("fingerprint")
            and spec_fingerprint(recorded) == fingerprint)


def missing(jobs: list[Job], store: Store) -> list[Job]:
    return [j for j in jobs if not store.verify(MODELS, j.key)]


def all_teachers(plan: Plan) -> list[Job]:
    jobs = {j.key: j for j in plan.teachers}
    for cell in plan.tpe_cells:
        for job in tpe_teachers(plan.spec, cell):
            jobs.setdefault(job.key, job)
    return list(jobs.values())


def seed_trials(plan: Plan, store: Store) -> list[Trial]:
    """Each cell's best search point (validation NDCG@10) rerun on the spec's other seeds, listed
    seed by seed: every cell's second seed before any cell's third, so that a run cut short has its
    cells at the same number of seeds. Both backends start them in this order."""
    searched = plan.grid_trials + searched_tpe_trials(plan, store)
    best = best_points(searched, store)
    return [trial_for(plan.spec, cell, point, seed, "seeds")
            for seed in plan.spec.seeds[1:] for cell, point in sorted(best.items())]


def searched_tpe_trials(plan: Plan, store: Store) -> list[Trial]:
    """The TPE trials that finished (their points are recorded in the store)."""
    found = []
    for key in store.keys(TRIALS):
        if not store.verify(TRIALS, key):  # damaged: removed, and written again from its model
            continue
        record = json.loads((store.path(TRIALS, key) / "result.json").read_text())
        cell = (record["dataset"], record["model"], record["method"])
        if cell in plan.tpe_cells and record["stage"] == "search":
            point = {k: v for k, v in record["params"].items() if v is not None}
            found.append(trial_for(plan.spec, cell, point, record["seed"], "search"))
    return found


def write_dataset_summaries(experiment: Experiment) -> None:
    """datasets/<name>.json: item training counts, for the popular/niche analysis (files only)."""
    from csrec.data import load_sequence_data
    from csrec.data.protocols import train_item_counts

    for name, config in experiment.spec.datasets.items():
        path = experiment.directory / "datasets" / f"{name}.json"
        if read_json(path, experiment.log, "it is written again") is None:
            data = load_sequence_data(config)
            write_json_atomic(path, {"n_items": data.n_items, "n_sequences": len(data.sequences),
                                     "item_train_counts": train_item_counts(data).tolist()})


def execute(experiment: Experiment, backend: Backend, log=print) -> Plan:
    """Every stage, in order; each one skips what is already in the store."""
    plan = make_plan(experiment.spec)
    for note in plan.notes:
        log(note)
    write_text_atomic(experiment.directory / "plan.json", to_json(plan))
    store = experiment.store
    backend = Recording(backend, experiment)
    experiment.note_failures([], {})  # failed.json readable from here on (a damaged one is said and replaced)
    write_dataset_summaries(experiment)
    publish(experiment.data_files, store, log)  # on object storage, for the nodes without the files
    teachers = all_teachers(plan)
    experiment.adopt(teachers + [t.job for t in plan.trials], log)
    todo = missing(teachers, store)
    log(f"teachers: {len(teachers) - len(todo)} of {len(teachers)} in the store, {len(todo)} to train")
    experiment.progress(stage="teachers", teachers_total=len(teachers))
    if todo:
        backend.train_models(todo, experiment)
    record_stored(plan.trials, store)  # Base runs (trained as teachers) and models copied in
    grid = plan.grid_trials
    pending = [t for t in grid if trial_result(store, t) is None]
    log(f"search: {len(grid) - len(pending)} of {len(grid)} trials finished, {len(pending)} to run")
    experiment.progress(stage="search", trials_total=len(grid))
    if pending:
        backend.run_trials("search", pending, experiment)
    for cell, budget in plan.tpe_cells.items():
        experiment.progress(stage="tpe " + "/".join(cell), tpe_budget=budget)
        run_tpe(cell, budget, experiment, backend, log)
    reruns = seed_trials(plan, store)
    experiment.adopt([t.job for t in reruns], log)
    pending = record_stored(reruns, store)
    log(f"seeds: {len(reruns) - len(pending)} of {len(reruns)} reruns of the best points finished, {len(pending)} to run")
    experiment.progress(stage="seeds", reruns_total=len(reruns))
    needed = missing(list({j.key: j for t in pending for j in dependencies(t.job)}.values()), store)
    if needed:  # teachers are shared across seeds, so this is empty unless the store lost one
        backend.train_models(needed, experiment)
    if pending:
        backend.run_trials("seeds", pending, experiment)
    remove_finished_work(experiment)
    experiment.progress(stage="done")
    return plan


def remove_finished_work(experiment: Experiment) -> None:
    """Epoch checkpoints of jobs whose model is in the store (a run stopped between storing the model
    and removing its checkpoint, or a model copied in): nothing will resume from them."""
    folder = experiment.work_dir
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_dir() and experiment.store.verify(MODELS, path.name):
            shutil.rmtree(path, ignore_errors=True)
