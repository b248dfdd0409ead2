"""Baseline files: schema checks with clear errors, lookups, tolerances, updates with diffs."""

import json
import shutil
from pathlib import Path

import pytest

from mechbench import baselines
from mechbench.claims import check_claim, tolerance
from mechbench.errors import BaselineError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bdir(tmp_path):
    shutil.copy(ROOT / "baselines" / "accuracy.json", tmp_path / "accuracy.json")
    return tmp_path


def test_every_shipped_baseline_file_loads():
    for path in sorted((ROOT / "baselines").glob("*.json")):
        b = baselines.load(path.stem)
        assert b.records, path


def test_truncated_file_is_a_clear_error(bdir):
    path = bdir / "accuracy.json"
    path.write_text(path.read_text()[:300])
    with pytest.raises(BaselineError) as err:
        baselines.load("accuracy", bdir)
    assert str(path) in str(err.value) and "not valid JSON" in str(err.value) and "git checkout" in str(err.value)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("records"), "'records'"),
        (lambda d: d.update(unit="furlongs"), "'unit'"),
        (lambda d: d.update(claim="other"), "'claim'"),
        (lambda d: d["records"][1].pop("source"), "records[1] is missing field 'source'"),
        (lambda d: d["records"][0].update(tolerance=-1), "records[0].tolerance"),
        (lambda d: d["records"][2].pop("tolerance_rule"), "records[2] has a tolerance but no 'tolerance_rule'"),
        (lambda d: d["records"][0].update(model=["llama7b"]), "records[0].model is a key field"),
    ],
)
def test_incomplete_files_name_the_file_and_the_field(bdir, mutate, field):
    path = bdir / "accuracy.json"
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError) as err:
        baselines.load("accuracy", bdir)
    assert str(path) in str(err.value) and field in str(err.value)


def test_missing_file_and_missing_record_say_what_to_do(bdir):
    with pytest.raises(BaselineError, match="does not exist"):
        baselines.load("no_such_claim", bdir)
    with pytest.raises(BaselineError, match="--update-baselines"):
        baselines.load("accuracy", bdir).get(model="nobody")


def test_paper_tolerance_is_the_binomial_bound():
    record = baselines.load("accuracy").get(model="llama7b")
    # (the stored bound used p itself; the Agresti-Coull p moves it by 1e-4 at p = 0.66)
    assert tolerance.tolerance_for(record, 500) == pytest.approx(
        tolerance.binomial_tolerance(0.66, 500, 500) + 0.005, abs=2e-4
    )
    # fewer examples, wider bound
    assert tolerance.tolerance_for(record, 100) > tolerance.tolerance_for(record, 500)
    assert tolerance.judge(0.70, record, n=500).passed and not tolerance.judge(0.50, record, n=500).passed


def test_update_writes_a_measured_record_and_never_a_published_one(bdir):
    out = check_claim(
        "accuracy",
        {"model": "toy-x"},
        0.5,
        n=100,
        seed=0,
        baselines_dir=bdir,
        update=True,
        tolerance=0.2,
        tolerance_same_sample=0.03,
        tolerance_rule="test",
    )
    assert out.diff == "+ accuracy {'model': 'toy-x'}: 0.5 (n=100, tolerance 0.2)"
    out = check_claim(
        "accuracy",
        {"model": "toy-x"},
        0.6,
        n=100,
        seed=0,
        baselines_dir=bdir,
        update=True,
        tolerance=0.2,
        tolerance_same_sample=0.03,
        tolerance_rule="test",
    )
    assert out.diff == "~ accuracy {'model': 'toy-x'}: 0.5 (n=100, tolerance 0.2) -> 0.6 (n=100, tolerance 0.2)"
    record = baselines.load("accuracy", bdir).get(model="toy-x")
    assert record.measured and record.value == 0.6
    # same examples: the tight tolerance applies; other seed: the binomial one
    assert tolerance.tolerance_for(record, 100, 0) == 0.03 and tolerance.tolerance_for(record, 100, 1) == 0.2
    assert not check_claim("accuracy", {"model": "toy-x"}, 0.64, n=100, seed=0, baselines_dir=bdir).passed
    assert check_claim("accuracy", {"model": "toy-x"}, 0.64, n=100, seed=1, baselines_dir=bdir).passed
    with pytest.raises(BaselineError, match="does not overwrite published numbers"):
        baselines.update(baselines.load("accuracy", bdir), {"model": "llama7b"}, 0.1)
    # asked to update a published record, a run compares with it and says it was kept
    kept = check_claim(
        "accuracy",
        {"model": "llama7b"},
        0.1,
        n=500,
        baselines_dir=bdir,
        update=True,
        tolerance=0.1,
        tolerance_rule="test",
    )
    assert kept.passed is False and "published record left unchanged" in kept.message()
    assert baselines.load("accuracy", bdir).get(model="llama7b").value == 0.66


