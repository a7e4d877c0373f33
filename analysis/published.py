"""Our numbers beside the paper's: `launch.py table DIR --format published`.

The published Table 2 of CSRec (Wu et al., arXiv 2311.02446: test Recall@10 and NDCG@10 in %, one
number per cell, no spread) is kept here as printed. The view lists, for every cell that has both,
our number exactly as the comparison table shows it (selected on validation, the mean over the runs
behind it), the sample standard deviation over those runs, their count, the paper's number and the
difference. It makes no claim of significance: those marks belong to the comparison table, whose
tests pair users of the same runs, which a published number does not have.
"""

from __future__ import annotations

import numpy as np

from analysis.tables import (DATASET_NAMES, INCOMPLETE, INCOMPLETE_MEANING, METHOD_NAMES, MODEL_NAMES, STOPPED,
                             STOPPED_MEANING, ComparisonTable, metric_name)
from csrec.metrics import TIE_RULES

SOURCE = "Table 2 of CSRec (Wu et al., arXiv 2311.02446)"
_MODELS = ("gru4rec", "nextitnet", "narm", "sasrec")
_METHODS = ("base", "softrec", "csrec-m", "csrec-d", "csrec-t")
# dataset -> method -> (Recall@10, NDCG@10) per model in _MODELS order, in %, as printed in the paper.
_PRINTED = {
    "lastfm": {
        "base": ((16.683, 10.081), (15.456, 11.564), (20.260, 13.204), (20.350, 11.432)),
        "softrec": ((17.427, 10.624), (15.473, 11.826), (20.486, 12.826), (20.746, 11.951)),
        "csrec-m": ((18.165, 10.678), (16.466, 12.472), (20.819, 13.050), (20.874, 11.976)),
        "csrec-d": ((18.607, 10.992), (16.201, 12.055), (20.739, 12.960), (21.131, 12.256)),
        "csrec-t": ((18.180, 10.764), (15.681, 12.007), (20.697, 12.875), (21.047, 12.009)),
    },
    "yelp": {
        "base": ((5.812, 3.512), (8.077, 5.742), (8.587, 5.641), (8.523, 5.329)),
        "softrec": ((6.108, 3.584), (8.303, 5.923), (8.108, 5.024), (9.459, 5.882)),
        "csrec-m": ((6.405, 3.822), (8.587, 6.175), (8.900, 5.778), (9.485, 5.902)),
        "csrec-d": ((6.237, 3.646), (8.501, 6.101), (8.723, 5.489), (9.484, 5.898)),
        "csrec-t": ((6.526, 3.894), (8.589, 6.177), (8.700, 5.530), (9.421, 5.888)),
    },
}
PUBLISHED = {(dataset, model, method, metric): pair[i]
             for dataset, rows in _PRINTED.items() for method, per_model in rows.items()
             for model, pair in zip(_MODELS, per_model) for i, metric in enumerate(("recall@10", "ndcg@10"))}


def published(dataset: str, model: str, method: str, metric: str) -> float | None:
    """The paper's number (%) for the cell, or None when the paper has none (other data, methods, metrics)."""
    return PUBLISHED.get((dataset, model, method, metric))


def to_published(table: ComparisonTable) -> str:
    """Markdown: one line per (dataset, method, model), per metric ours ± std (runs), paper, difference."""
    header = ["Dataset", "Method", "Model"]
    for metric in table.metrics:
        name = metric_name(metric)
        header += [f"{name} ours", f"{name} paper", f"{name} ours − paper"]
    lines = [f"Table: test {' and '.join(metric_name(m) for m in table.metrics)} (%) of this experiment beside "
             f"{SOURCE}.", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    cells = table.cells.set_index(["dataset", "method", "model", "metric"])
    compared, shown_marks = 0, set()
    for dataset in table.datasets:
        for method in table.methods:
            for model in table.models:
                row, both = [DATASET_NAMES.get(dataset, dataset), METHOD_NAMES.get(method, method),
                             MODEL_NAMES.get(model, model)], False
                for metric in table.metrics:
                    cell = cells.loc[(dataset, method, model, metric)]
                    paper = published(dataset, model, method, metric)
                    ours = None if cell["n_runs"] == 0 or np.isnan(cell["mean"]) else float(f"{cell['mean'] * 100:.3f}")
                    spread = "" if np.isnan(cell["std"]) else f" ± {cell['std'] * 100:.3f}"
                    marks = (INCOMPLETE if cell["incomplete"] else "") + (STOPPED if cell["stopped"] else "")
                    row += ["—" if ours is None else f"{ours:.3f}{spread} ({int(cell['n_runs'])}){marks}",
                            "—" if paper is None else f"{paper:.3f}",
                            "—" if ours is None or paper is None else f"{ours - paper:+.3f}"]
                    both = both or (ours is not None and paper is not None)
                if both:
                    compared += 1
                    lines.append("| " + " | ".join(row) + " |")
                    shown_marks |= {mark for mark in (INCOMPLETE, STOPPED) if any(mark in text for text in row)}
    if not compared:
        lines.append("| " + " | ".join(["—"] * len(header)) + " |")
    note = (f"ours: the number `launch.py table` prints for the cell (the configuration best on validation "
            f"{metric_name(table.selection_metric)}, the mean over the runs behind it) ± the sample standard deviation "
            f"over those runs (none for one run), with the number of runs in brackets; paper: {SOURCE} as printed, one "
            f"number per cell, not computed here; ours − paper: the difference of the two printed numbers, in "
            f"percentage points; no significance is claimed (the comparison table tests methods on the same users); "
            f"only cells with both numbers are listed ({compared}); —: none")
    note += f"; ranks: {TIE_RULES[table.ties]}"
    if table.left_out:
        note += f"; the search run that won the selection (seed {', '.join(map(str, table.left_out))}) left out"
    if INCOMPLETE in shown_marks:
        note += f"; {INCOMPLETE}: " + INCOMPLETE_MEANING.format(where="")
    if STOPPED in shown_marks:
        note += f"; {STOPPED}: {STOPPED_MEANING}"
    note += "."
    return "\n".join(lines + ["", note]) + "\n"
