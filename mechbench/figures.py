"""The report's figures, in one style: one colour-blind-safe palette (Okabe and Ito's, readable in greyscale by
marker and line style too), every number with its interval, reference lines labelled, legends outside the data
(to the right of the axes, where they cannot cover a point), and each figure written as PNG (for the Markdown
report) with an SVG beside it (for a paper).
"""

from __future__ import annotations

from pathlib import Path

#: Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision deficiencies
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # a second channel beside colour, for greyscale prints
LINESTYLES = ("-", "--", "-.", ":")
REFERENCE = {"color": "0.35", "linestyle": ":", "linewidth": 1.0}
#: the verdicts' colours: same-mechanism ones in blue/green, a change in orange/vermillion, no task in grey
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

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 9, "legend.fontsize": 8, "svg.fonttype": "none"})
    return plt


def save(fig, out: Path, stem: str) -> str:
    """``<out>/<stem>.png`` and ``<stem>.svg``, laid out so that no text is cut (the legends outside the axes are
    part of the saved area); returns the PNG's file name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for suffix in ("png", "svg"):
        fig.savefig(out / f"{stem}.{suffix}", dpi=150, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f"{stem}.png"


def style(i: int) -> dict:
    return {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)], "linestyle": LINESTYLES[i % 4]}


def interval_line(ax, points, label: str, i: int) -> None:
    """A measure by x with its 95% interval as error bars (``points``: (x, value, lo, hi) or None per x)."""
    kept = [p for p in points if p is not None and p[1] is not None]
    if not kept:
        return
    xs = [p[0] for p in kept]
    ys = [p[1] for p in kept]
    lo = [p[1] - p[2] if p[2] is not None else 0.0 for p in kept]
    hi = [p[3] - p[1] if p[3] is not None else 0.0 for p in kept]
    ax.errorbar(xs, ys, yerr=[lo, hi], capsize=3, markersize=4, linewidth=1.2, label=label, **style(i))


def legend_outside(ax) -> None:
    """The legend to the right of the axes: outside the data area, so it covers nothing."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def trajectory(series: dict, verdicts: list, xlabel: str, out: Path, stem: str) -> str:
    """A training run's measures by step: a strip of each step's verdict on top, then one panel per claim
    (``series``: claim -> ([(label, points)], [(y, reference label)])), lines with 95% intervals and reference
    lines. Returns the PNG's file name."""
    plt = _pyplot()
    n = len(series)
    fig, axes = plt.subplots(
        n + 1, 1, figsize=(7.5, 1.0 + 2.0 * n), sharex=True, gridspec_kw={"height_ratios": [0.35] + [1.0] * n}
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
    legend_outside(strip)
    for ax, (claim, (lines, refs)) in zip(axes[1:], series.items(), strict=True):
        for k, (y, text) in enumerate(refs):  # in the legend, not written on the axes: no label over a point
            ax.axhline(y, **{**REFERENCE, "linestyle": (":", "--")[k % 2]}, label=f"{text} ({y:g})")
        for i, (label, points) in enumerate(lines):
            interval_line(ax, points, label, i)
        ax.set_title(claim.replace("_", " "), loc="left")
        ax.set_ylabel(YLABELS.get(claim, "fine-tune - base"))
        legend_outside(ax)
    axes[-1].set_xlabel(xlabel)
    return save(fig, out, stem)
