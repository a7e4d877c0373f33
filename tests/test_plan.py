"""Spec -> plan: teachers deduplicated across methods, grid points, seeds; method jobs as the paper says."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from csrec.config import TeacherSettings, load_spec
from csrec.errors import CSRecError
from csrec.methods import base_job, dependencies, student_job
from csrec.runner.plan import make_plan
from csrec.train import TrainConfig

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"


@pytest.fixture
def data(tiny_data_config):
    return tiny_data_config


def test_csrec_m_teachers_are_base_models_with_other_seeds(data):
    base = base_job(data, "gru4rec", TrainConfig(seed=0))
    student = student_job("csrec-m", base, {"beta": 0.5, "temperature": 3.0}, TeacherSettings(m=3))
    seeds = [t.seed for t in student.teachers]
    assert seeds == [0, 1, 2] and all(t.objective == "ce" and t.subsample_ratio == 1 for t in student.teachers)
    # the Base run of seed 1 is the same artifact as teacher 1
    assert student.teachers[1].key == dataclasses.replace(base, train=TrainConfig(seed=1)).key


def test_csrec_d_teachers_see_distinct_subsamples(data):
    base = base_job(data, "gru4rec", TrainConfig())
    student = student_job("csrec-d", base, {"beta": 0.75, "temperature": 3.0}, TeacherSettings(m=2, subsample_ratio=0.8))
    assert [(t.subsample_ratio, t.subsample_seed) for t in student.teachers] == [(0.8, 0), (0.8, 1)]
    assert len({t.key for t in student.teachers}) == 2


def test_csrec_t_side_teacher_is_the_first_data_level_teacher(data):
    base = base_job(data, "gru4rec", TrainConfig())
    settings = TeacherSettings()
    t_student = student_job("csrec-t", base, {"alpha": 0.25, "beta": 0.5, "temperature": 6.0}, settings)
    d_student = student_job("csrec-d", base, {"beta": 0.5, "temperature": 6.0}, settings)
    (main,) = t_student.teachers
    assert main.objective == "training-level" and main.param("alpha") == 0.25
    assert main.teachers[0].key == d_student.teachers[0].key
    assert [j.key for j in dependencies(t_student)] == [main.teachers[0].key, main.key]


def test_grid_points_share_teachers_and_keys_follow_params(data):
    base = base_job(data, "gru4rec", TrainConfig())
    a = student_job("csrec-m", base, {"beta": 0.5, "temperature": 3.0}, TeacherSettings())
    b = student_job("csrec-m", base, {"beta": 0.75, "temperature": 3.0}, TeacherSettings())
    assert a.key != b.key and [t.key for t in a.teachers] == [t.key for t in b.teachers]


def test_runtime_settings_do_not_change_keys(data):
    a = base_job(data, "gru4rec", TrainConfig(device="cpu", num_threads=1))
    b = base_job(data, "gru4rec", TrainConfig(device="auto", num_threads=4, progress=False))
    assert a.key == b.key


@pytest.mark.parametrize("params, message", [
    ({"beta": 1.5, "temperature": 3.0}, "beta must lie in"),
    ({"beta": 0.5, "temperature": 0.0}, "temperature T must be > 0"),
    ({"beta": 0.5}, "needs temperature"),
])
def test_bad_params_are_refused(data, params, message):
    with pytest.raises(CSRecError, match=message):
        student_job("csrec-m", base_job(data, "gru4rec", TrainConfig()), params, TeacherSettings())


def test_smoke_plan_counts():
    plan = make_plan(load_spec(SMOKE))
    # base seeds 0,1 (= csrec-m teachers), csrec-d teachers (2, the first is csrec-t's side), csrec-t main
    assert len(plan.teachers) == 5
    assert len(plan.grid_trials) == 1 + 2 + 1 + 1
    assert sum(t.method == "base" for t in plan.trials) == 2


def test_base_and_csrec_m_over_the_same_seeds_share_models(tmp_path):
    raw = yaml.safe_load(SMOKE.read_text())
    raw["datasets"]["smoke"]["path"] = str(SMOKE.parent / "data" / "smoke.csv")
    raw.update(methods=["base", "csrec-m"], seeds=[0, 1])
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    plan = make_plan(load_spec(spec_path))
    assert len(plan.teachers) == 2  # two models serve as both Base runs and CSRec-M's teachers


def _initial_weights(job, n_items=20, max_len=5):
    from csrec.models import build_model
    from csrec.train import seed_everything
    seed_everything(job.stream_seed)
    return build_model(job.model, n_items, max_len).state_dict()


def test_no_student_shares_initial_weights_or_streams_with_its_teachers():
    import torch
    spec = load_spec(SMOKE)
    plan = make_plan(spec)
    students = [t.job for t in plan.trials if t.method != "base"]
    assert {t.method for t in plan.trials} == {"base", "softrec", "csrec-m", "csrec-d", "csrec-t"}
    for student in students:
        weights = _initial_weights(student)
        for teacher in dependencies(student):
            assert teacher.stream_seed != student.stream_seed, (student.describe(), teacher.describe())
            other = _initial_weights(teacher)
            assert not torch.equal(weights["item_embedding.weight"], other["item_embedding.weight"]), \
                (student.describe(), teacher.describe())
    csrec_t = next(j for j in students if j.objective == "csrec-t")
    (main,) = csrec_t.teachers
    (side,) = main.teachers
    assert main.stream_seed != side.stream_seed and main.seed == side.seed == 0
    # CSRec-M's teachers are still the Base runs of seeds 0..m-1, by key (the store's sharing stays).
    csrec_m = next(j for j in students if j.objective == "csrec-m")
    base_keys = {t.job.seed: t.job.key for t in plan.trials if t.method == "base"}
    assert [t.key for t in csrec_m.teachers] == [base_keys[k] for k in range(spec.teachers.m)]
    # Every method's student of one seed starts alike: seed reruns are the same kind of run.
    assert len({j.stream_seed for j in students}) == 1
