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


def test_a_claim_helper_fails_with_the_reason_and_no_traceback(pytester):
    pytester.makepyfile(test_settle="""
        from types import SimpleNamespace
        from mechbench.pytest_plugin import settle

        def test_settle():
            settle([SimpleNamespace(passed=False, missing=None, message=lambda: "x: 0.5 vs 0.9 OUTSIDE 0.1")], "layers")
    """)
    result = pytester.runpytest_subprocess("-p", "mechbench.pytest_plugin", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*1 of 1 layers out of tolerance*", "*OUTSIDE 0.1*"])


@pytest.mark.parametrize("args, message", [(["--batch-size=0"], "*batch-size*"), (["--model=no-such-model"], "*no-such-model*")])
def test_bad_options_stop_the_session_with_the_reason(pytester, args, message):
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "mechbench.pytest_plugin", "-p", "no:cacheprovider", *args)
    assert result.ret != 0
    said = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in said and fnmatch.fnmatch(said.replace("\n", " "), message)
