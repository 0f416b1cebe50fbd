"""The cone against a null (science/cone.py): each piece checked against explicit vectors built another way."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twophase_core.science.cone import (
    cone_angle,
    cone_report,
    random_directions_gram,
    step_lengths,
    walk_gram,
)


def unit_gram(vectors: np.ndarray) -> np.ndarray:
    u = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return u @ u.T


def test_walk_gram_is_the_gram_of_the_walks_positions():
    rng = np.random.default_rng(1)
    lengths = rng.uniform(0.1, 2.0, size=6)
    e = rng.standard_normal((6, 11))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    positions = np.vstack([np.zeros(11), np.cumsum(lengths[:, None] * e, axis=0)])  # built step by step
    np.testing.assert_allclose(walk_gram(lengths, e @ e.T), positions @ positions.T, atol=1e-12)


def test_random_directions_have_the_inner_products_of_uniform_unit_vectors():
    # E<e_i, e_j>^2 = 1/dim for independent uniform directions in R^dim; checked over many draws against the
    # same statistic of explicitly drawn Gaussian vectors
    rng = np.random.default_rng(0)
    dim, m, draws = 7, 5, 4000
    off = ~np.eye(m, dtype=bool)
    bartlett = np.array([random_directions_gram(m, dim, rng)[off] for _ in range(draws)])
    explicit = np.array([unit_gram(rng.standard_normal((m, dim)))[off] for _ in range(draws)])
    assert np.all(np.abs(np.diag(random_directions_gram(m, dim, rng)) - 1) < 1e-12)
    assert math.isclose(np.mean(bartlett**2), 1 / dim, rel_tol=0.05)
    assert math.isclose(np.mean(bartlett**2), np.mean(explicit**2), rel_tol=0.05)
    assert abs(np.mean(bartlett)) < 0.01  # no preferred direction
    # the fourth moment too (it differs from a Gaussian's at small dim): 3 / (dim (dim + 2))
    assert math.isclose(np.mean(bartlett**4), 3 / (dim * (dim + 2)), rel_tol=0.1)


def test_null_angle_in_high_dimension_is_the_orthogonal_walks_closed_form():
    # steps orthogonal (dim -> infinity): seen from the start, positions a < b make cos = |P_a| / |P_b|,
    # and over a window the widest pair is its first and last point
    lengths = np.array([3.0, 1.0, 0.5, 0.5, 0.25])
    g = walk_gram(lengths, np.eye(5))
    cum = np.concatenate([[0.0], np.cumsum(lengths**2)])
    want = math.degrees(math.acos(math.sqrt(cum[2] / cum[5])))
    assert math.isclose(cone_angle(g, [2, 3, 4, 5], 0), want, abs_tol=1e-9)
    # and the null of a trajectory with these steps, in a huge dimension, sits on that value
    traj = unit_gram(np.vstack([np.ones(8)] + [np.eye(8)[i] * 0 + np.eye(8)[i + 1] for i in range(5)]))
    lens = step_lengths(traj)
    rep = cone_report(traj, list(range(6)), (2, 5), dim=10**9, draws=50)
    cum = np.concatenate([[0.0], np.cumsum(lens**2)])
    closed = math.degrees(math.acos(math.sqrt(cum[2] / cum[5])))
    assert rep.null_low_deg <= closed <= rep.null_high_deg
    assert rep.null_high_deg - rep.null_low_deg < 0.1


def test_a_straight_trajectory_is_narrower_than_its_null_and_the_apex_is_a_choice():
    # kernels moving along one direction (then normalised): increments all point the same way from the start
    base, d = np.zeros(20), np.zeros(20)
    base[0], d[1] = 1.0, 1.0
    g = unit_gram(np.array([base + 0.3 * k * d for k in range(8)]))
    iters = [0, 10, 20, 30, 40, 50, 60, 70]
    start = cone_report(g, iters, (30, 70), dim=400, apex="start")
    window = cone_report(g, iters, (30, 70), dim=400, apex="window")
    assert start.apex_iteration == 0 and window.apex_iteration == 30
    # on the unit circle the positions turn: from the start they subtend half the turn between t=30 and t=70
    turn = math.degrees(math.atan(0.3 * 7) - math.atan(0.3 * 3))
    assert math.isclose(start.angle_deg, turn / 2, abs_tol=1e-6)
    assert start.angle_deg < start.null_low_deg
    assert window.angle_deg < window.null_low_deg
    with pytest.raises(ValueError, match="apex"):
        cone_report(g, iters, (30, 70), dim=400, apex="middle")


def test_the_null_is_the_same_every_time():
    g = unit_gram(np.random.default_rng(3).standard_normal((6, 30)))
    a = cone_report(g, list(range(6)), (2, 5), dim=900)
    b = cone_report(g, list(range(6)), (2, 5), dim=900)
    assert a == b


def test_a_sweeps_cone_angle_has_an_interval_over_replicates_and_its_null_beside_it():
    from twophase_core.experiments.cone import CONE, cone_reports
    from twophase_core.interfaces import gallery

    done = [gallery.load(e) for e in gallery.read().named("demo-sweep-cone")]
    entry = CONE.summarize(done, n_boot=200, seed=0)["cone_angle"]
    start = entry["start"]
    # seen from H(theta_0), each replicate's angle is the one its run stored when it was computed
    assert start["replicates"] == pytest.approx([r.meta["cone_angle_deg"] for r in done], abs=1e-9)
    assert start["apex_iteration"] == 0 and start["window"] == done[0].arrays["cone_window"].tolist()
    assert start["mean"] == pytest.approx(np.mean(start["replicates"]))
    assert start["ci_low"] <= start["mean"] <= start["ci_high"]
    assert start["null_low"] <= start["null_mean"] <= start["null_high"]
    window = entry["window"]
    assert window["apex_iteration"] == start["window"][0]
    assert window["replicates"] == pytest.approx([cone_reports(r)["window"].angle_deg for r in done])
