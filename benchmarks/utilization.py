"""How well a finished experiment used its cores, and what Ray and Tune cost per trial.

    (time python launch.py run experiments/quickstart.yaml) 2> time.txt
    python benchmarks/utilization.py runs/quickstart --wall SECONDS --cores 2

- busy: the seconds each model's training and evaluation took inside its task or trial
  (result.json "seconds"; for results written before that field existed, the sum of the epochs'
  seconds, which leaves out the final evaluation);
- utilization = sum of busy / (wall x cores), wall being the driver's whole run (Ray start,
  teachers, grid, seed reruns, table);
- Tune overhead per trial = the trial's own time as Tune measures it (time_total_s of its last
  report) minus its busy seconds: process start-up is excluded by Tune, so this is the cost of
  reporting epochs with checkpoints and of loading the teachers; the gaps between trials show in
  the utilization instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def busy_seconds(result: dict) -> tuple[float, bool]:
    if "seconds" in result:
        return result["seconds"], True
    return sum(h["seconds"] for h in result["history"]), False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--wall", type=float, required=True, help="the driver's wall time in seconds")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    root = Path(args.directory)
    busy, exact = {}, {}
    for result_file in sorted((root / "store" / "models").glob("*/result.json")):
        result = json.loads(result_file.read_text())
        busy[result["key"]], exact[result["key"]] = busy_seconds(result)
        print(f"{result['job']:55s} {busy[result['key']]:7.1f} s{'' if exact[result['key']] else ' (epochs only)'}")
    total = sum(busy.values())
    print(f"busy {total:.0f} s over {args.wall:.0f} s x {args.cores} cores: utilization {total / (args.wall * args.cores):.1%}")
    overheads = []
    for trial_dir in sorted((root / "tune").glob("*/*/")):
        lines = (trial_dir / "result.json").read_text().splitlines() if (trial_dir / "result.json").is_file() else []
        if not lines:
            continue
        last = json.loads(lines[-1])
        point_file = root / "tune" / f"{trial_dir.parent.name}.trials.pkl"
        key = _trial_key(point_file, last["config"]["point"])
        if key in busy and exact[key]:
            overheads.append((last["time_total_s"] - busy[key], last["time_total_s"]))
    for over, whole in overheads:
        print(f"trial: {whole:.1f} s in Tune, {over:.2f} s of it outside training and evaluation ({over / whole:.1%})")
    if overheads:
        share = sum(o for o, _ in overheads) / sum(w for _, w in overheads)
        print(f"Tune overhead per trial: {share:.1%} of a trial on average")


def _trial_key(point_file: Path, point: int) -> str:
    import pickle

    return pickle.loads(point_file.read_bytes())[point].job.key


if __name__ == "__main__":
    main()
