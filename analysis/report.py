"""One Markdown (and HTML) report of an experiment directory: `launch.py report DIR [--out PATH]`.

Sections: what failed or is missing, Table 2 (and Table 3 when the data have ratings), the per-user
and the seed-aware tests side by side (each says which question it answers), popular- vs
niche-type users (Fig. 1, 3) and performance by input length (Fig. 4a) for every (dataset, model),
the plan that produced them and the spec as launched. A section that cannot be made (a partial or
empty experiment) says why instead of stopping the report. Figures go to `<report name>_files/`
beside the report, linked by relative paths, so the folder can be copied elsewhere as a whole.

`write_study_report` does the same for a setting varied across experiments (Fig. 4b, 5, 6, 7).
The HTML is converted here from the Markdown this module writes (a small subset of Markdown).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from analysis.collect import Collection, collect, read_json, select
from analysis.groups import POPULAR_SHARE, by_input_length, group_metrics, popular_items, setting_study
from analysis.plots import SETTING_NAMES, plot_by_length, plot_groups, plot_noise_term, plot_setting
from analysis.significance import IMPROVEMENT_LEVELS, WORSE_LEVEL, comparisons, per_user_metric
from analysis.formats import comparison_table
from analysis.tables import DATASET_NAMES, METHOD_NAMES, MODEL_NAMES, metric_name
from csrec.errors import CSRecError


def write_report(experiment_dir: str | Path, out: str | Path | None = None, share: float = POPULAR_SHARE,
                 length_bins: int | Sequence[int] = 4, html_too: bool = True, ties: str = "expected",
                 exclude_search_run: bool = False) -> Path:
    """Write the report of `experiment_dir` to `out` (default <dir>/report.md; for an experiment on
    object storage ./report-<name>/report.md on this machine) and report.html beside it.

    ties and exclude_search_run apply to every number of the report, as to Table 2's
    (analysis.formats.comparison_table); the selection on validation is the runs' own."""
    collection = collect(experiment_dir)
    directory = collection.directory
    if out is None:
        out = directory / "report.md" if isinstance(directory, Path) else Path(f"report-{directory.name}") / "report.md"
    out = Path(out)
    figures = out.parent / f"{out.stem}_files"
    name = _spec_name(directory)
    options = {"ties": ties, "exclude_search_run": exclude_search_run}
    parts = [f"# Report: {name}", f"Experiment directory `{directory.resolve()}`: {len(collection.trials)} "
             f"finished trials, {len(collection.missing_cells)} of {len(collection.expected_cells)} cells missing.",
             "## What failed or is missing", _section(lambda: _failures(collection)),
             "## Table 2: test metrics", _section(lambda: comparison_table(directory, "md", **options)),
             "### Per-user and seed-level tests against SoftRec", SIGNIFICANCE_NOTE,
             _section(lambda: _significance(collection, **options)),
             "### Selected configurations", _section(lambda: _selected(collection, exclude_search_run)),
             "### Runs of the selected configurations", _section(lambda: _runs(collection, **options))]
    if collection.results["metric"].str.contains("+", regex=False).any():
        parts += ["## Table 3: positive preferences (targets rated >= 4, Eq. 16)",
                  _section(lambda: comparison_table(directory, "md", metrics=("recall+@10", "ndcg+@10"), **options))]
    parts += ["## Popular- and niche-type users (Fig. 1, 3)",
              f"The top {share:.0%} of the items by training frequency are popular, the others niche (ties go "
              "to the smaller item id); a user is popular- or niche-type by its test target.",
              _section(lambda: _groups(collection, figures, out.parent, share, options)),
              "## Performance by input length (Fig. 4a)",
              _section(lambda: _lengths(collection, figures, out.parent, length_bins, options)),
              "## Plan", _section(lambda: _plan(directory)),
              "## Spec as launched", _section(lambda: _spec_as_launched(directory))]
    return _write(out, "\n\n".join(parts) + "\n", html_too)


def _spec_as_launched(directory: Path) -> str:
    """spec.yaml with each method's `search` cut to the keys it uses (those its planned trials carry,
    plus sampler and budget): spec.yaml keeps every key, with its defaults, for a resume."""
    import yaml

    path = directory / "spec.yaml"
    if not path.is_file():
        raise CSRecError(f"{path} does not exist")
    spec = yaml.safe_load(path.read_text())
    plan = read_json(directory / "plan.json", "`launch.py resume DIR` writes it again")
    used: dict[str, set] = {}
    for trial in plan.get("trials", []):
        used.setdefault(trial.get("method"), set()).update(k for k, v in (trial.get("params") or {}).items()
                                                           if v is not None)
    if not isinstance(spec, dict) or not isinstance(spec.get("search"), dict):
        return _code(path, "yaml")
    for method, space in spec["search"].items():
        if method in used and isinstance(space, dict):
            spec["search"][method] = {k: v for k, v in space.items() if k in used[method] | {"sampler", "budget"}}
    note = "Each method's `search` lists the keys it uses (spec.yaml in the directory holds them all)."
    return f"{note}\n\n```yaml\n{yaml.safe_dump(spec, sort_keys=False).rstrip()}\n```"


