"""A training run as a trajectory (issue 25, item 4): ``mechbench compare CKPT... --base B`` orders the checkpoints
by step, measures the base once and each checkpoint against it, keeps each checkpoint's record so that a finished
one is read back and a crashed one resumes, splits the work over shards, and writes the report with its figure.

The run compared is a short seeded training run of probe-direct (a fine-tune of toy-llama the project never ships),
two checkpoints saved by the zoo's trainer; it is retrained here, not stored."""

import json
import os

import pytest

from mechbench import compare
from mechbench.cli import main
from mechbench.errors import MechbenchError
from mechbench.trajectory import StepRecord, checkpoints, shard_of

CLAIMS = "accuracy,cmap"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from mechbench.zoo.probes import train_probes

    out = tmp_path_factory.mktemp("probes")
    train_probes(out, only=["probe-direct"], steps=40, checkpoints_every=20, log=lambda m: None)
    return out / "probe-direct-run"


def model_dir(path, step=None, name_step=True):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    if step is not None:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return str(path)


def test_checkpoints_are_ordered_by_step_from_the_trainer_state_then_the_name_else_as_given(tmp_path):
    a = model_dir(tmp_path / "late", step=300)
    b = model_dir(tmp_path / "early", step=20)
    c = model_dir(tmp_path / "checkpoint-100")
    assert [x.step for x in checkpoints([a, b, c])] == [20, 100, 300]
    d = model_dir(tmp_path / "final")  # no step anywhere: the order given stands
    assert [x.ref for x in checkpoints([a, d, b])] == [a, d, b] and checkpoints([a, d])[1].step is None
    with pytest.raises(MechbenchError, match="two checkpoints are at one step"):
        checkpoints([a, model_dir(tmp_path / "step-300")])
    with pytest.raises(MechbenchError, match="named twice"):
        checkpoints([a, a])
    parent = tmp_path / "run"
    model_dir(parent / "checkpoint-2")
    model_dir(parent / "checkpoint-10")
    assert [x.step for x in checkpoints([str(parent)])] == [2, 10]  # numerically, not as text
    (tmp_path / "empty").mkdir()
    with pytest.raises(MechbenchError, match="neither a model directory nor one holding checkpoints"):
        checkpoints([str(tmp_path / "empty")])
    with pytest.raises(MechbenchError, match="K/N"):
        shard_of("2/2")


def counting(monkeypatch) -> list:
    """The claims each Comparison measures (not restored from a record), as (fine-tune, claim)."""
    measured, claim = [], compare.Comparison.claim

    def counted(self, name):
        if name not in self._claims:
            measured.append((os.path.basename(self.fine_tune.name), name))
        return claim(self, name)

    monkeypatch.setattr(compare.Comparison, "claim", counted)
    return measured


def trajectory(run_dir, out, *extra) -> int:
    return main(
        [
            "compare",
            str(run_dir),
            "--base",
            "toy-llama",
            "--quick",
            "--claims",
            CLAIMS,
            "--results-dir",
            str(out),
            *extra,
        ]
    )


def test_a_training_run_is_measured_once_read_back_and_resumed(run_dir, tmp_path, monkeypatch, capsys):
    measured = counting(monkeypatch)
    assert trajectory(run_dir, tmp_path) in (0, None)
    assert measured == [(f"checkpoint-{s}", c) for s in (20, 40) for c in CLAIMS.split(",")]
    report = (tmp_path / "trajectory-probe-direct-run.md").read_text()
    assert report.index("| 20 |") < report.index("| 40 |") and "share of the gain, full circuit" in report
    assert (tmp_path / "trajectory-probe-direct-run.png").is_file() and (
        tmp_path / "trajectory-probe-direct-run.svg"
    ).is_file()
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {r["model"] for r in rows if r["claim"] == "compare:accuracy"} == {
        str(run_dir / f"checkpoint-{s}") for s in (20, 40)
    }

    # a second run reads every finished checkpoint back: nothing is measured again, the report is the same
    measured.clear()
    assert trajectory(run_dir, tmp_path) in (0, None)
    assert measured == [] and (tmp_path / "trajectory-probe-direct-run.md").read_text() == report

    # a run that crashed after a checkpoint's first claim resumes at its second
    record = tmp_path / "trajectory-probe-direct-run" / "checkpoint-40.json"
    partial = StepRecord.from_json(json.loads(record.read_text()))
    del partial.claims["cmap"]
    record.write_text(json.dumps(partial.to_json()))
    assert trajectory(run_dir, tmp_path) in (0, None)
    assert measured == [("checkpoint-40", "cmap")]

    # a claim that could not run (out of memory, say) is run again, not read back as done
    measured.clear()
    partial = StepRecord.from_json(json.loads(record.read_text()))
    partial.claims["cmap"].error = "CUDA out of memory"
    record.write_text(json.dumps(partial.to_json()))
    assert trajectory(run_dir, tmp_path) in (0, None)
    assert measured == [("checkpoint-40", "cmap")]

    # new weights at a checkpoint (another training run into the same directory) are measured again
    measured.clear()
    weights = run_dir / "checkpoint-20" / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert trajectory(run_dir, tmp_path) in (0, None)
    assert measured == [("checkpoint-20", c) for c in CLAIMS.split(",")]


def test_shards_split_the_checkpoints_and_the_last_writes_the_report(run_dir, tmp_path, monkeypatch, capsys):
    measured = counting(monkeypatch)
    assert trajectory(run_dir, tmp_path, "--shard", "1/2", "--name", "sharded") in (0, None)
    assert {m[0] for m in measured} == {"checkpoint-40"}
    assert "not measured yet (other shards): step 20" in capsys.readouterr().err
    assert not (tmp_path / "trajectory-sharded.md").exists()
    measured.clear()
    assert trajectory(run_dir, tmp_path, "--shard", "0/2", "--name", "sharded") in (0, None)
    assert {m[0] for m in measured} == {"checkpoint-20"} and (tmp_path / "trajectory-sharded.md").is_file()


def test_a_trajectory_without_a_base_or_with_a_bad_shard_fails_before_loading(run_dir, tmp_path, capsys):
    assert main(["compare", str(run_dir), "--results-dir", str(tmp_path)]) == 2
    assert "a trajectory needs --base" in capsys.readouterr().err
    assert main(["compare", str(run_dir), "--base", "toy-llama", "--shard", "3", "--results-dir", str(tmp_path)]) == 2
    assert "--shard '3'" in capsys.readouterr().err
    assert main(["compare", "toy-goat", "--shard", "0/2", "--results-dir", str(tmp_path)]) == 2
    assert "for a trajectory" in capsys.readouterr().err
