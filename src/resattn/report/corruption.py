"""Accuracy under corruptions, by family: summary.json's corruption_acc is {name: {severity: acc}}.

A run's accuracy for a family at a severity is the mean over the family's corruptions it measured;
its accuracy for a family is that mean over severities too. robust_acc (the mean over everything)
is reported with the other metrics.
"""

from __future__ import annotations

import numpy as np

from resattn.corruptions import FAMILIES
from resattn.report.runs import Group, Run

OTHER = "other"  # a corruption in no known family (a newer name than this report): still shown


def family_of(name: str) -> str:
    return next((family for family, names in FAMILIES.items() if name in names), OTHER)


def by_family(run: Run) -> dict[str, dict[int, float]]:
    """{family: {severity: mean accuracy over the family's corruptions}}, families in FAMILIES order."""
    acc = run.summary.get("corruption_acc") or {}
    collected: dict[str, dict[int, list]] = {}
    for name, per_severity in acc.items():
        for severity, value in per_severity.items():
            collected.setdefault(family_of(name), {}).setdefault(int(severity), []).append(value)
    order = [*FAMILIES, OTHER]
    return {
        fam: {s: float(np.mean(v)) for s, v in sorted(collected[fam].items())}
        for fam in sorted(collected, key=order.index)
    }


def families(groups: list[Group]) -> list[str]:
    """The families any completed run measured, noise first."""
    seen = {fam for g in groups for r in g.runs for fam in by_family(r)}
    return [fam for fam in (*FAMILIES, OTHER) if fam in seen]


def family_mean(run: Run, family: str) -> float | None:
    """The run's accuracy on a family, over its severities; None where it measured none."""
    per_severity = by_family(run).get(family)
    return float(np.mean(list(per_severity.values()))) if per_severity else None


def severity_table(group: Group, family: str) -> tuple[list[int], np.ndarray]:
    """(severities, accuracy array runs x severities, NaN where a run lacks one) for one group and family."""
    rows = [by_family(r).get(family, {}) for r in group.runs]
    severities = sorted({s for row in rows for s in row})
    return severities, np.array([[row.get(s, np.nan) for s in severities] for row in rows], dtype=float)