def write_study_report(directories: Sequence[str | Path], setting: str, out: str | Path,
                       labels: Sequence[float] | None = None, x: str = "value", html_too: bool = True) -> Path:
    """A study across experiments differing in `setting` (see analysis.groups.setting_study): one
    plot and one table per (dataset, model), written to `out` (Markdown) and figures beside it."""
    out = Path(out)
    frame = setting_study(directories, setting, labels)
    if frame.empty:
        raise CSRecError(f"no finished trial in {', '.join(map(str, directories))}; nothing to study")
    figures = out.parent / f"{out.stem}_files"
    plot = plot_noise_term if setting == "noise_term" else lambda f, p: plot_setting(f, p, x=x)
    parts = [f"# Study: {SETTING_NAMES.get(setting, setting)}",
             "Experiments: " + ", ".join(f"`{d}`" for d in dict.fromkeys(frame["directory"])),
             f"Each number is the test mean (%) of the configuration chosen on validation; {setting} is the "
             "setting (a dash where the method does not use it); sparsity = 1 - training interactions / "
             "(sequences x items)."]
    # user_fraction: one data set per fraction, all in one plot; the others: one plot per data set
    keys = ["model"] if setting == "user_fraction" else ["dataset", "model"]
    for key, rows in frame.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        names = ([DATASET_NAMES.get(key[0], key[0])] if len(key) == 2 else []) + [MODEL_NAMES.get(key[-1], key[-1])]
        title = " / ".join(names)
        path = figures / f"{setting}_{'_'.join(_slug(k) for k in key)}.png"
        parts += [f"## {title}", _section(lambda: _image(plot(rows, path), out.parent, title)), _study_table(rows)]
    return _write(out, "\n\n".join(parts) + "\n", html_too)


def _study_table(rows: pd.DataFrame) -> str:
    """One line per (experiment, data set, method): the setting, sparsity and test means in %."""
    records: dict[tuple, dict] = {}
    for r in rows.itertuples(index=False):
        record = records.setdefault((r.directory, r.dataset, r.method), {
            "experiment": Path(r.directory).name, "data set": r.dataset, "method": METHOD_NAMES.get(r.method, r.method),
            r.setting: r.value, "sparsity (%)": r.sparsity * 100})
        record[f"{metric_name(r.metric)} (%)"] = r.mean * 100
    ordered = sorted(records.items(), key=lambda item: (_cell_order(("", "", item[0][2])), item[0][0], item[0][1]))
    return _markdown_table(pd.DataFrame([record for _, record in ordered]))


def _write(out: Path, text: str, html_too: bool) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    if html_too:
        out.with_suffix(".html").write_text(markdown_to_html(text, title=text.splitlines()[0].lstrip("# ")))
    return out


def _section(make: Callable[[], str]) -> str:
    """The section's Markdown, or why it is not available (a partial experiment is not an error)."""
    try:
        return make()
    except CSRecError as error:
        return f"Not available: {error}"


def _spec_name(directory: Path) -> str:
    marker = directory / "experiment.json"
    try:
        return read_json(marker, "").get("name", directory.name)
    except CSRecError:  # a damaged marker: the folder's name will do for a title
        return directory.name


def _selected(collection: Collection, exclude_search_run: bool = False) -> str:
    """Per cell: the configuration chosen on validation NDCG@10 and the runs its numbers come from."""
    chosen = select(collection, exclude_search_run=exclude_search_run)
    if not chosen:
        raise CSRecError("no finished search trial yet, so no configuration is selected")
    rows = [{"dataset": c[0], "model": c[1], "method": METHOD_NAMES.get(c[2], c[2]), "config": s.config,
             "valid NDCG@10 (%)": s.valid_score * 100, "from": s.source, "runs": len(s.keys)}
            for c, s in sorted(chosen.items(), key=lambda item: _cell_order(item[0]))]
    return _markdown_table(pd.DataFrame(rows))


