"""The live view counts trials from Tune's own states, so `status` never under-counts."""

import json
from types import SimpleNamespace

from csrec.runner.progress import LiveView
from csrec.store import Store


class Recorder:
    def __init__(self, store: Store):
        self.fields, self.store = {}, store

    def progress(self, **fields):
        self.fields |= fields


def tune_trial(status, point=None, score=None):
    return SimpleNamespace(status=status, trial_id=f"t{point}", config={"point": point},
                           last_result={"valid_ndcg@10": score} if score is not None else {})


def stored_trial(store: Store, key: str, method: str, score: float) -> None:
    record = {"method": method, "valid": {"ndcg@10": score}, "test": {"ndcg@10": 0.0}}
    store.write("trials", key, {}, lambda d: (d / "result.json").write_text(json.dumps(record)))


def test_counts_follow_tune_states_and_best_follows_completions(tmp_path):
    store = Store(tmp_path / "store")
    stored_trial(store, "earlier", "softrec", 0.2)  # an earlier stage's (or a reused) trial
    stored_trial(store, "other", "csrec-m", 0.3)
    experiment, lines = Recorder(store), []
    ours = [SimpleNamespace(method="softrec", label=lambda i=i: f"softrec #{i}") for i in range(3)]
    view = LiveView(experiment, lines.append, ours)
    trials = [tune_trial("RUNNING", 0), tune_trial("RUNNING", 1), tune_trial("PENDING", 2)]
    view.on_step_end(0, trials)
    assert experiment.fields["trials_running"] == 2 and experiment.fields["trials_done"] == 0
    view.on_step_end(1, trials)
    assert len(lines) == 1  # nothing changed: no second line
    assert lines[0].endswith("best valid_ndcg@10 softrec 0.2000, csrec-m 0.3000")  # from the store
    trials[0] = tune_trial("TERMINATED", 0, 0.25)
    view.on_trial_complete(2, trials, trials[0])
    trials[2] = tune_trial("RUNNING", 2)
    view.on_step_end(2, trials)
    assert {k: experiment.fields[k] for k in ("trials_done", "trials_running", "trials_failed")} == \
        {"trials_done": 1, "trials_running": 2, "trials_failed": 0}
    assert lines[-1].endswith("best valid_ndcg@10 softrec 0.2500, csrec-m 0.3000")  # 0.25 beat the stored 0.2
    trials[1] = tune_trial("ERROR", 1)
    view.on_trial_error(3, trials, trials[1])
    view.on_step_end(3, trials)
    assert (experiment.fields["trials_failed"], experiment.fields["trials_running"]) == (1, 1)
    assert lines[-1].startswith("trials: 1 done, 1 running, 1 failed; best valid_ndcg@10 softrec 0.2500")
    assert any(line.startswith("FAILED softrec #1") for line in lines)