@pytest.mark.parametrize(
    "n, tolerance, problem",
    [
        (5, 0.3, "n=5 examples where the stored record has n=100"),
        (100, 0.0, "its tolerance is 0"),
    ],
)
def test_update_refuses_a_degraded_record_unless_forced(bdir, n, tolerance, problem):
    check_claim(
        "accuracy",
        {"model": "toy-x"},
        0.5,
        n=100,
        seed=0,
        baselines_dir=bdir,
        update=True,
        tolerance=0.2,
        tolerance_rule="test",
    )
    before = (bdir / "accuracy.json").read_text()
    with pytest.raises(BaselineError) as e:
        check_claim(
            "accuracy",
            {"model": "toy-x"},
            1.0,
            n=n,
            seed=0,
            baselines_dir=bdir,
            update=True,
            tolerance=tolerance,
            tolerance_rule="test",
        )
    assert problem in str(e.value) and "--force-baselines" in str(e.value)
    assert (bdir / "accuracy.json").read_text() == before
    forced = check_claim(
        "accuracy",
        {"model": "toy-x"},
        1.0,
        n=n,
        seed=0,
        baselines_dir=bdir,
        update=True,
        tolerance=tolerance,
        tolerance_rule="test",
        force=True,
    )
    assert forced.diff.endswith(f"1.0 (n={n}, tolerance {tolerance})")


def test_update_keeps_the_file_mode_and_the_field_order(bdir):
    path = bdir / "accuracy.json"
    path.chmod(0o664)
    order = [list(r) for r in json.loads(path.read_text())["records"]]
    check_claim(
        "accuracy",
        {"model": "toy-new"},
        0.5,
        n=500,
        seed=0,
        baselines_dir=bdir,
        update=True,
        tolerance=0.2,
        tolerance_rule="test",
        force=True,
    )
    assert path.stat().st_mode & 0o777 == 0o664
    after = [list(r) for r in json.loads(path.read_text())["records"]]
    assert [o for o in order] == [a[: len(o)] for o, a in zip(order, after)]


def test_staged_updates_are_written_together_or_not_at_all(bdir):
    shutil.copy(ROOT / "baselines" / "faithfulness.json", bdir / "faithfulness.json")
    before = {p.name: p.read_text() for p in bdir.glob("*.json")}
    staging = baselines.Staging()
    check_claim(
        "accuracy",
        {"model": "toy-x"},
        0.5,
        n=100,
        baselines_dir=bdir,
        update=True,
        tolerance=0.2,
        tolerance_rule="test",
        staging=staging,
    )
    check_claim(
        "accuracy",
        {"model": "toy-y"},
        0.6,
        n=100,
        baselines_dir=bdir,
        update=True,
        tolerance=0.2,
        tolerance_rule="test",
        staging=staging,
    )
    # staged: a later lookup in the same run sees it, the files do not (an interrupt here changes nothing)
    assert check_claim("accuracy", {"model": "toy-x"}, 0.5, n=100, baselines_dir=bdir, staging=staging).passed
    assert {p.name: p.read_text() for p in bdir.glob("*.json")} == before
    assert [p.name for p in staging.commit()] == ["accuracy.json"]
    stored = baselines.load("accuracy", bdir)
    assert stored.get(model="toy-x").value == 0.5 and stored.get(model="toy-y").value == 0.6
    assert (bdir / "faithfulness.json").read_text() == before["faithfulness.json"]


