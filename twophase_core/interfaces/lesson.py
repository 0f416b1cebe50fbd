"""The lesson: the two phases of training in seven steps a class can follow, each on a result of the gallery.

Every step is one figure (drawn from a result shipped in the gallery, so it is on screen at once), one sentence of
what to notice, one question for the class and, where a run is short enough, a small variant to try live with the
wait it costs said before the click. `handout_html` writes the whole lesson as one HTML file that opens offline.
The words are plain on purpose; the exact definitions are in docs/science.md. Nothing here imports torch or
Streamlit: the app's Lesson page and `twophase lesson --html` both draw from it.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import plotly.graph_objects as go

from twophase_core.experiments.presets import preset
from twophase_core.experiments.result import Result
from twophase_core.experiments.sweep import SweepResult, expand, figure_groups
from twophase_core.interfaces import figures as F
from twophase_core.interfaces import gallery
from twophase_core.settings import config as conf

SCIENCE = "docs/science.md"  # where the definitions are written out, in the twophase source


@dataclass(frozen=True)
class Live:
    """A small variant of a gallery run for the class to start: what it changes, and what it waits on."""

    kind: str
    changes: dict[str, Any]
    what: str  # in plain words: what the variant changes
    like: str  # the gallery entry whose measured time says how long it takes

    def config(self) -> conf.ExperimentConfig:
        return conf.with_settings(preset("demo", self.kind), self.changes)

    def seconds(self) -> float | None:
        """Wall time of the like entry when the gallery was built, from an empty store (None if unknown)."""
        r = _result(self.like)
        return float(r.meta["seconds"]) if r is not None and "seconds" in r.meta else None


@dataclass(frozen=True)
class Step:
    key: str
    title: str
    words: str  # what is on the figure, in plain words
    notice: str  # one sentence: what to notice
    question: str  # one question for the class
    figure: Callable[[], go.Figure]
    live: Live | None = None
    answer: str = ""  # where a student will ask: the answer


# ---------------------------------------------------------------------------------------------
# The results the lesson draws on (read from the gallery's files: no store, no torch)


@cache
def _result(name: str) -> Result | None:
    entries = [e for e in gallery.read().entries if e.name == name and not e.sweep]
    return gallery.load(entries[0]) if entries else None


def _need(name: str) -> Result:
    r = _result(name)
    if r is None:
        raise LookupError(f"the gallery holds no {name!r}: run `twophase gallery build`")
    return r


@cache
def _sweep_groups(name: str) -> list[Any]:
    """The gallery sweep's groups as the Sweeps page draws them (replicates summarised, t* fitted)."""
    g = gallery.read()
    sids = [sid for sid, rec in g.sweeps.items() if rec["name"] == name]
    if not sids:
        raise LookupError(f"the gallery holds no sweep {name!r}: run `twophase gallery build`")
    sweep = gallery.demo_sweep(SWEEP_KINDS[name])
    points = expand(sweep)
    results = {e.hash: gallery.load(e) for e in g.named(name)}
    return figure_groups(SweepResult(sweep, points, results).groups())


SWEEP_KINDS = dict(gallery.SWEEPS)


def chaos_cells() -> tuple[int, int, int]:
    """(early row, late row, last column) of the demo's chaos grid: the first and last t0 at the final t1."""
    a = _need("demo-chaos").arrays
    return 0, len(a["t0"]) - 1, len(a["t1"]) - 1


def _paths() -> go.Figure:
    """The loss along the straight line between the copies, nudged early and nudged late, at the final t1."""
    a = _need("demo-chaos").arrays
    early, late, j = chaos_cells()
    fig = go.Figure()
    for i, name, colour in ((early, "nudged early", F.LINE_COLOURS[3]), (late, "nudged late", F.LINE_COLOURS[0])):
        path = np.nanmean(a["path"][:, i, j], axis=0)
        fig.add_trace(go.Scatter(x=a["alphas"], y=path, mode="lines+markers", line={"color": colour},
                                 name=f"{name} (t0 = {int(a['t0'][i])})"))
    return F.apply_layout(fig, f"Test loss between the two copies at t1 = {int(a['t1'][j])}",
                          xaxis_title="alpha: 0 = the nudged copy, 1 = the control", yaxis_title="test loss")


def _cone() -> go.Figure:
    a = _need("demo-cone").arrays
    method, dim = F.honest_view(a)
    return F.cone_projection(a, method, dim, rays=True)


def _transition() -> go.Figure:
    return F.transition_figure(_sweep_groups("demo-sweep-chaos"), "C")


def _linear() -> go.Figure:
    r = _need("demo-linear")
    return F.linear_figure(r.arrays, iterations=int(r.config["train"]["iterations"]))


def _training() -> go.Figure:
    r = _need("demo-chaos")
    return F.training_curve(r.arrays, iterations=int(r.config["train"]["iterations"]))


def cone_angle() -> float:
    return float(_need("demo-cone").meta["cone_angle_deg"])


def transition_text() -> str:
    """t* of C over the demo-sweep's replicates, with its interval, in words (or why there is none)."""
    groups = _sweep_groups("demo-sweep-chaos")
    est = groups[0]["transitions"].get("C") if groups else None
    if not est or not est.get("found"):
        from twophase_core.science.transition import outcome_label

        return f"the replicates place no transition ({outcome_label(est)})"
    return f"t* = {est['t_star']:.0f} [{est['ci_low']:.0f}, {est['ci_high']:.0f}]"


def linear_numbers() -> tuple[int, float, float, float]:
    """(a late switch time t, accuracy of the network stopped at t, of the model linearised at t and trained to T,
    of full training) from the demo's linear run."""
    a = _need("demo-linear").arrays
    i = len(a["switch"]) - 1
    return int(a["switch"][i]), float(a["acc_at_switch"][i]), float(a["acc_linear"][i]), float(a["acc_full"])


