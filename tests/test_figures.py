"""Every figure mechbench draws, rendered from stored results and checked from matplotlib's own layout
(mechbench.figures.layout_problems): no legend covers plotted data or a text, no text is cut at the figure's edge,
and every plotted number carries its interval. The check fails on the CMAP figure the report drew before
(its legend sat on the value fetchers' bars and its y label ran past the figure).
"""

import json
from pathlib import Path

import pytest

from mechbench import figures
from mechbench.report import write_report
from mechbench.trajectory import StepRecord, Trajectory, write_trajectory_report

DATA = Path(__file__).parent / "data"


@pytest.fixture
def rendered(monkeypatch):
    """Every figure saved, with what the layout check found and whether it draws intervals."""
    seen = {}
    save = figures.save

    def checked(fig, out, stem):
        seen[stem] = {"problems": figures.layout_problems(fig), "intervals": draws_intervals(fig)}
        return save(fig, out, stem)

    monkeypatch.setattr(figures, "save", checked)
    return seen


def draws_intervals(fig) -> bool:
    """An error bar of non-zero length, an interval band of non-zero area, or interval text in a grid's cells (an
    error bar of zeros, drawn for a number with no interval, does not count)."""
    import matplotlib.collections as mcollections
    import numpy as np
    from matplotlib.container import BarContainer, ErrorbarContainer

    def nonzero_bars(container) -> bool:
        for collection in container.lines[2]:  # the bars' LineCollections
            for segment in collection.get_segments():
                if np.ptp(np.asarray(segment), axis=0).max() > 0:
                    return True
        return False

    for ax in fig.axes:
        for c in ax.containers:
            bars = c if isinstance(c, ErrorbarContainer) else getattr(c, "errorbar", None)
            if isinstance(c, (ErrorbarContainer, BarContainer)) and bars is not None and nonzero_bars(bars):
                return True
        for c in ax.collections:
            if isinstance(c, mcollections.PolyCollection) and not isinstance(c, mcollections.PathCollection):
                extent = np.ptp(np.concatenate([p.vertices for p in c.get_paths()] or [np.zeros((1, 2))]), axis=0)
                if extent.min() > 0:
                    return True
        if any("[" in t.get_text() for t in ax.texts):
            return True
    return False


def test_every_report_figure_renders_clean_with_its_intervals(tmp_path, rendered):
    report = write_report(DATA / "figures-results.jsonl", tmp_path).read_text()
    expected = {
        "accuracy",
        "cmap",
        "knockout",
        "path_patching-toy-llama-toy-llama",
        "dcm-toy-llama-toy-llama",
        "completeness",
        "minimality",
        "faithfulness",
        "input_cmap",
        "dcm_additional-toy-llama-toy-llama",
        "dcm_additional_patched-toy-llama-toy-llama",
        *(f"dcm_patching-toy-llama-{m}" for m in ("toy-llama", "toy-vicuna", "toy-goat", "toy-float")),
    }
    assert set(rendered) == expected
    for stem, found in rendered.items():
        assert found["problems"] == [], stem
        assert (tmp_path / f"{stem}.png").is_file() and (tmp_path / f"{stem}.svg").is_file()
        assert f"![{stem}.png]({stem}.png)" in report
        if not stem.startswith("path_patching"):  # a score grid is the scores themselves
            assert found["intervals"], f"{stem} draws no interval"


def test_the_stored_results_carry_the_intervals_the_figures_draw():
    rows = [json.loads(line) for line in (DATA / "figures-results.jsonl").read_text().splitlines()]
    for claim in ("accuracy", "cmap", "attention_knockout", "dcm_patching", "completeness", "faithfulness"):
        mine = [r for r in rows if r["claim"] == claim]
        assert mine and all(r["lo"] <= r["value"] <= r["hi"] for r in mine), claim


