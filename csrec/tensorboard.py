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
