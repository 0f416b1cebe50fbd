"""The transition estimator on synthetic curves whose midpoint is known by construction."""

import json
import math
import time

import numpy as np
import pytest

from twophase_core.science import transition as T

T0 = np.array([0, 5, 10, 20, 40, 80, 160, 320])
U = np.log1p(T0)
TRUE_T = 30.0  # the midpoint of every synthetic fall below


def log_curve(t_mid: float = TRUE_T, early: float = -3.0, late: float = -12.0, width: float = 0.5) -> np.ndarray:
    """log M on the grid: halfway between early and late exactly at t = t_mid."""
    return late + (early - late) / (1.0 + np.exp((U - math.log1p(t_mid)) / width))


def draw(rng: np.random.Generator, replicates: int, sd: float = 1.0, **kw) -> np.ndarray:
    """Replicates of the curve with independent noise on the log scale."""
    return np.exp(log_curve(**kw)[None, :] + rng.normal(0.0, sd, (replicates, T0.size)))


def test_recovers_the_midpoint_within_its_interval_in_most_draws():
    hits, errors = 0, []
    for d in range(40):
        tr = T.estimate_transition(T0, draw(np.random.default_rng(d), 5), n_boot=100, seed=d)
        assert tr.found, tr.reason
        hits += tr.ci_low <= TRUE_T <= tr.ci_high
        errors.append(abs(math.log1p(tr.t_star) - math.log1p(TRUE_T)))
        assert tr.ci_low < tr.t_star < tr.ci_high
    assert hits >= 32  # 95% nominal; the plain percentile interval managed 31 of these 40
    assert np.median(errors) < 0.15  # t* within about 15% of 30 in a typical draw


def test_fit_parameters_match_the_curve_without_noise():
    v = np.exp(np.tile(log_curve(early=-2.0, late=-14.0, width=0.6), (3, 1)))
    tr = T.estimate_transition(T0, v, n_boot=50)
    assert tr.found and tr.t_star == pytest.approx(TRUE_T, rel=1e-4)
    assert tr.early == pytest.approx(math.exp(-2.0), rel=1e-4) and tr.late == pytest.approx(math.exp(-14.0), rel=1e-4)
    assert tr.width == pytest.approx(0.6, rel=1e-4) and tr.slope == pytest.approx(-12.0 / (4 * 0.6), rel=1e-4)
    assert tr.noise_sd < 1e-12 and tr.drop_se > 1e6  # no replicate noise beyond rounding
    # identical replicates: every resample is the same curve, the interval collapses onto t*
    assert tr.ci_low == pytest.approx(TRUE_T, rel=1e-4) and tr.ci_high == pytest.approx(TRUE_T, rel=1e-4)
    # the fitted curve passes through the geometric middle of its levels at t*
    assert T.sigmoid_curve(tr, [tr.t_star])[0] == pytest.approx(math.sqrt(tr.early * tr.late), rel=1e-9)


def test_interval_narrows_with_more_replicates():
    def median_log_width(r: int) -> float:
        widths = []
        for d in range(12):
            tr = T.estimate_transition(T0, draw(np.random.default_rng(1000 + d), r), n_boot=100, seed=d)
            if tr.found:  # 3 replicates of noise sd 1 do not always show the late level against a hinge
                widths.append(math.log1p(tr.ci_high) - math.log1p(tr.ci_low))
        assert len(widths) >= 9
        return float(np.median(widths))

    w3, w12 = median_log_width(3), median_log_width(12)
    assert w12 < 0.6 * w3  # ~1/2 expected: sqrt(3/12), and a smaller small-sample expansion


@pytest.mark.parametrize("shape", ["flat", "rising", "constant"])
def test_flat_or_rising_curves_give_no_transition(shape):
    found = []
    for d in range(20):
        rng = np.random.default_rng(2000 + d)
        if shape == "flat":
            v = np.exp(-5.0 + rng.normal(0, 1.0, (5, T0.size)))
        elif shape == "rising":
            v = np.exp(log_curve(early=-12.0, late=-3.0)[None] + rng.normal(0, 1.0, (5, T0.size)))
        else:
            v = np.full((5, T0.size), 0.01)
        tr = T.estimate_transition(T0, v, n_boot=50, seed=d)
        found.append(tr.found)
        assert tr.found or (tr.reason and tr.t_star is None and tr.ci_low is None and tr.ci_high is None)
        if shape != "flat":
            assert not tr.found and ("no fall" in tr.reason or "too small" in tr.reason), tr.reason
    assert sum(found) == 0


