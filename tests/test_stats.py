"""Intervals over contexts (mechbench.stats) against brute-force formulas and known cases."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mechbench.stats import Estimate, chance_check, cluster_bootstrap, cluster_se, cluster_se_last_axis, mean_estimate


def test_cluster_se_with_singleton_clusters_is_the_ordinary_standard_error():
    x = np.random.default_rng(0).random(200)
    assert cluster_se(x, np.arange(200)) == pytest.approx(x.std(ddof=1) / np.sqrt(200), rel=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(0, 1), min_size=1, max_size=7), min_size=2, max_size=30))
def test_cluster_se_matches_the_cr1_formula_written_out(blocks):
    x = np.array([v for b in blocks for v in b], dtype=float)
    ids = np.array([i for i, b in enumerate(blocks) for _ in b])
    mean, c = x.mean(), len(blocks)
    brute = np.sqrt(c / (c - 1) * sum(((x[ids == i] - mean).sum()) ** 2 for i in range(c))) / len(x)
    assert cluster_se(x, ids) == pytest.approx(brute, abs=1e-12)


def test_whole_blocks_that_agree_widen_the_interval_by_the_square_root_of_their_size():
    rng = np.random.default_rng(1)
    unique = (rng.random(100) < 0.6).astype(float)
    repeated, ids = np.repeat(unique, 7), np.repeat(np.arange(100), 7)  # 7 prompts of a context answer alike
    naive, clustered = mean_estimate(repeated, np.arange(700)), mean_estimate(repeated, ids)
    ratio = (clustered.hi - clustered.lo) / (naive.hi - naive.lo)
    assert ratio == pytest.approx(np.sqrt(7), rel=0.02)
    boot = cluster_bootstrap(lambda m: m["x"], {"x": repeated}, ids, n_boot=4000, seed=0)
    assert (boot.hi - boot.lo) == pytest.approx(clustered.hi - clustered.lo, rel=0.1)


def test_paired_difference_of_identical_runs_is_exactly_zero():
    x = (np.random.default_rng(2).random(140) < 0.5).astype(float)
    e = cluster_bootstrap(lambda m: m["a"] - m["b"], {"a": x, "b": x.copy()}, np.arange(140) // 7)
    assert (e.value, e.lo, e.hi) == (0.0, 0.0, 0.0)


def test_pairing_is_kept_across_quantities():
    """Both models are resampled together: a difference that is the same on every context has no spread, though
    each model's own accuracy varies a lot across contexts."""
    ids = np.arange(210) // 7
    base = (np.random.default_rng(3).random(30) < 0.5).repeat(7).astype(float)
    base[::7] = 0
    fine_tune = base.copy()
    fine_tune[::7] = 1  # the fine-tune gets one more query of every context right: +1/7 on each
    e = cluster_bootstrap(lambda m: m["f"] - m["b"], {"b": base, "f": fine_tune}, ids)
    assert (
        cluster_bootstrap(lambda m: m["b"], {"b": base}, ids).hi
        - cluster_bootstrap(lambda m: m["b"], {"b": base}, ids).lo
        > 0.2
    )
    assert e.value == pytest.approx(1 / 7) and e.lo == pytest.approx(1 / 7) and e.hi == pytest.approx(1 / 7)


def test_a_ratio_with_zero_denominators_reports_no_interval():
    ids = np.arange(70) // 7
    e = cluster_bootstrap(lambda m: m["a"] / m["b"], {"a": np.ones(70), "b": np.zeros(70)}, ids)
    assert e.lo is None and e.hi is None


def test_same_seed_same_interval():
    x = (np.random.default_rng(4).random(140) < 0.3).astype(float)
    ids = np.arange(140) // 7
    one = cluster_bootstrap(lambda m: m["x"], {"x": x}, ids, seed=5)
    assert one == cluster_bootstrap(lambda m: m["x"], {"x": x}, ids, seed=5)
    assert one != cluster_bootstrap(lambda m: m["x"], {"x": x}, ids, seed=6)


def test_estimate_formats_its_interval_and_knows_which_side_of_a_value_it_lies():
    assert f"{Estimate(0.25, 0.1, 0.4):+.2f}" == "+0.25 [+0.10, +0.40]"
    assert Estimate(0.25, 0.1, 0.4).excludes(0.0) and not Estimate(0.25, -0.1, 0.4).excludes(0.0)
    assert not Estimate(0.25).excludes(0.0)


