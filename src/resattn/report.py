"""A report over finished runs: group them by config, average over seeds, compare with a reference.

`write_report(paths, out_dir)` finds every run under the given run, sweep or parent folders, reads
summary.json, .hydra/config.yaml and the TensorBoard events, and writes report.md, runs.csv,
groups.csv, comparisons.csv and PNG plots into out_dir, printing the tables to the terminal too.

Only runs whose summary says "completed" are averaged. Failed, diverged, interrupted and unfinished
runs, and folders that cannot be read, are listed with their status and reason, never averaged in.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import cm, colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table
from scipy import stats
from tensorboard.backend.event_processing import event_accumulator

from resattn.config import flatten

NAN = float("nan")
ACC_METRICS = ("best_test_acc", "final_test_acc")
# Config keys that say where or how a run ran, not what was run: runs differing only in these are
# the same experiment. trainer.compile goes with trainer.device (a speed choice, like the device).
IGNORED_KEYS = ("seed", "hydra", "trainer.device", "trainer.resume", "trainer.num_threads", "trainer.compile",
                "tracking", "data.root", "data.download")
PLOTS = {"acc_test.png": "test accuracy per epoch", "lambda.png": "λ per step",
         "acc_vs_lam_init.png": "final test accuracy against lam_init"}


class ReportError(ValueError):
    """Nothing to report on, or a reference that names no group: said to the user, not a traceback."""


@dataclass(eq=False)  # a run is itself, not its fields
class Run:
    path: Path
    status: str  # summary.json's status; "missing" without one, "unreadable" when it or the rest can't be read
    error: str = ""
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # flattened, resolved .hydra/config.yaml
    curves: dict = field(default_factory=dict)  # TensorBoard tag -> [(step, value)], acc/test and lambda/*
    label: str = ""  # the group it belongs to, filled in by group_runs

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def metric(self, name: str) -> float | None:
        if name.startswith("final_lambda_"):
            return (self.summary.get("final_lambda") or {}).get(name.removeprefix("final_lambda_"))
        return self.summary.get(name)


# ---------------------------------------------------------------- finding and reading runs

def find_run_dirs(paths) -> list[Path]:
    """Every folder holding .hydra/ or summary.json under the given paths, each once."""
    found: dict[Path, Path] = {}
    for root in map(Path, paths):
        if not root.is_dir():
            raise ReportError(f"{root}: no such folder")
        for dirpath, dirnames, filenames in os.walk(root):
            if ".hydra" in dirnames or "summary.json" in filenames:
                found.setdefault(Path(dirpath).resolve(), Path(dirpath))
                dirnames.clear()  # a run folder holds no runs
            else:
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(found.values())


def read_config(run_dir: Path) -> dict:
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    try:
        tree = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # e.g. ${hydra:...} resolves only inside a Hydra app: compare the text instead
        tree = OmegaConf.to_container(cfg, resolve=False)
    return flatten(tree)


def read_curves(run_dir: Path) -> dict:
    """Test accuracy and λ per step, through TensorBoard's own reader (it also drops purged steps of resumed runs)."""
    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={event_accumulator.SCALARS: 0})
    tb_log = logging.getLogger("tensorboard")
    level = tb_log.level
    tb_log.setLevel(logging.WARNING)  # inside a Hydra app its INFO lines ("No path found after ...") are noise
    try:
        acc.Reload()
    finally:
        tb_log.setLevel(level)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"] if tag == "acc/test" or tag.startswith("lambda/")}