def test_a_fall_within_replicate_noise_is_not_a_transition():
    rng = np.random.default_rng(7)
    v = draw(rng, 3, sd=4.0, early=-5.0, late=-6.5)  # a drop of 1.5 in log M under noise of sd 4
    tr = T.estimate_transition(T0, v, n_boot=50)
    assert not tr.found and tr.reason


def test_single_replicate_has_no_interval():
    v = draw(np.random.default_rng(3), 1)
    for values in (v, v[0]):  # (1, n) or (n,)
        tr = T.estimate_transition(T0, values)
        assert not tr.found and tr.t_star is None and "replicate" in tr.reason and tr.replicates == 1
        assert tr.early is not None  # the fit is still there to look at
    # a second replicate that is all NaN does not count
    tr = T.estimate_transition(T0, np.vstack([v, np.full(T0.size, np.nan)]))
    assert not tr.found and tr.replicates == 1 and "replicate" in tr.reason


def test_nan_columns_and_cells():
    v = draw(np.random.default_rng(4), 6)
    ref = T.estimate_transition(T0, v, n_boot=200, seed=5)
    holed = v.copy()
    holed[:, 1] = np.nan  # a t0 with no value at all: as if it were not on the grid
    got = T.estimate_transition(T0, holed, n_boot=200, seed=5)
    drop = T.estimate_transition(np.delete(T0, 1), np.delete(v, 1, axis=1), n_boot=200, seed=5)
    assert got.found and got.points == T0.size - 1
    assert (got.t_star, got.ci_low, got.ci_high) == (drop.t_star, drop.ci_low, drop.ci_high)
    # a replicate missing some cells still counts; the mean of each column uses what it has
    holed = v.copy()
    holed[2, [0, 3, 6]] = np.nan
    got = T.estimate_transition(T0, holed, n_boot=200, seed=5)
    assert got.found and got.replicates == 6 and got.points == T0.size
    assert abs(math.log1p(got.t_star) - math.log1p(ref.t_star)) < 0.2
    # the grid may come in any order: columns follow their t0
    perm = np.random.default_rng(0).permutation(T0.size)
    shuffled = T.estimate_transition(T0[perm], v[:, perm], n_boot=200, seed=5)
    assert (shuffled.t_star, shuffled.ci_low, shuffled.ci_high) == (ref.t_star, ref.ci_low, ref.ci_high)


def test_too_few_points_and_midpoint_outside_the_grid():
    rng = np.random.default_rng(6)
    v = draw(rng, 5)
    few = T.estimate_transition(T0[[0, 3, 5, 7]], v[:, [0, 3, 5, 7]])
    assert not few.found and "too few" in few.reason
    nan_cols = v.copy()
    nan_cols[:, :4] = np.nan
    assert "too few" in T.estimate_transition(T0, nan_cols).reason
    after = T.estimate_transition(T0, draw(rng, 5, t_mid=2000.0, width=0.3))  # falls after the last t0
    assert not after.found and "no fall" in after.reason
    edge = T.estimate_transition(T0, draw(rng, 5, t_mid=250.0, width=0.3))  # one t0 after the fall
    assert edge.outcome == "beyond_grid" and "1 t0 points lie on the late level" in edge.reason
    # only the start of the fall is on the grid (no noise): its middle and its late level lie beyond it
    beyond = T.estimate_transition(T0, np.exp(np.tile(log_curve(t_mid=400.0, width=0.3), (3, 1))))
    assert beyond.outcome == "beyond_grid" and "try larger t0 and T" in beyond.reason
    for d in range(10):  # the same with noise: never a number
        tr = T.estimate_transition(T0, draw(np.random.default_rng(d), 5, t_mid=1000.0, width=0.5), n_boot=50)
        assert not tr.found, tr
    assert T.estimate_transition(T0, np.full((4, T0.size), np.nan)).reason == "no values: every cell is NaN"