def test_object_valued_records_compare_one_field_and_update_whole(tmp_path):
    shutil.copy(ROOT / "baselines" / "dcm.json", tmp_path / "dcm.json")
    keys = {
        "circuit": "llama7b",
        "model": "llama7b",
        "group": "pos_transmitter",
        "role": "last",
        "desideratum": "positional",
    }
    out = check_claim("dcm", keys, 0.40, n=500, seed=0, baselines_dir=tmp_path, field="test_accuracy")
    assert out.judgement.expected == 0.362 and out.passed  # within the paper record's stated tolerance
    assert check_claim("dcm", keys, 0.10, n=500, seed=0, baselines_dir=tmp_path, field="test_accuracy").passed is False
    with pytest.raises(BaselineError, match="no field 'nope'"):
        check_claim("dcm", keys, 0.4, baselines_dir=tmp_path, field="nope")
    mine = {**keys, "circuit": "mine", "model": "mine"}
    value = {"n_heads": 1, "heads": [[3, 4]], "test_accuracy": 0.25}
    check_claim(
        "dcm",
        mine,
        0.25,
        n=500,
        seed=0,
        baselines_dir=tmp_path,
        update=True,
        field="test_accuracy",
        stored_value=value,
        tolerance=0.1,
        tolerance_rule="test",
    )
    assert baselines.load("dcm", tmp_path).get(**mine).value == value
    assert check_claim("dcm", mine, 0.30, n=500, seed=1, baselines_dir=tmp_path, field="test_accuracy").passed


@pytest.mark.parametrize(
    "exitstatus, written", [(pytest.ExitCode.INTERRUPTED, False), (pytest.ExitCode.TESTS_FAILED, True)]
)
def test_the_plugin_writes_a_runs_updates_at_its_end_unless_interrupted(bdir, exitstatus, written):
    import types

    from mechbench import pytest_plugin as conftest

    staging = baselines.Staging()
    check_claim(
        "accuracy",
        {"model": "toy-x"},
        0.5,
        n=100,
        baselines_dir=bdir,
        update=True,
        tolerance=0.2,
        tolerance_rule="test",
        staging=staging,
    )
    before = (bdir / "accuracy.json").read_text()
    ms = conftest.MechbenchSession(types.SimpleNamespace(staging=staging, results_dir=bdir / "results"))
    config = types.SimpleNamespace(stash={conftest.SESSION_KEY: ms})
    conftest.pytest_sessionfinish(types.SimpleNamespace(config=config), exitstatus)
    assert ((bdir / "accuracy.json").read_text() != before) == written
    assert ("discarded" in "\n".join(ms.tally.baselines)) != written


def test_staged_updates_refused_by_their_directory_can_be_written_elsewhere(bdir, tmp_path):
    staging = baselines.Staging()
    check_claim(
        "accuracy",
        {"model": "toy-x"},
        0.5,
        n=100,
        baselines_dir=bdir,
        update=True,
        tolerance=0.2,
        tolerance_rule="test",
        staging=staging,
    )
    before = (bdir / "accuracy.json").read_text()
    (tmp_path / "kept").mkdir()
    assert staging.commit(into=tmp_path / "kept") == [tmp_path / "kept" / "accuracy.json"]
    assert (bdir / "accuracy.json").read_text() == before
    assert baselines.load("accuracy", tmp_path / "kept").get(model="toy-x").value == 0.5


def test_an_observed_zero_or_one_still_gets_a_tolerance():
    """At p = 0 the plain binomial bound is 0: one example of 500 would fail it (found by the false-alarm audit)."""
    assert tolerance.binomial_tolerance(0.0, 500, 500) == tolerance.binomial_tolerance(1.0, 500, 500) > 0.01
    assert tolerance.binomial_tolerance(0.5, 500, 500) == pytest.approx(3 * (2 * 0.25 / 500) ** 0.5, abs=1e-4)


def test_a_file_written_before_role_was_named_loads_with_role(tmp_path):
    """Records once keyed the role a group's heads sit at as ``position``; such a file still matches lookups."""
    old = {
        "schema_version": 1,
        "claim": "dcm",
        "description": "d",
        "unit": "fraction",
        "source": "s",
        "records": [{"circuit": "c", "group": "g", "position": "last", "value": 0.5, "source": "measured"}],
    }
    (tmp_path / "dcm.json").write_text(json.dumps(old))
    assert baselines.load("dcm", tmp_path).find(circuit="c", group="g", role="last").value == 0.5


def test_a_mean_over_draws_on_fewer_examples_widens_its_bound_by_its_spread_not_a_binomial():
    """A mean over runs of n pairs (DCM patching, in percent) measured on fewer pairs: each run's spread grows as
    1/sqrt(n), so the bound widens by sqrt((1 + n_stored / n) / 2); it never reads a percent as a probability."""
    record = baselines.Record(
        {"model": "m"}, 26.92, "measured", {"tolerance": 1.8844, "tolerance_rule": "r", "n": 500, "std": 1.2}
    )
    assert tolerance.tolerance_for(record, 500) == 1.8844
    assert tolerance.tolerance_for(record, 40) == pytest.approx(1.8844 * ((1 + 500 / 40) / 2) ** 0.5)
    assert tolerance.tolerance_for(record, 1000) == 1.8844  # more examples: the stored mean's own error stays


