"""mechbench's pytest plugin run by pytest itself (pytester), in a directory outside the checkout, as someone who
installed mechbench would run it: ``pytest -p mechbench.pytest_plugin``."""

import fnmatch

import pytest


def test_the_plugin_adds_its_options_outside_the_checkout(pytester):
    result = pytester.runpytest_subprocess("-p", "mechbench.pytest_plugin", "--help")
    assert result.ret == 0
    for option in ("--model", "--seed", "--limit", "--baselines-dir", "--batch-size", "--update-baselines"):
        assert option in result.stdout.str(), option


def test_the_settings_fixture_holds_the_options_given(pytester):
    pytester.makepyfile(
        test_settings="""
        from mechbench.claims import get

        def test_settings(settings):
            assert settings.seed == 3
            # --limit sets each claim's main sample; the method's settings (DCM's training pairs) stay
            assert settings.size(get("accuracy"), "prompts") == 20
            assert [settings.size(get("dcm"), s) for s in ("test_pairs", "train_pairs", "validation_pairs")] == [20, 1000, 500]
            assert settings.derived_seed(offset=10) == 13 and settings.derived_seed(draw=2) == 4002
    """
    )
    result = pytester.runpytest_subprocess(
        "-p", "mechbench.pytest_plugin", "--seed=3", "--limit=20", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1)


#: A claim of someone else's repository: a spec and its measurement in their own test file (the README's example).
OWN_CLAIM = """
    from mechbench.claims import Claim
    from mechbench.claims.tolerance import binomial
    from mechbench.evaluate import correct_on
    from mechbench.pytest_plugin import claim_tests

    CLAIM = Claim(name="my_accuracy", title="my accuracy", sections="-", measures="top-1", description="Top-1.",
                  unit="fraction", keys=("model",), rows=("model",), column=None, sizes=(("prompts", 40),),
                  needs_working_model=False)

    @CLAIM.test()
    def my_accuracy(run):
        dataset = run.prompts()
        correct = correct_on(run.model, dataset)
        value = correct.float().mean().item() + SHIFT
        run.check({"model": run.model.name}, value, n=len(dataset), correct=correct, clusters=dataset.clusters(),
                  tolerance=binomial(value, len(dataset)))

    @CLAIM.test()
    def refuses_a_missing_model(run):
        run.load("nobody/no-such-checkpoint")  # a hub id that is not here

    globals().update(claim_tests(CLAIM))
"""


def test_a_claim_of_another_repository_skips_stores_passes_and_fails_with_the_reason(pytester, tmp_path):
    """Outside the checkout, a claim written as a spec and a measurement in a test file runs on a registered
    model: no baseline yet skips saying how to store one, --update-baselines stores it, the next run checks against
    it, and a changed number fails with the numbers and no traceback."""
    baselines, results = tmp_path / "baselines", tmp_path / "results"
    baselines.mkdir()
    args = [
        "-p",
        "mechbench.pytest_plugin",
        "-p",
        "no:cacheprovider",
        "--model=toy-llama",
        "-rA",
        f"--baselines-dir={baselines}",
        f"--results-dir={results}",
    ]
    pytester.makepyfile(test_mine=OWN_CLAIM.replace("SHIFT", "0.0"))
    first = pytester.runpytest_subprocess(*args)
    first.assert_outcomes(skipped=2)
    first.stdout.fnmatch_lines(["*my_accuracy*does not exist yet*--update-baselines*", "*cannot be loaded here*"])
    # toy-llama loaded and nothing was judged: not a green run
    assert first.ret == pytest.ExitCode.TESTS_FAILED
    first.stdout.fnmatch_lines(
        ["*nothing checked*", "toy-llama loaded, but none of its claim tests reached a verdict*"]
    )
    pytester.runpytest_subprocess(*args, "--update-baselines").assert_outcomes(passed=1, skipped=1)
    assert (baselines / "my_accuracy.json").is_file()
    again = pytester.runpytest_subprocess(*args)
    again.assert_outcomes(passed=1, skipped=1)
    again.stdout.fnmatch_lines(["*my_accuracy [[]model=toy-llama[]] measured*within tolerance*"])
    pytester.makepyfile(test_mine=OWN_CLAIM.replace("SHIFT", "-0.5"))  # a planted change of half the accuracy
    changed = pytester.runpytest_subprocess(*args)
    changed.assert_outcomes(failed=1, skipped=1)
    changed.stdout.fnmatch_lines(["*OUTSIDE*"])
    assert "Traceback" not in changed.stdout.str() and "def my_accuracy" not in changed.stdout.str()


@pytest.mark.parametrize(
    "args, message", [(["--batch-size=0"], "*batch-size*"), (["--model=no-such-model"], "*no-such-model*")]
)
def test_bad_options_stop_the_session_with_the_reason(pytester, args, message):
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "mechbench.pytest_plugin", "-p", "no:cacheprovider", *args)
    assert result.ret != 0
    said = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in said and fnmatch.fnmatch(said.replace("\n", " "), message)


