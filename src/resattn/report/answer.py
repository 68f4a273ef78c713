"""The sentences report.md opens with: what the runs say, made from the comparison numbers, and what
they cannot say (one seed, one group, no reference, diverged runs)."""

from __future__ import annotations

import math

import numpy as np

from resattn.report import stats
from resattn.report.comparisons import TARGET_DIFF
from resattn.report.plots import METRIC_TITLES
from resattn.report.runs import Group, block_names, group_label
from resattn.report.tables import fmt, p_text, time_change

# Verdicts are stated for these; best_test_acc is the maximum over epochs measured on the test set
# itself (an optimistic pick), so its tests stay in the table only.
ANSWERED = ("final_test_acc", "robust_acc")


def points(x: float) -> str:
    return f"{x * 100:+.2f}"


def verdict_line(row: dict) -> str:
    return judged(row) + survivors(row)


def judged(row: dict) -> str:
    head = f"{row['group']} vs {row['reference']}: {points(row['diff'])} points"
    if row["verdict"] == stats.TOO_FEW:
        return (
            f"{head} [{points(row['ci95_low'])}, {points(row['ci95_high'])}], {stats.TOO_FEW} "
            f"(n = {row['n']} / {row['n_ref']}; a verdict needs {stats.MIN_SEEDS} seeds a side)"
        )
    if row["verdict"] != "not testable":
        return (
            f"{head} [{points(row['ci95_low'])}, {points(row['ci95_high'])}], {row['verdict']} "
            f"(Holm p = {p_text(row['p_holm'])}, {row['test']} t-test, n = {row['n']} / {row['n_ref']})"
        )
    if min(row["n"], row["n_ref"]) < 2:
        return f"{head}, n = {row['n']} / {row['n_ref']}: one seed on a side, no verdict possible"
    return f"{head}: every seed gave the same difference, so there is no spread to test against; no verdict"


def survivors(row: dict) -> str:
    """What a side lost to divergence: its survivors alone are compared, which flatters it (a diverged seed
    would have scored worst), so the sentence says so."""
    lost = [
        f"{k} of {n + k} seeds of {label} diverged, the other {n} are compared"
        for label, n, k in (
            (row["group"], row["n"], row["diverged"]),
            (row["reference"], row["n_ref"], row["diverged_ref"]),
        )
        if k
    ]
    return f"; {' and '.join(lost)} (survivors only: diverged runs are counted, never averaged)" if lost else ""


def detectable(mde: float) -> str:
    return (
        f"{mde * 100:.2f} points"
        if mde <= 1
        else f"no difference an accuracy can have (their MDE is {mde * 100:.0f} points)"
    )


def power_line(row: dict) -> str:
    head = f"{row['group']} vs {row['reference']}"
    if math.isnan(row["mde"]):
        return f"{head}: the seeds cannot tell how large a difference they would detect (too few, or no spread)"
    n = f"{row['n']} seed pairs" if row["test"] == "paired" else f"{row['n']} / {row['n_ref']} seeds"
    need = row["seeds_needed"]
    needed = f"{need} seeds per group" if need else f"more than {stats.MAX_SEEDS} seeds per group"
    level = f"alpha {row['alpha_power']:.3g}"
    if row["tests"] > 1:  # several comparisons: the level Holm needs, and alpha alone beside it
        m = row["tests"]
        level += (
            f" ({stats.ALPHA} / {m}: Holm's first step over {m} comparisons; at alpha {stats.ALPHA} alone, "
            f"as if this were the only comparison: {detectable(row['mde_alone'])})"
        )
    return (
        f"{head}: {n} detect {detectable(row['mde'])} with {stats.POWER:.0%} power at {level}; "
        f"{TARGET_DIFF * 100:g} points would need {needed} at alpha {row['alpha_power']:.3g}"
    )


def diverged_lines(groups: list[Group]) -> list[str]:
    return [
        f"{g.label}: {len(g.diverged)} of {len(g.runs) + len(g.diverged)} runs diverged "
        f"(seed {' '.join(map(str, g.diverged_seeds()))}); they are counted, not averaged"
        for g in groups
        if g.diverged
    ]


def convergence_lines(groups: list[Group], keys: list[str]) -> list[str]:
    """Where lam_init varies: does a learnable λ end in the same place whatever its start? One line per
    setting of the other keys, with the widest spread of final λ (means over seeds) over its blocks."""
    if "pattern.lam_init" not in keys:
        return []
    series: dict[str, list[Group]] = {}
    for g in groups:
        if g.runs and g.summary.get("controlled") and g.summary.get("lam_learnable", True):
            series.setdefault(group_label(g.config, [k for k in keys if k != "pattern.lam_init"]), []).append(g)
    lines = []
    for label, members in series.items():
        starts = [g.summary["lam_init"] for g in members]
        spreads = {}
        for block in block_names(members, "final_lambda"):
            finals = [
                np.mean([r.summary["final_lambda"][block] for r in g.runs if block in r.summary["final_lambda"]])
                for g in members
            ]
            spreads[block] = max(finals) - min(finals)
        if len(members) > 1 and spreads:
            block = max(spreads, key=spreads.get)
            lines.append(
                f"{label}: started {max(starts) - min(starts):.3g} apart (lam_init {min(starts):g} to "
                f"{max(starts):g}), λ ends at most {spreads[block]:.3g} apart ({block}, means over seeds)"
            )
    return lines


def cost_line(cost: dict) -> str:
    return (
        f"{cost['group']}: {fmt(cost['seconds'], digits=1)} s against {fmt(cost['ref_seconds'], digits=1)} s "
        f"for {cost['reference']}, {time_change(cost['ratio'])}"
    )


def answer(groups: list[Group], rows: list[dict], costs: list[dict], notes: list[str], keys: list[str]) -> list[str]:
    """Markdown lines: the verdict per comparison, what each group's runs cost in time against its reference's
    (comparisons.time_costs), the seeds each comparison would need, and what cannot be said."""
    lines = ["## Answer", ""]
    completed = [g for g in groups if g.runs]
    if len(completed) < 2:
        what = "no completed runs" if not completed else f"one group of completed runs ({completed[0].label})"
        lines += [f"Only {what}: nothing to compare, so no verdict.", ""]
    for metric in ANSWERED:
        family = [r for r in rows if r["metric"] == metric]
        if family:
            over = f"these {len(family)} comparisons" if len(family) > 1 else "its one comparison"
            lines += [
                f"**{METRIC_TITLES[metric]}**, group minus reference with its 95% CI (unadjusted: each "
                f"comparison alone), verdict at Holm-adjusted p over {over}:",
                "",
                *(f"- {verdict_line(r)}" for r in family),
                "",
            ]
    if costs:
        lines += [
            "**Time per run** (wall time, mean over seeds, a fused job's shared among its members), against "
            "the reference:",
            "",
            *(f"- {cost_line(c)}" for c in costs),
            "",
        ]
    power = [r for r in rows if r["metric"] == "final_test_acc"]
    if power:
        lines += [
            "**Power** (final test accuracy; two-sided, from the observed spread, at the level a verdict needs):",
            "",
            *(f"- {power_line(r)}" for r in power),
            "",
        ]
    converge = convergence_lines(groups, keys)
    if converge:
        lines += [
            "**λ convergence** (learnable λ; the same other keys, lam_init varied):",
            "",
            *(f"- {line}" for line in converge),
            "",
        ]
    extra = diverged_lines(groups) + notes
    lines += [*(f"- {line}" for line in extra), ""] if extra else []
    return lines
