"""The report's statistics against scipy's tests, Holm against a hand computation, and the power
calculations against published values (Cohen 1988; G*Power) and against the noncentral t written out here."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from resattn.report import stats

A = {0: 0.61, 1: 0.70, 2: 0.62, 3: 0.66}
B = {0: 0.50, 1: 0.64, 2: 0.60, 3: 0.58}


def spread(test: str, n: int, sd: float = 1.0, n_ref: int | None = None, sd_ref: float = 1.0) -> dict:
    """A comparison's spread as compare() reports it: what mde() and seeds_needed() read."""
    return {
        "test": test,
        "n": n,
        "n_ref": n_ref or n,
        "sd": sd,
        "sd_ref": sd_ref,
        "sd_diff": sd if test == "paired" else math.nan,
    }


def power_by_hand(delta: float, se: float, df: float) -> float:
    """P(|T| > t crit) for T noncentral t with noncentrality delta/se, both tails."""
    crit = scipy_stats.t.ppf(0.975, df)
    return scipy_stats.nct.sf(crit, df, delta / se) + scipy_stats.nct.cdf(-crit, df, delta / se)


def test_describe_against_scipy():
    x = [0.5, 0.7, 0.65]
    d = stats.describe([*x, None])  # None: a metric a run doesn't have
    lo, hi = scipy_stats.t.interval(0.95, 2, loc=np.mean(x), scale=scipy_stats.sem(x))
    assert d["n"] == 3 and d["std"] == pytest.approx(np.std(x, ddof=1), rel=1e-12)
    assert (d["ci95_low"], d["ci95_high"]) == pytest.approx((lo, hi), rel=1e-12)
    one = stats.describe([0.4])
    assert one["mean"] == 0.4 and all(math.isnan(one[k]) for k in ("std", "ci95_low", "ci95_high"))


def test_describe_cuts_its_interval_to_what_the_quantity_can_be():
    x = [0.05, 0.95]  # two seeds: scipy's t-interval of the mean runs from about -5.2 to +6.2
    lo, hi = scipy_stats.t.interval(0.95, 1, loc=np.mean(x), scale=scipy_stats.sem(x))
    assert lo < 0 and hi > 1
    d = stats.describe(x, 0, 1)
    assert (d["ci95_low"], d["ci95_high"]) == (0, 1) and d["mean"] == pytest.approx(0.5)
    assert (stats.describe(x)["ci95_low"], stats.describe(x)["ci95_high"]) == pytest.approx((lo, hi), rel=1e-12)


def test_power_is_planned_at_holms_first_step():
    # Holm's smallest p must pass alpha / m: the level a verdict among m tests is sure to need
    assert stats.family_alpha(5) == pytest.approx(0.01) and stats.family_alpha(1) == stats.family_alpha(0) == 0.05
    at_holm = stats.mde(spread("paired", 3), alpha=stats.family_alpha(5))
    crit = scipy_stats.t.ppf(1 - 0.01 / 2, 2)
    power = scipy_stats.nct.sf(crit, 2, at_holm * math.sqrt(3)) + scipy_stats.nct.cdf(-crit, 2, at_holm * math.sqrt(3))
    assert power == pytest.approx(0.8, abs=1e-9)
    assert at_holm > 2 * stats.mde(spread("paired", 3))  # n = 3: far more than at 0.05 alone


def test_paired_when_seeds_match_welch_otherwise():
    got, want = stats.compare(A, B), scipy_stats.ttest_rel(list(A.values()), list(B.values()))
    assert got["test"] == "paired" and got["p"] == pytest.approx(want.pvalue, rel=1e-9)
    assert (got["ci95_low"], got["ci95_high"]) == pytest.approx(tuple(want.confidence_interval()), rel=1e-9)
    assert got["sd_diff"] == pytest.approx(np.std(np.subtract(list(A.values()), list(B.values())), ddof=1))

    other = {10 + k: v for k, v in list(B.items())[:3]}  # other seeds, and fewer
    got, want = stats.compare(A, other), scipy_stats.ttest_ind(list(A.values()), list(other.values()), equal_var=False)
    assert got["test"] == "Welch" and (got["n"], got["n_ref"]) == (4, 3)
    assert got["p"] == pytest.approx(want.pvalue, rel=1e-9)
    assert (got["ci95_low"], got["ci95_high"]) == pytest.approx(tuple(want.confidence_interval()), rel=1e-9)

    single = stats.compare({0: 0.6}, {0: 0.5})
    assert single["diff"] == pytest.approx(0.1) and math.isnan(single["ci95_low"]) and math.isnan(single["p"])
    same = stats.compare({0: 0.6, 1: 0.7}, {0: 0.5, 1: 0.6})  # equal differences: a point, no p-value
    assert same["ci95_low"] == same["ci95_high"] == pytest.approx(0.1) and math.isnan(same["p"])


