"""A claim is one module in every mode: its spec registers its test, its comparison and its workloads (or states
that it has none, and why), and every mode reads the registry: ``pytest suites/``, comparison mode
(``mechbench.compare.CLAIMS``, ``pytest --compare``, ``mechbench compare``), the plan, the report and the README's
table. A claim added at run time (another package's, through the ``mechbench.claims`` entry point group) shows up
in each of them with no other file touched."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mechbench.claims import CLAIMS
from mechbench.claims.registry import register
from mechbench.claims.spec import MODES, Claim

ROOT = Path(__file__).resolve().parent.parent


def test_every_registered_claim_states_each_mode_and_the_modes_are_views_of_the_registry():
    from mechbench import compare, plan

    for claim in CLAIMS.values():
        for mode in MODES:
            assert mode in claim.modes, f"{claim.name} states no {mode}"
            assert (claim.mode(mode) is None) != (claim.without(mode) is None), (claim.name, mode)
    assert list(compare.CLAIMS) == [n for n, c in CLAIMS.items() if c.mode("comparison")]
    assert list(plan.planned_claims()) == [n for n, c in CLAIMS.items() if c.mode("workloads")]
    # the paper's claims each have both: a missing one would silently drop out of --compare or the plan
    paper = {
        "accuracy",
        "faithfulness",
        "completeness",
        "path_patching",
        "dcm",
        "dcm_patching",
        "cmap",
        "minimality",
        "attention_knockout",
    }
    assert paper <= set(compare.CLAIMS) and paper <= set(plan.planned_claims())


def test_a_claim_that_says_nothing_of_a_mode_is_refused_by_the_registry():
    silent = Claim(
        name="silent",
        title="silent",
        sections="-",
        measures="-",
        description="-",
        unit="fraction",
        keys=("model",),
        rows=("model",),
        column=None,
        sizes=(("prompts", 10),),
    )

    @silent.test()
    def silent_measure(run):
        pass

    with pytest.raises(TypeError, match=r"states no comparison and no workloads.*@CLAIM.comparison.*no_workloads"):
        register(silent)
    silent.no_comparison("a number of the fine-tune alone")
    with pytest.raises(TypeError, match="states no workloads"):
        register(silent)
    with pytest.raises(ValueError, match="needs the reason"):
        silent.no_workloads(" ")
    assert "silent" not in CLAIMS
    with pytest.raises(ValueError, match="states its comparison twice"):
        silent.comparison(lambda c: ([], []))


def test_a_claim_without_a_comparison_says_why_in_comparison_mode(monkeypatch):
    from mechbench import compare

    claim = Claim(
        name="alone",
        title="alone",
        sections="-",
        measures="-",
        description="-",
        unit="fraction",
        keys=("model",),
        rows=("model",),
        column=None,
        sizes=(("prompts", 10),),
    )
    claim.test()(lambda run: None)
    claim.no_comparison("it measures the fine-tune's own training data")
    claim.no_workloads("it runs no model")
    monkeypatch.setitem(CLAIMS, "alone", claim)
    without = compare.without_comparison()
    assert "alone" not in compare.CLAIMS and without["alone"] == "it measures the fine-tune's own training data"
    assert "dcm_additional" in without  # the registered claims with no side-by-side form say why too
    stub = object.__new__(compare.Comparison)
    stub._claims = {}
    with pytest.raises(compare.MechbenchError, match="has no comparison mode: it measures the fine-tune's own"):
        compare.Comparison.claim(stub, "alone")


#: Another package's claim: a spec module and the entry point that names it (as its pyproject.toml would).
PLUGIN_CLAIM = '''
    """A claim of another package: top-1 accuracy on a small sample, in every mode."""
    from mechbench.claims import Claim
    from mechbench.claims.tolerance import binomial

    CLAIM = Claim(order=50, name="plugged_accuracy", title="plugged-in accuracy", sections="-",
                  measures="top-1 on 60 prompts", description="Top-1 accuracy on 60 prompts.", unit="fraction",
                  keys=("model",), rows=("model",), column=None, sizes=(("prompts", 60),), tolerance="binomial")


    @CLAIM.test()
    def plugged_accuracy(run):
        dataset, correct = run.prompts(), run.correct()
        value = correct.float().mean().item()
        run.check({"model": run.model.name}, value, n=len(dataset), correct=correct, clusters=dataset.clusters(),
                  tolerance=binomial(value, len(dataset)))


    @CLAIM.comparison
    def compare(c):
        from mechbench.compare import Check, Row, as_array

        b, f = c.correct("base", 60), c.correct("fine_tune", 60)
        row = Row("plugged_accuracy", "accuracy on 60 prompts", {}, as_array(b).mean(), as_array(f).mean(),
                  c.diff(b, f, c.clusters(60)))
        return [row], [Check("plugged_accuracy", "not worse", not (row.estimate.hi < 0), str(row.estimate))]


    @CLAIM.workloads
    def workloads(p):
        from mechbench.plan import Workload

        return [Workload("plugged_accuracy", forwards=CLAIM.size("prompts"), note="plugged in")]
'''


@pytest.fixture
def plugged(tmp_path):
    """A directory holding the claim's module and a distribution's metadata that declares it under the
    ``mechbench.claims`` entry point group, and the environment that puts it on the path."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "plugged_claim.py").write_text(textwrap.dedent(PLUGIN_CLAIM))
    info = site / "plugged_claim-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugged-claim\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mechbench.claims]\nplugged_accuracy = plugged_claim\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    baselines = tmp_path / "baselines"
    shutil.copytree(ROOT / "baselines", baselines)
    return env, baselines, tmp_path / "results"


