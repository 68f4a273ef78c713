"""The report's tables as rows of text (for report.md and the terminal) and as CSV files (full precision)."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
from rich.table import Table

from resattn.report import corruption
from resattn.report.runs import ACC_METRICS, VAL_METRICS, Group, Run, fmt_value, short
from resattn.report.stats import ALPHA, describe

PERCENT = (*ACC_METRICS, *VAL_METRICS, "robust_acc")  # fractions shown in %
HEADLINE = (*PERCENT, "wall_time_s")  # the groups table; λ per block has a table of its own
NAMES = {
    "best_test_acc": "best test acc %",
    "final_test_acc": "final test acc %",
    "robust_acc": "robust acc %",
    "best_val_acc": "best val acc %",
    "final_val_acc": "final val acc %",
    "wall_time_s": "wall time s",
}


def fmt(x, scale: float = 1.0, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * scale:.{digits}f}"


def scale_digits(metric: str) -> tuple[float, int]:
    return (100, 2) if metric in PERCENT else (1, 1) if metric == "wall_time_s" else (1, 4)


def mean_sd(s: dict, metric: str) -> str:
    scale, digits = scale_digits(metric)
    return f"{fmt(s['mean'], scale, digits)} ± {fmt(s['std'], scale, digits)}" if s["n"] else "–"


def possible_range(metric: str) -> tuple[float, float]:
    """The values a metric can take: accuracies and λ are fractions, times are never negative."""
    if metric in PERCENT or metric.startswith("final_lambda"):
        return 0.0, 1.0
    return (0.0, math.inf) if metric == "wall_time_s" else (-math.inf, math.inf)


def group_stats(group: Group, metrics: list[str]) -> dict:
    """Each metric over the group's completed runs, its interval cut to the metric's possible range (the
    t-interval knows no bounds): what the tables, groups.csv and the plots all show."""
    return {m: describe((r.metric(m) for r in group.runs), *possible_range(m)) for m in metrics}


def interval(s: dict, metric: str) -> str:
    """The 95% interval of the mean (group_stats: already cut)."""
    scale, digits = scale_digits(metric)
    return f"[{fmt(s['ci95_low'], scale, digits)}, {fmt(s['ci95_high'], scale, digits)}]" if s["n"] > 1 else "–"


def diverged_cell(group: Group) -> str:
    seeds = group.diverged_seeds()
    return f"{len(seeds)} (seed {' '.join(map(str, seeds))})" if seeds else "0"


def group_rows(
    groups: list[Group],
    group_stats: list[dict],
    keys: list[str],
    metrics: list[str],
    ci_columns: bool,
    costs: list[dict],
) -> tuple[list[str], list[list[str]]]:
    """The groups table; the interval gets its own column in report.md, a second line in the narrower terminal.
    Where groups were compared, the last column is each one's time per run against its reference's (costs)."""
    metrics = [m for m in metrics if m in HEADLINE]
    headers = [*(short(k) for k in keys), "n", "seeds", "diverged"]
    for m in metrics:
        headers += [f"{NAMES[m]} (mean ± sd)", "95% CI"] if ci_columns else [f"{NAMES[m]}\nmean ± sd\n95% CI"]
    change = {c["group"]: time_change(c["ratio"]) for c in costs} | {c["reference"]: "reference" for c in costs}
    rows = []
    for g, st in zip(groups, group_stats):
        row = [
            *(fmt_value(v) for v in g.values),
            str(len(g.runs)),
            " ".join(map(str, g.seeds())) or "–",
            diverged_cell(g),
        ]
        for m in metrics:
            cells = [mean_sd(st[m], m), interval(st[m], m)]
            row += cells if ci_columns else ["\n".join(cells)]
        rows.append(row + ([change.get(g.label, "–")] if costs else []))
    return headers + (["time vs reference"] if costs else []), rows


def lambda_rows(groups: list[Group], group_stats: list[dict], metrics: list[str]) -> tuple[list[str], list[list[str]]]:
    """Final λ (mean ± sd over seeds) and its travel from lam_init, per block and group: the longer side down."""
    blocks = [m.removeprefix("final_lambda_") for m in metrics if m.startswith("final_lambda_")]
    travel = {m.removeprefix("lam_travel_") for m in metrics if m.startswith("lam_travel_")}
    pairs = [(g, st) for g, st in zip(groups, group_stats) if any(st[f"final_lambda_{b}"]["n"] for b in blocks)]
    if not pairs:
        return [], []

    def cell(st: dict, block: str) -> str:
        moved = f"; travel {fmt(st[f'lam_travel_{block}']['mean'], digits=4)}" if block in travel else ""
        return mean_sd(st[f"final_lambda_{block}"], "final_lambda") + moved

    if len(blocks) > len(pairs):
        return ["block", *(g.label for g, _ in pairs)], [[b, *(cell(st, b) for _, st in pairs)] for b in blocks]
    return ["group", *blocks], [[g.label, *(cell(st, b) for b in blocks)] for g, st in pairs]


def corruption_rows(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    """Accuracy per corruption family (mean over its corruptions and severities), % mean ± sd over seeds."""
    families = corruption.families(groups)
    if not families:
        return [], []
    rows = []
    for g in groups:
        if g.runs:
            cells = [describe(corruption.family_mean(r, fam) for r in g.runs) for fam in families]
            robust = describe(r.metric("robust_acc") for r in g.runs)
            rows.append([g.label, str(len(g.runs)), *(mean_sd(s, "robust_acc") for s in [*cells, robust])])
    return ["group", "n", *(f"{fam} %" for fam in families), "all (robust acc) %"], rows


def p_text(p: float) -> str:
    """A p-value as report.md and the terminal give it, tables and sentences alike: two significant digits
    (small ones stay readable, 6.9e-05, not 0.000), more where two would round it across the verdicts'
    level (0.0496 is not "0.05")."""
    if math.isnan(p):
        return "–"
    texts = [f"{p:.{digits}g}" for digits in range(2, 7)]
    return next((t for t in texts if (float(t) < ALPHA) == (p < ALPHA)), texts[-1])


def time_change(ratio: float) -> str:
    """A group's time per run against its reference's, as a change: 1.57 -> "+57%"."""
    return "–" if math.isnan(ratio) else f"{ratio - 1:+.0%}"


def comparison_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    headers = [
        "group",
        "reference",
        "metric",
        "test",
        "n / n ref",
        "Δ mean (pp)",
        "95% CI (pp, unadjusted)",
        "p",
        "p Holm",
        "verdict",
        "MDE at α/m (pp)",
        "seeds for 0.5 pp",
    ]
    return headers, [
        [
            r["group"],
            r["reference"],
            r["metric"],
            r["test"],
            f"{r['n']} / {r['n_ref']}",
            f"{r['diff'] * 100:+.2f}",
            f"[{fmt(r['ci95_low'], 100)}, {fmt(r['ci95_high'], 100)}]",
            p_text(r["p"]),
            p_text(r["p_holm"]),
            r["verdict"],
            fmt(r["mde"], 100),
            str(r["seeds_needed"] or "–"),
        ]
        for r in rows
    ]


def problem_rows(runs: list[Run], out_dir: Path) -> tuple[list[str], list[list[str]]]:
    rows = [[relpath(r.path, out_dir), r.label or "–", r.status, r.error or "–"] for r in runs if not r.ok]
    return ["run", "group", "status", "reason"], rows


def relpath(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:  # another drive on Windows
        return str(path)


NAME_WIDTH_LIMIT = 32  # a name longer than this (a folder path) may still fold


def is_number(text: str) -> bool:
    return text.lstrip("+-").replace(".", "", 1).isdigit()


def name_width(header: str, cells: list[str]) -> int:
    """The longest word of a text column (its header's too): its width, so a name such as
    pattern=p3_controlled wraps between words (at ", ") and never inside one; 0 for a column of numbers."""
    if all(is_number(cell) for cell in cells):
        return 0
    words = [w for text in (header, *cells) for w in text.split()]
    return min(max(map(len, words), default=0), NAME_WIDTH_LIMIT)


def rich_table(title: str, headers: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(headers):
        # a fixed width: rich narrows the other columns first (a min_width alone is outbid: the table is cropped)
        table.add_column(h, overflow="fold", width=name_width(h, [row[i] for row in rows]) or None)
    for row in rows:
        table.add_row(*row)
    return table


# The comparison columns the terminal shows: all twelve fold every cell at 80 columns; report.md and
# comparisons.csv hold them all
TERMINAL_COMPARISON_COLUMNS = ("group", "metric", "Δ mean (pp)", "95% CI (pp, unadjusted)", "p Holm", "verdict")


def terminal_comparison_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    headers, cells = comparison_rows(rows)
    keep = [headers.index(h) for h in TERMINAL_COMPARISON_COLUMNS]
    return [headers[i] for i in keep], [
        [row[i].replace("_", " ") if headers[i] == "metric" else row[i] for i in keep] for row in cells
    ]


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(map(cell, row)) + " |" for row in rows])


def csv_value(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""  # NaN/absent: an empty cell, which spreadsheets and csv readers take as missing
    if isinstance(x, (float, np.floating)):
        return repr(float(x))  # full precision, so a reader gets back exactly what was computed
    return fmt_value(x) if isinstance(x, bool) else str(x)


def write_csv(path: Path, headers: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(headers)
        writer.writerows([[csv_value(x) for x in row] for row in rows])