# ---------------------------------------------------------------------------------------------
# The steps


def steps() -> list[Step]:
    t, stopped, lin, full = linear_numbers()
    return [
        Step("question", "What is a phase of training?",
             "A small network learns to classify one-dimensional signals (MNIST-1D). The grey line is its "
             "training loss at every step; the blue dots, its accuracy on test data.",
             "The loss falls steeply for the first hundred steps or so, then slowly: but a slower loss does not "
             "say whether the network itself has changed how it learns.",
             "If we nudged the network's weights a tiny bit, would it matter when we did it?",
             _training, Live("chaos", {}, "the whole demo, as it was made", "demo-chaos")),
        Step("chaos", "The Chaos Effect: nudge early or late",
             "At step t0 a copy of the network gets a nudge of about one ten-millionth per weight, then trains on "
             "exactly the same batches as the original. C says how far apart the two copies are at step t1 "
             "(0: identical directions).",
             "Copies nudged early (top rows) end far apart, bright; copies nudged late stay together, dark.",
             "The nudge is far smaller than one SGD step: why can it matter so much early on?",
             lambda: F.chaos_heatmap(_need("demo-chaos").arrays, "C", log=True),
             Live("chaos", {"eps": 1e-8}, "a nudge ten times smaller", "demo-chaos")),
        Step("barrier", "The barrier between the copies",
             "Walk in a straight line from one copy's weights to the other's and measure the test loss on the "
             "way. B is how far the loss rises above the straight line joining the two ends.",
             "Copies nudged early sit in different valleys (the loss rises between them); copies nudged late sit "
             "in one valley (the path stays flat).",
             "Two networks that both work well: what does it mean that the straight path between them is bad?",
             _paths),
        Step("disagreement", "Do the copies disagree?",
             "D is the share of test points on which the two copies give different answers.",
             "Early copies disagree on a noticeable share of test points even though both are accurate; late "
             "copies give the same answers.",
             "Is a model that depends this much on a nudge the same model? Which one would you ship?",
             lambda: F.chaos_heatmap(_need("demo-chaos").arrays, "D")),
        Step("cone", "The Cone Effect: where the kernel goes",
             "The network's kernel (how a change of weights moves its outputs on 40 training inputs) is computed at "
             "every checkpoint; each point is one kernel, placed by a projection, the red diamond is the start.",
             f"The kernel moves fast at first, then stays inside a narrow cone seen from the start: "
             f"{cone_angle():.0f} degrees here.",
             "If the kernel stops turning, what is left for training to change?",
             _cone, Live("cone", {"n_samples": 20}, "the kernel on 20 inputs instead of 40", "demo-cone")),
        Step("transition", "When does the chaos end?",
             "The chaos experiment on a small MLP trained for 3,000 steps, five times over (other initialisations, "
             "other batches): the dots are each run's C at the last t1 for every t0, the band their spread, the "
             "dashed line the transition t*.",
             f"Over five replicates the chaos ends at {transition_text()} steps: a number with an interval, not a "
             "guess read off one picture.",
             "The paper says the kernel settles at the same point: how would you check that on this page?",
             _transition),
        Step("linear", "Linearised training: is the rest just a kernel method?",
             "From step t on, train the network's first-order Taylor expansion at its weights of step t instead of "
             "the network, to the end. The line is the full network's accuracy at the end.",
             "Switching early costs a lot of accuracy; switching late much less: after the chaos the network "
             "behaves almost like its linearisation.",
             (f"Why does the model linearised at t = {t} end at {lin:.3f}, below the network simply stopped at "
              f"t = {t} ({stopped:.3f})?" if lin < stopped else
              f"The model linearised at t = {t} ends at {lin:.3f}, the network stopped at t = {t} at {stopped:.3f}: "
              "what did training the linearised model add?"),
             _linear, Live("linear", {"switch": (0, 100)}, "two switch times instead of four", "demo-linear"),
             answer=f"The linearised model keeps the kernel of step {t} frozen and can only move in the directions "
                    f"that kernel offers. At t = {t} the demo's kernel is still turning a little (the cone narrows "
                    "but has not closed), so the frozen kernel's extra training fits the training data in ways the "
                    "real network would not, and gains nothing on test data (here it ends "
                    f"{'a little below' if lin < stopped else 'close to'} where the network stopped); the network "
                    f"trained to the end reaches {full:.3f}. Switch later, and the gap shrinks."),
    ]


def step(n: int) -> Step:
    """Step n (1-based), clamped to the lesson."""
    s = steps()
    return s[min(max(n, 1), len(s)) - 1]


def handout_html(title: str = "The two phases of training: a lesson with twophase") -> str:
    """The whole lesson as one HTML page that opens offline (plotly's script inlined once)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             "<style>body{font-family:sans-serif;max-width:1000px;margin:auto;font-size:18px;line-height:1.4}"
             "h2{margin-top:2em}.q{font-weight:bold}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             "<p>Each step is one figure from results computed by twophase (the gallery that ships with it). "
             f"The exact definitions are in {SCIENCE} of the twophase source.</p>"]
    for i, s in enumerate(steps(), 1):
        fig = s.figure()
        parts += [f"<h2>{i}. {html.escape(s.title)}</h2>", f"<p>{html.escape(s.words)}</p>",
                  fig.to_html(full_html=False, include_plotlyjs=(i == 1)),
                  f"<p><b>Notice:</b> {html.escape(s.notice)}</p>", f"<p class='q'>Ask: {html.escape(s.question)}</p>"]
        if s.answer:
            parts.append(f"<p><b>Answer:</b> {html.escape(s.answer)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
