"""Figure builders on real tiny results: the right traces and shapes; exports round-trip the values."""

import json
import math

import numpy as np
import plotly.graph_objects as go
import pytest

from twophase_core.execution.run import run_experiment
from twophase_core.experiments.presets import preset
from twophase_core.interfaces import figures as F
from twophase_core.storage.store import Store


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("figures") / "cache")
    out = {kind: run_experiment(preset("tiny", kind), store) for kind in ("chaos", "cone", "linear")}
    yield out
    store.close()


def _same(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(
        a[~np.isnan(a)], b[~np.isnan(b)])


@pytest.mark.parametrize("metric", ["C", "B", "D"])
@pytest.mark.parametrize("log", [False, True])
def test_chaos_heatmap_has_the_grid_and_the_values(results, metric, log):
    a = results["chaos"].arrays
    fig = F.chaos_heatmap(a, metric, log=log)
    assert len(fig.data) == 1 and fig.data[0].type == "heatmap"
    h = fig.data[0]
    assert list(h.x) == [str(t) for t in a["t1"]] and list(h.y) == [str(t) for t in a["t0"]]
    assert _same(h.customdata, a[metric][0])  # hover shows the value itself, on the log scale too
    if not log:
        assert _same(h.z, a[metric][0])
    else:
        z = np.asarray(h.z, dtype=float)
        pos = a[metric][0] > 0
        assert np.allclose(z[pos], np.log10(a[metric][0][pos]))


def test_chaos_heatmap_leaves_t1_before_t0_blank(results):
    a = results["chaos"].arrays
    z = np.asarray(F.chaos_heatmap(a, "C").data[0].z, dtype=float)
    for i, t0 in enumerate(a["t0"]):
        for j, t1 in enumerate(a["t1"]):
            assert math.isnan(z[i, j]) == (t1 <= t0)


def test_chaos_sections_one_line_per_t0(results):
    a = results["chaos"].arrays
    fig = F.chaos_sections(a, "B")
    assert [tr.name for tr in fig.data] == [f"t0={t}" for t in a["t0"]]
    for i, tr in enumerate(fig.data):
        ok = a["t1"] > a["t0"][i]
        assert list(tr.x) == a["t1"][ok].tolist()
        assert np.allclose(tr.y, a["B"][0, i][ok])
    assert F.chaos_sections(a, "B", log=True).layout.yaxis.type == "log"


def test_chaos_path_draws_the_stored_losses(results):
    a = results["chaos"].arrays
    i, j, t0, t1 = F.chaos_cells(a)[0]
    fig = F.chaos_path(a, i, j)
    path = fig.data[0]
    assert np.allclose(path.x, a["alphas"]) and np.allclose(path.y, a["path"][0, i, j])
    chord = np.asarray(fig.data[1].y)
    assert chord[0] == pytest.approx(a["path"][0, i, j, 0]) and chord[-1] == pytest.approx(a["path"][0, i, j, -1])
    # the barrier is the largest gap between path and chord
    assert np.max(a["path"][0, i, j] - chord) == pytest.approx(a["B"][0, i, j], abs=1e-9)
    assert f"t0={t0}" in fig.layout.title.text and f"t1={t1}" in fig.layout.title.text


def test_chaos_cells_are_the_computed_ones(results):
    a = results["chaos"].arrays
    cells = F.chaos_cells(a)
    assert {(t0, t1) for _, _, t0, t1 in cells} == {(int(t0), int(t1)) for t0 in a["t0"] for t1 in a["t1"]
                                                    if t1 > t0}


def test_cone_figures(results):
    r = results["cone"]
    a = r.arrays
    m = len(a["iters"])
    S = F.cone_S_heatmap(a).data[0]
    assert np.asarray(S.z).shape == (m, m) and _same(S.customdata, a["S"])
    ref = F.cone_ref_curves(a)
    assert len(ref.data) == len(a["references"]) and np.allclose(ref.data[0].y, a["ref_curves"][0])
    neigh = F.cone_neighbours(a)
    assert [tr.name for tr in neigh.data] == [f"dt={dt}" for dt in a["dts"]]
    dt = int(a["dts"][0])
    assert list(neigh.data[0].x) == a[f"neigh_t_{dt}"].tolist() and np.allclose(neigh.data[0].y, a[f"neigh_s_{dt}"])
    acc = F.cone_test_acc(a)
    assert np.allclose(acc.data[0].y, a["test_acc"])
    ang = F.cone_angles(r)
    assert ang["cone_angle_deg"] == r.meta["cone_angle_deg"] and ang["cone_window"] == a["cone_window"].tolist()


@pytest.mark.parametrize("method", ["pca", "mds"])
@pytest.mark.parametrize("dim", [2, 3])
def test_cone_projection_marks_the_initial_kernel(results, method, dim):
    a = results["cone"].arrays
    fig = F.cone_projection(a, method, dim)
    traj, start = fig.data
    assert traj.type == ("scatter3d" if dim == 3 else "scatter")
    xyz = a[f"{method}{dim}"]
    assert np.allclose(traj.x, xyz[:, 0]) and np.allclose(traj.y, xyz[:, 1])
    if dim == 3:
        assert np.allclose(traj.z, xyz[:, 2])
    assert list(traj.customdata) == a["iters"].tolist()  # hover and colour follow the iteration
    assert start.name == "H(theta_0)" and start.x[0] == pytest.approx(xyz[0, 0])
    with pytest.raises(ValueError):
        F.cone_projection(a, "tsne", dim)


def test_linear_figure(results):
    a = results["linear"].arrays
    fig = F.linear_figure(a, iterations=60)
    lin, at_switch, full = fig.data
    assert list(lin.x) == a["switch"].tolist() and np.allclose(lin.y, a["acc_linear"])
    assert np.allclose(at_switch.y, a["acc_at_switch"])
    assert np.allclose(full.y, float(a["acc_full"]))  # a horizontal line


def test_csv_round_trips_every_table(results):
    a_ch, a_co, a_li = (results[k].arrays for k in ("chaos", "cone", "linear"))
    tables = [F.chaos_heatmap_table(a_ch), F.chaos_heatmap_table(a_ch, "B"), F.chaos_sections_table(a_ch, "C"),
              F.chaos_path_table(a_ch, 0, 0), F.cone_S_table(a_co), F.cone_ref_table(a_co), F.cone_neigh_table(a_co),
              F.cone_projection_table(a_co, "pca", 3), F.cone_acc_table(a_co), F.linear_table(a_li)]
    for t in tables:
        back = F.from_csv(F.to_csv(t))
        assert list(back) == list(t)
        for col in t:
            assert [v if v is None else float(v) for v in back[col]] == \
                   [v if v is None else float(v) for v in t[col]], col  # exact: floats are written with repr
    # NaN cells (t1 <= t0, or not computed yet) are empty in CSV and null in JSON
    holed = {**a_ch, "C": a_ch["C"].copy()}
    holed["C"][0, -1, 0] = np.nan
    heat = F.chaos_heatmap_table(holed)
    assert heat["C"][-2] is None and ",,"in F.to_csv(heat)
    assert F.from_csv(F.to_csv(heat))["C"] == heat["C"]
    j = json.loads(F.to_json(heat, run="x", config={"a": 1}))
    assert j["columns"] == ["t0", "t1", "C", "B", "D"] and len(j["rows"]) == len(heat["t0"])
    assert any(row["C"] is None for row in j["rows"]) and j["config"] == {"a": 1}


def test_html_export_and_command(results):
    r = results["chaos"]
    from twophase_core.experiments.reproduce import command_for

    cfg = F.config_from_result(r)
    cmd = command_for(cfg)
    assert cmd.startswith("twophase chaos --preset tiny")  # the nearest preset gives the shortest line
    html = F.to_html(F.chaos_heatmap(r.arrays, "C"), cmd)
    assert "<html>" in html and "plotly" in html and "twophase chaos" in html


def test_log_colour_keeps_exact_zeros_visible(results):
    a = dict(results["chaos"].arrays)
    a["D"] = np.zeros_like(a["D"])  # e.g. the eps = 0 control: all zeros, drawn, labelled "0"
    h = F.chaos_heatmap(a, "D", log=True).data[0]
    assert list(h.colorbar.ticktext) == ["0"] and np.all(np.asarray(h.z, dtype=float) == h.zmin)
    h = F.cone_S_heatmap(results["cone"].arrays, log=True).data[0]  # S is 0 on the diagonal
    z = np.asarray(h.z, dtype=float)
    assert h.colorbar.ticktext[0] == "0" and np.all(np.diag(z) == z.min()) and np.isfinite(z).all()


# ---------------------------------------------------------------------------------------------
# The transition figure and the error bands (synthetic replicates: no training needed)


def _falling_group(label, t_mid, replicates=5, seed=0):
    """Replicates of log C falling from -3 to -12 around t_mid, with zeros late for B."""
    t0 = np.array([0, 5, 10, 20, 40, 80, 160, 320])
    u = np.log1p(t0)
    rng = np.random.default_rng(seed)
    logc = -12 + 9 / (1 + np.exp((u - np.log1p(t_mid)) / 0.5))
    C = np.exp(logc[None] + rng.normal(0, 0.7, (replicates, t0.size)))
    B = np.where(t0[None] < t_mid, 0.1 * C, 0.0)
    return {"label": label, "t0": t0, "values": {"C": C, "B": B}}


def test_transition_figure_draws_means_bands_and_t_star():
    from twophase_core.science.transition import estimate_transition

    g = _falling_group("lr=0.1", 30.0)
    fig = F.transition_figure([g], "C", n_boot=200)
    names = [tr.name for tr in fig.data]
    mean = fig.data[names.index("lr=0.1")]
    C = g["values"]["C"]
    assert np.allclose(mean.x, 1 + g["t0"]) and np.allclose(mean.y, np.exp(np.log(C).mean(axis=0)))
    band = fig.data[names.index("lr=0.1: 95% band")]
    n = g["t0"].size
    hi, lo = np.asarray(band.y[:n]), np.asarray(band.y[n:])[::-1]
    assert np.all(lo <= mean.y) and np.all(mean.y <= hi) and np.all(lo >= C.min(axis=0)) and np.all(hi <= C.max(0))
    tr = estimate_transition(g["t0"], C, n_boot=200)
    assert tr.ci_low < 30.0 < tr.ci_high  # the estimate drawn holds the midpoint the curves were built with
    line = next(t for t in fig.data if t.name.startswith("lr=0.1: t* ="))
    assert np.allclose(line.x, [1 + tr.t_star] * 2)
    shade = fig.data[names.index("lr=0.1: 95% interval of t*")]
    assert min(shade.x) == pytest.approx(1 + tr.ci_low) and max(shade.x) == pytest.approx(1 + tr.ci_high)
    assert fig.layout.xaxis.type == "log" and list(fig.layout.xaxis.ticktext) == [str(t) for t in g["t0"]]
    assert list(fig.layout.xaxis.tickvals) == [1 + t for t in g["t0"]] and "1 + t" in fig.layout.xaxis.title.text
    reps = fig.data[names.index("lr=0.1: replicates")]
    assert len(reps.x) == C.size


def test_transition_figure_overlays_groups_and_tables_them():
    settings = [(0.05, 15.0), (0.1, 30.0), (0.2, 60.0)]
    groups = [_falling_group(f"lr={lr}", t, seed=k) for k, (lr, t) in enumerate(settings)]
    fig = F.transition_figure(groups, "C", n_boot=200)
    means = [tr for tr in fig.data if tr.name in ("lr=0.05", "lr=0.1", "lr=0.2")]
    assert len(means) == 3 and len({tr.line.color for tr in means}) == 3
    table = F.transition_summary_table(groups, ("C",), n_boot=200)
    assert table["group"] == ["lr=0.05", "lr=0.1", "lr=0.2"] and all(table["found"])
    assert table["t_star"] == sorted(table["t_star"])  # the later the fall, the later t*
    for lo, t, hi in zip(table["ci_low"], table["t_star"], table["ci_high"], strict=True):
        assert lo < t < hi
    back = F.from_csv(F.to_csv(table))
    assert back["t_star"] == table["t_star"] and back["reason"] == [None] * 3
    curve = F.transition_curve_table(groups, "C", n_boot=200)
    assert F.table_rows(curve) == 3 * 8 and set(curve["group"]) == {"lr=0.05", "lr=0.1", "lr=0.2"}
    j = json.loads(F.to_json(curve))
    assert j["columns"] == ["group", "t0", "replicates", "zeros", "mean", "band_low", "band_high", "fit"]


def test_transition_figure_with_zeros_given_estimates_and_none_found():
    from twophase_core.science.transition import estimate_transition

    g = _falling_group("zeros", 30.0)
    B = g["values"]["B"]
    fig = F.transition_figure([g], "B", n_boot=200)
    mean = next(tr for tr in fig.data if tr.name == "zeros")
    late = (B == 0).any(axis=0)  # t0 >= 30: every replicate exactly 0
    assert np.allclose(mean.y[~late], np.exp(np.log(B[:, ~late]).mean(axis=0))) and np.isnan(mean.y[late]).all()
    # an estimate given as the sweep JSON's dict is drawn as is; None (none found) draws no t*
    given = estimate_transition(g["t0"], g["values"]["C"], n_boot=50, seed=3)
    g2 = {**g, "transitions": {"C": given.to_dict(), "B": None}}
    fig = F.transition_figure([g2], "C")
    line = next(t for t in fig.data if t.name.startswith("zeros: t* ="))
    assert line.x[0] == pytest.approx(1 + given.t_star)
    assert not any("t* =" in (t.name or "") for t in F.transition_figure([g2], "B").data)
    one = {**g, "values": {"C": g["values"]["C"][:1]}}  # one replicate: curve drawn, no t*
    t = F.transition_summary_table([g2, one], ("C",), n_boot=50)
    assert t["found"] == [True, False] and "replicate" in t["reason"][1]
    assert F.transition_summary_table([g2], ("B",))["reason"] == ["not found"]
    assert not any("t* =" in (tr.name or "") for tr in F.transition_figure([one], "C").data)


def test_chaos_sections_band_mean_and_band_per_t0():
    rng = np.random.default_rng(1)
    t0, t1 = np.array([0, 20, 50]), np.array([30, 60, 100])
    reps = []
    for _ in range(4):
        a = {"t0": t0, "t1": t1}
        for k in ("C", "B", "D"):
            v = rng.uniform(0.1, 1.0, (2, 3, 3))  # two perturbation seeds per replicate
            v[:, t1[None, :] <= t0[:, None]] = np.nan
            a[k] = v
        reps.append(a)
    st = F.stack_replicates(reps)
    assert st["C"].shape == (4, 3, 3) and np.allclose(st["C"][2], reps[2]["C"].sum(axis=0) / 2, equal_nan=True)
    fig = F.chaos_sections_band(st, "C", n_boot=200)
    lines = [tr for tr in fig.data if not tr.name.endswith("band")]
    assert [tr.name for tr in lines] == ["t0=0", "t0=20", "t0=50"]
    for i, tr in enumerate(lines):
        ok = t1 > t0[i]
        assert list(tr.x) == t1[ok].tolist() and np.allclose(tr.y, st["C"][:, i, ok].mean(axis=0))
        lo, hi = np.asarray(tr.customdata)[:, 0], np.asarray(tr.customdata)[:, 1]
        assert np.all(lo <= tr.y) and np.all(tr.y <= hi)
    table = F.chaos_sections_band_table(st, "C", n_boot=200)
    assert F.table_rows(table) == int(np.sum(t1[None, :] > t0[:, None])) and set(table["replicates"]) == {4}
    assert F.chaos_sections_band(st, "C", log=True).layout.yaxis.type == "log"
    with pytest.raises(ValueError):
        F.stack_replicates([reps[0], {**reps[1], "t1": t1 + 1}])


def test_transition_figure_on_the_cone_side_labels_t_and_thins_dense_ticks():
    t = np.arange(0, 3000, 100)
    rng = np.random.default_rng(2)
    logs = -7 + 4.5 / (1 + np.exp((np.log1p(t) - np.log1p(1000)) / 0.2))
    S = np.exp(logs[None] + rng.normal(0, 0.3, (4, t.size)))
    fig = F.transition_figure([{"label": "dt=100", "t0": t, "values": {"S": S}}], "S", n_boot=200)
    assert fig.layout.xaxis.title.text.startswith("t (") and "kernel" in fig.layout.title.text
    ticks = [int(v) for v in fig.layout.xaxis.ticktext]
    assert ticks[0] == 0 and ticks[-1] == 2900 and len(ticks) <= 11 and set(ticks) <= set(t.tolist())
    assert np.allclose(fig.layout.xaxis.tickvals, [1 + v for v in ticks])
    line = next(tr for tr in fig.data if "t* =" in tr.name)
    assert 700 < line.x[0] - 1 < 1400


# ---------------------------------------------------------------------------------------------
# Every number on screen right and readable (issue 16)


def test_round_sig_keeps_three_significant_digits_and_every_leading_one():
    cases = {816.5148: "817", 363.9438: "364", 1337.5846: "1340", 0.012345: "0.0123", 0.1: "0.1", 99.96: "100",
             2.5e-7: "2.5e-7", 3.0e7: "3e7", 0.0: "0", None: "", float("nan"): ""}
    assert {v: F.round_sig(v) for v in cases} == cases


def test_transition_summary_text_rounds_t_star_and_keeps_the_whole_reason():
    from twophase_core.science.transition import estimate_transition

    g = _falling_group("lr=0.1", 30.0)
    short = {"label": "4 t0", "t0": g["t0"][:4], "values": {"C": g["values"]["C"][:, :4]}}
    t = F.transition_summary_text([g, short], ("C",), n_boot=200)
    tr = estimate_transition(g["t0"], g["values"]["C"], n_boot=200)
    sig = lambda v: f"{float(f'{v:.3g}'):g}"  # noqa: E731
    assert t["t*"] == [sig(tr.t_star), "none"] and t["95% interval"] == [f"[{sig(tr.ci_low)}, {sig(tr.ci_high)}]", ""]
    assert t["why none was found"] == ["", "too few t0 points with a value: 4 < 5"]  # whole, as the estimator says
    assert t["replicates"] == ["5", "5"] and t["points"] == ["8", "4"]
    line = next(tr_ for tr_ in F.transition_figure([g], "C", n_boot=200).data if "t* =" in (tr_.name or ""))
    assert line.name == f"lr=0.1: t* = {sig(tr.t_star)} [{sig(tr.ci_low)}, {sig(tr.ci_high)}]"  # one rounding
    assert F.too_few_points(short) == ("One run of 4 t0 cannot place t* with an interval: the fit needs at least 5 "
                                       "t0, and its interval needs replicates, the same run repeated with other "
                                       "data and init seeds.")
    assert F.too_few_points(g) is None


def _on_axis(fig, axis):
    return [tr for tr in fig.data if (tr.yaxis or "y") == axis]


def test_exact_zeros_on_a_log_axis_are_drawn_as_zeros_not_as_values():
    g = _falling_group("zeros", 30.0)
    B = g["values"]["B"]  # 0 for every replicate from t0 = 40 on
    fig = F.transition_figure([g], "B", n_boot=200)
    assert fig.layout.yaxis2.ticktext == ("0",) and fig.layout.yaxis.type == "log"
    drawn = np.concatenate([np.asarray(tr.y, dtype=float) for tr in _on_axis(fig, "y")
                            if tr.name and (tr.name == "zeros" or tr.name.endswith("replicates"))])
    assert np.nanmin(drawn) >= B[B > 0].min()  # nothing at the floor, a tenth of the smallest value
    reps = next(tr for tr in fig.data if tr.name == "zeros: replicates exactly 0")
    mean = next(tr for tr in fig.data if tr.name == "zeros: geometric mean 0")
    assert reps.yaxis == mean.yaxis == "y2" and not np.any(reps.y) and len(reps.x) == int((B == 0).sum())
    assert np.allclose(mean.x, 1 + g["t0"][(B == 0).all(axis=0)])
    fit = next(tr for tr in fig.data if tr.name == "zeros: fit")
    assert np.nanmin(np.asarray(fit.y, dtype=float)) >= B[B > 0].min()
    curve = F.transition_curve_table([g], "B", n_boot=200)
    late = [i for i, z in enumerate(curve["zeros"]) if z]
    assert [curve["t0"][i] for i in late] == g["t0"][(B == 0).any(axis=0)].tolist()
    assert all(curve["mean"][i] == 0 and curve["band_low"][i] is None for i in late)
    assert "yaxis2" not in F.transition_figure([g], "C", n_boot=200).to_plotly_json()["layout"]  # no zeros: no row


def test_zeros_in_log_line_figures_go_on_the_zero_row(results):
    a = dict(results["chaos"].arrays)
    a["B"] = a["B"].copy()
    a["B"][0, 1, 1] = 0.0  # t0 = 20, t1 = 60: no barrier (the tiny run has real zeros at t1 = 30 too)
    fig = F.chaos_sections(a, "B", log=True)
    marks = {tr.name: sorted(int(x) for x in tr.x) for tr in _on_axis(fig, "y2")}
    assert all(np.all(np.abs(tr.y) < 1) for tr in _on_axis(fig, "y2"))  # on the row "0", a lane per line
    assert fig.layout.yaxis2.ticktext == ("0",) and tuple(fig.layout.yaxis2.range) == (-1, 1)
    zeros = {f"t0={int(t0)}: exactly 0": [int(t1) for t1, b in zip(a["t1"], a["B"][0, i], strict=True) if b == 0]
             for i, t0 in enumerate(a["t0"])}
    assert marks == {name: t1s for name, t1s in zeros.items() if t1s}
    assert "t0=20: exactly 0" in marks
    line = next(tr for tr in fig.data if tr.name == "t0=20")
    assert np.isnan(np.asarray(line.y, dtype=float)).sum() == int((a["B"][0, 1] == 0).sum())
    assert not _on_axis(F.chaos_sections(a, "B", log=False), "y2")  # a linear axis draws 0 itself
    cone = results["cone"].arrays  # S(H_tau, H_tau) = 0 at t = tau
    refs = F.cone_ref_curves(cone, log=True)
    assert sorted(int(x) for tr in _on_axis(refs, "y2") for x in tr.x) == sorted(int(t) for t in cone["references"])


def test_html_export_says_how_twophase_gets_on_path(results):
    html = F.to_html(F.linear_figure(results["linear"].arrays), "twophase linear --preset tiny")
    assert ".venv/bin/twophase" in html and "source .venv/bin/activate" in html and "Docker image" in html


# ---------------------------------------------------------------------------------------------
# Presentation mode (figures.present): a projector, 1280x720 at 150 % zoom


def _font_sizes(node, path=""):
    """(where, size) of every explicit font size in a figure's dict, templates left out (defaults only)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "template":
                continue
            if k.endswith("font") and isinstance(v, dict) and "size" in v:
                yield f"{path}.{k}", v["size"]
            yield from _font_sizes(v, f"{path}.{k}")
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            yield from _font_sizes(v, f"{path}[{i}]")


def _every_figure(results):
    from twophase_core.interfaces import compare as CF

    c, k, li = results["chaos"].arrays, results["cone"].arrays, results["linear"].arrays
    for m in F.METRICS:
        yield F.chaos_heatmap(c, m, log=True, clickable=True, selected=(0, 30))
    yield F.chaos_sections(c, "B", log=True)
    yield F.chaos_path(c, 0, 0)
    yield F.transition_figure([F.chaos_transition_group(c)], "C", n_boot=50)
    yield F.training_curve(c)
    yield F.cone_S_heatmap(k, log=True)
    yield F.cone_projection(k, "pca", 2, rays=True)
    yield F.cone_ref_curves(k, log=True)
    yield F.cone_neighbours(k)
    yield F.cone_test_acc(k)
    yield F.linear_figure(li, iterations=60)
    yield CF.chaos_heatmaps([c, c], ["a", "b"], "C", log=True, per_row=1)
    yield CF.cone_angles([results["cone"], results["cone"]], ["a", "b"])


def test_presentation_puts_every_label_at_16_px_or_more(results):
    for fig in _every_figure(results):
        before = json.loads(fig.to_json())
        d = F.present(fig).to_plotly_json()
        assert json.loads(fig.to_json()) == before  # a copy: the figure as built is untouched
        lay = d["layout"]
        assert lay["font"]["size"] >= 16 and lay["title"]["font"]["size"] >= 16  # what every label inherits
        small = [(where, size) for where, size in _font_sizes(d) if size < 16]
        assert not small, (lay["title"]["text"], small)
        for name, axis in lay.items():
            if name[1:5] == "axis" and axis.get("type") == "log":  # plotly writes the 2s and 5s at 3/4 size
                assert axis.get("tickvals") is not None or not str(axis.get("dtick", "D")).startswith("D"), name
            if name[1:5] == "axis":
                assert axis["automargin"], name  # its labels and title push the margin rather than being cut
        for cb in [tr["colorbar"] for tr in d["data"] if "colorbar" in tr] + \
                  [v["colorbar"] for k, v in lay.items() if k.startswith("coloraxis")]:
            assert cb["orientation"] == "v" and cb["title"]["side"] == "right"  # ticks never pile up


def _grid(n_rows: int, n_cols: int, value: float = 3.7e-4):
    """Chaos arrays on an n_rows x n_cols grid, every cell the same value (every label as wide)."""
    return {"t0": np.arange(n_rows) * 10, "t1": 1000 + np.arange(n_cols) * 10, "seeds": np.array([0]),
            **{m: np.full((1, n_rows, n_cols), value) for m in F.METRICS}}


@pytest.mark.parametrize("n_rows,n_cols", [(2, 2), (4, 5), (4, 7), (6, 12), (10, 20), (30, 4), (3, 40)])
@pytest.mark.parametrize("value", [3.7e-4, 0.05])
def test_presentation_writes_heatmap_values_only_where_they_fit(n_rows, n_cols, value):
    """The oracle, independent of the code's estimate: a cell is at most the figure's whole width (or height) over
    the grid, at least what is left after generous margins; a label's width is between 0.45 and 0.75 em per
    character. Values must be hidden where even the largest cell is narrower than the smallest label, and shown
    where the smallest cell holds the largest label with room to spare; hover keeps every value either way."""
    style = F.PRESENT
    fig = F.present(F.chaos_heatmap(_grid(n_rows, n_cols, value), "C"))
    tr = fig.data[0]
    label = F.cell_label(value)
    em, pad = style.cell_px, 2 * style.cell_pad_px
    largest = (style.width_px / n_cols, style.height_px / n_rows)
    smallest = ((style.width_px - 300) / n_cols, (style.height_px - 200) / n_rows)
    never = largest[0] < 0.45 * em * len(label) or largest[1] < em
    surely = smallest[0] >= 0.75 * em * len(label) + pad and smallest[1] >= 1.2 * em + pad
    shown = bool(tr.texttemplate)
    assert not (never and shown) and not (surely and not shown), (label, n_rows, n_cols, largest, smallest)
    if shown:
        assert tr.textfont.size >= 16
    assert "customdata" in tr.hovertemplate and np.allclose(np.asarray(tr.customdata, dtype=float), value)


def test_presentation_wraps_long_titles_and_keeps_short_ones():
    long = "Where the chaos ends: parameter dissimilarity C (cosine distance) versus t0, with every replicate"
    fig = F.present(F.apply_layout(go.Figure(go.Scatter(x=[0, 1], y=[1, 2])), long))
    lines = fig.layout.title.text.split("<br>")
    assert len(lines) >= 2 and " ".join(lines) == long
    assert all(F.text_width(line, F.PRESENT.title_px) <= F.PRESENT.width_px for line in lines)
    assert F.present(F.apply_layout(go.Figure(), "Short")).layout.title.text == "Short"
