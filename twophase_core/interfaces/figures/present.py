"""Presentation mode: any figure restyled for a projector, after it is built.

A projector is typically 1280x720 shown at 150 % browser zoom, a CSS viewport of about 853x480, read from
the back of a room. `present(fig)` gives every label at least 16 CSS px, wraps titles that would be cut,
lets the axes, colour bars and the legend push the margins instead of being clipped, and writes heatmap
values only where they fit their cell without touching a neighbour (hover still gives every value).

Why one transform rather than a flag per builder: every figure of the app, the lesson and a comparison
goes through it in one place, so they all read alike and a new figure is covered without work. It is pure
plotly (no Streamlit, no torch), like the builders.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go

MIN_FONT_PX = 16  # the floor: readable from the back row at 1280x720 with 150 % zoom


@dataclass(frozen=True)
class Presentation:
    """The sizes of presentation mode, in CSS px."""

    font_px: int = 18  # ticks, axis and legend text, annotations
    title_px: int = 22  # the figure's title
    cell_px: int = MIN_FONT_PX  # heatmap values: the smallest allowed, so that most grids keep them
    cell_pad_px: int = 6  # room kept between a value and its cell's edges (neighbours never touch)
    width_px: int = 780  # the narrowest figure expected: full width in an 853 px viewport, sidebar collapsed
    height_px: int = 430  # a figure at most this tall fits under the app's header in a 480 px viewport


PRESENT = Presentation()

# widths of characters in em, a little above Source Sans and Open Sans (the app's and plotly's fonts): an
# estimate that errs wide, so a value judged to fit does fit, and a title judged short enough is not cut
_NARROW = set(".,:;'|!il()[]{} ")
_WIDE = set("mwMW@%")


def text_width(text: str, size: float) -> float:
    """Estimated width in px of `text` at font size `size` px (markup such as <b> or <br> not counted)."""
    plain = re.sub(r"<[^>]+>", "", text)
    return size * sum(0.3 if ch in _NARROW else 0.9 if ch in _WIDE else 0.6 if ch.isupper() else 0.56
                      for ch in plain)


def wrap(text: str, width: float, size: float) -> str:
    """`text` broken into lines (plotly's <br>) at spaces, each line at most `width` px at `size` px where a
    word allows; existing line breaks are kept."""
    lines: list[str] = []
    for part in re.split(r"<br\s*/?>", text):
        line = ""
        for word in part.split(" "):
            trial = f"{line} {word}" if line else word
            if line and text_width(trial, size) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return "<br>".join(lines)


def _floor_fonts(node: Any, floor: int) -> None:
    """Raise every explicit font size under `floor` to `floor`, anywhere in a figure's dict (templates left out:
    they only give defaults, which the layout's base font overrides)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "template":
                continue
            if k.endswith("font") and isinstance(v, dict) and isinstance(v.get("size"), int | float) \
                    and v["size"] < floor:
                v["size"] = floor
            _floor_fonts(v, floor)
    elif isinstance(node, list):
        for v in node:
            _floor_fonts(v, floor)


def _axes(layout: dict[str, Any], letter: str) -> list[str]:
    return sorted(k for k in layout if re.fullmatch(f"{letter}axis\\d*", k))


def _title_text(t: Any) -> str:
    if isinstance(t, dict):
        return str(t.get("text") or "")
    return str(t or "")


def _domain(layout: dict[str, Any], axis: str) -> float:
    d = (layout.get(axis) or {}).get("domain") or [0.0, 1.0]
    return float(d[1]) - float(d[0])


def _axis_name(ref: str | None, letter: str) -> str:
    """A trace's axis reference ('x2') as the layout's key ('xaxis2')."""
    return f"{letter}axis{(ref or letter)[1:]}"


@dataclass
class _Box:
    """The plot area's estimated size in px, from the figure's size and what its margins will hold."""

    width: float
    height: float


def _plot_box(layout: dict[str, Any], style: Presentation, height: float, colourbar: bool, legend_px: float) -> _Box:
    f = style.font_px
    line = 1.3 * f
    ys = [layout.get(a) or {} for a in _axes(layout, "y")]
    y_ticks = max([max((len(str(t)) for t in (a.get("ticktext") or [])), default=6) for a in ys] or [6])
    left = 14 + text_width("0" * y_ticks, f) + 2 * line  # tick labels and a title of up to two lines
    right = 20 + (16 + text_width("1e-10", f) + 2 * line if colourbar else 0)
    top = 24 + 2 * 1.3 * style.title_px
    bottom = 14 + line + 2 * line + legend_px
    return _Box(max(style.width_px - left - right, 50.0), max(height - top - bottom, 50.0))


def _cells_fit(trace: Any, layout: dict[str, Any], box: _Box, style: Presentation) -> bool:
    """Whether every value written in a heatmap trace's cells fits its cell at style.cell_px with style.cell_pad_px
    to spare on each side."""
    shape = np.shape(np.asarray(trace.z, dtype=float))
    rows, cols = (shape[0], shape[1]) if len(shape) == 2 else (1, max(shape[0] if shape else 1, 1))
    w = box.width * _domain(layout, _axis_name(trace.xaxis, "x")) / max(cols, 1)
    h = box.height * _domain(layout, _axis_name(trace.yaxis, "y")) / max(rows, 1)
    labels = [str(t) for row in (trace.text or []) for t in (row if isinstance(row, list | tuple) else [row])]
    widest = max((text_width(t, style.cell_px) for t in labels), default=0.0)
    return w >= widest + 2 * style.cell_pad_px and h >= 1.2 * style.cell_px + 2 * style.cell_pad_px


def _extent(fig: go.Figure, layout: dict[str, Any], axis: str, letter: str) -> tuple[float, float] | None:
    """(lowest, highest) positive value drawn on a log axis: its range if set (log10 units), else the data."""
    rng = (layout.get(axis) or {}).get("range")
    if rng is not None and len(rng) == 2 and None not in rng:
        return 10.0 ** float(rng[0]), 10.0 ** float(rng[1])
    ref = letter + axis[5:]
    vals: list[np.ndarray] = []
    for tr in fig.data:
        if (getattr(tr, f"{letter}axis", None) or letter) == ref:
            v = getattr(tr, letter, None)
            if v is not None:
                a = np.asarray(v, dtype=float).ravel()
                vals.append(a[np.isfinite(a) & (a > 0)])
    allv = np.concatenate(vals) if vals else np.array([])
    return (float(allv.min()), float(allv.max())) if allv.size else None


def _log_ticks(a: dict[str, Any], extent: tuple[float, float] | None, most: int) -> None:
    """Ticks of a log axis, every label at full size: plotly writes the 2s and 5s between decades at three
    quarters of the font (under 16 px), so decades only where the axis spans two or more of them (every k-th, for
    at most `most` labels), else explicit ticks at 1, 2 and 5 times a power of ten."""
    if a.get("tickvals") is not None or extent is None:
        return
    lo, hi = extent
    decades = math.log10(hi / lo) if hi > lo else 0.0
    if decades >= 2:
        a["dtick"] = max(1, math.ceil(decades / max(most - 1, 1)))
        return
    vals = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
            for m in (1, 2, 5)]
    vals = [v for v in vals if lo / 1.5 <= v <= hi * 1.5]
    a["tickvals"], a["ticktext"] = vals, [f"{v:.0e}".replace("e-0", "e-").replace("e+00", "").replace("e+0", "e")
                                          if not 1e-3 <= v < 1e4 else f"{v:g}" for v in vals]


