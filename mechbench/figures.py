"""Every figure mechbench draws, in one style: the report's (``mechbench report``: accuracy, CMAP, knockout,
path-patching score grids, DCM, completeness, minimality), comparison mode's (a fine-tune beside its base, and the
verdict claims at a glance) and a training run's trajectory.

One style for all of them:
- one colour-blind-safe palette (Okabe and Ito's), with markers and line styles as a second channel, so a
  greyscale print still tells the lines apart; heatmaps in viridis (sequential) or PuOr (diverging at 0);
- every number with its 95% interval (error bars or a band; the results file's ``lo``/``hi``, the claim's own
  interval, :func:`mechbench.stats.measurement_interval`); a number the claim gives no interval for says so;
- the reference lines the paper draws (the base's and the donor's accuracy for CMAP, clean accuracy and chance
  for knockout, 0 and the verdict's thresholds for a comparison), each named in the legend;
- legends outside the axes (below the plots, or right of a trajectory's panels; matplotlib's constrained layout
  makes room for them by computation),
  labels with units, nothing cut at the edge; :func:`layout_problems` checks that from matplotlib's own layout,
  and tests/test_figures.py runs it on every figure;
- each figure written as PNG (for the Markdown report) with an SVG beside it (for a paper).

The functions take plain numbers (results rows, a comparison's rows); the callers (mechbench.report,
mechbench.trajectory) decide what to draw.
"""

from __future__ import annotations

import math
from pathlib import Path

#: Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision deficiencies
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#56B4E9",
    "#000000",
    "#F0E442",
)  # yellow last: faint on white
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # a second channel beside colour, for greyscale prints
LINESTYLES = ("-", "--", "-.", ":")
HATCHES = ("", "//", "..", "xx", "\\\\", "oo")
REFERENCE_STYLES = (
    {"color": "0.25", "linestyle": "--", "linewidth": 1.0},
    {"color": "0.45", "linestyle": ":", "linewidth": 1.2},
    {"color": "0.6", "linestyle": "-.", "linewidth": 1.0},
)
#: the verdicts' colours: same-mechanism ones in blues, a change in orange/vermillion, no task in grey
VERDICT_COLOURS = {
    "same circuit, strengthened": PALETTE[0],
    "no gain, same circuit": PALETTE[5],
    "same circuit, weakened": PALETTE[2],
    "gain largely outside the circuit": PALETTE[1],
    "circuit damaged": PALETTE[3],
    "does not do the task": "0.55",
    "": "white",
}
#: the trajectory panels' y axes: what the number is, and its unit
YLABELS = {
    "accuracy": "fine-tune - base\n(accuracy)",
    "faithfulness": "fine-tune - base\n(faithfulness)",
    "attention_knockout": "move, relative\nto clean accuracy",
    "cmap": "share of the gain",
    "dcm_patching": "fine-tune - base\n(% of targets)",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 9,
            "axes.titlesize": 9,
            "legend.fontsize": 8,
            "svg.fonttype": "none",
            "axes.titlelocation": "left",
        }
    )
    return plt


def new_figure(width: float, height: float, rows: int = 1, cols: int = 1, **kwargs):
    """A figure under constrained layout (labels, titles and outside legends given room by computation)."""
    plt = _pyplot()
    return plt.subplots(rows, cols, figsize=(width, height), layout="constrained", squeeze=False, **kwargs)


def suptitle(fig, text: str) -> None:
    """The figure's title, wrapped to its width (a long model path must not run past the edge)."""
    import textwrap

    width = max(30, int(fig.get_figwidth() * 11))
    fig.suptitle("\n".join(textwrap.wrap(text, width)))


def style(i: int) -> dict:
    return {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)], "linestyle": LINESTYLES[i % 4]}


