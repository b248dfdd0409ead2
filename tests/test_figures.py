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
    """Error bars, interval bands, or interval text in a grid's cells."""
    import matplotlib.collections as mcollections
    from matplotlib.container import BarContainer, ErrorbarContainer

    for ax in fig.axes:
        for c in ax.containers:
            if isinstance(c, ErrorbarContainer) or (isinstance(c, BarContainer) and c.errorbar is not None):
                return True
        if any(isinstance(c, mcollections.PolyCollection) for c in ax.collections):
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


def test_the_results_rows_carry_the_intervals_the_figures_draw():
    rows = [json.loads(line) for line in (DATA / "figures-results.jsonl").read_text().splitlines()]
    for claim in ("accuracy", "cmap", "attention_knockout", "dcm_patching", "completeness", "faithfulness"):
        mine = [r for r in rows if r["claim"] == claim]
        assert mine and all(r["lo"] <= r["value"] <= r["hi"] for r in mine), claim


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
