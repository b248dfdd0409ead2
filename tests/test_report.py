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


def _run(directory, rows):
    """A run's results.jsonl as mechbench writes it, with the meta each row says (time, commit, versions, weights)."""
    import json

    directory.mkdir(parents=True)
    with (directory / "results.jsonl").open("w") as f:
        for model, value, time, commit, torch_version, weights in rows:
            f.write(
                json.dumps(
                    {
                        "claim": "accuracy",
                        "model": model,
                        "boxes": 7,
                        "value": value,
                        "passed": True,
                        "fingerprint": {"weights_sha256": weights * 8},
                        "meta": {
                            "time": time,
                            "git": {"commit": commit * 40, "dirty": False},
                            "versions": {"mechbench": "0.1.0", "torch": torch_version},
                            "device": {"name": "NVIDIA H100"},
                        },
                    }
                )
                + "\n"
            )


def test_many_runs_make_one_report_the_newest_per_claim_and_keys_with_their_disagreements(tmp_path):
    """A CI matrix's artifacts (one folder a job) or a job array's results directories: joined by the time each
    number was measured, whichever folder it sits in; where the runs differ in commit, versions or a model's
    weights, the report says so before any number."""
    artifacts = tmp_path / "artifacts"
    _run(artifacts / "job-llama", [("llama7b", 0.66, "2026-12-01T10:00:00+00:00", "a", "2.13.0", "11")])
    _run(
        artifacts / "job-goat",
        [
            ("goat7b", 0.80, "2026-12-01T09:00:00+00:00", "a", "2.13.0", "22"),
            ("llama7b", 0.60, "2026-12-01T08:00:00+00:00", "a", "2.13.0", "11"),  # older than job-llama's
        ],
    )
    _run(tmp_path / "rerun", [("goat7b", 0.82, "2026-12-02T09:00:00+00:00", "b", "2.14.0", "33")])  # newest
    assert main(
        ["report", str(artifacts), str(tmp_path / "rerun"), "--out", str(tmp_path / "out"), "--no-figures"]
    ) in (
        0,
        None,
    )
    text = (tmp_path / "out" / "report.md").read_text()
    assert "3 runs:" in text and "job-goat" in text and "job-llama" in text and "rerun" in text
    table = text[text.index("## accuracy") :]
    assert "0.66" in table and "0.82" in table and "0.6 " not in table and "0.8 " not in table  # newest of each
    warning = text[text.index("disagree") : text.index("## Failed")]
    assert "commits: aaaaaaaaaaaa (1 rows), bbbbbbbbbbbb (1 rows)" in warning
    assert "torch versions: 2.13.0 (1 rows), 2.14.0 (1 rows)" in warning
    assert "goat7b was measured with different weights" not in warning  # its older row is superseded: one print

    _run(tmp_path / "other", [("llama7b", 0.65, "2026-12-03T09:00:00+00:00", "a", "2.13.0", "44")])
    write_report(
        [artifacts / "job-llama", tmp_path / "other", artifacts / "job-goat"], tmp_path / "out2", figures=False
    )
    # every row of llama7b but one is superseded: one fingerprint in the latest rows, so no disagreement on weights
    assert "different weights" not in (tmp_path / "out2" / "report.md").read_text()


def test_the_runs_disagreeing_on_a_models_weights_is_said():
    from mechbench.report import disagreements

    rows = [
        {"claim": "accuracy", "model": "goat7b", "fingerprint": {"weights_sha256": "1" * 64}, "meta": {}},
        {"claim": "cmap", "model": "goat7b", "fingerprint": {"weights_sha256": "2" * 64}, "meta": {}},
    ]
    assert disagreements(rows) == [
        "goat7b was measured with different weights: fingerprints 111111111111, 222222222222"
    ]
    assert disagreements(rows[:1]) == []


def test_a_run_directory_without_results_is_refused_naming_it(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no results.jsonl in" in err and "empty" in err and "Traceback" not in err