def test_exact_zeros_sit_one_decade_below_the_smallest_positive_value():
    rng = np.random.default_rng(8)
    v = draw(rng, 5)
    v[:, -2:] = 0.0  # e.g. B: exactly 0 after the transition
    v[1, -3] = 0.0
    floor = v[v > 0].min() / 10
    tr = T.estimate_transition(T0, v, n_boot=200)
    filled = np.where(v == 0, floor, v)
    same = T.estimate_transition(T0, filled, n_boot=200)
    assert tr.found and tr.floor == pytest.approx(floor) and tr.zeros == 11 and same.zeros == 0
    assert (tr.t_star, tr.ci_low, tr.ci_high) == pytest.approx((same.t_star, same.ci_low, same.ci_high))
    # an explicit floor is used as given
    fixed = T.estimate_transition(T0, v, n_boot=200, floor=1e-9)
    assert fixed.floor == 1e-9 and fixed.late < tr.late
    zeros = T.estimate_transition(T0, np.zeros((5, T0.size)))
    assert not zeros.found and "0" in zeros.reason
    with pytest.raises(ValueError):
        T.estimate_transition(T0, -v)


def test_bootstrap_failures_are_counted_and_too_many_refuse_an_answer():
    falls = np.exp(log_curve())
    flat = np.full(T0.size, math.exp(-3.0))
    # half the resamples of two replicates hold the flat one twice or lean on it; they cannot all fall
    rules = T.Rules(min_drop_se=0.0, min_evidence=-math.inf)
    tr = T.estimate_transition(T0, np.vstack([falls, flat]), n_boot=200, rules=rules)
    assert not tr.found and "bootstrap" in tr.reason and tr.boot_failed > 20
    lenient = T.estimate_transition(T0, np.vstack([falls, flat]), n_boot=200,
                                    rules=T.Rules(min_drop_se=0.0, min_evidence=-math.inf, max_boot_fail=0.5))
    assert lenient.found and lenient.boot_failed == tr.boot_failed


def test_expansion_is_the_small_sample_factor():
    # sqrt(R / (R - 1)) * t_{R-1, 0.975} / z_0.975, from printed tables
    assert T.expansion(5) == pytest.approx(math.sqrt(5 / 4) * 2.776445 / 1.959964, rel=1e-5)
    assert T.expansion(8) == pytest.approx(math.sqrt(8 / 7) * 2.364624 / 1.959964, rel=1e-5)
    boot = T.Rules(resolve=False)  # the bootstrap interval alone, before the grid's resolution is added
    plain = T.estimate_transition(T0, draw(np.random.default_rng(9), 5), rules=T.Rules(expand=False, resolve=False),
                                  n_boot=200)
    wide = T.estimate_transition(T0, draw(np.random.default_rng(9), 5), rules=boot, n_boot=200)
    assert plain.expansion == 1.0 and wide.expansion == pytest.approx(T.expansion(5))
    assert wide.t_star == plain.t_star and wide.ci_low < plain.ci_low and wide.ci_high > plain.ci_high
    assert math.log1p(wide.ci_high) - math.log1p(wide.t_star) == pytest.approx(
        T.expansion(5) * (math.log1p(plain.ci_high) - math.log1p(plain.t_star)))


def test_deterministic_json_ready_and_fast():
    v = draw(np.random.default_rng(10), 5)
    started = time.perf_counter()
    tr = T.estimate_transition(T0, v, n_boot=1000, seed=0)
    assert time.perf_counter() - started < 5.0  # about 0.5 s alone; loose for a shared machine
    assert tr == T.estimate_transition(T0, v, n_boot=1000, seed=0)
    assert tr.n_boot == 1000 and tr.method == T.METHOD and tr.axis == "t0"
    d = json.loads(json.dumps(tr.to_dict()))
    assert {"t_star", "ci_low", "ci_high", "method", "found", "reason", "replicates"} <= set(d)
    assert d["t_star"] == tr.t_star
    none = T.estimate_transition(T0, v[:1])
    out = json.loads(json.dumps(T.transition_json({"C": tr, "B": none})))
    assert out["C"]["t_star"] == tr.t_star and out["B"] is None and out["not_found"] == {"B": none.reason}
    both = T.estimate_transitions(T0, {"C": v, "D": v[:1]}, n_boot=1000)
    assert both["C"] == tr and not both["D"].found