SIGNIFICANCE_NOTE = (
    "Two questions, two kinds of test, on the runs behind Table 2's numbers (difference: method minus SoftRec, "
    "in points of %). The per-user paired t-test (the paper's; Table 2's markers by default) pairs each user's "
    "value averaged over the seeds and asks whether these trained models differ on these users; it leaves out "
    "the variance between seeds, so a rerun that happens to be better on every user is evidence enough. The "
    "seed-level tests ask whether the method is better across training seeds, on this test set, and compare the "
    "runs' means: the exact permutation test (untestable where its runs cannot give p < 0.05: 3 against 3 gives "
    "no p below 0.1), Welch's t-test with its 95% interval for the difference, and the t-test over per-seed means "
    "paired by seed (needs >= 5 seeds). Claims about methods rest on these; `launch.py power DIR` gives the seeds "
    "each difference would need. No correction for multiple comparisons; a dash: the test could not be made.")


def _significance(collection: Collection, ties: str = "expected", exclude_search_run: bool = False) -> str:
    """Per cell and metric: the difference, the per-user t-test and the seed-level tests side by side."""
    chosen = select(collection, exclude_search_run=exclude_search_run)
    metrics = ("recall@10", "ndcg@10")
    tests = {test: comparisons(collection, chosen, metrics, test=test, ties=ties)
             for test in ("ttest", "seed-permutation", "seed-welch", "seed-ttest")}
    if tests["ttest"].empty:
        raise CSRecError("no cell has both its method and SoftRec finished yet")
    keys = ["dataset", "model", "method", "metric"]
    both = tests["ttest"].merge(tests["seed-welch"], on=keys, suffixes=("", "_welch")).merge(
        tests["seed-permutation"][keys + ["p_value", "untestable"]].rename(
            columns={"p_value": "p_permutation", "untestable": "untestable_permutation"}), on=keys).merge(
        tests["seed-ttest"][keys + ["p_value"]].rename(columns={"p_value": "p_seed"}), on=keys)
    table = pd.DataFrame({
        "dataset": both["dataset"], "model": both["model"], "method": both["method"].map(lambda m: METHOD_NAMES.get(m, m)),
        "metric": both["metric"].map(metric_name),
        "seeds": [f"{a} / {b}" for a, b in zip(both["n_seeds"], both["n_seeds_versus"])],
        "difference": both["mean_difference"] * 100, "per-user t-test p": both["p_value"].map(_p),
        "permutation p": ["untestable" if u else _p(p) for p, u in zip(both["p_permutation"], both["untestable_permutation"])],
        "Welch 95% interval": [_interval(lo, hi) for lo, hi in zip(both["ci_low_welch"], both["ci_high_welch"])],
        "Welch p": both["p_value_welch"].map(_p), "seed t-test p": both["p_seed"].map(_p)})
    return _markdown_table(table)


def _p(p_value: float) -> str | None:
    """Two significant digits (0.018, 0.00031), more where two would round across a level the
    tables mark (0.0496 is not printed 0.05 beside a ** for p < 0.05); None (a dash) where no test was made."""
    if pd.isna(p_value):
        return None
    levels = [level for _, level in IMPROVEMENT_LEVELS] + [WORSE_LEVEL]
    for digits in range(2, 8):
        text = f"{p_value:.{digits}g}"
        if all((float(text) < level) == (p_value < level) for level in levels):
            return text
    return repr(float(p_value))


def _interval(low: float, high: float) -> str | None:
    return None if pd.isna(low) else f"{low * 100:.3f} to {high * 100:.3f}"


def _runs(collection: Collection, ties: str = "expected", exclude_search_run: bool = False) -> str:
    """Per selected cell, each run its Table 2 numbers average: seed, best epoch, the validation score
    it was selected on, and its test metrics under the tie rule of Table 2's numbers."""
    chosen = select(collection, exclude_search_run=exclude_search_run)
    if not chosen:
        raise CSRecError("no finished search trial yet, so no configuration is selected")
    value = collection.results.set_index(["key", "split", "metric"])["value"]
    trials = collection.trials.set_index("key")

    def test(key: str, metric: str) -> float:  # as analysis.collect.cell_numbers computes each run's number
        return per_user_metric(collection.per_user(key), metric, ties=ties).mean() * 100

    rows = [{"dataset": c[0], "model": c[1], "method": METHOD_NAMES.get(c[2], c[2]), "config": s.config,
             "seed": trials.at[key, "seed"], "best epoch": trials.at[key, "best_epoch"],
             "valid NDCG@10 (%)": value.get((key, "valid", "ndcg@10"), float("nan")) * 100,
             "test Recall@10 (%)": test(key, "recall@10"), "test NDCG@10 (%)": test(key, "ndcg@10")}
            | ({"stopped early": _stopped(trials.at[key, "stopped_epochs"])} if collection.early_stopping else {})
            for c, s in sorted(chosen.items(), key=lambda item: _cell_order(item[0])) for key in s.keys]
    return _markdown_table(pd.DataFrame(rows))