def test_holm_by_hand():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04, raised to 0.06 (monotone)
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], rel=1e-12)
    # NaN is no test: it neither counts in m nor gets a value
    adjusted = stats.holm([0.01, math.nan, 0.04])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([]) == []


def test_verdicts():
    assert stats.verdict(0.01, 0.049) == "better"
    assert stats.verdict(-0.01, 0.01) == "worse"
    assert stats.verdict(0.01, 0.05) == "no difference detected"
    assert stats.verdict(0.01, math.nan) == "not testable"
    assert stats.verdict(0.01, 0.001, seeds=2) == "too few seeds for a verdict"  # one degree of freedom
    assert stats.verdict(0.01, 0.001, seeds=3) == "better"


def test_intervals_are_cut_to_the_possible_range():
    # two seeds: scipy's own t-interval of a paired difference reaches far beyond ±1
    a, b = [0.95, 0.05], [0.5, 0.5]
    ci = scipy_stats.ttest_rel(a, b).confidence_interval()
    cmp = stats.compare(dict(enumerate(a)), dict(enumerate(b)))
    assert (cmp["ci95_low"], cmp["ci95_high"]) == pytest.approx((ci.low, ci.high)) and ci.high > 1
    assert stats.clip_interval(cmp["ci95_low"], cmp["ci95_high"], -1, 1) == (-1, 1)
    assert stats.clip_interval(-107.9, 371.4, 0, math.inf) == (0, 371.4)  # a wall time
    assert stats.clip_interval(0.2, 0.3, -1, 1) == (0.2, 0.3)
    low, high = stats.clip_interval(math.nan, math.nan, 0, 1)
    assert math.isnan(low) and math.isnan(high)


def test_mde_paired_reaches_the_power_it_claims():
    mde = stats.mde(spread("paired", 10))
    # G*Power's sensitivity for a one-sample/paired t-test (n 10, alpha .05 two-sided, power .8): d = 0.996
    # (the same solve; a simulation of 200,000 tests at d = 0.996 rejects 80.0% of the time)
    assert mde == pytest.approx(0.996, abs=5e-4)
    assert power_by_hand(mde, 1 / math.sqrt(10), 9) == pytest.approx(0.8, abs=1e-9)
    assert stats.mde(spread("paired", 10, sd=0.02)) == pytest.approx(0.02 * mde, rel=1e-9)  # it scales with sd


def test_mde_welch_reaches_the_power_it_claims():
    # equal sds and ns: Welch's df is 2n - 2, the two-sample t; G*Power gives d = 1.3249 for n = 10 per group
    assert stats.mde(spread("Welch", 10)) == pytest.approx(1.3249, abs=1e-4)
    uneven = spread("Welch", 3, sd=0.01, n_ref=5, sd_ref=0.03)
    se = math.sqrt(0.01**2 / 3 + 0.03**2 / 5)
    df = se**4 / ((0.01**2 / 3) ** 2 / 2 + (0.03**2 / 5) ** 2 / 4)
    assert power_by_hand(stats.mde(uneven), se, df) == pytest.approx(0.8, abs=1e-9)


def test_seeds_needed_matches_cohens_tables():
    # Cohen (1988) / G*Power: d = 0.5 needs 34 pairs (paired) and 64 per group (two groups); d = 0.8 needs 26
    assert stats.seeds_needed(spread("paired", 3), 0.5) == 34
    assert stats.seeds_needed(spread("Welch", 3), 0.5) == 64
    assert stats.seeds_needed(spread("Welch", 3), 0.8) == 26
    # the smallest such n: n - 1 seeds fall short
    need = stats.seeds_needed(spread("paired", 3, sd=0.004), 0.005)
    assert power_by_hand(0.005, 0.004 / math.sqrt(need), need - 1) >= 0.8
    assert power_by_hand(0.005, 0.004 / math.sqrt(need - 1), need - 2) < 0.8


def test_power_needs_two_seeds_and_a_spread():
    assert math.isnan(stats.mde(spread("paired", 1)))
    assert stats.seeds_needed(spread("Welch", 1), 0.005) is None
    assert math.isnan(stats.mde(spread("paired", 4, sd=0.0)))
    assert stats.seeds_needed(spread("paired", 3, sd=1.0), 1e-4) is None  # beyond MAX_SEEDS
    assert stats.mde(spread("paired", 2)) > stats.mde(spread("paired", 3))  # one degree of freedom: still solved


def test_differences_equal_up_to_rounding_are_no_spread():
    values = {0: 0.1, 1: 0.2, 2: 0.3}
    shifted = {k: v + 0.7 for k, v in values.items()}  # in binary the differences part at the 16th digit
    assert np.std(np.subtract(list(shifted.values()), list(values.values()))) > 0
    got = stats.compare(shifted, values)
    assert got["diff"] == pytest.approx(0.7) and math.isnan(got["p"]) and got["sd_diff"] == 0.0
    assert math.isnan(stats.mde(got)) and stats.seeds_needed(got, 0.005) is None
