"""Per-epoch training curves as TensorBoard event files under the experiment directory.

Every training job the runner starts (teachers and students alike) writes, after each epoch, its
training loss, validation NDCG@10 (that epoch's and the best so far) and the epoch's seconds to
`<experiment>/tensorboard/<stage>/<name>/`, one folder per job: stage is "teachers", "search",
"seeds" or a TPE round's stage; name is the job's label and the start of its key. Open them with

    tensorboard --logdir <experiment>/tensorboard

A job resumed from its epoch checkpoint writes a new event file in the same folder, its steps going
on from the checkpoint's epoch. On object storage the event file is written on the node (under
csrec.storage.cache_dir) and uploaded whole after every epoch, so the bucket's copy moves too.
tensorboardX writes the files (torch.utils.tensorboard would need the tensorboard package);
`read_scalars` reads them back without TensorBoard.
"""

from __future__ import annotations

import hashlib
import re
import struct
import uuid
import warnings
from pathlib import Path

from csrec.storage import RemotePath, cache_dir, location, upload

FOLDER = "tensorboard"
TAGS = {"train_loss": "train/loss", "valid_score": "valid/ndcg_10", "best_score": "valid/best_ndcg_10",
        "seconds": "time/epoch_seconds"}


def job_folder(experiment_dir, stage: str, label: str, key: str) -> "Path | RemotePath":
    """`<experiment>/tensorboard/<stage>/<label as a plain name>-<key[:8]>` (a path or a URI)."""
    name = re.sub(r"[^A-Za-z0-9._=-]+", "_", label).strip("_")[:80]
    return location(experiment_dir) / FOLDER / re.sub(r"[^A-Za-z0-9._-]+", "_", stage) / f"{name}-{key[:8]}"


class EpochScalars:
    """An on_epoch_end callback of csrec.train.fit: one TensorBoard step per epoch (step = epoch)."""

    def __init__(self, folder):
        from tensorboardX import SummaryWriter

        self.remote = folder if isinstance(folder, RemotePath) else None
        self.local = (cache_dir() / FOLDER / hashlib.sha256(str(folder).encode()).hexdigest()[:16] if self.remote
                      else Path(folder))
        self.local.mkdir(parents=True, exist_ok=True)
        # Its own suffix: tensorboardX names a file by the second and the host, so a retry in the same
        # second would write into an earlier file and find no file of its own to upload.
        suffix = f".{uuid.uuid4().hex[:8]}"
        self.writer = SummaryWriter(logdir=str(self.local), flush_secs=30, filename_suffix=suffix)  # opens its file
        self.files = sorted(self.local.glob(f"events.out.tfevents.*{suffix}"))  # this writer's, uploaded
        self.upload_failed = False

    def __call__(self, record) -> None:
        for field, tag in TAGS.items():
            self.writer.add_scalar(tag, float(getattr(record, field)), global_step=record.epoch)
        self.writer.flush()  # a curve that moves while the job trains
        if self.remote is not None:  # this writer's file whole (a few kB): an object is replaced, never appended to
            try:
                for events in self.files:
                    upload(events, self.remote / events.name)
            except OSError as error:  # curves are not results: a failed upload never ends the training
                if not self.upload_failed:
                    warnings.warn(f"tensorboard: could not upload the curves to {self.remote} ({error}); training goes "
                                  "on, and the next epoch's upload tries again")
                self.upload_failed = True

    def close(self) -> None:
        self.writer.close()


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every event file under `folder`, in file then step order."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(folder).rglob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset + 12 <= len(data):  # TFRecord: length (u64), its crc (u32), payload, payload crc (u32)
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            payload = data[offset + 12:offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return scalars


def hparams(job) -> dict:
    """What TensorBoard's HParams tab compares a job on: model, method, seed, its grid values (beta,
    temperature, alpha, ...), layout and the training settings a grid may vary."""
    values = {"model": job.model, "method": job.objective, "seed": int(job.seed), "layout": job.train.layout,
              "learning_rate": float(job.train.learning_rate), "batch_size": int(job.train.batch_size),
              "max_epochs": int(job.train.max_epochs)}
    return values | {name: float(value) for name, value in job.params}


def final_metrics(result: dict) -> dict:
    """A result.json's validation and test metrics as HParams metrics: `final/valid_ndcg_at_10`,
    `final/test_recall_plus_at_10`, ... (TensorBoard tags take no '@' or '+'; tensorboardX would
    rewrite them on the scalars but not in the HParams session, which would then find no values)."""
    return {f"final/{split}_{name.replace('+', '_plus').replace('@', '_at_')}": float(value)
            for split in ("valid", "test") for name, value in sorted((result.get(split) or {}).items())}


def write_hparams(folder, values: dict, metrics: dict) -> None:
    """One HParams session in `folder` (a job's curve folder, local or on object storage): its
    hyperparameters and final metrics, so that TensorBoard's HParams tab tabulates a grid's trials.
    Written once: a folder that has its session keeps it (a trial found in the store, a resume)."""
    from tensorboardX import SummaryWriter

    remote = folder if isinstance(folder, RemotePath) else None
    local = (cache_dir() / FOLDER / hashlib.sha256(str(folder).encode()).hexdigest()[:16] if remote
             else Path(folder))
    if (remote or local).is_dir() and any(p.name.endswith(".hparams") for p in (remote or local).iterdir()):
        return
    local.mkdir(parents=True, exist_ok=True)
    suffix = ".hparams"  # how a folder's session is recognised (above)
    with SummaryWriter(logdir=str(local), filename_suffix=suffix) as writer:
        # name=".": in the job's own folder, beside its curves (tensorboardX makes a subfolder by default)
        writer.add_hparams(values, metrics, name=".")
    if remote is not None:
        for events in local.glob("events.out.tfevents.*"):
            upload(events, remote / events.name)


def write_history(folder: Path, result: dict, label: str, values: dict) -> None:
    """A finished job's curves and HParams session in `folder`, from its recorded history (result.json):
    what `launch.py train` writes under --out, the same for a model it trained and one it found stored."""
    scalars = EpochScalars(folder)
    try:
        for record in result.get("history", []):
            scalars(_Record(**{k: record.get(k, float("nan")) for k in ("epoch", *TAGS)}))
    finally:
        scalars.close()
    write_hparams(folder, values | {"job": label}, final_metrics(result))


class _Record:
    def __init__(self, **fields):
        self.__dict__.update(fields)