def test_kernel_transition_is_the_same_fit_against_t():
    v = draw(np.random.default_rng(11), 4)
    k = T.estimate_kernel_transition(T0, v, n_boot=200)
    c = T.estimate_transition(T0, v, n_boot=200)
    assert k.axis == "t" and k.found and (k.t_star, k.ci_low, k.ci_high) == (c.t_star, c.ci_low, c.ci_high)


def test_replicate_band():
    rng = np.random.default_rng(12)
    v = rng.uniform(0.0, 1.0, (6, 4, 3))
    v[0, 0, 0] = np.nan
    mean, lo, hi = T.replicate_band(v, n_boot=300)
    assert mean.shape == lo.shape == hi.shape == (4, 3)
    assert mean[0, 0] == pytest.approx(np.mean(v[1:, 0, 0])) and mean[1, 2] == pytest.approx(np.mean(v[:, 1, 2]))
    assert np.all(lo <= mean + 1e-12) and np.all(mean <= hi + 1e-12)
    assert np.all(lo >= np.nanmin(v, axis=0) - 1e-12) and np.all(hi <= np.nanmax(v, axis=0) + 1e-12)
    gmean, _, _ = T.replicate_band(v, n_boot=10, log=True)
    assert gmean[1, 2] == pytest.approx(np.exp(np.mean(np.log(v[:, 1, 2]))))
    one = T.replicate_band(v[:1], n_boot=10)
    assert np.array_equal(one[1], one[0], equal_nan=True) and np.array_equal(one[2], one[0], equal_nan=True)


# ---------------------------------------------------------------------------------------------
# Outcomes (issue 17): shapes built here from their definitions, on a demo-sweep-like grid up to T = 3,000

G = np.array([0, 25, 60, 140, 320, 700, 1300, 2200])
GU = np.log1p(G)


def _hinge(knot_t: float, fall: float) -> np.ndarray:
    """Flat at -3 until knot_t, then a straight fall in log-log that is still going at the last t0."""
    k = math.log1p(knot_t)
    return -3.0 - fall * np.maximum(GU - k, 0.0) / (GU[-1] - k)


def _noisy(rng: np.random.Generator, log_m: np.ndarray, sd: float = 1.0, r: int = 5) -> np.ndarray:
    return np.exp(log_m[None, :] + rng.normal(0.0, sd, (r, G.size)))


def test_a_fall_without_a_late_plateau_is_never_a_transition_and_says_what_to_try():
    for d in range(12):
        rng = np.random.default_rng(3000 + d)
        tr = T.estimate_transition(G, _noisy(rng, _hinge(float(rng.uniform(30, 300)), 8.0)), n_boot=50, seed=d)
        assert not tr.found and tr.t_star is None, tr
        assert tr.outcome == "beyond_grid" and tr.reason.endswith("try larger t0 and T"), tr.reason
        line = -2.0 - 10.0 * GU / GU[-1]  # a power law over the whole grid
        tr = T.estimate_transition(G, _noisy(rng, line), n_boot=50, seed=d)
        assert not tr.found and tr.outcome in ("beyond_grid", "before_grid"), tr
    # the mirror: falling from the first t0, level from t0 = 320 on: the early level is not on the grid
    early = -3.0 - 8.0 * np.minimum(GU, GU[4]) / GU[4]
    tr = T.estimate_transition(G, _noisy(np.random.default_rng(1), early, sd=0.3), n_boot=50)
    assert tr.outcome == "before_grid" and "try smaller t0" in tr.reason


def test_a_step_sharper_than_the_grid_is_unresolved_between_the_two_t0_around_it():
    for d, t_mid in enumerate([90.0, 200.0, 450.0, 1000.0]):
        step = -12.0 + 8.0 / (1.0 + np.exp((GU - math.log1p(t_mid)) / 0.01))
        tr = T.estimate_transition(G, _noisy(np.random.default_rng(d), step, sd=0.7), n_boot=50, seed=d)
        below, above = G[G < t_mid].max(), G[G > t_mid].min()  # the oracle: where the grid puts it
        assert tr.outcome == "unresolved" and not tr.found and tr.t_star is None, tr
        assert (tr.ci_low, tr.ci_high) == (below, above) and f"between {below:g} and {above:g}" in tr.reason