def save(fig, out: Path, stem: str) -> str:
    """``<out>/<stem>.png`` and ``<stem>.svg`` at the figure's own size (so the layout checked is the layout saved);
    returns the PNG's file name."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for suffix in ("png", "svg"):
        fig.savefig(out / f"{stem}.{suffix}", dpi=150)
    plt.close(fig)
    return f"{stem}.png"


def legend_outside(fig, axes=None) -> None:
    """One legend for the figure, below the axes (constrained layout makes room for it): it covers nothing.
    Labels are gathered from ``axes`` (default: all), once each; long labels take fewer columns."""
    handles, labels = {}, []
    for ax in axes if axes is not None else fig.axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in handles and not label.startswith("_"):
                handles[label] = h
                labels.append(label)
    if handles:  # below the plots: clear of the data, the title and the axes' labels
        longest = max(len(label) for label in labels)
        per_row = 1 if longest > 60 else 2 if longest > 38 else 3  # long labels in fewer columns: none past the edge
        fig.legend(
            [handles[k] for k in labels],
            labels,
            loc="outside lower center",
            ncol=min(per_row, len(labels)),
            frameon=False,
        )


def _err(values, lo, hi) -> tuple[list, list, bool]:
    """Error-bar lengths below and above each value (0 where no interval), and whether any interval is missing."""
    below, above, missing = [], [], False
    for v, a, b in zip(values, lo, hi, strict=True):
        if v is None or a is None or b is None or not all(map(math.isfinite, (v, a, b))):
            below.append(0.0)
            above.append(0.0)
            missing = missing or v is not None
        else:
            below.append(max(0.0, v - a))
            above.append(max(0.0, b - v))
    return below, above, missing


def interval_line(ax, points, label: str, i: int, band: bool = False) -> None:
    """A measure by x with its 95% interval as error bars, or a band (``points``: (x, value, lo, hi) or None)."""
    kept = [p for p in points if p is not None and p[1] is not None and math.isfinite(p[1])]
    if not kept:
        return
    xs, ys = [p[0] for p in kept], [p[1] for p in kept]
    below, above, _ = _err(ys, [p[2] for p in kept], [p[3] for p in kept])
    s = style(i)
    if band:
        ax.plot(xs, ys, label=label, markersize=4, linewidth=1.3, **s)
        ax.fill_between(xs, [y - b for y, b in zip(ys, below)], [y + a for y, a in zip(ys, above)], color=s["color"], alpha=0.18, linewidth=0)  # fmt: skip
    else:
        ax.errorbar(xs, ys, yerr=[below, above], capsize=3, markersize=4, linewidth=1.2, label=label, **s)


def reference(ax, y: float, label: str, k: int = 0) -> None:
    """A horizontal reference line, named in the legend (not written over the data)."""
    if y is not None and math.isfinite(y):
        ax.axhline(y, label=label, **REFERENCE_STYLES[k % len(REFERENCE_STYLES)])


def grouped_bars(ax, categories: list[str], series: list[tuple], ylabel: str) -> bool:
    """Bars per category, one per series (``(label, values, lo, hi)``), with 95% interval error bars; returns
    whether some number had no interval."""
    width = 0.8 / max(len(series), 1)
    missing = False
    for i, (label, values, lo, hi) in enumerate(series):
        below, above, gap = _err(values, lo, hi)
        missing |= gap
        xs = [c + (i - (len(series) - 1) / 2) * width for c in range(len(categories))]
        ax.bar(
            xs,
            [v if v is not None else 0.0 for v in values],
            width,
            yerr=[below, above],
            capsize=2,
            label=label,
            color=PALETTE[i % len(PALETTE)],
            hatch=HATCHES[i % len(HATCHES)],
            edgecolor="black",
            linewidth=0.4,
            error_kw={"linewidth": 0.9},
        )
    ax.set_xticks(range(len(categories)), [c.replace("_", " ") for c in categories], rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    return missing


def heatmap(ax, grid, title: str, marked=(), cmap: str = "PuOr", centre: float | None = 0.0, label: str = ""):
    """A layer x head grid (``grid[layer][head]``) with the ``marked`` (layer, head) cells outlined; a diverging
    colour scale centred at ``centre``, or a sequential one (``centre`` None)."""
    import matplotlib.patches as mpatches
    import numpy as np

    values = np.asarray(grid, dtype=float)
    if centre is not None:
        lim = float(np.nanmax(np.abs(values - centre))) or 1.0
        kw = {"vmin": centre - lim, "vmax": centre + lim}
    else:
        kw = {}
    image = ax.imshow(values, cmap=cmap, aspect="auto", origin="lower", interpolation="nearest", **kw)
    for layer, head in marked:
        ax.add_patch(mpatches.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.4))
    ax.set_title(title)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if values.shape[1] <= 16:
        ax.set_xticks(range(values.shape[1]))
    if values.shape[0] <= 16:
        ax.set_yticks(range(values.shape[0]))
    bar = ax.figure.colorbar(image, ax=ax, shrink=0.9)
    bar.set_label(label)
    return image


# --- the trajectory of a training run -----------------------------------------------------------------------------


def trajectory(series: dict, verdicts: list, xlabel: str, out: Path, stem: str) -> str:
    """A training run's measures by step: a strip of each step's verdict on top, then one panel per claim
    (``series``: claim -> ([(label, points)], [(y, reference label)])), lines with 95% intervals and reference
    lines. Returns the PNG's file name."""
    plt = _pyplot()
    n = len(series)
    fig, axes = plt.subplots(
        n + 1,
        1,
        figsize=(8.5, 1.2 + 2.0 * n),
        sharex=True,
        layout="constrained",
        gridspec_kw={"height_ratios": [0.35] + [1.0] * n},
    )
    strip = axes[0]
    for x, label in verdicts:
        strip.scatter([x], [0], s=90, color=VERDICT_COLOURS.get(label, PALETTE[4]), edgecolor="black", linewidth=0.6)
    for label in dict.fromkeys(v for _, v in verdicts if v):
        strip.scatter([], [], s=60, color=VERDICT_COLOURS.get(label, PALETTE[4]), edgecolor="black", label=label)
    strip.set_yticks([])
    strip.set_ylabel("verdict", rotation=0, ha="right", va="center")
    strip.set_ylim(-1, 1)
    for side in ("top", "right", "left"):
        strip.spines[side].set_visible(False)
    if any(v for _, v in verdicts):  # no verdict at any step (not every verdict claim ran): nothing to name
        strip.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0)
    for ax, (claim, (lines, refs)) in zip(axes[1:], series.items(), strict=True):
        for k, (y, text) in enumerate(refs):
            reference(ax, y, f"{text} ({y:g})", k)
        for i, (label, points) in enumerate(lines):
            interval_line(ax, points, label, i)
        ax.set_title(claim.replace("_", " "))
        ax.set_ylabel(YLABELS.get(claim, "fine-tune - base"))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0)
    axes[-1].set_xlabel(xlabel)
    return save(fig, out, stem)