def _thin_ticks(a: dict[str, Any], length: float, size: float) -> None:
    """Explicit x ticks kept only where their labels, upright, leave a gap of half a character to the last kept
    (plotly draws every explicit tick, and tilts crowded labels into each other's boxes)."""
    vals = [float(v) for v in a["tickvals"]]
    texts = [str(t) for t in (a.get("ticktext") or [f"{v:g}" for v in vals])]
    if len(vals) < 2:
        return
    pos = np.log10(np.maximum(vals, 1e-300)) if a.get("type") == "log" else np.asarray(vals)
    rng = a.get("range")
    lo, hi = (float(rng[0]), float(rng[1])) if rng is not None and None not in rng else (pos.min(), pos.max())
    scale = length / (hi - lo) if hi > lo else 0.0
    keep: list[int] = []
    for i in np.argsort(pos):
        if keep:
            j = keep[-1]
            gap = (pos[i] - pos[j]) * scale - (text_width(texts[i], size) + text_width(texts[j], size)) / 2
            if gap < 0.5 * size:
                continue
        keep.append(int(i))
    a["tickvals"], a["ticktext"], a["tickangle"] = [vals[i] for i in keep], [texts[i] for i in keep], 0


_CARTESIAN = ("scatter", "scattergl", "bar", "heatmap", "histogram", "box", "violin", "contour")


def _legend_rows(names: list[str], title: str, style: Presentation) -> int:
    """Rows a horizontal legend of these entries takes across the narrowest figure (its title first in the row)."""
    rows, x = 1, text_width(title, style.font_px) + 10 if title else 0.0
    for name in names:
        w = 50 + text_width(name, style.font_px)
        if x and x + w > style.width_px:
            rows, x = rows + 1, 0.0
        x += w
    return rows


