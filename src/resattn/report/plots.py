"""The report's figures. Each function returns a matplotlib Figure, or None when its data are absent.

Figures are drawn on the Agg canvas of their own: no global backend switch, no display needed.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib import cm, colormaps, colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from resattn.report import corruption, stats
from resattn.report.runs import Group, block_names, fmt_value, group_label, short, sort_key
from resattn.report.tables import group_stats

MAX_CURVE_PANELS = 9  # λ curves per block up to this many blocks (ResNet-20); beyond, final λ against block
METRIC_TITLES = {
    "final_test_acc": "final test accuracy",
    "robust_acc": "robust accuracy",
    "best_test_acc": "best test accuracy",
    "final_val_acc": "final validation accuracy",
    "best_val_acc": "best validation accuracy",
}


def new_figure(panels: int = 1, max_cols: int = 3) -> tuple[Figure, list]:
    cols = min(panels, max_cols)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(6.4 * cols, 4.4 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]


def band(ax, x, table: np.ndarray, label: str, **style) -> None:
    """Mean over rows (seeds) as a line, min to max as a band when there is more than one row."""
    (line,) = ax.plot(x, np.nanmean(table, axis=0), marker="o", label=label, **style)
    if len(table) > 1:
        ax.fill_between(
            x, np.nanmin(table, axis=0), np.nanmax(table, axis=0), color=line.get_color(), alpha=0.2, linewidth=0
        )


def epoch_table(runs: list, tag: str) -> np.ndarray:
    """(runs, epochs) of a per-epoch curve, each point at the epoch its step ends (NaN where a run has none)."""
    epochs = max(int(r.summary.get("epochs_completed") or 1) for r in runs)
    table = np.full((len(runs), epochs), np.nan)
    for i, run in enumerate(runs):
        per_epoch = (run.summary.get("step") or 1) / max(1, int(run.summary.get("epochs_completed") or 1))
        for step, value in run.curves.get(tag, []):
            table[i, min(epochs, max(1, round(step / per_epoch))) - 1] = value
    return table


def accuracy(groups: list[Group]) -> Figure | None:
    """The held-out accuracy per epoch: validation where every run has a split (test is then read once, at the
    end), else test."""
    groups = [g for g in groups if g.runs]
    if not groups:
        return None
    split = "val" if all("acc/val" in r.curves for g in groups for r in g.runs) else "test"
    name = {"val": "Validation", "test": "Test"}[split]
    fig, (ax,) = new_figure()
    for group in groups:
        table = epoch_table(group.runs, f"acc/{split}")
        band(ax, np.arange(1, table.shape[1] + 1), table * 100, f"{group.label} (n={len(group.runs)})")
    ax.set(
        xlabel="epoch",
        ylabel=f"{name.lower()} accuracy (%)",
        title=f"{name} accuracy: mean over seeds, band = min to max",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def lambda_style(groups: list[Group], runs: list) -> tuple[dict, list[Line2D], object]:
    """Each run's colour, the legend handles and the colour bar (or None).

    lam_init varies: colour tells it (colour bar). Otherwise one colour per group. Dashes mark a
    fixed λ, and the legend says so only when some run had one."""
    lam_inits = [float(r.summary.get("lam_init", math.nan)) for r in runs]
    fixed = any(r.summary.get("lam_learnable") is False for r in runs)
    dashed = [Line2D([], [], color="grey", linestyle="--", label="fixed λ (lam_learnable=false)")] if fixed else []
    if len(set(lam_inits)) > 1:
        mappable = cm.ScalarMappable(colors.Normalize(min(lam_inits), max(lam_inits)), cm.viridis)
        solid = [Line2D([], [], color="grey", label="learnable λ")] if fixed else []
        return {id(r): mappable.to_rgba(v) for r, v in zip(runs, lam_inits)}, solid + dashed, mappable
    group_colour = {g.label: f"C{i % 10}" for i, g in enumerate(groups)}
    labels = dict.fromkeys(r.label for r in runs)
    handles = [Line2D([], [], color=group_colour[label], label=label) for label in labels]
    return {id(r): group_colour[r.label] for r in runs}, handles + dashed, None


def lambdas(groups: list[Group]) -> Figure | None:
    """λ per step, a panel per block; with more blocks than MAX_CURVE_PANELS, final λ against block."""
    runs = [r for g in groups for r in g.runs if any(t.startswith("lambda/") for t in r.curves)]
    if not runs:
        return None
    blocks = block_names(groups, "final_lambda")
    blocks += sorted(
        {t.removeprefix("lambda/") for r in runs for t in r.curves if t.startswith("lambda/")} - set(blocks)
    )
    colour, handles, mappable = lambda_style(groups, runs)
    linestyle = {id(r): "--" if r.summary.get("lam_learnable") is False else "-" for r in runs}
    if len(blocks) <= MAX_CURVE_PANELS:
        fig, axes = new_figure(len(blocks))
        for ax, block in zip(axes, blocks):
            for run in runs:
                if f"lambda/{block}" in run.curves:
                    steps, values = zip(*sorted(run.curves[f"lambda/{block}"]))
                    ax.plot(steps, values, color=colour[id(run)], linestyle=linestyle[id(run)], alpha=0.8)
            ax.set(xlabel="optimizer step", ylabel="λ", title=f"{block} (one line per run)")
    else:
        fig, axes = new_figure(1)
        ax = axes[0]
        for run in runs:
            final = run.summary.get("final_lambda") or {}
            ax.plot(
                range(len(blocks)),
                [final.get(b, math.nan) for b in blocks],
                marker=".",
                alpha=0.8,
                color=colour[id(run)],
                linestyle=linestyle[id(run)],
            )
        ax.set_xticks(range(len(blocks)), blocks, rotation=90, fontsize="x-small")
        ax.set(xlabel="block (forward order)", ylabel="final λ", title="Final λ per block (one line per run)")
    for ax in axes:
        ax.ticklabel_format(axis="y", useOffset=False)  # λ barely moves in short runs: show it, not an offset
        ax.grid(alpha=0.3)
    if handles:
        axes[0].legend(handles=handles, fontsize="x-small")
    if mappable is not None:
        fig.colorbar(mappable, ax=axes, label="lam_init")
    return fig


def accuracy_vs_lam_init(groups: list[Group], keys: list[str]) -> Figure | None:
    """Final accuracy against lam_init, one line per setting of the other keys (lam_learnable among them)."""
    controlled = [g for g in groups if g.runs and g.summary.get("controlled")]
    lam_inits = sorted({g.summary.get("lam_init") for g in controlled})
    if len(lam_inits) < 2:
        return None
    other = [k for k in keys if k != "pattern.lam_init"]
    series: dict[str, list] = {}
    for g in controlled:
        series.setdefault(group_label(g.config, other), []).append(g)
    fig, (ax,) = new_figure()
    for label, members in series.items():
        members.sort(key=lambda g: g.summary["lam_init"])
        # in %, as the tables; the intervals cut to what an accuracy can be
        d = [group_stats(g, ["final_test_acc"])["final_test_acc"] for g in members]
        mean = np.array([s["mean"] for s in d]) * 100
        err = np.nan_to_num([[s["mean"] - s["ci95_low"] for s in d], [s["ci95_high"] - s["mean"] for s in d]]) * 100
        ax.errorbar([g.summary["lam_init"] for g in members], mean, yerr=err, marker="o", capsize=3, label=label)
    if lam_inits[0] > 0 and lam_inits[-1] / lam_inits[0] >= 10:
        ax.set_xscale("log")  # lam_init sweeps span decades (0.01 .. 0.9)
    ax.set_xticks(lam_inits, [f"{v:g}" for v in lam_inits])
    ax.minorticks_off()
    ax.set(xlabel="lam_init", ylabel="final test accuracy (%)", title="Final test accuracy (mean, 95% CI) vs lam_init")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def corruption_severity(groups: list[Group]) -> Figure | None:
    """Accuracy against corruption severity, a panel per family (noise first), a line per group with its seed band."""
    families = corruption.families(groups)
    if not families:
        return None
    fig, axes = new_figure(len(families))
    for ax, family in zip(axes, families):
        for i, group in enumerate(g for g in groups if g.runs):
            severities, table = corruption.severity_table(group, family)
            if severities:
                band(ax, severities, table * 100, f"{group.label} (n={len(table)})", color=f"C{i % 10}")
        ax.set(xlabel="severity", ylabel="accuracy (%)", title=f"{family}: mean over seeds, band = min to max")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="x-small")
    return fig


def heatmap(groups: list[Group], refs: list[Group], keys: list[str], rows: list[dict]) -> Figure | None:
    """For a grid of two keys: each cell's mean difference from its reference, in points, with the 95% CI.

    Colour says what the verdicts say: a cell is coloured by its difference only where Holm finds one, so a
    wide interval around a large mean is never darker than a difference that holds; a cell without runs is
    grey and hatched, never white like a difference of 0."""
    metrics = [m for m in ("final_test_acc", "robust_acc") if any(r["metric"] == m for r in rows)]
    if len(keys) != 2 or not refs or not metrics:
        return None
    others = [g for g in groups if g not in refs]
    # down the side: the key that sets the reference apart (pattern, whose baseline value no other group has)
    row_key = next(
        (k for k in keys if {g.config.get(k) for g in refs}.isdisjoint(g.config.get(k) for g in others)), keys[0]
    )
    col_key = next(k for k in keys if k != row_key)
    row_values, col_values = (
        sorted({g.config.get(k) for g in groups}, key=lambda v: sort_key((v,))) for k in (row_key, col_key)
    )
    fig, axes = new_figure(len(metrics), max_cols=2)
    for ax, metric in zip(axes, metrics):
        found = {r["group"]: r for r in rows if r["metric"] == metric}
        shade = np.full((len(row_values), len(col_values)), np.nan)  # NaN: no runs, or no comparison
        texts = {(i, j): EMPTY for i in range(len(row_values)) for j in range(len(col_values))}
        for g in groups:
            cell = row_values.index(g.config.get(row_key)), col_values.index(g.config.get(col_key))
            shade[cell], texts[cell] = grid_cell(g in refs, found.get(g.label))
        draw_grid(fig, ax, shade, texts)
        ax.set_xticks(range(len(col_values)), [fmt_value(v) for v in col_values])
        ax.set_yticks(range(len(row_values)), [fmt_value(v) for v in row_values])
        ax.set(
            xlabel=short(col_key),
            ylabel=short(row_key),
            title=f"{METRIC_TITLES[metric]}: Δ from the reference (points), 95% CI\n"
            "coloured where Holm finds a difference; grey hatched: no runs",
        )
    return fig


EMPTY = "no runs"
SHORT_VERDICTS = {"no difference detected": "no difference", stats.TOO_FEW: "too few seeds"}


def grid_cell(is_reference: bool, row: dict | None) -> tuple[float, str]:
    """(colour value, text) of one cell of the heatmap: the difference in points where the verdict is better or
    worse, 0 (white) where none was found or for the reference itself, NaN where nothing was compared."""
    if is_reference:
        return 0.0, "reference"
    if row is None:
        return np.nan, "–"
    diff = row["diff"] * 100
    text = f"{diff:+.2f}\n[{row['ci95_low'] * 100:+.2f}, {row['ci95_high'] * 100:+.2f}]".replace("nan", "–")
    if row["verdict"] in ("better", "worse"):
        return diff, text
    return 0.0, f"{text}\n{SHORT_VERDICTS.get(row['verdict'], row['verdict'])}"


def draw_grid(fig: Figure, ax, shade: np.ndarray, texts: dict) -> None:
    coloured = np.abs(shade[np.isfinite(shade)])
    limit = coloured.max() if coloured.size and coloured.max() > 0 else 1.0
    cmap = colormaps["RdBu"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(shade), cmap=cmap, vmin=-limit, vmax=limit, aspect="auto")
    for (i, j), text in texts.items():
        if text == EMPTY:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="none", edgecolor="grey", hatch="//"))
        dark = abs(shade[i, j]) > 0.6 * limit  # white on the darkest cells, where black would vanish
        ax.text(j, i, text, ha="center", va="center", fontsize="small", color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label="Δ points (where a difference is found)")
