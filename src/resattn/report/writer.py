"""write_report: read the runs, compare, and write report.md, the CSVs and the plots; print the tables."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from resattn.errors import file_in_the_way
from resattn.report import plots, stats, tables
from resattn.report.answer import answer
from resattn.report.comparisons import comparisons, parse_reference, reference_groups, time_costs
from resattn.report.runs import (
    FINAL_OF_BEST,
    Group,
    ReportError,
    best_as_final,
    find_run_dirs,
    group_notes,
    group_runs,
    grouping_keys,
    metric_names,
    read_run,
    short,
)

PLOTS = {
    "acc_test.png": "test accuracy per epoch",
    "lambda.png": "λ per step (or final λ per block)",
    "acc_vs_lam_init.png": "final test accuracy against lam_init",
    "corruption_severity.png": "accuracy against corruption severity, per family",
    "grid_heatmap.png": "difference from the reference over the grid of two keys",
}
STAT_NAMES = ("mean", "std", "ci95_low", "ci95_high")
COMPARISON_COLUMNS = (
    "group",
    "reference",
    "metric",
    "test",
    "n",
    "n_ref",
    "diverged",
    "diverged_ref",
    "diff",
    "ci95_low",
    "ci95_high",
    "p_value",
    "p_holm",
    "verdict",
    "alpha_power",
    "mde_pts",
    "mde_pts_alpha_0.05",
    "seeds_for_0.5pts",
)


def choose_reference(groups: list[Group], ref: dict[str, str]) -> tuple[list[Group], list[str]]:
    """The reference groups (given, or pattern=baseline where there is one) and notes on what that leaves."""
    notes = []
    if ref:
        refs = reference_groups(groups, ref)
        if not refs:
            raise ReportError(
                f"--reference {' '.join(f'{k}={v}' for k, v in ref.items())} matches no group of "
                f"completed runs; groups: {'; '.join(g.label for g in groups) or 'none'}"
            )
    else:
        has_pattern = any("pattern.name" in g.config for g in groups)
        refs = reference_groups(groups, {"pattern": "baseline"}) if groups and has_pattern else []
        if not refs and len(groups) > 1:
            notes.append("no pattern=baseline group, so no reference: pass --reference KEY=VALUE to compare groups")
    if refs and len(refs) == len(groups) > 1:
        notes.append("every group matches the reference: nothing to compare; name a narrower --reference")
    return refs, notes


def write_plots(out_dir: Path, groups, refs, keys, rows) -> list[str]:
    figures = {
        "acc_test.png": plots.accuracy(groups),
        "lambda.png": plots.lambdas(groups),
        "acc_vs_lam_init.png": plots.accuracy_vs_lam_init(groups, keys),
        "corruption_severity.png": plots.corruption_severity(groups),
        "grid_heatmap.png": plots.heatmap(groups, refs, keys, rows),
    }
    for name, fig in figures.items():
        if fig is None:  # a plot left by an earlier report would no longer match report.md
            (out_dir / name).unlink(missing_ok=True)
        else:
            fig.savefig(out_dir / name, dpi=100)
    return [name for name, fig in figures.items() if fig is not None]


def write_csvs(out_dir: Path, runs, groups, group_stats, keys, metrics, rows) -> None:
    """Raw fractions and seconds, full precision, empty where undefined."""
    tables.write_csv(
        out_dir / "runs.csv",
        ["path", "group", "status", "error", "seed", "epochs_completed", "epochs", *metrics, *keys],
        [
            [
                str(r.path),
                r.label,
                r.status,
                r.error,
                r.summary.get("seed"),
                r.summary.get("epochs_completed"),
                r.summary.get("epochs"),
                *(r.metric(m) for m in metrics),
                *(r.config.get(k) for k in keys),
            ]
            for r in runs
        ],
    )
    tables.write_csv(
        out_dir / "groups.csv",
        [
            *keys,
            "group",
            "n",
            "seeds",
            "diverged",
            "diverged_seeds",
            *(f"{m}_{s}" for m in metrics for s in STAT_NAMES),
        ],
        [
            [
                *g.values,
                g.label,
                len(g.runs),
                " ".join(map(str, g.seeds())),
                len(g.diverged),
                " ".join(map(str, g.diverged_seeds())),
                *(st[m][s] for m in metrics for s in STAT_NAMES),
            ]
            for g, st in zip(groups, group_stats)
        ],
    )
    renamed = [
        {
            **r,
            "p_value": r["p"],
            "mde_pts": r["mde"] * 100,
            "mde_pts_alpha_0.05": r["mde_alone"] * 100,
            "seeds_for_0.5pts": r["seeds_needed"],
        }
        for r in rows
    ]
    tables.write_csv(
        out_dir / "comparisons.csv", list(COMPARISON_COLUMNS), [[r[c] for c in COMPARISON_COLUMNS] for r in renamed]
    )


def markdown(intro: str, paths, sections: dict, answer_lines: list[str], plot_names) -> str:
    """report.md: the answer first, then the tables (see report_sections), the plots and the files."""
    # full paths: report.md is read away from where it was made, where `.` (its own folder) says nothing
    sources = ", ".join(f"`{p.resolve()}`" for p in paths)
    md = ["# resattn report", "", intro, "", f"Sources: {sources}", "", *answer_lines]
    for title, (text, (headers, rows), empty) in sections.items():
        if rows or empty:
            md += [
                f"## {title}",
                "",
                *([text, ""] if text and rows else []),
                tables.md_table(headers, rows) if rows else empty,
                "",
            ]
    md += ["## Plots", "", *(f"![{PLOTS[name]}]({name})\n" for name in plot_names)]
    md += [] if plot_names else ["None.", ""]
    md += [
        "## Files",
        "",
        "- `runs.csv`: one row per run, every status",
        "- `groups.csv`: one row per group, `<metric>_mean`, `_std`, `_ci95_low`, `_ci95_high`; `diverged`",
        "- `comparisons.csv`: the comparisons above, as fractions, with `diverged` / `diverged_ref` (seeds each "
        "side lost to divergence, not compared), `p_value`, `p_holm`, `verdict`, `alpha_power` (the level the "
        "power figures use: 0.05 / the metric's number of tests), `mde_pts` (in points, at that level), "
        "`mde_pts_alpha_0.05` (at 0.05, as if alone) and `seeds_for_0.5pts` (at `alpha_power`)",
        "",
    ]
    return "\n".join(md)


def report_sections(runs, groups, group_stats, keys, metrics, rows, costs, out_dir: Path) -> dict:
    """title -> (explanation, (headers, rows), text when empty: "" leaves the section out)."""
    time_vs_reference = (
        (
            " Time vs reference: the group's time per run against its reference's (a fused job's wall "
            "time shared among its members), means over seeds."
        )
        if costs
        else ""
    )
    return {
        "Groups": (
            "Completed runs only. Accuracy in %, mean ± sample standard deviation over seeds, 95% confidence "
            "interval of the mean from the t distribution (– where n < 2), cut to the possible range. "
            f"Diverged runs are counted.{time_vs_reference}",
            tables.group_rows(groups, group_stats, keys, metrics, ci_columns=True, costs=costs),
            "No completed runs.",
        ),
        "Comparisons": (
            "Group mean minus reference mean, in percentage points, with its 95% interval: a paired "
            "t-test on per-seed differences where both groups hold the same seeds, otherwise Welch's. "
            "p Holm: adjusted over each metric's comparisons; verdict at p Holm < 0.05 with at least "
            f"{stats.MIN_SEEDS} seeds a side; the intervals are not adjusted (each comparison alone) "
            "and are cut to the possible range; MDE: the difference these seeds detect with 80% power "
            "at the level a Holm verdict needs, 0.05 / the metric's number of tests (comparisons.csv "
            "gives it at 0.05 too). Diverged seeds are not compared: each side's survivors are.",
            tables.comparison_rows(rows),
            "None.",
        ),
        "Accuracy under corruptions": (
            "Per family, mean over its corruptions and severities; % mean ± sd over seeds.",
            tables.corruption_rows(groups),
            "",
        ),
        "λ per block": (
            "Final λ, mean ± sd over seeds; travel: final minus initial mean λ.",
            tables.lambda_rows(groups, group_stats, metrics),
            "",
        ),
        "Runs not averaged": ("", tables.problem_rows(runs, out_dir), "None: every run completed."),
    }


def show(console: Console, intro: str, group_table, sections: dict, notes: list[str], comparison_terminal) -> None:
    """The same tables in the terminal; there the groups' intervals go on a second line of each cell, and
    the comparisons show their main columns (comparison_terminal)."""
    console.print(intro)
    console.print(tables.rich_table("Groups (accuracy in %, 95% CI of the mean, t distribution)", *group_table))
    for title, (_, (headers, rows), _) in sections.items():
        if title == "Comparisons" and rows:
            console.print(tables.rich_table(f"{title} (all columns in report.md)", *comparison_terminal))
        elif title != "Groups" and rows:
            console.print(tables.rich_table(title, headers, rows))
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")


def default_console() -> Console:
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: rich would assume 80 columns and fold every cell
        console.width = 160
    return console


def counts(runs, groups: list[Group]) -> str:
    """What became of the runs found: averaged, diverged, left out as a seed found again (an export read with
    its original holds every run twice), or not averaged for another reason."""
    averaged, diverged = sum(len(g.runs) for g in groups), sum(len(g.diverged) for g in groups)
    twins = sum(len(g.twins) for g in groups)
    again = f"{twins} left out as the same seed found again (counted once; notes below), " if twins else ""
    return (
        f"{len(runs)} runs found: {averaged} completed and averaged over seeds, {diverged} diverged (counted "
        f"per group), {again}{len(runs) - averaged - diverged - twins} others not averaged."
    )


def without_repeats(groups: list[Group], metrics: list[str]) -> tuple[list[str], str]:
    """The metrics report.md and the terminal show, and a sentence on what they leave out: a best-over-epochs
    metric equal to its final one in every run (best_as_final), whose column and comparisons would repeat the
    final's. The CSV files keep every metric: their columns stay the same whatever the runs did."""
    repeated, title = best_as_final(groups, metrics), plots.METRIC_TITLES
    said = "".join(
        f" {title[best].capitalize()} equals {title[FINAL_OF_BEST[best]]} in every run (none scored higher "
        f"at an earlier epoch), so the tables show {title[FINAL_OF_BEST[best]]} alone; runs.csv, groups.csv "
        "and comparisons.csv hold both."
        for best in repeated
    )
    return [m for m in metrics if m not in repeated], said