def _stopped(epochs: float) -> str:
    return "" if pd.isna(epochs) else f"after epoch {int(epochs)}"


def _cell_order(cell: tuple[str, str, str]) -> tuple:
    """Cells by data set and model name, methods in the paper's order (Base, SoftRec, CSRec-M, -D, -T)."""
    order = list(METHOD_NAMES)
    return cell[0], cell[1], order.index(cell[2]) if cell[2] in order else len(order), cell[2]


def _failures(collection: Collection) -> str:
    """Collection.report() plus the plan's teachers with no model and the driver's last progress."""
    lines = collection.report().splitlines()
    plan_path, models = collection.directory / "plan.json", collection.directory / "store" / "models"
    if plan_path.is_file():
        teachers = read_json(plan_path, "`launch.py resume DIR` writes it again").get("teachers", [])
        absent = [t for t in teachers if not (models / t["key"] / "meta.json").is_file()]
        lines.append(f"teachers with no finished model: {len(absent)} of {len(teachers)}")
        lines += [f"  {t['key']} ({t['job']})" for t in absent]
    else:
        lines.append("no plan.json: the experiment was never started (or this is not an experiment directory)")
    progress_path = collection.directory / "progress.json"
    try:
        progress = read_json(progress_path, "`launch.py resume DIR` writes it again")
    except CSRecError as error:
        progress, lines = {}, lines + [f"driver progress unknown: {error}"]
    if progress:
        lines.append(f"driver: last stage {progress.get('stage', '?')}, "
                     f"{progress.get('trials_failed', 0)} trial failures reported by Ray Tune")
    return "```text\n" + "\n".join(lines) + "\n```"


def _per_cell(frame: pd.DataFrame, make: Callable[[pd.DataFrame, str, str], str]) -> str:
    if frame.empty:
        raise CSRecError("no finished trial with a selected configuration yet")
    parts = []
    for (dataset, model), rows in frame.groupby(["dataset", "model"], sort=False):
        title = f"{DATASET_NAMES.get(dataset, dataset)} / {MODEL_NAMES.get(model, model)}"
        parts += [f"### {title}", _section(lambda: make(rows, dataset, model))]
    return "\n\n".join(parts)


def _groups(collection: Collection, figures: Path, base: Path, share: float, options: dict) -> str:
    """Per data set (its own item split), per model: the Fig. 3 bars and their numbers."""
    parts = []
    for dataset in dict.fromkeys(cell[0] for cell in collection.expected_cells):
        cells = [c for c in collection.expected_cells if c[0] == dataset]
        try:
            counts = collection.dataset_info(dataset)["item_train_counts"]
            frame = group_metrics(collection, share=share, cells=cells, **options)
            if frame.empty:
                raise CSRecError("no finished trial with a selected configuration yet")
        except CSRecError as error:
            parts += [f"### {DATASET_NAMES.get(dataset, dataset)}", f"Not available: {error}"]
            continue
        note = f"{len(popular_items(counts, share))} popular of {len(counts) - 1} items"
        parts.append(_per_cell(frame, lambda rows, d, m: _groups_cell(rows, d, m, note, figures, base)))
    return "\n\n".join(parts)


def _groups_cell(rows: pd.DataFrame, dataset: str, model: str, note: str, figures: Path, base: Path) -> str:
    image = _image(plot_groups(rows, figures / f"groups_{_slug(dataset)}_{_slug(model)}.png"), base, "groups")
    wide = rows.pivot_table(index="method", columns=["metric", "group"], values="value", sort=False)
    wide = _in_method_order(wide)
    table = pd.DataFrame({"Method": [METHOD_NAMES.get(m, m) for m in wide.index]})
    for metric in dict.fromkeys(rows["metric"]):
        for group in ("popular", "niche", "all"):
            table[f"{metric_name(metric)} {group}"] = wide[(metric, group)].to_numpy() * 100
    counts = rows.drop_duplicates("group").set_index("group")["n_users"]
    users = ", ".join(f"{counts.get(g, 0)} {g}-type" for g in ("popular", "niche"))
    return "\n\n".join([image, f"{note}; test users: {users}; numbers in %.", _markdown_table(table)])