# --- checking a figure's layout -------------------------------------------------------------------------------------


def _data_boxes(ax, renderer) -> list:
    """The display-space boxes of what ``ax`` plots: each line's points, each bar, each band's and marker
    collection's extent, each image: what a legend must not cover."""
    import matplotlib.collections as mcollections
    import matplotlib.image as mimage
    import matplotlib.lines as mlines
    import matplotlib.patches as mpatches
    from matplotlib.transforms import Bbox

    boxes = []
    for artist in ax.get_children():
        if not artist.get_visible():
            continue
        if isinstance(artist, mlines.Line2D):
            xy = artist.get_xydata()
            if len(xy):  # each point (a reference line's two ends)
                points = artist.get_transform().transform(xy)
                boxes += [
                    Bbox.from_extents(px - 1, py - 1, px + 1, py + 1)
                    for px, py in points
                    if math.isfinite(px) and math.isfinite(py)
                ]
        elif isinstance(artist, mpatches.Rectangle) and artist is not ax.patch and artist.get_height() != 0:
            boxes.append(artist.get_window_extent(renderer))
        elif isinstance(
            artist, (mcollections.PolyCollection, mcollections.PathCollection, mcollections.LineCollection)
        ):
            extent = artist.get_window_extent(renderer)
            if extent.width > 0 or extent.height > 0:
                boxes.append(extent)
        elif isinstance(artist, mimage.AxesImage):
            boxes.append(artist.get_window_extent(renderer))
    return boxes


def layout_problems(fig) -> list[str]:
    """What is wrong with ``fig``'s layout as drawn, from matplotlib's own extents: a text (title, label, tick,
    legend entry) reaching past the figure's edge (cut when saved), or a legend over plotted data (a line's
    points, a bar, an interval band, an image). Empty: the figure is clean."""
    import matplotlib.text as mtext

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    edge = fig.bbox
    problems = []
    # tick labels exist for ticks outside the view limits too, and are not drawn: only the drawn ones count
    all_ticks, drawn = set(), set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                all_ticks.update((id(tick.label1), id(tick.label2)))
            for tick in axis._update_ticks():
                drawn.update((id(tick.label1), id(tick.label2)))
    hidden = all_ticks - drawn
    for ax in fig.axes:  # one axis's tick labels running into each other
        if not ax.get_visible():
            continue
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            boxes = [
                t.label1.get_window_extent(renderer)
                for t in axis._update_ticks()
                if t.label1.get_visible() and t.label1.get_text()
            ]
            if any(a.overlaps(b) for a, b in zip(boxes, boxes[1:])):
                problems.append(f"the {name} tick labels of {ax.get_title() or ax.get_ylabel()!r} overlap")
    for ax in fig.axes:  # an unused panel of a grid, hidden with everything in it
        if not ax.get_visible():
            hidden.update(id(t) for t in ax.findobj(mtext.Text))

    def shown(text) -> bool:
        return (
            text.get_visible() and bool(text.get_text().strip()) and text.figure is not None and id(text) not in hidden
        )

    for text in fig.findobj(mtext.Text):
        if not shown(text):
            continue
        box = text.get_window_extent(renderer)
        if box.x0 < edge.x0 - 1 or box.y0 < edge.y0 - 1 or box.x1 > edge.x1 + 1 or box.y1 > edge.y1 + 1:
            problems.append(f"text {text.get_text()[:40]!r} is cut at the figure's edge")
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    own = {id(t) for legend in legends for t in legend.findobj(mtext.Text)}
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for text in fig.findobj(mtext.Text):
            if id(text) in own or not shown(text):
                continue
            if box.overlaps(text.get_window_extent(renderer)):
                problems.append(f"a legend covers the text {text.get_text()[:40]!r}")
        for ax in fig.axes:
            if any(box.overlaps(d) for d in _data_boxes(ax, renderer)):
                problems.append(f"a legend covers plotted data in the axes {ax.get_title() or ax.get_ylabel()!r}")
    return problems


# --- the report's figures, from results rows ------------------------------------------------------------------------


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _numeric(rows: list[dict]) -> list[dict]:
    """Rows with a number for a value (another version's rows, or one edited by hand, get their table only)."""
    return [r for r in rows if _num(r.get("value")) is not None]