def read_run(run_dir: Path) -> Run:
    """A run with its status; anything that keeps a completed run from being averaged makes it "unreadable"."""
    run = Run(run_dir, "missing")
    config_error = ""
    try:  # read first, so that even a run with a broken summary is shown in its group
        run.config = read_config(run_dir)
    except Exception as err:
        config_error = f".hydra/config.yaml: {type(err).__name__}: {err}"
    try:
        run.summary = json.loads((run_dir / "summary.json").read_text())
    except FileNotFoundError:
        run.error = "no summary.json (not started, still starting, or killed before its first epoch ended)"
        return run
    except (OSError, ValueError) as err:
        run.status, run.error = "unreadable", f"summary.json: {err}"
        return run
    if not isinstance(run.summary, dict):
        run.summary, run.status, run.error = {}, "unreadable", "summary.json: not a JSON object"
        return run
    run.status = str(run.summary.get("status", "unknown"))
    run.error = str(run.summary.get("error") or "").strip().split("\n")[0]
    if run.status in ("running", "interrupted"):
        signal = f" by {run.summary['signal']}" if run.summary.get("signal") else ""
        run.error = run.error or (f"stopped{signal} after {run.summary.get('epochs_completed', '?')}/"
                                  f"{run.summary.get('epochs', '?')} epochs")
    if not run.ok:
        return run
    missing = [k for k in (*ACC_METRICS, "seed", "wall_time_s") if not isinstance(run.summary.get(k), (int, float))]
    if config_error or missing:  # without its config a run can't be put in a group
        run.status, run.error = "unreadable", config_error or f"summary.json lacks {', '.join(missing)}"
        return run
    try:
        run.curves = read_curves(run_dir)
    except Exception as err:
        run.status, run.error = "unreadable", f"TensorBoard events: {type(err).__name__}: {err}"
        return run
    if "acc/test" not in run.curves:
        run.status, run.error = "unreadable", "no TensorBoard events with acc/test"
    return run


# ---------------------------------------------------------------- grouping and statistics

def ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in IGNORED_KEYS)


def grouping_keys(runs: list[Run]) -> list[str]:
    """The config keys that differ between runs, seed and run-placement keys aside.

    A key whose value follows from the keys kept before it (pattern.placement from pattern.name)
    splits the runs no further, so it is left out: the same groups, shorter labels."""
    configs = [r.config for r in runs if r.config]
    keys = list(dict.fromkeys(k for c in configs for k in c if not ignored(k)))
    varying = [k for k in keys if len({c.get(k) for c in configs}) > 1]
    kept: list[str] = []
    for key in varying:
        seen: dict = {}
        if any(seen.setdefault(tuple(c.get(k) for k in kept), c.get(key)) != c.get(key) for c in configs):
            kept.append(key)
    return kept


def short(key: str) -> str:
    """pattern.name -> pattern, as it is written on the command line."""
    return key.removesuffix(".name")


def fmt_value(value) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)  # true/false/null, as in YAML and on the command line
    return f"{value:g}" if isinstance(value, float) else str(value)


def group_label(config: dict, keys: list[str]) -> str:
    return ", ".join(f"{short(k)}={fmt_value(config.get(k))}" for k in keys) or "all runs"


def sort_key(values: tuple) -> tuple:
    # numbers in numeric order (lam_init 0.05 before 0.1), text alphabetically
    return tuple((0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))
                 for v in values)


def describe(values) -> dict:
    """n, mean, sample standard deviation and 95% t-interval of the mean; NaN where n is too small."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else NAN
    if n < 2:
        return {"n": n, "mean": mean, "std": NAN, "ci95_low": NAN, "ci95_high": NAN}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


def compare(values: dict, reference: dict) -> dict:
    """Mean of `values` minus mean of `reference` ({seed: value} each), with its 95% interval and p-value.

    Paired t on the per-seed differences when both hold the same seeds (a seed fixes init and data
    order, so pairing removes that shared noise); otherwise Welch's t, which allows unequal variances."""
    a, b = list(values.values()), list(reference.values())
    if sorted(values) == sorted(reference):
        d = np.array([values[s] - reference[s] for s in values])
        test, diff, n = "paired", float(d.mean()), len(d)
        se, df = (float(d.std(ddof=1)) / math.sqrt(n), n - 1) if n > 1 else (NAN, 0)
    else:
        test, diff = "Welch", float(np.mean(a) - np.mean(b))
        if len(a) > 1 and len(b) > 1:
            va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
            se = float(math.sqrt(va + vb))
            df = float((va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))) if se > 0 else NAN
        else:
            se, df = NAN, NAN
    if se == 0:  # every difference the same: the interval is that point, and no p-value
        low = high = diff
        p = NAN
    else:
        half = float(stats.t.ppf(0.975, df)) * se if df and df > 0 else NAN
        low, high = diff - half, diff + half
        p = float(2 * stats.t.sf(abs(diff / se), df)) if df and df > 0 else NAN
    return {"test": test, "n": len(a), "n_ref": len(b), "diff": diff, "ci95_low": low, "ci95_high": high, "p": p}