def _lengths(collection: Collection, figures: Path, base: Path, bins, options: dict) -> str:
    frame = by_input_length(collection, bins=bins, **options)

    def one(rows: pd.DataFrame, dataset: str, model: str) -> str:
        path = figures / f"length_{_slug(dataset)}_{_slug(model)}.png"
        try:
            image = _image(plot_by_length(rows, path), base, "length")
        except CSRecError as error:  # too few bins: the numbers below still say what there is
            image = f"Plot left out: {error}."
        wide = _in_method_order(rows.pivot_table(index="method", columns=["metric", "bin_index"], values="value",
                                                 sort=False))
        labels = rows.drop_duplicates("bin_index").set_index("bin_index")
        table = pd.DataFrame({"Method": [METHOD_NAMES.get(m, m) for m in wide.index]})
        for metric, index in wide.columns:
            table[f"{metric_name(metric)} len {labels.loc[index, 'bin']} (n={labels.loc[index, 'n_users']})"] = \
                wide[(metric, index)].to_numpy() * 100
        return "\n\n".join([image, _markdown_table(table)])

    return _per_cell(frame, one)


def _in_method_order(wide: pd.DataFrame) -> pd.DataFrame:
    known = [m for m in METHOD_NAMES if m in wide.index]
    return wide.reindex(known + [m for m in wide.index if m not in METHOD_NAMES])


def _plan(directory: Path) -> str:
    path = directory / "plan.json"
    if not path.is_file():
        raise CSRecError(f"{path} does not exist; the runner writes it when the experiment starts")
    plan = read_json(path, "`launch.py resume DIR` writes it again")
    lines = [f"- {k.replace('_', ' ')}: {v}" for k, v in plan.get("summary", {}).items()]
    cells = pd.DataFrame(plan.get("trials", []))
    if not cells.empty:
        counts = cells.groupby(["dataset", "model", "method", "stage"], sort=False).size()
        counts = counts.rename("trials").reset_index()
        lines += ["", "Planned student trials per cell:", "", _markdown_table(counts)]
    teachers = pd.DataFrame(plan.get("teachers", []), columns=["key", "job"])
    if not teachers.empty:
        lines += ["", "Teachers:", "", _markdown_table(teachers)]
    return "\n".join(lines)


def _code(path: Path, language: str) -> str:
    if not path.is_file():
        raise CSRecError(f"{path} does not exist")
    return f"```{language}\n{path.read_text().rstrip()}\n```"


def _image(path: Path, base: Path, alt: str) -> str:
    return f"![{alt}]({path.relative_to(base).as_posix()})"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))


def _markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table; floats with 3 decimals, missing values as an em dash."""
    def cell(value) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "—"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(frame[c]) else "---" for c in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _inline(text: str) -> str:
    """Escape HTML, then the inline Markdown this module writes: `code`, **bold**, \\* escapes."""
    text = html.escape(text, quote=False).replace(r"\*", "\x00")
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return text.replace("\x00", "*")


def markdown_to_html(text: str, title: str = "report") -> str:
    """HTML for the Markdown subset written here: headings, paragraphs, `-` lists, pipe tables,
    fenced code, images on their own line, inline code and bold. Not a general converter."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            out.append("<pre><code>" + html.escape("\n".join(lines[i + 1:end]), quote=False) + "</code></pre>")
            i = end + 1
            continue
        block = [line]
        while i + 1 < len(lines) and lines[i + 1].strip() and not lines[i + 1].startswith("```") and line.strip():
            i += 1
            block.append(lines[i])
        i += 1
        out.append(_html_block(block))
    body = "\n".join(b for b in out if b)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>\n"
            "<style>body{font-family:sans-serif;max-width:70em;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px}td{text-align:right}pre{background:#f6f6f6;padding:6px}"
            f"</style></head><body>\n{body}\n</body></html>\n")


def _html_block(block: list[str]) -> str:
    first = block[0]
    if not first.strip():
        return ""
    heading = re.match(r"(#{1,6}) (.*)", first)
    if heading and len(block) == 1:
        level = len(heading.group(1))
        return f"<h{level}>{_inline(heading.group(2))}</h{level}>"
    image = re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", first.strip())
    if image and len(block) == 1:
        return f'<p><img src="{html.escape(image.group(2))}" alt="{html.escape(image.group(1))}"></p>'
    if all(line.startswith("|") for line in block):
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block]
        body = rows[2:] if len(rows) > 1 and set("".join(rows[1])) <= set("-: ") else rows[1:]
        head = "<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in rows[0]) + "</tr>"
        cells = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body)
        return f"<table>{head}{cells}</table>"
    if all(line.startswith("- ") for line in block):
        return "<ul>" + "".join(f"<li>{_inline(line[2:])}</li>" for line in block) + "</ul>"
    return "<p>" + _inline(" ".join(block)) + "</p>"
