"""--boxes K: every dataset a run builds has K boxes per context, chance is 1/K, and what is measured at K boxes is
recorded and stored under the key ``boxes: K`` (its own baselines), while at the paper's 7 every key is as it was."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mechbench import baselines
from mechbench.claims import Run, Settings, get
from mechbench.claims.check import with_boxes
from mechbench.claims.tolerance import binomial
from mechbench.results import ResultsWriter
from mechbench.stats import chance_check

ROOT = Path(__file__).resolve().parent.parent


def _settings(tmp_path, boxes: int = 7, update: bool = False) -> Settings:
    return Settings(
        models=("m",),
        base_model=None,
        baseline_model=None,
        circuits=None,
        device="cpu",
        dtype="float32",
        limit=None,
        seed=0,
        baselines_dir=tmp_path,
        update_baselines=update,
        results_dir=tmp_path,
        require_models=False,
        boxes=boxes,
    )


def test_accuracy_at_3_boxes_is_stored_beside_the_7_box_record_and_then_checked(pytester, tmp_path):
    """`pytest suites/test_accuracy.py --boxes 3 --update-baselines` stores {model, boxes: 3} and leaves the 7-box
    record as it was; a second run checks the measurement against it and passes."""
    stored = tmp_path / "baselines"
    shutil.copytree(ROOT / "baselines", stored)
    before = json.loads((stored / "accuracy.json").read_text())
    args = [
        str(ROOT / "suites" / "test_accuracy.py"),
        "--model=toy-llama",
        "--boxes",
        "3",
        f"--baselines-dir={stored}",
        f"--results-dir={tmp_path / 'results'}",
        "-p",
        "no:cacheprovider",
    ]
    pytester.runpytest_inprocess(*args, "--update-baselines").assert_outcomes(passed=1)
    records = baselines.load("accuracy", stored).records
    at_3 = [r for r in records if r.keys == {"model": "toy-llama", "boxes": 3}]
    assert len(at_3) == 1 and 1 / 3 < at_3[0].value <= 1, [r.keys for r in records]
    after = json.loads((stored / "accuracy.json").read_text())
    # every record that was there is unchanged, the 7-box toy-llama one among them; the 3-box one is the one more
    assert [r for r in after["records"] if r.get("boxes") is None] == before["records"]
    assert len(after["records"]) == len(before["records"]) + 1

    checked = pytester.runpytest_inprocess(*args, "-rA")
    checked.assert_outcomes(passed=1)
    checked.stdout.fnmatch_lines(["*accuracy [[]model=toy-llama, boxes=3[]]*"])
    rows = [json.loads(line) for line in (tmp_path / "results" / "results.jsonl").read_text().splitlines()]
    measured = [r for r in rows if r["claim"] == "accuracy"]
    assert len(measured) == 2 and all(r["boxes"] == 3 for r in measured)  # the store and the check
    assert measured[-1]["passed"] is True and measured[-1]["baseline"] == at_3[0].value


def test_chance_is_one_in_the_number_of_boxes():
    ids = np.repeat(np.arange(20), 3)  # 20 contexts of 3 boxes
    at_3 = chance_check(np.tile([1, 1, 0], 20), ids, 3)  # 2/3 right: well above 1/3
    assert at_3.chance == pytest.approx(1 / 3) and at_3.passed
    guessing = np.random.default_rng(0).random(60) < 1 / 3
    assert not chance_check(guessing, ids, 3).passed
    # 0.4 is above chance at 7 boxes (1/7), not at 3 (1/3)
    x, many = np.tile([1, 1, 0, 0, 0], 40), np.repeat(np.arange(40), 5)
    assert chance_check(x, many, 7).passed and not chance_check(x, many, 3).passed
    below = chance_check(np.zeros(60), ids, 3)
    assert below.below and not below.passed and "(below chance)" in below.message("m")
    assert "below chance" not in chance_check(np.tile([1, 1, 0], 20), ids, 3).message("m")


def test_the_accuracy_command_prints_chance_at_its_boxes_and_the_guards_verdict(capsys):
    from mechbench.cli import main

    assert main(["accuracy", "toy-llama", "--boxes", "3", "--n", "70"]) == 0
    out = capsys.readouterr().out
    assert "on 70 examples (seed 0, 3 boxes; chance 0.333): does the task" in out, out


def test_a_discovery_at_3_boxes_draws_3_box_noise_pairs(monkeypatch, toy_tokenizer, tmp_path):
    from mechbench.circuits import Circuit
    from mechbench.methods import discovery
    from mechbench.models.discovery_settings import DiscoveryConfig

    drawn = []
    monkeypatch.setattr(discovery, "discover_circuit", lambda model, pairs, *a, **k: drawn.append(pairs))
    model = SimpleNamespace(name="m", tokenizer=toy_tokenizer, fingerprint={}, shape=None)
    discovery.discover(model, "m", DiscoveryConfig(n_pairs=12, num_boxes=3))
    assert drawn[-1].meta["num_boxes"] == 3 and drawn[-1].base.num_boxes == 3
    discovery.discover(model, "m", DiscoveryConfig(n_pairs=12))
    assert drawn[-1].meta["num_boxes"] == 7
    # the claims' shared discovery takes the run's boxes, and saves it apart from the 7-box one
    config, _ = discovery.discovery_of_claims(model, "toy-llama", 0, tmp_path, Circuit.load("toy-llama"), num_boxes=3)
    assert config.num_boxes == 3 and drawn[-1].meta["num_boxes"] == 3
    assert discovery.checkpoint_path(model, "m", config, tmp_path) != discovery.checkpoint_path(
        model, "m", DiscoveryConfig(**{**config.__dict__, "num_boxes": 7}), tmp_path
    )


def test_at_7_boxes_every_key_is_as_it_was_and_every_row_says_its_boxes(tmp_path, toy_tokenizer):
    assert with_boxes({"model": "m"}) == {"model": "m"} and with_boxes({"model": "m"}, 3) == {"model": "m", "boxes": 3}
    claim = get("accuracy")
    for boxes, keys in ((7, {"model": "m"}), (3, {"model": "m", "boxes": 3})):
        where = tmp_path / str(boxes)
        where.mkdir()
        writer = ResultsWriter(where, boxes=boxes)
        run = Run(claim, _settings(where, boxes, update=True), results=writer, cache={})
        run.check({"model": "m"}, 0.8, n=100, tolerance=binomial(0.8, 100))
        run.record("a check", {"model": "m"}, 1.0, True, "holds")
        assert [r.keys for r in baselines.load("accuracy", where).records] == [keys]
        rows = writer.read()
        assert [r["boxes"] for r in rows] == [boxes, boxes]
        assert {k: rows[0][k] for k in keys} == keys and ("boxes" in keys) == (boxes != 7)
    # the prompts a run draws have its boxes (and are cached apart)
    cache = {}
    model = SimpleNamespace(name="m", tokenizer=toy_tokenizer)
    at_7 = Run(claim, _settings(tmp_path), model, cache=cache).prompts()
    at_3 = Run(claim, _settings(tmp_path, 3), model, cache=cache).prompts()
    assert (at_7.num_boxes, at_3.num_boxes) == (7, 3) and len(at_7) == len(at_3) == 500