def _respace_rows(layout: dict[str, Any], box: _Box, style: Presentation) -> None:
    """A grid of subplots stacked in rows (a comparison), respaced for large text: each row's title (make_subplots'
    annotation) inside the plot area's top, and between rows room for the x axis's labels and title, which at
    presentation size ran into the next row's title."""
    anns = layout.get("annotations") or []
    titles = [a for a in anns if a.get("xref") == "paper" and a.get("yref") == "paper"
              and a.get("yanchor") == "bottom" and a.get("showarrow") is False]
    ys = [k for k in _axes(layout, "y") if (layout[k] or {}).get("domain")]
    rows = sorted({tuple(layout[k]["domain"]) for k in ys}, key=lambda d: -d[1])
    if not titles or not rows:
        return
    line = 1.4 * style.font_px
    above, below = line + 8, 10 + 3 * line + 12  # a row's title; ticks, standoff, a two-line x title
    plot = box.height
    each = (plot - len(rows) * above - (len(rows) - 1) * below) / len(rows)
    if each < 120:
        return  # no room to gain: leave it as built
    top, new = plot, {}
    for d in rows:
        top -= above
        new[d] = [max((top - each) / plot, 0.0), min(top / plot, 1.0)]
        top -= each + below
    for k in ys:
        layout[k]["domain"] = new[tuple(layout[k]["domain"])]
    for a in titles:
        row = min(new, key=lambda d: abs(d[1] - float(a.get("y", 0))))
        a["y"] = new[row][1]


def _vertical_colourbar(cb: dict[str, Any], style: Presentation) -> dict[str, Any]:
    """A colour bar at the right of the plot, its title along it: room for its ticks at any font size (a
    horizontal bar under a narrow plot piles its ticks up)."""
    title = cb.get("title")
    title = dict(title) if isinstance(title, dict) else {"text": title or ""}
    title.update(side="right", font={**(title.get("font") or {}), "size": style.font_px})
    out = {k: v for k, v in cb.items() if k not in ("orientation", "x", "y", "xanchor", "yanchor", "len", "title",
                                                   "title_side", "thickness")}
    out.update(orientation="v", x=1.02, xanchor="left", y=0.5, yanchor="middle", len=1.0, lenmode="fraction",
               thickness=16, title=title, tickfont={**(cb.get("tickfont") or {}), "size": style.font_px})
    return out


def _font_patch(node: dict[str, Any], floor: int) -> dict[str, Any]:
    """The part of a trace's dict that raises its explicit font sizes under `floor` to `floor` (for `update`)."""
    patch: dict[str, Any] = {}
    for k, v in node.items():
        if not isinstance(v, dict):
            continue
        if k.endswith("font") and isinstance(v.get("size"), int | float) and v["size"] < floor:
            patch[k] = {"size": floor}
        elif sub := _font_patch(v, floor):
            patch[k] = sub
    return patch