@dataclass(eq=False)  # `group in refs` means this very group
class Group:
    label: str
    values: tuple  # of the grouping keys
    runs: list  # completed runs only

    @property
    def config(self) -> dict:
        return self.runs[0].config

    def seeds(self) -> list:
        return sorted(r.summary["seed"] for r in self.runs)


def group_runs(runs: list[Run], keys: list[str]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for run in runs:
        if run.config:
            run.label = group_label(run.config, keys)
        if run.ok:
            values = tuple(run.config.get(k) for k in keys)
            groups.setdefault(values, Group(run.label, values, [])).runs.append(run)
    return sorted(groups.values(), key=lambda g: sort_key(g.values))


def metric_names(groups: list[Group]) -> list[str]:
    blocks = sorted({b for g in groups for r in g.runs for b in r.summary.get("final_lambda") or {}})
    return [*ACC_METRICS, *(f"final_lambda_{b}" for b in blocks), "wall_time_s"]


# ---------------------------------------------------------------- the reference and comparisons

def parse_reference(items) -> dict[str, str]:
    if isinstance(items, dict):
        return {str(k): str(v) for k, v in items.items()}
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ReportError(f"--reference {item!r}: expected KEY=VALUE, e.g. pattern=baseline")
        out[key] = value
    return out


def matches(value, text: str) -> bool:
    """A config value against a command-line value: 0.3 matches "0.3", True matches "true"."""
    if isinstance(value, bool) or value is None:
        return fmt_value(value) == text.lower()
    if isinstance(value, (int, float)):
        try:
            return float(text) == value
        except ValueError:
            return False
    return str(value) == text


def reference_groups(groups: list[Group], reference: dict[str, str]) -> list[Group]:
    known = {k for g in groups for k in g.config}
    resolved = {}
    for key, value in reference.items():
        full = key if key in known else f"{key}.name"  # pattern=baseline means pattern.name=baseline
        if full not in known:
            raise ReportError(f"--reference {key}={value}: no config key {key!r} in these runs")
        resolved[full] = value
    return [g for g in groups if all(matches(g.config.get(k), v) for k, v in resolved.items())]


def by_seed(runs: list[Run], metric: str) -> dict:
    """{seed: value}. A seed run twice can't be paired: then each run is keyed by its folder, which makes it Welch."""
    seeds = [r.summary["seed"] for r in runs]
    keys = seeds if len(set(seeds)) == len(seeds) else [str(r.path) for r in runs]
    return {k: r.summary[metric] for k, r in zip(keys, runs)}


def comparisons(groups: list[Group], refs: list[Group], keys: list[str]) -> tuple[list[dict], list[str]]:
    """Each group against the reference group most like it (same values of the other grouping keys),
    so a sweep over pattern x lr compares p1 at lr 0.1 with baseline at lr 0.1."""
    rows, notes = [], []
    for group in groups:
        if group in refs:
            continue
        score = {id(r): sum(r.config.get(k) == group.config.get(k) for k in keys) for r in refs}
        best = [r for r in refs if score[id(r)] == max(score.values())]
        if len(best) > 1:
            notes.append(f"{group.label}: no comparison, {len(best)} reference groups fit equally well "
                         f"({'; '.join(r.label for r in best)})")
            continue
        ref = best[0]
        for metric in ACC_METRICS:
            rows.append({"group": group.label, "reference": ref.label, "metric": metric,
                         **compare(by_seed(group.runs, metric), by_seed(ref.runs, metric))})
    return rows, notes


# ---------------------------------------------------------------- plots

def new_figure(ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(6.4 * ncols, 4.4), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas, set on this figure only: no global backend switch, no display needed
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def plot_accuracy(groups: list[Group], path: Path) -> None:
    fig, (ax,) = new_figure()
    for group in groups:
        curves = [[v for _, v in sorted(r.curves["acc/test"])] for r in group.runs]
        table = np.full((len(curves), max(map(len, curves))), np.nan)
        for i, c in enumerate(curves):
            table[i, :len(c)] = c
        epochs = np.arange(1, table.shape[1] + 1)  # one acc/test point per epoch
        line, = ax.plot(epochs, np.nanmean(table, axis=0), marker="o", label=f"{group.label} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(epochs, np.nanmin(table, axis=0), np.nanmax(table, axis=0), color=line.get_color(),
                            alpha=0.2, linewidth=0)
    ax.set(xlabel="epoch", ylabel="test accuracy", title="Test accuracy: mean over seeds, band = min to max")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)


def plot_lambda(groups: list[Group], path: Path) -> bool:
    runs = [r for g in groups for r in g.runs if any(t.startswith("lambda/") for t in r.curves)]
    if not runs:
        return False
    blocks = sorted({t for r in runs for t in r.curves if t.startswith("lambda/")})
    lam_inits = [float(r.summary.get("lam_init", NAN)) for r in runs]
    # lam_init varies: colour tells it (colour bar), dashes tell a fixed λ. Otherwise one colour per group.
    by_lam = len(set(lam_inits)) > 1
    norm, cmap = colors.Normalize(min(lam_inits), max(lam_inits)), cm.viridis
    group_colour = {g.label: f"C{i % 10}" for i, g in enumerate(groups)}
    fig, axes = new_figure(len(blocks))
    for ax, tag in zip(axes, blocks):
        for run, lam0 in zip(runs, lam_inits):
            if tag in run.curves:
                steps, values = zip(*sorted(run.curves[tag]))
                ax.plot(steps, values, color=cmap(norm(lam0)) if by_lam else group_colour[run.label], alpha=0.8,
                        linestyle="-" if run.summary.get("lam_learnable", True) else "--")
        if by_lam:
            handles = [Line2D([], [], color="grey", linestyle=ls, label=text)
                       for ls, text in (("-", "learnable λ"), ("--", "fixed λ (lam_learnable=false)"))]
        else:
            labels = dict.fromkeys(r.label for r in runs)
            handles = [Line2D([], [], color=group_colour[label], label=label) for label in labels]
        ax.legend(handles=handles, fontsize="x-small")
        ax.set(xlabel="optimizer step", ylabel="λ", title=f"{tag} (one line per run)")
        ax.ticklabel_format(axis="y", useOffset=False)  # λ barely moves in short runs: show it, not an offset
        ax.grid(alpha=0.3)
    if by_lam:
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="lam_init")
    fig.savefig(path, dpi=100)
    return True