def _chance(rows: list[dict]) -> float:
    return 1.0 / (rows[0].get("boxes") or 7) if rows else 1.0 / 7


def _clean_accuracy(by_claim: dict) -> dict[str, float]:
    return {r["model"]: r["value"] for r in _numeric(by_claim.get("accuracy", [])) if "model" in r}


def _interval_note(missing: bool) -> str:
    return " (a bar without an error bar: the claim gives that number no interval)" if missing else ""


def accuracy_figure(rows: list[dict], out: Path) -> str | None:
    rows = _numeric(rows)
    if not rows:
        return None
    fig, axes = new_figure(5.5, 3.2)
    ax = axes[0][0]
    models = [r["model"] for r in rows]
    grouped_bars(ax, models, [("accuracy", [r["value"] for r in rows], [r.get("lo") for r in rows], [r.get("hi") for r in rows])], "accuracy (fraction correct)")  # fmt: skip
    reference(ax, _chance(rows), f"chance (1/{round(1 / _chance(rows))})", 1)
    ax.set_ylim(0, 1.05)
    ax.set_title("Task accuracy per model (95% intervals)")
    legend_outside(fig)
    return save(fig, out, "accuracy")


def cmap_figure(rows: list[dict], clean: dict[str, float], out: Path) -> str | None:
    """Per base model, the base's accuracy with each donor's heads of a group patched in, with intervals, and the
    base's and each donor's own accuracy as lines: the gap between them is the gain the heads carry."""
    rows = [r for r in _numeric(rows) if {"group", "source_model", "target_model"} <= set(r)]
    if not rows:
        return None
    targets = list(dict.fromkeys(r["target_model"] for r in rows))
    fig, axes = new_figure(4.6 * len(targets) + 2.6, 3.6, 1, len(targets), sharey=True)
    missing = False
    for ax, target in zip(axes[0], targets, strict=True):
        part = [r for r in rows if r["target_model"] == target]
        groups = list(dict.fromkeys(r["group"] for r in part))
        donors = list(dict.fromkeys(r["source_model"] for r in part))
        series = []
        for donor in donors:
            got = {r["group"]: r for r in part if r["source_model"] == donor}
            series.append(
                (
                    f"base with {donor}'s heads",
                    [got[g]["value"] if g in got else None for g in groups],
                    [got[g].get("lo") if g in got else None for g in groups],
                    [got[g].get("hi") if g in got else None for g in groups],
                )
            )
        missing |= grouped_bars(ax, groups, series, "accuracy (fraction correct)")
        reference(ax, clean.get(target), f"base {target}'s own accuracy", 0)
        for k, donor in enumerate(donors):
            reference(ax, clean.get(donor), f"donor {donor}'s own accuracy", k + 1)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"CMAP into {target}")
    suptitle(fig, "CMAP: a donor's circuit heads patched into the base (95% intervals)" + _interval_note(missing))
    legend_outside(fig)
    return save(fig, out, "cmap")


