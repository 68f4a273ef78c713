"""The report's statistics: summaries over seeds, tests of a group against its reference, Holm's
adjustment over a family of tests, verdicts, and the power of a test (minimum detectable difference,
seeds needed for a given difference).

Values are in the metric's own unit (accuracy as a fraction); NaN marks what the data cannot give.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

NAN = float("nan")
ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 10_000  # seeds_needed gives up beyond this: "more than 10000" is the answer then
# A t-test on one degree of freedom (two seeds) swings on a single run: verdicts need three seeds a side
# (docs/results.md calls three the minimum); below that the report gives the interval alone.
MIN_SEEDS = 3
TOO_FEW = "too few seeds for a verdict"


def describe(values, lowest: float = -math.inf, highest: float = math.inf) -> dict:
    """n, mean, sample standard deviation and 95% t-interval of the mean, the interval cut to [lowest, highest],
    the values the quantity can take (clip_interval); NaN where n is too small."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else NAN
    if n < 2:
        return {"n": n, "mean": mean, "std": NAN, "ci95_low": NAN, "ci95_high": NAN}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    low, high = clip_interval(mean - half, mean + half, lowest, highest)
    return {"n": n, "mean": mean, "std": std, "ci95_low": low, "ci95_high": high}


def welch_df(sd_a: float, n_a: int, sd_b: float, n_b: int) -> float:
    va, vb = sd_a**2 / n_a, sd_b**2 / n_b
    return (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1)) if va + vb > 0 else NAN


def _sd(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if len(x) > 1 else NAN


def compare(values: dict, reference: dict) -> dict:
    """Mean of `values` minus mean of `reference` ({seed: value} each), with its 95% interval and p-value.

    Paired t on the per-seed differences when both hold the same seeds (a seed fixes init and data
    order, so pairing removes that shared noise); otherwise Welch's t, which allows unequal variances.
    Also returns the spread the power calculations need: sd of the differences (paired), or each sd."""
    a, b = np.array(list(values.values()), float), np.array(list(reference.values()), float)
    out = {"n": len(a), "n_ref": len(b), "sd": _sd(a), "sd_ref": _sd(b), "sd_diff": NAN}
    if sorted(values) == sorted(reference):
        d = np.array([values[s] - reference[s] for s in values])
        out.update(test="paired", diff=float(d.mean()), sd_diff=_sd(d))
        se, df = out["sd_diff"] / math.sqrt(len(d)), len(d) - 1
    else:
        out.update(test="Welch", diff=float(a.mean() - b.mean()))
        se = math.sqrt(out["sd"] ** 2 / len(a) + out["sd_ref"] ** 2 / len(b))
        df = welch_df(out["sd"], len(a), out["sd_ref"], len(b)) if len(a) > 1 and len(b) > 1 else NAN
    if se <= 1e-12 * max(np.abs(a).max(), np.abs(b).max()):
        # every difference the same, up to float rounding: the interval is that point, no p-value, no spread
        out.update({"sd_diff": 0.0} if out["test"] == "paired" else {"sd": 0.0, "sd_ref": 0.0})
        low = high = out["diff"]
        p = NAN
    elif df > 0:
        half = float(stats.t.ppf(0.975, df)) * se
        low, high = out["diff"] - half, out["diff"] + half
        p = float(2 * stats.t.sf(abs(out["diff"] / se), df))
    else:  # NaN or 0 degrees of freedom: one value on a side
        low = high = p = NAN
    return {**out, "ci95_low": low, "ci95_high": high, "p": p}


def holm(p_values) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order; NaN ones are not tests and stay NaN."""
    p = np.asarray(p_values, dtype=float)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    adjusted = np.full(len(p), NAN)
    running = 0.0
    for rank, i in enumerate(order):  # step down: the k-th smallest times (m - k), never below the one before
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def clip_interval(low: float, high: float, lowest: float, highest: float) -> tuple[float, float]:
    """An interval cut to the values the quantity can take (a t-interval knows no bounds: a wall time's
    reaches below 0 s, an accuracy difference's beyond 100 points); NaN stays NaN."""

    def clip(x: float) -> float:
        return x if math.isnan(x) else min(max(x, lowest), highest)

    return clip(low), clip(high)


def family_alpha(tests: int, alpha: float = ALPHA) -> float:
    """The level a verdict among `tests` comparisons is sure to need: Holm's first step, alpha / m. The
    smallest p must pass it; later steps are gentler, but which test comes first depends on the draw, so
    power is planned at this level."""
    return alpha / max(1, tests)


def verdict(diff: float, p_holm: float, seeds: int = MIN_SEEDS, alpha: float = ALPHA) -> str:
    """`seeds`: the fewer seeds of the two sides."""
    if math.isnan(p_holm):
        return "not testable"
    if seeds < MIN_SEEDS:
        return TOO_FEW
    if p_holm < alpha:
        return "better" if diff > 0 else "worse"
    return "no difference detected"


def t_power(delta: float, se: float, df: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided t-test to detect a true difference `delta` when its standard error is `se`."""
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = delta / se
    # the far tail underflows to NaN in scipy's nct for large df and nc; it is then 0 to double precision
    return float(stats.nct.sf(crit, df, nc) + np.nan_to_num(stats.nct.cdf(-crit, df, nc)))


def _error_model(cmp: dict, n: int | None = None) -> tuple[float, float]:
    """(standard error, df) of the difference for this comparison's test and spread, at n seeds per group
    (default: the seeds it has)."""
    if cmp["test"] == "paired":
        n = n or cmp["n"]
        return cmp["sd_diff"] / math.sqrt(n), n - 1
    n_a, n_b = (n, n) if n else (cmp["n"], cmp["n_ref"])
    se = math.sqrt(cmp["sd"] ** 2 / n_a + cmp["sd_ref"] ** 2 / n_b)
    return se, welch_df(cmp["sd"], n_a, cmp["sd_ref"], n_b)


def mde(cmp: dict, power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest true difference this comparison's test detects with `power`, given its observed spread.

    NaN when it cannot be known: fewer than two values on a side, or no spread observed."""
    if min(cmp["n"], cmp["n_ref"]) < 2:
        return NAN
    se, df = _error_model(cmp)
    if not se > 0 or not df > 0:
        return NAN

    def shortfall(nc: float) -> float:  # nc: the difference in units of its standard error
        return t_power(nc, 1.0, df, alpha) - power

    high = float(stats.t.ppf(1 - alpha / 2, df))
    while shortfall(high) < 0:  # widen until the power is reached (nct turns NaN far out: no fixed wide bracket)
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-12)) * se


def seeds_needed(cmp: dict, delta: float, power: float = POWER, alpha: float = ALPHA) -> int | None:
    """The smallest number of seeds per group whose test detects `delta` with `power`, given the observed
    spread (paired: seed pairs); None without two seeds a side, without a spread, or beyond MAX_SEEDS."""
    if min(cmp["n"], cmp["n_ref"]) < 2 or not _error_model(cmp)[0] > 0:
        return None

    def enough(n: int) -> bool:
        return t_power(delta, *_error_model(cmp, n), alpha) >= power

    if not enough(MAX_SEEDS):
        return None
    low, high = 2, MAX_SEEDS  # power grows with n: bisect for the first n that is enough
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid + 1, high)
    return low