def write_report(paths, out_dir=None, reference=None, console: Console | None = None) -> Path:
    """Report on every run under `paths` (run, sweep or parent folders) into out_dir (default: the first path).

    reference: ["KEY=VALUE", ...] (or a dict) naming the group the others are compared with;
    default pattern=baseline when there is such a group. Returns the path of report.md."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        raise ReportError("give at least one run, sweep or parent folder")
    if out_dir is not None and file_in_the_way(out_dir) is not None:
        raise ReportError(f"--out {out_dir}: {file_in_the_way(out_dir)} is a file, not a folder; give a folder")
    out_dir = Path(out_dir) if out_dir is not None else paths[0]
    ref = parse_reference(reference)
    run_dirs = find_run_dirs(paths)
    if not run_dirs:
        raise ReportError(f"no runs (folders with .hydra/ or summary.json) under {', '.join(map(str, paths))}")
    runs = [read_run(d) for d in run_dirs]
    keys = grouping_keys(runs)
    groups = group_runs(runs, keys)
    metrics = metric_names(groups)
    refs, notes = choose_reference(groups, ref)  # before anything is written: a typo leaves no half report
    notes += group_notes(groups)  # mixed devices or torch versions, seeds found twice
    rows, more_notes = comparisons(groups, refs, keys, metrics) if refs else ([], [])
    notes += more_notes

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ReportError(f"--out {out_dir}: cannot make the folder ({err.strerror}); give a writable folder") from None
    plot_names = write_plots(out_dir, groups, refs, keys, rows)
    group_stats = [tables.group_stats(g, metrics) for g in groups]
    write_csvs(out_dir, runs, groups, group_stats, keys, metrics, rows)

    metrics, repeats = without_repeats(groups, metrics)
    rows, costs = [r for r in rows if r["metric"] in metrics], time_costs(groups, rows)
    grouped = ", ".join(short(k) for k in keys) or "nothing (all runs share one config)"
    intro = f"{counts(runs, groups)} Grouped by: {grouped}.{repeats}"
    sections = report_sections(runs, groups, group_stats, keys, metrics, rows, costs, out_dir)
    console = console or default_console()
    show(
        console,
        intro,
        tables.group_rows(groups, group_stats, keys, metrics, ci_columns=False, costs=costs),
        sections,
        notes,
        tables.terminal_comparison_rows(rows),
    )
    report = out_dir / "report.md"
    report.write_text(markdown(intro, paths, sections, answer(groups, rows, costs, notes, keys), plot_names))
    console.print(f"report: {report}")
    return report