def test_a_checked_number_is_written_with_the_interval_its_rule_gives(tmp_path):
    """check_claim writes lo/hi from the tolerance rule: Wilson on n over the design effect for an accuracy,
    Student's t over the draws (with the error they share) for a mean of draws, t over the contexts for a
    resampled SE, and a claim's own interval where it passes one; nothing where the rule knows no uncertainty."""
    import math
    from dataclasses import replace

    from mechbench.claims.check import check_claim
    from mechbench.claims.tolerance import binomial, fixed, mean_of_draws, resampled
    from mechbench.results import ResultsWriter
    from mechbench.stats import t_quantile, wilson

    writer = ResultsWriter(tmp_path)
    keys = {"model": "toy-llama"}
    cases = [
        (0.7, {"n": 200, "tolerance": binomial(0.7, 200), "design_effect": 2.0}, wilson(0.7, 100)),
        (
            0.3,
            {"n": 70, "tolerance": replace(mean_of_draws(0.1, 10), shared_se=0.05)},
            (0.3 - t_quantile(0.975, 9) * math.sqrt(0.01 / 10 + 0.0025), 0.3 + t_quantile(0.975, 9) * math.sqrt(0.01 / 10 + 0.0025)),
        ),
        (0.04, {"n": 100, "tolerance": resampled(0.02, 100, 15)}, (0.04 - t_quantile(0.975, 14) * 0.02, 0.04 + t_quantile(0.975, 14) * 0.02)),
        (0.04, {"n": 100, "tolerance": resampled(0.02, 100, 15), "interval": (0.01, 0.09)}, (0.01, 0.09)),
        (0.9, {"n": 100, "tolerance": fixed(0.05, "a stated margin")}, None),
    ]  # fmt: skip
    for value, options, _ in cases:
        check_claim("accuracy", keys, value, results=writer, baselines_dir=tmp_path, **options)
    rows = writer.read()
    assert len(rows) == len(cases)
    for row, (_, _, want) in zip(rows, cases, strict=True):
        if want is None:
            assert "lo" not in row and "hi" not in row
        else:
            assert (row["lo"], row["hi"]) == pytest.approx(want, abs=1e-6)


def comparison_of(record: StepRecord):
    """A comparison as the figures read one, from a trajectory's stored record of it."""
    from types import SimpleNamespace

    return SimpleNamespace(
        base=SimpleNamespace(name="toy-llama"),
        fine_tune=SimpleNamespace(name=record.checkpoint.ref),
        claim_result=lambda name: record.claims.get(name),
        verdict_ready=lambda: record.verdict is not None,
        verdict=lambda: record.verdict,
    )


def stored_steps() -> list[StepRecord]:
    return [
        StepRecord.from_json(json.loads((DATA / "trajectory" / f"checkpoint-{s}.json").read_text())) for s in (50, 250)
    ]


def test_the_comparison_and_trajectory_figures_render_clean(tmp_path, rendered):
    steps = stored_steps()
    made = figures.comparison_figures(comparison_of(steps[0]), tmp_path, "compare-probe")
    assert made == ["compare-probe-summary.png", "compare-probe-cmap.png", "compare-probe-knockout.png"]
    trajectory = Trajectory("probe-direct-run", "toy-llama", steps, [], tmp_path / "trajectory-probe-direct-run")
    write_trajectory_report(trajectory, tmp_path)
    assert set(rendered) == {"compare-probe-summary", "compare-probe-cmap", "compare-probe-knockout", "trajectory-probe-direct-run"}  # fmt: skip
    for stem, found in rendered.items():
        assert found["problems"] == [] and found["intervals"], stem
        assert (tmp_path / f"{stem}.svg").is_file()


def legacy_cmap_figure(rows):
    """The report's CMAP figure as it was drawn before mechbench.figures (pandas bars, the legend where matplotlib
    put it, no intervals, no reference lines)."""
    import pandas as pd

    figures._pyplot()
    frame = pd.DataFrame([r for r in rows if r["claim"] == "cmap"])
    table = frame.pivot_table(index="group", columns="source_model", values="value", aggfunc="last")
    ax = table.plot.bar(figsize=(6, 3.2), rot=20)
    ax.set_ylabel("base accuracy with the donor's heads")
    ax.figure.tight_layout()
    return ax.figure


def test_the_layout_check_fails_on_the_old_cmap_figure():
    rows = [json.loads(line) for line in (DATA / "figures-results.jsonl").read_text().splitlines()]
    fig = legacy_cmap_figure(rows)
    problems = figures.layout_problems(fig)
    assert any("legend covers plotted data" in p for p in problems), problems
    assert not draws_intervals(fig)


def test_the_layout_check_sees_a_cut_label_and_a_legend_over_a_line():
    plt = figures._pyplot()
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [0.5, 0.5, 0.5], label="a line through the legend")
    ax.legend(loc="center")
    ax.set_ylabel("a label far too long for a figure two inches high, so it runs past both edges")
    ax.set_xticks([k / 15 for k in range(31)], [f"-0.{k:03d}" for k in range(31)])  # as the summary's once were
    problems = figures.layout_problems(fig)
    assert any("cut at the figure's edge" in p for p in problems)
    assert any("legend covers plotted data" in p for p in problems)
    assert any("x tick labels" in p and "overlap" in p for p in problems)
    plt.close(fig)