def plot_lam_init(groups: list[Group], keys: list[str], path: Path) -> bool:
    """Final accuracy against lam_init, one line per setting of the other keys (lam_learnable among them)."""
    controlled = [g for g in groups if g.runs[0].summary.get("controlled")]
    if len({g.runs[0].summary.get("lam_init") for g in controlled}) < 2:
        return False
    other = [k for k in keys if k != "pattern.lam_init"]
    series: dict[str, list] = {}
    for g in controlled:
        series.setdefault(group_label(g.config, other), []).append(g)
    fig, (ax,) = new_figure()
    for label, members in series.items():
        members.sort(key=lambda g: g.runs[0].summary["lam_init"])
        d = [describe(r.summary["final_test_acc"] for r in g.runs) for g in members]
        mean = np.array([s["mean"] for s in d])
        err = np.nan_to_num([[s["mean"] - s["ci95_low"] for s in d], [s["ci95_high"] - s["mean"] for s in d]])
        ax.errorbar([g.runs[0].summary["lam_init"] for g in members], mean, yerr=err, marker="o", capsize=3,
                    label=label)
    lam_inits = sorted({g.runs[0].summary["lam_init"] for g in controlled})
    if lam_inits[0] > 0 and lam_inits[-1] / lam_inits[0] >= 10:
        ax.set_xscale("log")  # lam_init sweeps span decades (0.01 .. 0.9)
    ax.set_xticks(lam_inits, [f"{v:g}" for v in lam_inits])
    ax.minorticks_off()
    ax.set(xlabel="lam_init", ylabel="final test accuracy", title="Final test accuracy (mean, 95% CI) vs lam_init")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)
    return True


# ---------------------------------------------------------------- tables and files

def fmt(x, scale: float = 1.0, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * scale:.{digits}f}"