def test_an_object_valued_record_widens_the_bound_of_its_field_on_fewer_examples():
    """DCM's record holds the mask's heads and test accuracy; a check on fewer test pairs widens the accuracy's
    binomial bound as a plain accuracy's would (it kept the 500-pair bound, a false alarm at --limit 40)."""
    record = baselines.Record(
        {"model": "m"},
        {"heads": [[0, 1]], "test_accuracy": 0.522},
        "measured",
        {"tolerance": 0.1448, "tolerance_rule": "r", "n": 500},
    )
    wide = tolerance.judge(0.675, record, n=40, seed=1, field="test_accuracy")
    assert wide.tolerance > 0.25 and wide.passed
    assert tolerance.judge(0.675, record, n=500, seed=1, field="test_accuracy").tolerance == 0.1448


def test_a_rare_miss_rate_on_few_examples_allows_three_examples():
    record = baselines.Record({"model": "m"}, 0.004, "measured", {"tolerance": 0.0143, "tolerance_rule": "r", "n": 500})
    assert tolerance.tolerance_for(record, 40) == 0.075


def test_a_mean_over_draws_on_fewer_examples_widens_by_its_measured_spread():
    record = baselines.Record(
        {"model": "m"}, 35.46, "measured", {"tolerance": 1.88, "tolerance_rule": "r", "n": 500, "std": 1.2}
    )
    assert tolerance.tolerance_for(record, 40, std=7.0) == pytest.approx(1.88 * ((1 + (7.0 / 1.2) ** 2) / 2) ** 0.5)
    # never below the 1/sqrt(n) guess
    assert tolerance.tolerance_for(record, 40, std=1.0) == tolerance.tolerance_for(record, 40)
    # on the record's own size, a larger measured spread widens it too (the stored spread is an estimate from few
    # draws: toy-float's 1.19 points failed --seed 1 by 1.86 against 1.85); a smaller one keeps its bound
    assert tolerance.tolerance_for(record, 500, std=2.4) == pytest.approx(1.88 * ((1 + 2.0**2) / 2) ** 0.5)
    assert tolerance.tolerance_for(record, 500, std=1.0) == tolerance.tolerance_for(record, 500) == 1.88


def test_another_dtype_widens_only_the_same_sample_bound():
    """bfloat16 against a float32 baseline on its own examples: the model is the same up to rounding, so the 3/n of
    two float builds grows by the near-tie flips rounding causes (0.53% of examples measured on the toy zoo, 1% in
    the rule): 3/n x (1 + sqrt(0.01 n)); other samples keep their bound, and a planted change still fails."""
    from mechbench.baselines import Record
    from mechbench.claims.tolerance import PRECISION_FLIP_RATE, judge, precision_factor

    record = Record(
        {"model": "m"}, 0.642, "measured", {"tolerance": 0.0907, "tolerance_same_sample": 0.006, "n": 500, "seed": 0}
    )
    assert record.dtype == "float32"  # records from before dtype was stored were all float32
    assert judge(0.642, record, n=500, seed=0, dtype="float32").tolerance == pytest.approx(0.006)
    widened = judge(0.650, record, n=500, seed=0, dtype="bfloat16")
    assert widened.tolerance == pytest.approx(0.006 * (1 + (PRECISION_FLIP_RATE * 500) ** 0.5))
    assert widened.passed and "baseline ran in float32" in str(widened)  # 4 flips in 500: what bf16 did to toy-float
    assert not judge(0.592, record, n=500, seed=0, dtype="bfloat16").passed  # a 0.05 change of mechanism
    assert judge(0.642, record, n=500, seed=3, dtype="bfloat16").tolerance == pytest.approx(0.0907)
    assert precision_factor(500, "bf16", "bfloat16") == 1.0 and precision_factor(500, None, "float32") == 1.0