def test_found_intervals_stay_inside_the_grid_and_cover_a_seen_sigmoid():
    hits = n = 0
    for d in range(10):
        rng = np.random.default_rng(4000 + d)
        t_mid = float(np.exp(rng.uniform(math.log(100), math.log(300))))
        curve = -12.0 + 8.0 / (1.0 + np.exp((GU - math.log1p(t_mid)) / 0.4))
        tr = T.estimate_transition(G, _noisy(rng, curve), n_boot=100, seed=d)
        assert tr.found == (tr.outcome == "found")
        if tr.found:
            n += 1
            hits += tr.ci_low <= t_mid <= tr.ci_high
            assert G[0] <= tr.ci_low < tr.t_star < tr.ci_high <= G[-1]
    assert n >= 8 and hits >= n - 1


def test_the_interval_is_never_narrower_than_a_step_fits():
    # one t0 inside the fall, a quarter of the way down (s = 0.75), almost without noise: for a logistic of width
    # w that puts the midpoint at u(320) + w ln 3, and every w up to about 0.12 keeps t0 = 700 on the late level
    # within the noise, so the data place t* anywhere from 320 to about 366 (the oracle, worked by hand)
    curve = np.array([-3.0, -3.0, -3.0, -3.0, -5.25, -12.0, -12.0, -12.0])
    v = _noisy(np.random.default_rng(5), curve, sd=0.05)
    tight = T.estimate_transition(G, v, n_boot=200, rules=T.Rules(resolve=False))
    wide = T.estimate_transition(G, v, n_boot=200)
    assert wide.found and wide.t_star == tight.t_star
    assert wide.ci_low <= tight.ci_low and wide.ci_high >= tight.ci_high
    assert wide.ci_low <= 325 and wide.ci_high >= 350 and wide.ci_high < 420


def test_outcome_is_consistent_with_found_and_old_entries_read_back():
    v = draw(np.random.default_rng(13), 5)
    tr = T.estimate_transition(T0, v, n_boot=100)
    assert tr.outcome == "found" and T.outcome_label(tr) == "found"
    old = {k: val for k, val in tr.to_dict().items() if k not in ("outcome", "evidence", "alternative")}
    assert T.Transition.from_dict(old).outcome == "found"
    assert T.Transition.from_dict({**old, "found": False, "t_star": None}).outcome == "none"
    with pytest.raises(ValueError):
        T.Transition(True, 1.0, 0.5, 2.0, method=T.METHOD, reason=None, axis="t0", outcome="beyond_grid")
    assert T.outcome_label({"outcome": "unresolved", "ci_low": 320.0, "ci_high": 700.0}) == \
        "unresolved: between 320 and 700"
    assert T.outcome_label(None) == "none" and T.outcome_label({"outcome": "before_grid"}).endswith("smaller t0")
    out = T.transition_json({"C": tr, "B": T.estimate_transition(T0, v[:1])})
    assert out["outcome"] == {"C": "found", "B": "none"}


def test_rates_on_a_handful_of_clear_draws():
    from twophase_core.science import transition_rates as TR

    started = time.perf_counter()
    flat, hinge, smooth = (TR.measure(f, 6, n_boot=50) for f in ("flat", "flat then fall", "smooth sigmoid"))
    assert flat.outcomes.get("found", 0) == 0 and hinge.outcomes.get("found", 0) == 0
    assert smooth.outcomes.get("found", 0) >= 5 and smooth.found_covered == smooth.outcomes["found"]
    assert "| smooth sigmoid | 6 |" in TR.table([flat, hinge, smooth])
    assert time.perf_counter() - started < 15.0


@pytest.mark.slow
def test_rates_meet_the_targets_on_a_reduced_run():
    """docs/transition.md's table, reduced (60 draws a family, n_boot = 200): the targets with a draw of slack."""
    from twophase_core.science import transition_rates as TR

    checked = ("flat", "flat then fall", "straight fall", "smooth sigmoid", "sharp step")  # the targeted families
    assert set(checked) <= set(TR.FAMILIES)
    r = {f: TR.measure(f, 60, n_boot=200) for f in checked}
    assert r["flat"].found <= 0.025 and r["flat then fall"].found <= 0.05 and r["straight fall"].found <= 0.05
    assert r["smooth sigmoid"].found >= 0.88 and r["smooth sigmoid"].found_coverage >= 0.9
    assert r["sharp step"].coverage >= 0.85