def _run(env, *args, cwd=ROOT):
    done = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def test_a_claim_added_at_run_time_shows_up_in_every_mode(plugged):
    env, baselines, results = plugged
    common = [f"--baselines-dir={baselines}", f"--results-dir={results}", "-p", "no:cacheprovider", "-q"]
    # the README's table and the registry
    rc, out = _run(env, "-m", "mechbench.claims")
    assert rc == 0 and "| plugged-in accuracy (-) | `suites/test_registered_claims.py` | top-1 on 60 prompts" in out, (
        out
    )
    # pytest suites/: stored, then checked against what was stored
    rc, out = _run(
        env, "-m", "pytest", "suites/", "--model=toy-llama", "-k", "plugged_accuracy", "--update-baselines", *common
    )
    assert rc == 0 and "1 passed" in out, out
    assert json.loads((baselines / "plugged_accuracy.json").read_text())["records"][0]["n"] == 60
    rc, out = _run(env, "-m", "pytest", "suites/", "--model=toy-llama", "-k", "plugged_accuracy", "-rA", *common)
    assert rc == 0 and "1 passed" in out and "within tolerance" in out, out
    # comparison mode, through pytest
    rc, out = _run(
        env,
        "-m",
        "pytest",
        "suites/test_compare.py",
        "--model=toy-goat",
        "--compare",
        "--quick",
        "-k",
        "test_compared_with_base and plugged_accuracy",
        "-rA",
        *common,
    )
    assert rc == 0 and "1 passed" in out and "compare:plugged_accuracy [toy-goat vs toy-llama]" in out, out
    # the plan
    rc, out = _run(env, "-c", "from mechbench.cli import main; main(['plan', 'toy-llama'])")
    assert rc == 0 and "| plugged_accuracy |" in out and "plugged in" in out, out
    # the report: the claim's own table, under its title
    rc, out = _run(
        env,
        "-c",
        f"from mechbench.cli import main; main(['report', '--results', "
        f"{str(results / 'results.jsonl')!r}, '--out', {str(results / 'report')!r}])",
    )
    assert rc == 0, out
    report = next((results / "report").glob("*.md")).read_text()
    assert "plugged-in accuracy" in report and "plugged_accuracy" in report