def test_a_stored_zero_or_one_is_an_accuracy_not_a_mean_over_draws():
    """A knockout that leaves no correct answer stores 0.0, a whole recovered group 1.0: on fewer examples their bound
    is the binomial one, floored at three examples, not a mean over draws widened by sqrt((1 + n_stored / n) / 2)."""
    zero = next(r for r in baselines.load("attention_knockout").records if r.value == 0.0 and r.get("n") == 500)
    one = baselines.Record({"model": "m"}, 1.0, "measured", {"tolerance": 0.0119, "tolerance_rule": "r", "n": 500})
    for record in (zero, one):
        rounding = max(record.get("tolerance") - tolerance.binomial_tolerance(record.value, 500, 500), 0.0)
        assert (
            tolerance.tolerance_for(record, 40)
            == max(tolerance.binomial_tolerance(record.value, 40, 500, rounding=rounding), 0.075)
            == 0.075
        )
        assert tolerance.tolerance_for(record, 2000) < record.get("tolerance")  # more examples narrow a binomial bound


def test_find_matches_a_records_keys_exactly_never_a_subset():
    """A lookup for {model} is not a record of {model, layer}: a subset match would check an accuracy against a
    knockout layer's number, or call two records one."""
    table = baselines.Baseline(
        Path("t.json"),
        "t",
        "d",
        "fraction",
        "s",
        [
            baselines.Record({"model": "m", "layer": 0}, 0.1, "measured"),
            baselines.Record({"model": "m"}, 0.6, "measured"),
        ],
    )
    assert table.find(model="m").value == 0.6
    assert table.find(model="m", layer=0).value == 0.1
    assert table.find(layer=0) is None and table.find(model="m", layer=1) is None
    assert baselines.Baseline(Path("t.json"), "t", "d", "fraction", "s", table.records[:1]).find(model="m") is None


def test_check_claim_widens_a_mean_over_draws_by_the_measured_spread(tmp_path):
    """The measured spread reaches the comparison: DCM patching's stored spread is an estimate from 10 draws, and a
    wider measured one widens the bound (toy-float at --seed 1 failed by 1.86 against 1.85 without it)."""
    shutil.copy(ROOT / "baselines" / "dcm_patching.json", tmp_path / "dcm_patching.json")
    record = next(r for r in baselines.load("dcm_patching", tmp_path).records if r.get("seed") == 0)
    wide = 2 * record.get("std")
    widened = tolerance.tolerance_for(record, 500, 1, std=wide)
    assert widened > record.get("tolerance") * 1.5
    measured = record.value + (record.get("tolerance") + widened) / 2  # outside the stored bound, inside the widened
    out = check_claim("dcm_patching", record.keys, measured, n=500, seed=1, std=wide, baselines_dir=tmp_path)
    assert out.judgement.tolerance == pytest.approx(widened) and out.passed
    assert check_claim("dcm_patching", record.keys, measured, n=500, seed=1, baselines_dir=tmp_path).passed is False


def test_mechbench_baselines_checks_every_file_and_names_every_bad_one(tmp_path, capsys):
    from mechbench.cli import main

    for name in ("accuracy", "circuits", "dcm_patching", "faithfulness"):
        shutil.copy(ROOT / "baselines" / f"{name}.json", tmp_path / f"{name}.json")
    assert main(["baselines", "--dir", str(tmp_path)]) == 0
    assert "circuits.json: 15 records ok" in capsys.readouterr().out  # the circuits file is checked as heads
    for name, field in (("accuracy", "tolerance"), ("dcm_patching", "n")):
        data = json.loads((tmp_path / f"{name}.json").read_text())
        data["records"][3][field] = "wrong"
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    assert main(["baselines", "--dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert "2 of 4 baseline files" in err
    assert f"{tmp_path / 'accuracy.json'} is invalid: records[3].tolerance" in err
    assert f"{tmp_path / 'dcm_patching.json'} is invalid: records[3].n" in err
    assert "circuits.json: 15 records ok" in out and "faithfulness.json: 56 records ok" in out


def test_the_shipped_baselines_pass_the_command():
    from mechbench.cli import main

    assert main(["baselines"]) == 0


def test_update_never_stores_a_record_the_loader_would_refuse(bdir):
    """Not even forced: a tolerance too wide for a fraction (a binomial bound on 3 examples), a value out of range."""
    table = baselines.load("accuracy", bdir)
    with pytest.raises(BaselineError, match="wider than a fraction allows.*a larger --limit"):
        baselines.update(table, {"model": "toy-x"}, 0.5, tolerance=1.2247, tolerance_rule="r", n=3, force=True)
    with pytest.raises(BaselineError, match="outside a fraction's range"):
        baselines.update(table, {"model": "toy-x"}, 1.5, tolerance=0.1, tolerance_rule="r", n=500)
    assert baselines.load("accuracy", bdir).find(model="toy-x") is None
