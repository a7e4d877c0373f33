"""analysis.report on a real experiment: experiments/smoke.yaml run with the local backend into a
temporary folder (about 16 s on two loaded cores with one torch thread), then copies of it made partial."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from analysis import (collect, comparison_table, comparisons, group_metrics, markdown_to_html, select, write_report,
                      write_study_report)
from analysis.plots import figure_size
from csrec.errors import CSRecError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("smoke")
    raw = yaml.safe_load(SMOKE.read_text())
    raw["storage"] = str(folder / "experiment")
    raw["datasets"]["smoke"]["path"] = str(SMOKE.parent / "data" / "smoke.csv")
    raw["train"] |= {"num_threads": 1}  # two threads on two busy cores make an epoch ~15x slower
    spec = folder / "smoke.yaml"
    spec.write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, str(ROOT / "launch.py"), "run", str(spec), "--local"], cwd=ROOT,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return folder / "experiment"


def _copy(smoke: Path, tmp_path: Path) -> Path:
    target = tmp_path / "experiment"
    shutil.copytree(smoke, target, ignore=shutil.ignore_patterns("report*"))
    return target


def _images(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_report_of_a_finished_experiment(smoke, tmp_path):
    directory = _copy(smoke, tmp_path)
    path = write_report(directory)
    assert path == directory / "report.md"
    text = path.read_text()
    assert comparison_table(directory, "md") in text  # Table 2 exactly as `launch.py table` prints it
    assert "| smoke | Base |" in text and "Table 3" not in text  # no ratings in the smoke data
    assert "cells with no finished trial: 0 of 5" in text and "teachers with no finished model: 0 of 5" in text
    images = _images(text)
    assert images == ["report_files/groups_smoke_gru4rec.png", "report_files/length_smoke_gru4rec.png"]
    for image in images:
        assert png_size(directory / image) == figure_size(2)
    for teacher in json.loads((directory / "plan.json").read_text())["teachers"]:
        assert teacher["key"] in text  # the plan that produced the numbers
    # the spec as launched, each method's search cut to the keys it uses (issue 23)
    launched = yaml.safe_load(text.split("## Spec as launched")[1].split("```yaml\n")[1].split("```")[0])
    recorded = yaml.safe_load((directory / "spec.yaml").read_text())
    assert {m: sorted(s) for m, s in launched["search"].items()} == {
        "softrec": ["beta", "budget", "sampler", "temperature"], "csrec-m": ["beta", "budget", "sampler", "temperature"],
        "csrec-d": ["beta", "budget", "sampler", "temperature"],
        "csrec-t": ["alpha", "beta", "budget", "sampler", "temperature"]}
    assert launched["search"]["csrec-t"]["alpha"] == recorded["search"]["csrec-t"]["alpha"] == [0.75]
    assert "mask_ratio" in recorded["search"]["softrec"]  # spec.yaml itself keeps every key, for a resume
    assert {k: v for k, v in launched.items() if k != "search"} == {k: v for k, v in recorded.items() if k != "search"}
    # the "all" group of the popular/niche table is the whole test set: Table 2's Base Recall@10
    base = group_metrics(collect(directory)).query("method == 'base' and group == 'all' and metric == 'recall@10'")
    table_row = next(line for line in text.splitlines() if line.startswith("| smoke | Base |"))
    assert f"{base['value'].item() * 100:.3f}" == re.search(r"\d+\.\d{3}", table_row.split("|")[3]).group()
    # the runs behind each Table 2 number, seed by seed: 5 cells x 2 seeds; their mean is the table's
    runs = text.split("### Runs of the selected configurations")[1].split("\n## ")[0]
    base_runs = [line.split("|") for line in runs.splitlines() if line.startswith("| smoke | gru4rec | Base |")]
    assert runs.count("| smoke | gru4rec |") == 10 and [int(r[5]) for r in base_runs] == [0, 1]
    records = [json.loads(p.read_text()) for p in (directory / "store" / "trials").glob("*/result.json")]
    epochs = {r["seed"]: r["best_epoch"] for r in records if r["method"] == "base"}
    assert [int(r[6]) for r in base_runs] == [epochs[0], epochs[1]]
    mean = sum(float(r[8]) for r in base_runs) / 2
    assert abs(mean - float(re.search(r"\d+\.\d{3}", table_row.split("|")[3]).group())) <= 0.001
    # both kinds of test side by side: per user (the markers' test) and seed-aware, 4 methods x 2 metrics
    tests = text.split("### Per-user and seed-level tests against SoftRec")[1].split("\n### ")[0]
    assert "asks whether these trained models differ on these users" in tests
    assert "ask whether the method is better across training seeds, on this test set" in tests
    rows = [line.split("|")[1:-1] for line in tests.splitlines() if line.startswith("| smoke |")]
    assert len(rows) == 8 and all(r[4].strip() == "2 / 2" and r[-1].strip() == "—" for r in rows)  # < 5 seeds
    per_user = comparisons(collect(directory), select(collect(directory)), ("recall@10", "ndcg@10"))
    assert [r[6].strip() for r in rows] == [f"{p:.2g}" for p in per_user["p_value"]]
    assert all(r[7].strip() == "untestable" for r in rows)  # 2 runs against 2: the smallest p is 1/3
    welch = comparisons(collect(directory), select(collect(directory)), ("recall@10", "ndcg@10"), test="seed-welch")
    for row, p in zip(rows, welch["p_value"]):  # Welch's interval holds the difference, its p is Welch's
        low, high = (float(x) for x in row[8].split(" to "))
        assert low <= float(row[5]) <= high and row[9].strip() == f"{p:.2g}"
    page = (directory / "report.html").read_text()
    assert page.count("<table>") == text.count("\n|---") and all(f'src="{i}"' in page for i in images)


def test_report_of_a_partial_experiment_lists_what_is_missing(smoke, tmp_path):
    directory = _copy(smoke, tmp_path)
    records = {path: json.loads((path / "result.json").read_text())
               for path in (directory / "store" / "trials").iterdir()}
    for path, record in records.items():
        if record["method"] == "csrec-t":
            shutil.rmtree(path)  # a cell that never ran
    rerun = next(p for p, r in records.items() if (r["method"], r["stage"]) == ("csrec-d", "seeds"))
    (rerun / "meta.json").unlink()  # a seed rerun still running (or killed)
    teacher = json.loads((directory / "plan.json").read_text())["teachers"][-1]
    shutil.rmtree(directory / "store" / "models" / teacher["key"])
    out = write_report(directory, out=tmp_path / "elsewhere" / "partial.md")
    text = out.read_text()
    assert f"unfinished {rerun.name} (smoke/gru4rec/csrec-d): no meta.json (unfinished)" in text
    assert "cells with no finished trial: 1 of 5\n  smoke/gru4rec/csrec-t\n" in text
    assert f"teachers with no finished model: 1 of 5\n  {teacher['key']} ({teacher['job']})" in text
    assert "|  | CSRec-T | — | — |" in text
    assert re.search(r"\|  \| CSRec-D \| [*\d.]+†", text)  # reported from its search run only
    images = _images(text)
    assert len(images) == 2 and all(i.startswith("partial_files/") and (out.parent / i).is_file() for i in images)
    assert (out.parent / "partial.html").is_file()


def test_report_of_an_experiment_that_never_ran(smoke, tmp_path):
    directory = tmp_path / "empty"
    directory.mkdir()
    for name in ("plan.json", "spec.yaml", "experiment.json"):
        shutil.copy(smoke / name, directory / name)
    text = write_report(directory, html_too=False).read_text()
    assert "cells with no finished trial: 5 of 5" in text and "teachers with no finished model: 5 of 5" in text
    assert "datasets/smoke.json does not exist" in text and _images(text) == []
    assert text.count("Not available:") == 5  # tests, selected configurations, their runs, groups, input lengths
    assert not (directory / "report.html").exists()
    with pytest.raises(CSRecError, match="does not exist"):
        write_report(tmp_path / "nowhere")


def test_study_report_across_two_experiments(smoke, tmp_path):
    first, second = _copy(smoke, tmp_path / "a"), _copy(smoke, tmp_path / "b")
    out = write_study_report([first, second], "m", tmp_path / "study.md", labels=[1, 3])
    text = out.read_text()
    assert _images(text) == ["study_files/m_smoke_gru4rec.png"]
    assert png_size(tmp_path / "study_files" / "m_smoke_gru4rec.png") == figure_size(2)
    rows = [line for line in text.splitlines() if "| CSRec-M |" in line]
    assert [row.split("|")[4].strip() for row in rows] == ["1.000", "3.000"]  # the m column, per experiment
    from_configs = write_study_report([first], "m", tmp_path / "configs.md").read_text()
    assert "| CSRec-M | 2.000 |" in from_configs  # the smoke spec's m, read from the stored job configs


def test_markdown_to_html_subset():
    page = markdown_to_html("# Title\n\nSome `code` and **bold** \\* star.\n\n| a | b |\n|---|---:|\n| 1 | **2** |\n\n"
                            "![fig](x/y.png)\n\n- one\n- two\n\n```text\n<raw> & **kept**\n```\n", title="T")
    assert "<title>T</title>" in page and "<h1>Title</h1>" in page
    assert "<p>Some <code>code</code> and <strong>bold</strong> * star.</p>" in page
    assert "<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td><strong>2</strong></td></tr></table>" in page
    assert '<p><img src="x/y.png" alt="fig"></p>' in page and "<ul><li>one</li><li>two</li></ul>" in page
    assert "<pre><code>&lt;raw&gt; &amp; **kept**</code></pre>" in page


def test_analysis_imports_neither_torch_nor_ray():
    code = ("import sys, analysis, analysis.groups, analysis.plots, analysis.report; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_report_of_an_experiment_with_damaged_bookkeeping_says_so(tmp_path):
    """A damaged progress.json (or experiment.json) gives a line in the report, not a traceback."""
    from analysis.report import _failures, _spec_name
    (tmp_path / "progress.json").write_text("{not json")
    (tmp_path / "experiment.json").write_text("[1, 2")
    assert _spec_name(tmp_path) == tmp_path.name
    from types import SimpleNamespace
    text = _failures(SimpleNamespace(directory=tmp_path, report=lambda: "0 cells missing"))
    assert "driver progress unknown" in text and "progress.json is damaged" in text
