"""Which group each group is compared with, and the comparisons themselves, with verdicts.

The reference (default pattern=baseline) may match several groups, one per setting of the other
grouping keys; each group is compared with the reference group most like it, so in a pattern x lr
sweep p1 at lr 0.1 meets the baseline at lr 0.1, and in a pattern x attention grid p1 with SE meets
the baseline run with attention=se. The baseline has no attention, so its groups for each attention
are the same computation: when several reference groups fit equally well and they hold the very same
numbers seed by seed, any of them is the reference (the first is taken, and a note says so).
"""

from __future__ import annotations

import math

import numpy as np

from resattn.report import stats
from resattn.report.runs import ACC_METRICS, VAL_METRICS, Group, ReportError, fmt_value

TARGET_DIFF = 0.005  # 0.5 percentage points: the difference the "seeds needed" line is about
DIFF_RANGE = (-1.0, 1.0)  # every compared metric is an accuracy (a fraction): differences lie within ±1


def parse_reference(items) -> dict[str, str]:
    if isinstance(items, dict):
        return {str(k): str(v) for k, v in items.items()}
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ReportError(f"--reference {item!r}: expected KEY=VALUE, e.g. pattern=baseline")
        if key in out:  # one group is the reference: two values of a key name none
            raise ReportError(f"--reference gives {key} twice ({key}={out[key]}, {item}); give one value per key")
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


def by_seed(group: Group, metric: str) -> dict:
    """{seed: value}. A seed run twice can't be paired: then each run is keyed by its folder, which makes it Welch."""
    runs = [r for r in group.runs if r.metric(metric) is not None]
    seeds = [r.summary["seed"] for r in runs]
    keys = seeds if len(set(seeds)) == len(seeds) else [str(r.path) for r in runs]
    return {k: r.metric(metric) for k, r in zip(keys, runs)}


def compared_metrics(metrics: list[str]) -> list[str]:
    """Accuracies only: λ and wall time describe a run, they are not what a placement is judged by."""
    return [m for m in metrics if m in ACC_METRICS or m in VAL_METRICS or m == "robust_acc"]


def match_reference(group: Group, refs: list[Group], keys: list[str], metrics: list[str]) -> tuple[Group | None, str]:
    """The reference group sharing most grouping-key values with `group`, and a note when that needed a choice."""
    score = {id(r): sum(r.config.get(k) == group.config.get(k) for k in keys) for r in refs}
    best = [r for r in refs if score[id(r)] == max(score.values())]
    if len(best) == 1:
        return best[0], ""
    if all(by_seed(r, m) == by_seed(best[0], m) and r.runs for r in best for m in metrics):
        return best[0], (
            f"{group.label}: compared with {best[0].label}; the reference groups "
            f"{'; '.join(r.label for r in best)} hold the same numbers (the same computation)"
        )
    return None, (
        f"{group.label}: no comparison, {len(best)} reference groups fit equally well "
        f"({'; '.join(r.label for r in best)})"
    )


def comparisons(
    groups: list[Group], refs: list[Group], keys: list[str], metrics: list[str]
) -> tuple[list[dict], list[str]]:
    """One row per (group, metric) against its reference, Holm-adjusted per metric, with verdict and power."""
    metrics = compared_metrics(metrics)
    rows, notes = [], []
    for group in groups:
        if group in refs or not group.runs:  # a group whose every run diverged is said so elsewhere
            continue
        ref, note = match_reference(group, refs, keys, metrics)
        notes += [note] if note else []
        if ref is not None and not ref.runs:
            notes.append(f"{group.label}: no comparison, every run of its reference {ref.label} diverged")
            continue
        for metric in metrics if ref is not None else ():
            values, ref_values = by_seed(group, metric), by_seed(ref, metric)
            if values and ref_values:
                row = stats.compare(values, ref_values)
                row["ci95_low"], row["ci95_high"] = stats.clip_interval(row["ci95_low"], row["ci95_high"], *DIFF_RANGE)
                rows.append(
                    {
                        "group": group.label,
                        "reference": ref.label,
                        "metric": metric,
                        **row,
                        "diverged": len(group.diverged),
                        "diverged_ref": len(ref.diverged),
                    }
                )
    for metric in metrics:  # each metric's comparisons are one family
        family = [r for r in rows if r["metric"] == metric]
        judge(family)
    return rows, notes


def judge(family: list[dict]) -> None:
    """Holm's adjustment, the verdict and the power of each comparison of one metric's family, in place. Power
    is at the level a verdict among them is sure to need (stats.family_alpha), and at alpha alone, named."""
    p_values = [r["p"] for r in family]
    tests = sum(not math.isnan(p) for p in p_values)  # what Holm counts: a comparison without a p is no test
    alpha = stats.family_alpha(tests)
    for row, p_holm in zip(family, stats.holm(p_values)):
        seeds = min(row["n"], row["n_ref"])
        row.update(
            p_holm=p_holm,
            verdict=stats.verdict(row["diff"], p_holm, seeds),
            tests=tests,
            alpha_power=alpha,
            mde=stats.mde(row, alpha=alpha),
            mde_alone=stats.mde(row),
            seeds_needed=stats.seeds_needed(row, TARGET_DIFF, alpha=alpha),
        )


def seconds_per_run(group: Group) -> float:
    """The mean time of the group's completed runs; a fused job's wall_time_s is the whole job's, so each of its
    members counts its share."""
    return float(np.mean([r.summary["wall_time_s"] / (r.summary.get("members") or 1) for r in group.runs]))


def time_costs(groups: list[Group], rows: list[dict]) -> list[dict]:
    """Each compared group's time per run against its reference's: {group, reference, seconds, ref_seconds,
    ratio}, one per pair of groups the comparisons met."""
    by_label = {g.label: g for g in groups}
    costs = []
    for label, ref in dict.fromkeys((r["group"], r["reference"]) for r in rows):
        seconds, ref_seconds = seconds_per_run(by_label[label]), seconds_per_run(by_label[ref])
        costs.append(
            {
                "group": label,
                "reference": ref,
                "seconds": seconds,
                "ref_seconds": ref_seconds,
                "ratio": seconds / ref_seconds if ref_seconds > 0 else math.nan,
            }
        )
    return costs
