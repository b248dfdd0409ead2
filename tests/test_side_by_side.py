"""The side-by-side benchmarks' two implementations of each workload give the same numbers, and compare.py reads
pytest-benchmark's JSON right (no timing here: benchmarks/ times them).

Two small settings: ``tiny`` (random 2 x 4 Llama) and ``toy`` (the trained toy zoo), whose ablation, knockout and
CMAP answers flip for some prompts and not others, so comparing those bools checks something.
"""

import json

import pytest
import torch

from benchmarks import compare
from benchmarks.conftest import build_setting
from benchmarks.test_side_by_side import WORKLOADS, assert_same_numbers


@pytest.fixture(scope="module", params=["tiny", "toy"])
def setting(request):
    return build_setting(request.param)


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_nnsight_loop_gives_mechbench_numbers(setting, workload):
    mechbench_fn, nnsight_fn = WORKLOADS[workload]
    expected = mechbench_fn(setting)
    assert_same_numbers(nnsight_fn(setting), expected)
    if setting.shape_name == "toy" and expected.dtype == torch.bool:
        # the comparison has teeth only where the intervention flips some answers and keeps others
        assert 0 < expected.float().mean() < 1, f"{workload}: every answer {bool(expected.flatten()[0])}"


def test_path_patching_scores_are_not_all_zero(setting):
    # a loop that patched nothing would score 0 everywhere on both sides and still agree
    assert WORKLOADS["path_patching_value_fetcher"][1](setting).abs().max() > 0


# --- compare.py --------------------------------------------------------------------------------------------


MACHINE = {"system": "Linux", "python_implementation": "CPython", "python_version": "3.11.9"}


def _store(folder, name, when, shape, seconds, peaks_mib=(1.0, 2.0)):
    """A pytest-benchmark JSON file: ``seconds`` maps workload -> (mechbench s, nnsight s)."""
    benchmarks = [
        {
            "group": workload,
            "name": f"test_{workload}_{side}",
            "fullname": f"benchmarks/x.py::test_{workload}_{side}",
            "params": None,
            "param": None,
            "options": {},
            "extra_info": {
                "peak_bytes": int(peak * 2**20),
                "device": "cpu",
                "shape": shape,
                "pairs": 25,
                "seq_len": 54,
            },
            "stats": {"min": t, "max": t, "mean": t, "median": t, "rounds": 1, "iterations": 1},
        }
        for workload, times in seconds.items()
        for side, t, peak in zip(("mechbench", "nnsight"), times, peaks_mib)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(
        json.dumps(
            {
                "machine_info": MACHINE,
                "commit_info": {"id": "abc1234", "dirty": False},
                "benchmarks": benchmarks,
                "datetime": when,
                "version": "5.3.1",
            }
        )
    )
    return path


def _rows(output: str) -> dict[str, list[str]]:
    return {
        cells[0]: cells[1:]
        for line in output.splitlines()
        if line.startswith("| ") and "---" not in line
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }


def test_compare_against_the_previous_run_of_the_same_setting(tmp_path, capsys):
    folder = tmp_path / "history" / "Linux-CPython-3.11-64bit"
    _store(folder, "0001_abc.json", "2025-01-01T00:00:00+00:00", "12x12", {"dcm_step": (4.0, 8.0), "cmap": (1.0, 1.0)})
    _store(folder, "0002_abc.json", "2025-01-02T00:00:00+00:00", "tiny", {"dcm_step": (0.1, 0.1)})  # another shape
    _store(folder, "0003_abc.json", "2025-01-03T00:00:00+00:00", "12x12", {"dcm_step": (2.0, 6.0), "cmap": (1.5, 3.0)})
    assert compare.main(["--history", str(tmp_path / "history")]) == 0
    out = capsys.readouterr().out
    assert "0003_abc.json" in out.splitlines()[0] and "0001_abc.json" in out.splitlines()[1]
    rows = _rows(out)
    assert rows["dcm_step"] == ["2.000", "6.000", "3.00", "1.0 / 2.0", "0.50"]
    assert rows["cmap"] == ["1.500", "3.000", "2.00", "1.0 / 2.0", "1.50"]


def test_compare_a_given_file_with_one_stored_run(tmp_path, capsys):
    history = tmp_path / "history"
    _store(
        history / "Linux-CPython-3.11-64bit",
        "0001_abc.json",
        "2025-01-01T00:00:00+00:00",
        "12x12",
        {"knockout_curve": (3.0, 9.0)},
    )
    current = _store(tmp_path, "current.json", "2025-01-05T00:00:00+00:00", "12x12", {"knockout_curve": (1.0, 9.0)})
    assert compare.main(["--history", str(history), str(current)]) == 0
    assert _rows(capsys.readouterr().out)["knockout_curve"] == ["1.000", "9.000", "9.00", "1.0 / 2.0", "0.33"]


def test_compare_with_only_one_run(tmp_path, capsys):
    _store(
        tmp_path / "history" / "Linux-CPython-3.11-64bit",
        "0001_abc.json",
        "2025-01-01T00:00:00+00:00",
        "12x12",
        {"knockout_curve": (2.0, 5.0)},
    )
    assert compare.main(["--history", str(tmp_path / "history")]) == 0
    out = capsys.readouterr().out
    assert "previous: -" in out
    assert _rows(out)["knockout_curve"] == ["2.000", "5.000", "2.50", "1.0 / 2.0", "-"]


def test_compare_without_runs_says_how_to_store_one(tmp_path):
    with pytest.raises(SystemExit, match="(?s)no benchmark runs stored under .*--benchmark-autosave"):
        compare.main(["--history", str(tmp_path / "history")])