def test_chance_guard():
    ids = np.arange(140) // 7
    at_chance = np.tile([1, 0, 0, 0, 0, 0, 0], 20)  # 1/7: exactly chance with 7 boxes
    assert not chance_check(at_chance, ids, 7).passed
    assert not chance_check(np.zeros(140), ids, 7).passed  # a constant answer cannot make the error 0
    assert chance_check(np.tile([1, 1, 1, 1, 0, 0, 0], 20), ids, 7).passed
    assert "does not do the task" in chance_check(at_chance, ids, 7).message("m")


def test_cluster_se_of_every_row_at_once_equals_row_by_row():
    rng = np.random.default_rng(0)
    values, clusters = rng.normal(size=(3, 4, 35)), np.repeat(np.arange(5), 7)
    grid = cluster_se_last_axis(values, clusters)
    assert grid.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert grid[i, j] == pytest.approx(cluster_se(values[i, j], clusters), rel=1e-12)


def test_design_effect_is_the_cluster_size_when_a_context_is_all_or_nothing():
    from mechbench.stats import design_effect

    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(300), 7)
    together = np.repeat(rng.random(300) < 0.5, 7).astype(float)  # a context's seven prompts right or wrong together
    independent = (rng.random(2100) < 0.5).astype(float)
    assert 5.5 < design_effect(together, clusters) < 8.5
    assert 0.8 < design_effect(independent, clusters) < 1.25
    assert design_effect(np.ones(14), np.repeat([0, 1], 7)) == 1.0


def test_a_binomial_tolerance_widens_by_the_design_effect_except_on_the_records_own_examples():
    from mechbench.baselines import Record
    from mechbench.claims.tolerance import judge as compare

    record = Record(
        {"model": "m"}, 0.5, "test", {"tolerance": 0.1, "tolerance_same_sample": 0.006, "n": 500, "seed": 0}
    )
    # on the effective sample, 500 / 4 = 125 prompts on each side: at p = 0.5 about x sqrt(4) (0.1949 = 3 sqrt(0.5 /
    # 125) + the record's 0.0051 above its own binomial bound); near 1 wider than that (tests/test_stat_promises.py)
    assert compare(0.5, record, n=500, seed=1, design_effect=4.0).tolerance == pytest.approx(0.1949, abs=1e-4)
    near_one = Record({"model": "m"}, 0.98, "test", {"tolerance": 0.0289, "n": 500, "seed": 0})  # its binomial bound
    assert compare(0.98, near_one, n=500, seed=1, design_effect=4.0).tolerance == pytest.approx(0.0696, abs=1e-4)
    assert compare(0.5, record, n=500, seed=1, design_effect=0.5).tolerance == pytest.approx(0.1)  # never narrower
    assert compare(0.5, record, n=500, seed=0, design_effect=4.0).tolerance == pytest.approx(0.006)
    assert compare(0.69, record, n=500, seed=1, design_effect=4.0).passed
    assert not compare(0.69, record, n=500, seed=1).passed


def test_few_contexts_widen_a_bound_by_students_t():
    from mechbench.stats import _t_cdf, few_clusters_factor

    assert abs(_t_cdf(2.015048, 5) - 0.95) < 1e-5  # the t table's 95% quantile at 5 degrees of freedom
    assert abs(_t_cdf(3.0, 1000) - 0.99865) < 1e-4  # many degrees of freedom: the normal
    factors = [few_clusters_factor(c) for c in (3, 6, 20, 72, 500)]
    assert factors == sorted(factors, reverse=True) and 1 < factors[-1] < 1.01 and factors[1] > 1.5
    assert few_clusters_factor(1) == float("inf")


def test_a_bound_from_few_contexts_is_wider_but_not_on_the_records_own_examples():
    from mechbench import baselines
    from mechbench.claims.tolerance import judge

    record = baselines.Record(
        {"model": "m"},
        0.82,
        "measured",
        {"tolerance": 0.07, "tolerance_same_sample": 0.006, "tolerance_rule": "r", "n": 500, "seed": 0},
    )
    many = judge(0.7, record, n=40, seed=2, design_effect=1.0, n_clusters=200)
    few = judge(0.7, record, n=40, seed=2, design_effect=1.0, n_clusters=6)
    assert few.tolerance > 1.5 * many.tolerance
    assert judge(0.82, record, n=500, seed=0, n_clusters=3).tolerance == 0.006