def group_rows(groups: list[Group], group_stats: list[dict], keys: list[str], metrics: list[str], ci_columns: bool
               ) -> tuple[list[str], list[list[str]]]:
    """The groups table; the interval gets its own column in report.md, a second line in the narrower terminal."""
    headers = [*(short(k) for k in keys), "n", "seeds"]
    for m in metrics:
        name = {"best_test_acc": "best test acc %", "final_test_acc": "final test acc %",
                "wall_time_s": "wall time s"}.get(m, m.replace("final_lambda_", "final λ "))
        headers += [f"{name} (mean ± sd)", "95% CI"] if ci_columns else [f"{name}\nmean ± sd\n95% CI"]
    rows = []
    for g, st in zip(groups, group_stats):
        row = [*(fmt_value(v) for v in g.values), str(len(g.runs)), " ".join(map(str, g.seeds()))]
        for m in metrics:
            s = st[m]
            scale, digits = (100, 2) if m in ACC_METRICS else (1, 1) if m == "wall_time_s" else (1, 4)
            cells = [f"{fmt(s['mean'], scale, digits)} ± {fmt(s['std'], scale, digits)}" if s["n"] else "–",
                     f"[{fmt(s['ci95_low'], scale, digits)}, {fmt(s['ci95_high'], scale, digits)}]" if s["n"] > 1
                     else "–"]
            row += cells if ci_columns else ["\n".join(cells)]
        rows.append(row)
    return headers, rows


def comparison_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    headers = ["group", "reference", "metric", "test", "n / n ref", "Δ mean (pp)", "95% CI (pp)", "p"]
    return headers, [[r["group"], r["reference"], r["metric"], r["test"], f"{r['n']} / {r['n_ref']}",
                      f"{r['diff'] * 100:+.2f}", f"[{fmt(r['ci95_low'], 100)}, {fmt(r['ci95_high'], 100)}]",
                      fmt(r["p"], digits=3)] for r in rows]


def problem_rows(runs: list[Run], out_dir: Path) -> tuple[list[str], list[list[str]]]:
    rows = [[relpath(r.path, out_dir), r.label or "–", r.status, r.error or "–"] for r in runs if not r.ok]
    return ["run", "group", "status", "reason"], rows