def knockout_figure(rows: list[dict], clean: dict[str, float], out: Path) -> str | None:
    """Per model, accuracy with each attention edge blocked from a layer on, with 95% interval bands, against the
    model's clean accuracy and chance."""
    rows = [r for r in _numeric(rows) if {"model", "edge", "layer"} <= set(r)]
    if not rows:
        return None
    models = list(dict.fromkeys(r["model"] for r in rows))
    cols = min(2, len(models))
    nrows = -(-len(models) // cols)
    fig, axes = new_figure(4.3 * cols + 3.2, 3.0 * nrows, nrows, cols, sharey=True)
    edges = list(dict.fromkeys(r["edge"] for r in rows))
    dodge = 0.5 / max(len(edges), 1)  # the edges that change nothing sit on one line: side by side, each is seen
    for ax, model in zip(axes.flat, models):
        part = [r for r in rows if r["model"] == model]
        for i, edge in enumerate(edges):
            shift = (i - (len(edges) - 1) / 2) * dodge
            pts = sorted((r["layer"] + shift, r["value"], r.get("lo"), r.get("hi")) for r in part if r["edge"] == edge)
            interval_line(ax, pts, edge, i)
        reference(ax, clean.get(model), "clean accuracy (nothing blocked)", 0)
        reference(ax, _chance(part), f"chance (1/{round(1 / _chance(part))})", 1)
        ax.set_title(model)
        ax.set_xlabel("edge blocked from layer")
        ax.set_ylabel("accuracy (fraction correct)")
        ax.set_ylim(-0.04, 1.05)  # a point at 0 is drawn whole
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in list(axes.flat)[len(models) :]:
        ax.set_visible(False)
    suptitle(
        fig, "Attention knockout: an edge blocked from a layer on (95% intervals; edges side by side at each layer)"
    )
    legend_outside(fig)
    return save(fig, out, "knockout")


def path_patching_figures(rows: list[dict], out: Path) -> list[str]:
    """Per circuit and model, one layer x head grid per discovery step (group) of path-patching scores (negative:
    the head's path matters), the circuit's stored heads outlined."""
    made = []
    rows = [r for r in rows if r.get("scores") and r.get("metric") == "recall"]
    for key in dict.fromkeys((r.get("circuit"), r.get("model")) for r in rows):
        part = [r for r in rows if (r.get("circuit"), r.get("model")) == key]
        fig, axes = new_figure(3.6 * len(part), 3.2, 1, len(part))
        for ax, r in zip(axes[0], part, strict=True):
            recall = f"recall {r['value']:.2f}" if _num(r.get("value")) is not None else ""
            heatmap(
                ax,
                r["scores"],
                f"{r['group'].replace('_', ' ')} ({recall})",
                [tuple(h) for h in r.get("circuit_heads") or ()],
                label="score (change in p(answer))",
            )
        suptitle(
            fig,
            f"Path patching on {key[1]}, circuit {key[0]}: each step's scores (outlined: the stored circuit's heads)",
        )
        made.append(save(fig, out, f"path_patching-{_stem(key)}"))
    return made


def grid_figures(rows: list[dict], claim: str, label: str, out: Path, vmax: float) -> list[str]:
    """Per circuit and model, a group x desideratum grid of a DCM claim's numbers, each cell written with its value
    and 95% interval."""
    made = []
    rows = [r for r in _numeric(rows) if {"group", "desideratum"} <= set(r)]
    for key in dict.fromkeys((r.get("circuit"), r.get("model")) for r in rows):
        part = [r for r in rows if (r.get("circuit"), r.get("model")) == key]
        groups = list(dict.fromkeys(r["group"] for r in part))
        desiderata = list(dict.fromkeys(r["desideratum"] for r in part))
        at = {(r["group"], r["desideratum"]): r for r in part}
        # groups as rows and desiderata as columns; many desiderata (the eleven additional ones) as rows instead
        tall = len(desiderata) > 6
        rows_, cols_ = (desiderata, groups) if tall else (groups, desiderata)

        def cell(i, j):
            return at.get((cols_[j], rows_[i]) if tall else (rows_[i], cols_[j]))

        grid = [[cell(i, j)["value"] if cell(i, j) else math.nan for j in range(len(cols_))] for i in range(len(rows_))]
        fig, axes = new_figure(1.6 * len(cols_) + 4.2, (0.38 if tall else 0.9) * len(rows_) + 1.8)
        ax = axes[0][0]
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        for i in range(len(rows_)):
            for j in range(len(cols_)):
                r = cell(i, j)
                if r is None:
                    continue
                lo, hi = _num(r.get("lo")), _num(r.get("hi"))
                interval = f"[{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else ""
                text = f"{r['value']:.2f}" + ((" " if tall else "\n") + interval if interval else "")
                dark = r["value"] < 0.55 * vmax
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
        ax.set_xticks(range(len(cols_)), [c.replace("_", " ") for c in cols_], rotation=0 if tall else 20, ha="center" if tall else "right")  # fmt: skip
        ax.set_yticks(range(len(rows_)), [c.replace("_", " ") for c in rows_])
        suptitle(fig, f"{claim} on {key[1]}, circuit {key[0]} (cells: value [95% interval])")
        fig.colorbar(image, ax=ax).set_label(label)
        made.append(save(fig, out, f"{claim}-{_stem(key)}"))
    return made


def completeness_figure(rows: list[dict], out: Path) -> str | None:
    """Per model, F(C\\K), F(M\\K) and the incompleteness for each group taken out whole, and for random K, with
    95% intervals."""
    rows = [r for r in _numeric(rows) if "metric" in r and "model" in r]
    if not rows:
        return None
    panels = list(dict.fromkeys((r.get("circuit"), r["model"]) for r in rows))  # a model under two circuits: two
    cols = min(2, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = new_figure(5.0 * cols + 0.6, 3.0 * nrows + 0.8, nrows, cols, sharey=True)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    missing = False
    for ax, (circuit, model) in zip(axes.flat, panels):
        part = [r for r in rows if (r.get("circuit"), r["model"]) == (circuit, model)]
        cats = list(dict.fromkeys(r.get("group") or "random K" for r in part))
        series = []
        for metric, label in (
            ("F_C_minus_K", "F(C\\K)"),
            ("F_M_minus_K", "F(M\\K)"),
            ("incompleteness", "incompleteness"),
        ):
            got = {r.get("group") or "random K": r for r in part if r["metric"] == metric}
            series.append(
                (label, *([got[c].get(f) if c in got else None for c in cats] for f in ("value", "lo", "hi")))
            )
        missing |= grouped_bars(ax, cats, series, "faithfulness (fraction)")
        ax.set_title(model if len({c for c, _ in panels}) == 1 else f"{model}, circuit {circuit}")
    suptitle(fig, "Completeness: K taken out of the circuit and of the model (95% intervals)" + _interval_note(missing))
    legend_outside(fig)
    return save(fig, out, "completeness")


def minimality_figure(rows: list[dict], out: Path) -> str | None:
    """Per circuit, each group's mean accuracy drop when a candidate head goes after its entangled peers, with its
    95% interval (K re-chosen in each resample), and each candidate head's own drop as a point."""
    groups_rows = [r for r in _numeric(rows) if r.get("kind") == "group_mean_drop"]
    if not groups_rows:
        return None
    circuits = list(dict.fromkeys(r.get("circuit") for r in groups_rows))
    fig, axes = new_figure(4.6 * len(circuits) + 2.6, 3.4, 1, len(circuits), sharey=True)
    for ax, circuit in zip(axes[0], circuits, strict=True):
        part = [r for r in groups_rows if r.get("circuit") == circuit]
        groups = [r["group"] for r in part]
        grouped_bars(ax, groups, [("group's mean drop", [r["value"] for r in part], [r.get("lo") for r in part], [r.get("hi") for r in part])], "accuracy drop (fraction)")  # fmt: skip
        heads = [
            r
            for r in rows
            if r.get("kind") == "head" and r.get("circuit") == circuit and isinstance(r.get("value"), dict)
        ]
        xs, ys = [], []
        for r in heads:
            if r.get("group") in groups and r["value"].get("in_circuit"):
                xs.append(groups.index(r["group"]))
                ys.append(r["value"]["before"] - r["value"]["after"])
        if xs:
            ax.scatter(
                xs, ys, s=12, color=PALETTE[6], marker="x", label="a circuit head's own drop (one run)", zorder=3
            )
        ax.axhline(0, **REFERENCE_STYLES[1], label="no drop")
        ax.set_title(f"circuit {circuit}")
    suptitle(fig, "Minimality: the accuracy each group's heads carry (95% intervals)")
    legend_outside(fig)
    return save(fig, out, "minimality")


def faithfulness_figure(rows: list[dict], clean: dict[str, float], out: Path) -> str | None:
    """Per model and circuit, the circuit's accuracy with the rest mean-ablated beside the random circuits' mean
    accuracy, with intervals, against the full model's accuracy and chance."""
    rows = [r for r in _numeric(rows) if r.get("metric") in ("circuit_accuracy", "random_circuit_accuracy")]
    if not rows:
        return None
    keys = list(dict.fromkeys((r.get("circuit"), r["model"]) for r in rows))
    fig, axes = new_figure(1.3 * len(keys) + 4.2, 3.4)
    ax = axes[0][0]
    at = {((r.get("circuit"), r["model"]), r["metric"]): r for r in rows}
    series = []
    for metric, label in (("circuit_accuracy", "the circuit (rest mean-ablated)"), ("random_circuit_accuracy", "random circuits of its size (mean)")):  # fmt: skip
        got = [at.get((k, metric)) for k in keys]
        series.append((label, *([g.get(f) if g else None for g in got] for f in ("value", "lo", "hi"))))
    missing = grouped_bars(ax, [f"{m}\n(circuit {c})" for c, m in keys], series, "accuracy (fraction correct)")
    ax.set_xticks(range(len(keys)), [f"{m}\n(circuit {c})" for c, m in keys], rotation=0, ha="center")
    width = 0.8
    for i, (_, model) in enumerate(keys):  # each model's full accuracy over its own bars
        if clean.get(model) is not None:
            ax.hlines(
                clean[model], i - width / 2, i + width / 2, label="the full model's accuracy", **REFERENCE_STYLES[0]
            )
    reference(ax, _chance(rows), f"chance (1/{round(1 / _chance(rows))})", 1)
    ax.set_ylim(0, 1.05)
    ax.set_title("Faithfulness: the circuit alone against random circuits (95% intervals)" + _interval_note(missing))
    legend_outside(fig)
    return save(fig, out, "faithfulness")


def input_cmap_figure(rows: list[dict], clean: dict[str, float], out: Path) -> str | None:
    """Per donor, the base's accuracy with the donor's Q, K, V, QK or QKV inputs of each group's heads, with
    intervals, against the base's and the donor's accuracy."""
    rows = [r for r in _numeric(rows) if {"group", "inputs", "source_model", "target_model"} <= set(r)]
    if not rows:
        return None
    pairs = list(dict.fromkeys((r["source_model"], r["target_model"]) for r in rows))
    fig, axes = new_figure(5.2, 2.9 * len(pairs) + 0.8, len(pairs), 1, sharex=True)
    for ax, (donor, target) in zip(axes[:, 0], pairs, strict=True):
        part = [r for r in rows if (r["source_model"], r["target_model"]) == (donor, target)]
        groups = list(dict.fromkeys(r["group"] for r in part))
        inputs = list(dict.fromkeys(r["inputs"] for r in part))
        at = {(r["group"], r["inputs"]): r for r in part}
        series = [
            (
                f"{i} inputs",
                *([at[(g, i)].get(f) if (g, i) in at else None for g in groups] for f in ("value", "lo", "hi")),
            )
            for i in inputs
        ]
        grouped_bars(ax, groups, series, "accuracy (fraction correct)")
        reference(ax, clean.get(target), "the base's own accuracy", 0)
        reference(ax, clean.get(donor), "the donor's own accuracy", 1)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{donor}'s head inputs in {target}")
    suptitle(fig, "Input CMAP: a donor's head inputs patched into the base's heads (95% intervals)")
    legend_outside(fig)
    return save(fig, out, "input_cmap")


def _stem(key) -> str:
    from mechbench.results import file_stem

    return file_stem("-".join(str(k) for k in key))


def report_figures(by_claim: dict[str, list[dict]], out: Path) -> list[str]:
    """Every figure the report's results allow (``by_claim``: claim -> its latest rows), as PNG files (SVG beside)."""
    clean = _clean_accuracy(by_claim)
    made = [
        accuracy_figure(by_claim.get("accuracy", []), out),
        cmap_figure(by_claim.get("cmap", []), clean, out),
        knockout_figure(by_claim.get("attention_knockout", []), clean, out),
        *path_patching_figures(by_claim.get("path_patching", []), out),
        *grid_figures(
            [r for r in by_claim.get("dcm", []) if r.get("field") == "test_accuracy"],
            "dcm",
            "test accuracy of the DCM mask",
            out,
            1.0,
        ),
        *grid_figures(by_claim.get("dcm_patching", []), "dcm_patching", "% of pairs moved to the target", out, 100.0),
        *grid_figures(
            [r for r in by_claim.get("dcm_additional", []) if r.get("measure") == "dcm"],
            "dcm_additional",
            "test accuracy of the DCM mask",
            out,
            1.0,
        ),
        *grid_figures(
            [r for r in by_claim.get("dcm_additional", []) if r.get("measure") == "patching"],
            "dcm_additional_patched",
            "% of pairs moved to the target",
            out,
            100.0,
        ),
        faithfulness_figure(by_claim.get("faithfulness", []), clean, out),
        input_cmap_figure(by_claim.get("input_cmap", []), clean, out),
        completeness_figure(by_claim.get("completeness", []), out),
        minimality_figure(by_claim.get("minimality", []), out),
    ]
    return [m for m in made if m]


# --- comparison mode: a fine-tune beside its base -----------------------------------------------------------------


def comparison_knockout(comparison, out: Path, stem: str) -> str | None:
    """Per edge, the base's and the fine-tune's accuracy with the edge blocked from each layer on, each relative to
    its clean accuracy, the fine-tune's with the 95% interval of its difference from the base; 1 (clean) and 0."""
    ko = comparison.claim_result("attention_knockout")
    if ko is None or not ko.rows:
        return None
    edges = list(dict.fromkeys(r.keys["edge"] for r in ko.rows))
    cols = min(4, len(edges))
    nrows = -(-len(edges) // cols)
    fig, axes = new_figure(3.0 * cols + 2.8, 2.5 * nrows + 0.5, nrows, cols, sharey=True)
    base, ft = comparison.base.name, comparison.fine_tune.name
    for ax, edge in zip(axes.flat, edges):
        rows = [r for r in ko.rows if r.keys["edge"] == edge]
        layers = [r.keys["layer"] for r in rows]
        interval_line(ax, [(x, r.base, None, None) for x, r in zip(layers, rows)], f"{base} (base)", 0)
        interval_line(
            ax,
            [
                (x, r.fine_tune, *((r.base + r.estimate.lo, r.base + r.estimate.hi) if r.estimate.lo is not None else (None, None)))
                for x, r in zip(layers, rows)
            ],
            f"{ft} (fine-tune; band: 95% interval of its difference)",
            1,
            band=True,
        )  # fmt: skip
        reference(ax, 1.0, "clean accuracy (1 = nothing lost)", 0)
        reference(ax, 0.0, "no accuracy left", 1)
        ax.set_title(edge)
        ax.set_xlabel("blocked from layer")
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy / clean accuracy")
    for ax in list(axes.flat)[len(edges) :]:
        ax.set_visible(False)
    suptitle(fig, f"Attention knockout: {ft} beside {base}, relative to each one's clean accuracy")
    legend_outside(fig)
    return save(fig, out, f"{stem}-knockout")


def comparison_cmap(comparison, out: Path, stem: str) -> str | None:
    """The base's accuracy with the fine-tune's heads of each group patched in, with 95% intervals, against the
    base's and the fine-tune's own accuracy; the share of the gain each carries under its bar."""
    cmap = comparison.claim_result("cmap")
    if cmap is None or not cmap.rows:
        return None
    base_acc, ft_acc = cmap.rows[0].base, cmap.rows[0].fine_tune
    gain = ft_acc - base_acc
    groups = [r.keys["group"] for r in cmap.rows]
    values = [base_acc + r.estimate.value * gain for r in cmap.rows]
    lo = [base_acc + r.estimate.lo * gain if r.estimate.lo is not None else None for r in cmap.rows]
    hi = [base_acc + r.estimate.hi * gain if r.estimate.hi is not None else None for r in cmap.rows]
    if gain < 0:
        lo, hi = hi, lo
    fig, axes = new_figure(7.8, 3.6)
    ax = axes[0][0]
    grouped_bars(ax, groups, [("base with the fine-tune's heads", values, lo, hi)], "accuracy (fraction correct)")
    ax.set_xticks(
        range(len(groups)),
        [f"{g.replace('_', ' ')}\n{r.estimate.value:.0%} of the gain" for g, r in zip(groups, cmap.rows)],
        rotation=0,
        ha="center",
    )
    reference(ax, base_acc, f"{comparison.base.name} (base) {base_acc:.3f}", 0)
    reference(ax, ft_acc, f"{comparison.fine_tune.name} (donor) {ft_acc:.3f}", 1)
    ax.set_ylim(0, 1.05)
    ax.set_title("CMAP: the fine-tune's circuit heads in the base (95% intervals)")
    legend_outside(fig)
    return save(fig, out, f"{stem}-cmap")


def comparison_summary(comparison, out: Path, stem: str) -> str | None:
    """The verdict claims at a glance: each measure's estimate with its 95% interval, on the scale it is judged on
    (a difference, fine-tune - base, against 0; a share of the gain against 0 and the verdict's 0.5), with the
    verdict above."""
    from matplotlib.ticker import MaxNLocator

    from mechbench.compare import ROUTE_MARGIN, SHARE_LARGELY, VERDICT_CLAIMS, carried_rows, largest_move

    panels = []
    for name in VERDICT_CLAIMS:
        result = comparison.claim_result(name)
        if result is None or not result.rows:
            continue
        rows = result.rows
        if name == "attention_knockout":  # the point of each edge that moved most
            edges = dict.fromkeys(r.keys["edge"] for r in rows)
            rows = [m for e in edges if (m := largest_move([r for r in rows if r.keys["edge"] == e])) is not None]
        if name == "dcm_patching":
            rows = carried_rows(rows)
        if name == "faithfulness":
            rows = [r for r in rows if r.keys.get("metric") in ("faithfulness", "circuit_accuracy")]
        if rows:
            panels.append((name, rows))
    if not panels:
        return None
    heights = [max(len(rows), 1) * 0.32 + 0.7 for _, rows in panels]
    fig, axes = new_figure(8.0, sum(heights) + 0.6, len(panels), 1, gridspec_kw={"height_ratios": heights})
    for ax, (name, rows) in zip(axes[:, 0], panels, strict=True):
        ys = list(range(len(rows)))[::-1]
        share = rows[0].statistic != "difference"
        for y, r in zip(ys, rows, strict=True):
            e = r.estimate
            if e.value is None or not math.isfinite(e.value):
                continue
            below, above, _ = _err([e.value], [e.lo], [e.hi])
            ax.errorbar([e.value], [y], xerr=[below, above], fmt="o", color=PALETTE[0], capsize=3, markersize=4)
        reference_x = [(0.0, "0: no change (a share: none of the gain)", 0)]
        if share:
            reference_x.append((SHARE_LARGELY, f"a share of {SHARE_LARGELY:g}: 'largely' through the circuit", 1))
        if name == "attention_knockout":  # the verdict's route margin, both ways
            reference_x += [(m, f"+-{ROUTE_MARGIN:g}: a knockout route moved (the verdict's margin)", 2) for m in (-ROUTE_MARGIN, ROUTE_MARGIN)]  # fmt: skip
        for x, text, k in reference_x:
            ax.axvline(x, label=text, **REFERENCE_STYLES[k])
        ax.set_yticks(ys, [r.measure.split(" (")[0][:48] for r in rows])
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.xaxis.set_major_locator(MaxNLocator(6))
        # base beside fine-tune: each measure's two values, on the right
        spec = ".1f" if name == "dcm_patching" else ".3f"
        side = ax.twinx()
        side.set_ylim(ax.get_ylim())
        side.set_yticks(
            ys,
            [
                f"{r.base:{spec}} -> {r.fine_tune:{spec}}" if r.base is not None and r.fine_tune is not None else ""
                for r in rows
            ],
        )
        side.set_ylabel("base -> fine-tune", rotation=270, labelpad=12)
        ax.set_xlabel("share of the gain" if share else ("fine-tune - base (% of targets)" if name == "dcm_patching" else "fine-tune - base"))  # fmt: skip
        ax.set_title(name.replace("_", " "))
    verdict = comparison.verdict() if comparison.verdict_ready() else None
    suptitle(
        fig,
        f"{comparison.fine_tune.name} against {comparison.base.name}: "
        + (f"verdict '{verdict.label}'" if verdict else "no verdict (not every verdict claim ran)")
        + " (95% intervals)",
    )
    legend_outside(fig)
    return save(fig, out, f"{stem}-summary")


def comparison_figures(comparison, out: Path, stem: str) -> list[str]:
    made = [f(comparison, out, stem) for f in (comparison_summary, comparison_cmap, comparison_knockout)]
    return [m for m in made if m]
