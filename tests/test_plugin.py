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
    pytester.makepyfile(test_settings="""
        from mechbench.claims import get

        def test_settings(settings):
            assert settings.seed == 3
            # --limit sets each claim's main sample; the method's settings (DCM's training pairs) stay
            assert settings.size(get("accuracy"), "prompts") == 20
            assert [settings.size(get("dcm"), s) for s in ("test_pairs", "train_pairs", "validation_pairs")] == [20, 1000, 500]
            assert settings.derived_seed(offset=10) == 13 and settings.derived_seed(draw=2) == 4002
    """)
    result = pytester.runpytest_subprocess("-p", "mechbench.pytest_plugin", "--seed=3", "--limit=20",
                                           "-p", "no:cacheprovider")
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
    args = ["-p", "mechbench.pytest_plugin", "-p", "no:cacheprovider", "--model=toy-llama", "-rA",
            f"--baselines-dir={baselines}", f"--results-dir={results}"]
    pytester.makepyfile(test_mine=OWN_CLAIM.replace("SHIFT", "0.0"))
    first = pytester.runpytest_subprocess(*args)
    first.assert_outcomes(skipped=2)
    first.stdout.fnmatch_lines(["*my_accuracy*does not exist yet*--update-baselines*",
                                "*cannot be loaded here*"])
    # toy-llama loaded and nothing was judged: not a green run
    assert first.ret == pytest.ExitCode.TESTS_FAILED
    first.stdout.fnmatch_lines(["*nothing checked*", "toy-llama loaded, but none of its claim tests reached a verdict*"])
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


@pytest.mark.parametrize("args, message", [(["--batch-size=0"], "*batch-size*"), (["--model=no-such-model"], "*no-such-model*")])
def test_bad_options_stop_the_session_with_the_reason(pytester, args, message):
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "mechbench.pytest_plugin", "-p", "no:cacheprovider", *args)
    assert result.ret != 0
    said = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in said and fnmatch.fnmatch(said.replace("\n", " "), message)