def relpath(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:  # another drive on Windows
        return str(path)


def rich_table(title: str, headers: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for h in headers:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


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
    return fmt_value(x) if isinstance(x, bool) or x is None else str(x)


def write_csv(path: Path, headers: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(headers)
        writer.writerows([[csv_value(x) for x in row] for row in rows])


def write_report(paths, out_dir=None, reference=None, console: Console | None = None) -> Path:
    """Report on every run under `paths` (run, sweep or parent folders) into out_dir (default: the first path).

    reference: ["KEY=VALUE", ...] (or a dict) naming the group the others are compared with;
    default pattern=baseline when there is such a group. Returns the path of report.md."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        raise ReportError("give at least one run, sweep or parent folder")
    out_dir = Path(out_dir) if out_dir is not None else paths[0]
    ref = parse_reference(reference)
    run_dirs = find_run_dirs(paths)
    if not run_dirs:
        raise ReportError(f"no runs (folders with .hydra/ or summary.json) under {', '.join(map(str, paths))}")
    runs = [read_run(d) for d in run_dirs]
    keys = grouping_keys(runs)
    groups = group_runs(runs, keys)
    metrics = metric_names(groups)

    # The reference: checked before anything is written, so a typo leaves no half report behind.
    refs, notes = [], []
    if ref:
        refs = reference_groups(groups, ref)
        if not refs:
            raise ReportError(f"--reference {' '.join(f'{k}={v}' for k, v in ref.items())} matches no group of "
                              f"completed runs; groups: {'; '.join(g.label for g in groups) or 'none'}")
    elif groups:
        refs = reference_groups(groups, {"pattern": "baseline"}) if any("pattern.name" in g.config for g in groups) \
            else []
        if not refs and len(groups) > 1:
            notes.append("no pattern=baseline group: pass --reference KEY=VALUE to compare groups")
    if refs and len(refs) == len(groups) > 1:
        notes.append("every group matches the reference: nothing to compare; name a narrower --reference")
    for g in groups:
        if len(set(g.seeds())) < len(g.runs):
            notes.append(f"{g.label}: a seed appears more than once ({' '.join(map(str, g.seeds()))}); "
                         "is a run folder copied, or passed twice under different paths?")
    comp, more_notes = comparisons(groups, refs, keys) if refs else ([], [])
    notes += more_notes

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    if groups:
        plot_accuracy(groups, out_dir / "acc_test.png")
        plots.append("acc_test.png")
        if plot_lambda(groups, out_dir / "lambda.png"):
            plots.append("lambda.png")
        if plot_lam_init(groups, keys, out_dir / "acc_vs_lam_init.png"):
            plots.append("acc_vs_lam_init.png")
    for name in set(PLOTS) - set(plots):  # a plot left by an earlier report would no longer match report.md
        (out_dir / name).unlink(missing_ok=True)

    # CSVs: raw fractions and seconds, full precision, empty where undefined.
    blocks = [m.removeprefix("final_lambda_") for m in metrics if m.startswith("final_lambda_")]
    write_csv(out_dir / "runs.csv",
              ["path", "group", "status", "error", "seed", "epochs_completed", "epochs", *ACC_METRICS,
               *(f"final_lambda_{b}" for b in blocks), "wall_time_s", *keys],
              [[str(r.path), r.label, r.status, r.error, r.summary.get("seed"), r.summary.get("epochs_completed"),
                r.summary.get("epochs"), *(r.metric(m) for m in metrics), *(r.config.get(k) for k in keys)]
               for r in runs])
    stat_names = ("mean", "std", "ci95_low", "ci95_high")
    group_stats = [{m: describe(r.metric(m) for r in g.runs) for m in metrics} for g in groups]
    write_csv(out_dir / "groups.csv",
              [*keys, "group", "n", "seeds", *(f"{m}_{s}" for m in metrics for s in stat_names)],
              [[*g.values, g.label, len(g.runs), " ".join(map(str, g.seeds())),
                *(st[m][s] for m in metrics for s in stat_names)] for g, st in zip(groups, group_stats)])
    comp_keys = ("group", "reference", "metric", "test", "n", "n_ref", "diff", "ci95_low", "ci95_high", "p")
    write_csv(out_dir / "comparisons.csv", list(comp_keys), [[row[k] for k in comp_keys] for row in comp])

    # The terminal and report.md show the same tables.
    g_headers, g_rows = group_rows(groups, group_stats, keys, metrics, ci_columns=True)
    c_headers, c_rows = comparison_rows(comp)
    p_headers, p_rows = problem_rows(runs, out_dir)
    n_ok = sum(r.ok for r in runs)
    intro = (f"{len(runs)} runs found, {n_ok} completed and averaged over seeds, {len(runs) - n_ok} not averaged. "
             f"Grouped by: {', '.join(short(k) for k in keys) or 'nothing (all runs share one config)'}.")
    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file or a pipe: rich would assume 80 columns and fold every cell
            console.width = 160
    console.print(intro)
    console.print(rich_table("Groups (accuracy in %, 95% CI of the mean, t distribution)",
                             *group_rows(groups, group_stats, keys, metrics, ci_columns=False)))
    if comp:
        console.print(rich_table("Against the reference (Δ in percentage points)", c_headers, c_rows))
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")
    if p_rows:
        console.print(rich_table("Runs not averaged", p_headers, p_rows))
    report = out_dir / "report.md"

    md = ["# resattn report", "", intro, "",
          "Sources: " + ", ".join(f"`{relpath(p, out_dir)}`" for p in paths), "",
          "## Groups", "",
          "Completed runs only. Accuracy in %, mean ± sample standard deviation over seeds, "
          "95% confidence interval of the mean from the t distribution (– where n < 2).", "",
          md_table(g_headers, g_rows) if g_rows else "No completed runs.", "",
          "## Comparisons", ""]
    if comp:
        md += ["Group mean minus reference mean, in percentage points, with its 95% interval: a paired t-test "
               "on per-seed differences where both groups hold the same seeds, otherwise Welch's t-test.", "",
               md_table(c_headers, c_rows), ""]
    md += [f"- {n}" for n in notes] + ([""] if notes else []) + ([] if comp or notes else ["None.", ""])
    md += ["## Runs not averaged", ""]
    md += [md_table(p_headers, p_rows) if p_rows else "None: every run completed.", ""]
    md += ["## Plots", ""] + [f"![{PLOTS[p]}]({p})\n" for p in plots] + ([] if plots else ["None.", ""])
    md += ["## Files", "", "- `runs.csv`: one row per run, every status",
           "- `groups.csv`: one row per group, `<metric>_mean`, `_std`, `_ci95_low`, `_ci95_high`",
           "- `comparisons.csv`: the comparisons above, as fractions", ""]
    report.write_text("\n".join(md))
    console.print(f"report: {report}")
    return report
