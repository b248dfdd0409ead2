"""Reports: the latest line per claim and keys wins, failures come first, a line cut by a crash is skipped."""

import pytest

from mechbench.cli import main
from mechbench.errors import MechbenchError
from mechbench.report import latest, load_results, write_report
from mechbench.results import ResultsWriter


def _results(tmp_path):
    w = ResultsWriter(tmp_path)
    w.write("accuracy", {"model": "a"}, 0.5, n=10, baseline=0.6, tolerance=0.05, passed=False)
    w.write("accuracy", {"model": "a"}, 0.61, n=10, baseline=0.6, tolerance=0.05, passed=True)  # a rerun
    w.write("accuracy", {"model": "b"}, 0.2, n=10, baseline=0.6, tolerance=0.05, passed=False)
    for layer, acc in enumerate((0.1, 0.5)):
        w.write("attention_knockout", {"edge": "last->query_label", "layer": layer, "model": "a"}, acc, passed=True)
    w.write("cmap", {"kind": "output_cmap", "source_model": "g", "target_model": "a", "group": "full_circuit"}, 0.7)
    w.write(
        "cmap",
        {
            "kind": "output_cmap",
            "source_model": "g",
            "target_model": "a",
            "group": "value_fetcher",
            "role": "last",
            "n_heads": 3,
        },
        0.65,
    )
    for field, v in (("before", 0.4), ("after", 0.3)):
        w.write(
            "minimality",
            {"circuit": "c", "group": "value_fetcher", "kind": "head", "rank": 0, "layer": 1, "head": 2},
            v,
            field=field,
        )
    with w.path.open("a") as f:
        f.write('{"claim": "accuracy", "model": "c", "val')  # a crash mid-line
    return w.path


def test_latest_line_per_claim_keys_and_field_wins(tmp_path):
    rows = latest(load_results(_results(tmp_path)))
    acc = {r["model"]: r["value"] for r in rows if r["claim"] == "accuracy"}
    assert acc == {"a": 0.61, "b": 0.2}
    assert sorted(r["field"] for r in rows if r["claim"] == "minimality") == ["after", "before"]


def test_report_tables_failures_and_figures(tmp_path):
    path = write_report(_results(tmp_path), tmp_path / "out")
    text = path.read_text()
    assert "## Failed: 1 (outside tolerance, or a check that did not hold)\n" in text
    failures = text.split("## Failed: 1")[1].split("## accuracy")[0]
    assert "| b " in failures and "| a " not in failures
    cmap = text.split("## cmap")[1].split("##")[0]
    assert "full_circuit" in cmap and "value_fetcher" in cmap  # a row without role is kept
    assert (tmp_path / "out" / "knockout.png").stat().st_size > 0 and (tmp_path / "out" / "cmap.png").is_file()


def test_missing_results_file_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(MechbenchError, match="run the claims first"):
        load_results(tmp_path / "nope.jsonl")
    assert main(["report", "--results", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)]) == 2
    assert "run the claims first" in capsys.readouterr().err
