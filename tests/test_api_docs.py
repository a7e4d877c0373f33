"""The Python API as documented: every ```python block of docs/API.md and of README.md's "Python
API" section runs, in order, in a temporary folder that sees the repository's experiments/ (as a
clone's top folder would), and its assertions hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def readme_api_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Python API", 1)[1].split("\n## ", 1)[0]


def test_the_documented_snippets_run(tmp_path, monkeypatch, capsys):
    snippets = python_blocks((ROOT / "docs" / "API.md").read_text())
    readme = python_blocks(readme_api_section())
    assert len(snippets) == 3 and len(readme) >= 1
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CSREC_LOG_LEVEL", "quiet")
    namespace: dict = {}
    for code in snippets:
        exec(compile(code, "docs/API.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["metrics"]["best_epoch"] in (1, 2)
    assert (tmp_path / "runs" / "api" / "base" / "tensorboard").is_dir()
    cells = namespace["cells"]
    assert set(cells["method"]) == {"base", "softrec", "csrec-m", "csrec-d", "csrec-t"}
    assert set(cells["metric"]) == {"recall@10", "ndcg@10"} and (cells["n_runs"] == 2).all()
    assert not (ROOT / "runs" / "api").exists()  # everything under the temporary folder
    for code in readme:
        exec(compile(code, "README.md", "exec"), dict(namespace))  # noqa: S102
