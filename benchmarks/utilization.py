"""How well a finished experiment used its cores, and what Ray and Tune cost per trial.

    (time python launch.py run experiments/quickstart.yaml) 2> time.txt
    python benchmarks/utilization.py runs/quickstart --wall SECONDS --cores 2

- busy: the seconds each model's training and evaluation took inside its task or trial
  (result.json "seconds"; for results written before that field existed, the sum of the epochs'
  seconds, which leaves out the final evaluation);
- utilization = sum of busy / (wall x cores), wall being the driver's whole run (Ray start,
  teachers, grid, seed reruns, table);
- Tune overhead inside a trial = the trial's own time as Tune measures it (time_total_s of its last
  report) minus its busy seconds: the cost of reporting epochs with checkpoints;
- Ray and Tune cost per trial, all of it = (the stage's wall time x its lanes - the busy seconds of
  its trials) / its trials, from tune/<stage>.timing.json: worker start-up, placement, scheduling,
  reporting, and any lane left idle at the stage's tail.
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
        key = _stage_keys(root, trial_dir.parent.name)[last["config"]["point"]]
        if key in busy and exact[key]:
            overheads.append((last["time_total_s"] - busy[key], last["time_total_s"]))
    for over, whole in overheads:
        print(f"trial: {whole:.1f} s in Tune, {over:.2f} s of it outside training and evaluation ({over / whole:.1%})")
    if overheads:
        share = sum(o for o, _ in overheads) / sum(w for _, w in overheads)
        print(f"Tune overhead inside a trial: {share:.1%} of a trial on average")
    for timing_file in sorted((root / "tune").glob("*.timing.json")):
        stage = timing_file.name.removesuffix(".timing.json")
        timing = json.loads(timing_file.read_text())
        keys = _stage_keys(root, stage)
        inside = [busy[k] for k in keys if k in busy and exact[k]]
        if timing["resumed"] or len(inside) != len(keys):
            print(f"stage {stage}: resumed or not all trials timed; skipped")
            continue
        lanes = min(timing["lanes"], len(keys))
        per_trial = (timing["seconds"] * lanes - sum(inside)) / len(keys)
        mean = sum(inside) / len(keys)
        print(f"stage {stage}: {len(keys)} trials on {lanes} lanes in {timing['seconds']:.0f} s; busy {sum(inside):.0f} s; "
              f"Ray and Tune cost per trial {per_trial:.1f} s = {per_trial / mean:.1%} of a {mean:.0f} s trial")


def _stage_keys(root: Path, stage: str) -> list[str]:
    """The store keys of a Tune stage's trials, in its trial-list order (tune/<stage>.trials.json)."""
    return [trial["key"] for trial in json.loads((root / "tune" / f"{stage}.trials.json").read_text())]


if __name__ == "__main__":
    main()