def test_the_plugin_is_a_pytest11_entry_point_named_as_its_module():
    """Every pytest of the environment loads it; named as its module, so that ``-p mechbench.pytest_plugin`` (every
    test above) and ``pytest_plugins = [...]`` name the same plugin instead of registering it twice."""
    from importlib import metadata

    points = [e for e in metadata.entry_points(group="pytest11") if e.value == "mechbench.pytest_plugin"]
    assert [e.name for e in points] == ["mechbench.pytest_plugin"], points


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "__pycache__" not in p.parts)


def _mechbench_lines(result):
    """What mechbench printed (pytest's header names the installed plugins, mechbench among them)."""
    lines = result.stdout.lines + result.stderr.lines
    return [line for line in lines if "mechbench" in line and not line.startswith("plugins:")]


def test_an_unrelated_suite_in_the_same_environment_is_untouched(pytester, monkeypatch):
    """A suite that does not use mechbench, run by a pytest that loads the plugin through its entry point: it
    passes, it leaves the same files as without the plugin (no results/), mechbench prints nothing and the run is
    not failed for checking nothing."""
    made = {}
    for name, block in (("with", []), ("without", ["-p", "no:mechbench.pytest_plugin"])):
        suite = pytester.mkdir(name)
        (suite / "test_x.py").write_text("def test_x():\n    assert 1 + 1 == 2\n")
        monkeypatch.chdir(suite)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *block)
        assert result.ret == pytest.ExitCode.OK
        result.assert_outcomes(passed=1)
        made[name] = _files(suite)
        if name == "with":
            assert _mechbench_lines(result) == []
    assert made["with"] == made["without"] and "results" not in made["with"], made
    loaded = pytester.runpytest_subprocess("--trace-config", "--co", "-q", "-p", "no:cacheprovider")
    assert "mechbench.pytest_plugin" in loaded.stdout.str()  # the plugin was loaded, by the entry point alone


def test_a_suite_with_fixtures_of_the_plugins_names_of_its_own_is_left_alone(pytester):
    """``settings`` and ``model_name`` are common names: a suite's own fixture or parametrization of them is
    not mechbench's, and does not start it."""
    pytester.makeconftest("import pytest\n\n@pytest.fixture\ndef settings():\n    return {'mine': True}\n")
    pytester.makepyfile(
        test_own="""
        import pytest

        @pytest.fixture
        def model():
            return "my model"

        @pytest.mark.parametrize("model_name", ["a", "b"])
        def test_own(settings, model, model_name):
            assert settings == {"mine": True} and model == "my model" and model_name in "ab"
    """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=2)
    assert not (pytester.path / "results").exists() and _mechbench_lines(result) == []


def test_a_test_that_uses_a_fixture_of_the_plugin_starts_it_with_the_defaults(pytester):
    """No mechbench option given: the session starts using mechbench once collection finds a test that uses its
    fixtures. --results-dir defaults to results/ in the current directory (as for the mechbench command), made
    only when something is written."""
    pytester.makepyfile(
        test_defaults="""
        from pathlib import Path

        from mechbench.models.registry import TOY_MODELS

        def test_defaults(settings, results):
            assert settings.models == tuple(TOY_MODELS) and settings.seed == 0 and settings.bos == "auto"
            assert settings.results_dir == Path("results") and results.path == Path("results", "results.jsonl")
            assert not Path("results").exists()  # nothing written yet
    """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "results").exists()


def test_the_command_line_and_the_plugin_share_their_options_and_defaults():
    """Each option of the table (mechbench/options.py) that a ``mechbench`` command takes has there the plugin's
    choices and default."""
    from mechbench.cli import build_parser
    from mechbench.options import OPTIONS

    commands = {a.dest: a for a in build_parser()._actions if a.dest == "command"}["command"].choices
    shared = 0
    for option in OPTIONS:
        for command in option.commands:
            action = {a.option_strings[0]: a for a in commands[command]._actions if a.option_strings}[option.flag]
            assert (action.default, action.choices, action.help) == (
                option.kwargs().get("default", False),
                option.choices,
                option.help,
            ), (command, option.flag)
            shared += 1
    assert shared >= 10
    assert {o.flag for o in OPTIONS if o.commands} >= {
        "--bos",
        "--device",
        "--dtype",
        "--seed",
        "--results-dir",
        "--baselines-dir",
        "--allow-pickle",
        "--drop-multi-token",
    }


def test_each_xdist_worker_takes_its_share_of_the_cores(monkeypatch):
    """Two workers of two torch threads each on two cores spin on each other (the library tests took three times as
    long): a worker's torch, and the subprocesses its tests start, take cores / workers threads, unless the user
    set OMP_NUM_THREADS; outside a worker nothing changes."""
    import os
    from types import SimpleNamespace

    import torch

    from mechbench.pytest_plugin import share_cores_among_workers

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    try:
        share_cores_among_workers(SimpleNamespace())  # the controller, or no xdist
        assert torch.get_num_threads() == before and "OMP_NUM_THREADS" not in os.environ
        share_cores_among_workers(SimpleNamespace(workerinput={"workercount": 2}))
        assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice stands
        torch.set_num_threads(before)
        share_cores_among_workers(SimpleNamespace(workerinput={"workercount": 4}))
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