def present(fig: go.Figure, style: Presentation = PRESENT) -> go.Figure:
    """A copy of `fig` for presentation mode (the module's docstring says what changes); `fig` is untouched."""
    new = go.Figure(fig)  # a copy whose arrays stay arrays (a dict round trip would encode them)
    layout: dict[str, Any] = copy.deepcopy(new.layout.to_plotly_json())
    data = [tr.to_plotly_json() for tr in new.data]  # read; each trace changes through its patch
    patches = [_font_patch(tr, MIN_FONT_PX) for tr in data]
    _floor_fonts(layout, MIN_FONT_PX)
    f = style.font_px
    layout["font"] = {**(layout.get("font") or {}), "size": f}
    height = float(layout.get("height") or 450)
    if height <= 600:  # one plot; a grid of several (a comparison) keeps its height
        height = min(height, style.height_px)
    layout["height"] = height

    # colour bars: vertical, at the right
    colourbar = False
    for tr, patch in zip(data, patches, strict=True):
        if tr.get("showscale") is False:
            continue
        if "colorbar" in tr:
            patch["colorbar"] = {**patch.get("colorbar", {}), **_vertical_colourbar(tr["colorbar"], style)}
            colourbar = True
        if "colorbar" in (tr.get("marker") or {}):
            marker = patch.setdefault("marker", {})
            marker["colorbar"] = {**marker.get("colorbar", {}), **_vertical_colourbar(tr["marker"]["colorbar"], style)}
            colourbar = True
    for k in [k for k in layout if re.fullmatch(r"coloraxis\d*", k)]:
        layout[k]["colorbar"] = _vertical_colourbar(layout[k].get("colorbar") or {}, style)
        colourbar = True

    # the legend: under the plot, in rows, pushing the bottom margin (a legend at the right of a full-width
    # figure takes the plot's width; one below at a fixed offset ran into the x axis's title)
    names = [str(tr["name"]) for tr in data if tr.get("showlegend", True) is not False and tr.get("name")]
    legend_px = 0.0
    old: dict[str, Any] = layout.get("legend") or {}
    old_title: dict[str, Any] = old["title"] if isinstance(old.get("title"), dict) else {"text": old.get("title") or ""}
    legend_title = {**old_title, "font": {**(old_title.get("font") or {}), "size": f}}
    if layout.get("showlegend") is not False and len(names) > 1:
        layout["legend"] = {**{k: v for k, v in old.items() if k in ("traceorder", "groupclick")},
                            "title": legend_title, "orientation": "h", "xref": "container", "x": 0.0,
                            "xanchor": "left", "yref": "container", "y": 0.0, "yanchor": "bottom",
                            "font": {**(old.get("font") or {}), "size": f}}
        legend_px = _legend_rows(names, _title_text(legend_title), style) * 1.45 * f + 10
        height = max(height, legend_px + 330)  # room left for the plot itself
        layout["height"] = height
    elif old or legend_title.get("text"):
        layout["legend"] = {**old, "title": legend_title, "font": {**(old.get("font") or {}), "size": f}}
    box = _plot_box(layout, style, height, colourbar, legend_px)
    _respace_rows(layout, box, style)
    for scene in [k for k in layout if re.fullmatch(r"scene\d*", k)]:  # 3-D: its axes' labels too
        for axis in ("xaxis", "yaxis", "zaxis"):
            a = layout[scene].setdefault(axis, {})
            a["tickfont"] = {**(a.get("tickfont") or {}), "size": f}
    if any(tr.get("type") in _CARTESIAN for tr in data):  # axes the builder left to the template get the sizes too
        layout.setdefault("xaxis", {})
        layout.setdefault("yaxis", {})

    # titles: wrapped to the room they have, and allowed to push the margins rather than be cut
    title = layout.get("title") or {}
    title = dict(title) if isinstance(title, dict) else {"text": str(title)}
    if title.get("text"):
        title.update(text=wrap(title["text"], box.width, style.title_px), automargin=True, xref="paper", x=0.0,
                     xanchor="left", yref="paper", y=1.0, yanchor="bottom", pad=dict(b=12),
                     font={**(title.get("font") or {}), "size": style.title_px})
        layout["title"] = title
    for letter in ("x", "y"):
        for ax in _axes(layout, letter):
            a = layout[ax] = dict(layout[ax] or {})
            a["automargin"] = True
            a["ticklabelstandoff"] = 10 if letter == "x" else 8  # the first labels of x and y touched at the corner
            if a.get("type") == "log":  # labels two lines of text apart at least
                length = box.width if letter == "x" else box.height * _domain(layout, ax)
                _log_ticks(a, _extent(fig, layout, ax, letter), int(length // (2.5 * f if letter == "y" else 5 * f)))
            if letter == "x" and isinstance(a.get("tickvals"), list | tuple):
                _thin_ticks(a, box.width, f)
            a["tickfont"] = {**(a.get("tickfont") or {}), "size": f}
            text = _title_text(a.get("title"))
            if text:
                room = (box.width if letter == "x" else box.height * _domain(layout, ax)) - 10
                t = dict(a["title"]) if isinstance(a.get("title"), dict) else {}
                t.update(text=wrap(text, max(room, 4 * f), f), font={**(t.get("font") or {}), "size": f})
                a["title"] = t
    margin = dict(layout.get("margin") or {})
    margin.update(l=10, r=10, b=10, t=10, autoexpand=True)  # the axes, bars, legend and title push what they need
    layout["margin"] = margin

    # heatmap values: only where they fit, else only on hover
    for trace, tr, patch in zip(new.data, data, patches, strict=True):
        if tr.get("type") == "scatter" and "text" in str(tr.get("mode", "")):  # a marker's label near the edge
            patch["cliponaxis"] = False
        if tr.get("type") == "heatmap" and trace.text is not None:  # (a builder that gave no text wants none)
            if _cells_fit(trace, layout, box, style):
                patch.update(texttemplate=trace.texttemplate or "%{text}", textfont={"size": style.cell_px})
            else:
                patch["texttemplate"] = None
    for trace, patch in zip(new.data, patches, strict=True):
        trace.update(patch)
    new.layout = layout
    return new
