"""The claim registry: each claim declared once (mechbench/claims/specs), read by its suite, the report, the README
table and the baseline check; --limit and --seed act on every claim by one rule."""

import ast
import importlib.util
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mechbench import baselines
from mechbench.claims import CLAIMS, Claim, check_claim, derived_seed, get, tolerance
from mechbench.claims import registry
from mechbench.claims.readme import claims_table, with_table
from mechbench.report import write_report

ROOT = Path(__file__).resolve().parent.parent
SUITES = ROOT / "suites"


def _suite_claim(path: Path):
    spec = importlib.util.spec_from_file_location(f"suite_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, "CLAIM", None)


def test_every_claim_has_its_suite_and_every_suite_its_claim():
    for claim in CLAIMS.values():
        path = SUITES / claim.suite
        assert path.is_file(), f"claim {claim.name!r}: no suite {path}"
        assert _suite_claim(path) is claim, f"{path} does not measure the claim {claim.name!r} (CLAIM = get(...))"
    declared = {c.suite for c in CLAIMS.values()}
    for path in SUITES.glob("test_*.py"):
        if path.name != "test_compare.py":  # comparison mode: every claim side by side, not one claim
            assert path.name in declared, f"{path} is a suite with no spec in mechbench/claims/specs"


def test_the_suites_take_sizes_seeds_and_tolerances_from_the_specs():
    """No suite writes a sample size, a seed rule or a tolerance formula of its own, nor reads a baseline file but
    through the plugin: those live in the specs and mechbench.claims.tolerance."""
    for path in SUITES.glob("test_*.py"):
        tree = ast.parse(path.read_text())
        def number(node):
            return isinstance(node, ast.Constant) and type(node.value) in (int, float)

        sizes = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                 if isinstance(t, ast.Name) and t.id != "Z" and (number(node.value) or (
                     isinstance(node.value, ast.Tuple) and all(number(e) for e in node.value.elts)))]
        assert not sizes, f"{path.name} declares sizes of its own: {sizes}"
        text = path.read_text()
        for banned in ("tolerance_rule=", "binomial_tolerance", "import math", "baselines.load(", "1000 * ("):
            assert banned not in text, f"{path.name}: {banned!r} (the specs and mechbench.claims.tolerance say it)"


def test_the_readme_table_is_the_registrys():
    readme = (ROOT / "README.md").read_text()
    assert with_table(readme) == readme, "README.md's claims table is stale: run python -m mechbench.claims --write"


def test_a_new_spec_shows_in_the_readme_table_the_report_and_the_baseline_check(tmp_path, monkeypatch):
    new = Claim(name="new_claim", title="a new claim", sections="9.9", measures="a number", description="A number.",
                unit="fraction", keys=("model", "layer"), rows=("model",), column="layer", suite="test_new_claim.py",
                sizes=(("prompts", 100),), tolerance="binomial")
    monkeypatch.setitem(registry.CLAIMS, "new_claim", new)
    assert "| a new claim (9.9) | `suites/test_new_claim.py` | a number |" in claims_table()
    # no baseline file yet: the check offers to store one, and storing writes the file from the spec
    outcome = check_claim("new_claim", {"model": "m", "layer": 0}, 0.5, n=100, seed=0, baselines_dir=tmp_path)
    assert outcome.missing and "does not exist yet" in outcome.missing and "--update-baselines" in outcome.missing
    for layer, value in ((0, 0.5), (1, 0.25)):
        check_claim("new_claim", {"model": "m", "layer": layer}, value, n=100, seed=0, baselines_dir=tmp_path,
                    update=True, tolerance=tolerance.binomial(value, 100))
    stored = baselines.load("new_claim", tmp_path)
    assert stored.description == "A number." and len(stored.records) == 2
    assert check_claim("new_claim", {"model": "m", "layer": 1}, 0.25, n=100, seed=0, baselines_dir=tmp_path).passed
    # a misspelt key never matches a record silently
    with pytest.raises(ValueError, match="layr"):
        check_claim("new_claim", {"model": "m", "layr": 1}, 0.25, baselines_dir=tmp_path)
    # the report lays it out as its spec says: one row per model, one column per layer
    rows = [{"claim": "new_claim", "model": "m", "layer": layer, "value": value, "passed": True}
            for layer, value in ((0, 0.5), (1, 0.25))]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = write_report(tmp_path / "results.jsonl", tmp_path / "out", figures=False).read_text()
    table = [line.split("|")[1:-1] for line in report.split("## new_claim", 1)[1].strip().splitlines()]
    assert [c.strip() for c in table[0]] == ["model", "0", "1"] and [c.strip() for c in table[2]] == ["m", "0.5", "0.25"]


def test_limit_sets_the_main_size_scales_the_other_samples_and_leaves_the_methods_settings():
    dcm = get("dcm")  # the masks train on the paper's pairs whatever the limit: fewer change what is measured
    assert [dcm.size(s) for s in ("test_pairs", "train_pairs", "validation_pairs")] == [500, 1000, 500]
    assert [dcm.size(s, 50) for s in ("test_pairs", "train_pairs", "validation_pairs")] == [50, 1000, 500]
    minimality = get("minimality")  # its prompts come from the model's discovery settings
    assert minimality.size("prompts", None, default=100) == 100 and minimality.size("prompts", 30, default=100) == 30
    assert minimality.size("ablation_prompts", 50) == 500
    two = Claim(name="two", title="t", sections="", measures="", description="", unit="fraction", keys=(), rows=(),
                column=None, suite="", sizes=(("prompts", 500), ("context_prompts", 100)), fixed=(("train", 64),))
    assert [two.size(s, 50) for s in ("prompts", "context_prompts", "train")] == [50, 10, 64]
    with pytest.raises(KeyError, match="prompts, context_prompts, train"):
        two.size("pairs")
    for claim in CLAIMS.values():  # every claim has a main size, and a limit sets it
        main = claim.sizes[0][0]
        assert claim.size(main, 7) == 7


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 999), st.integers(0, 999))
def test_draws_of_two_seeds_never_share_a_seed(seed_a, seed_b, draw_a, draw_b):
    if (seed_a, draw_a) != (seed_b, draw_b):
        assert derived_seed(seed_a, draw=draw_a) != derived_seed(seed_b, draw=draw_b)
    assert derived_seed(seed_a) == seed_a and derived_seed(seed_a, offset=10) == seed_a + 10


def test_the_tolerance_rules():
    assert tolerance.binomial(0.66, 500).value == baselines.binomial_tolerance(0.66, 500, 500)
    assert tolerance.binomial(0.0, 500).value > 0  # an observed 0 still allows an example
    assert tolerance.binomial(0.5, 500).same_sample == 0.006
    draws = tolerance.mean_of_draws(0.1, 10, n=500, unit=100, rounding=0.05)
    assert draws.value == round(3 * 2 ** 0.5 * 0.1 / 10 ** 0.5 + 0.05 + 100 / 500, 4)
    assert tolerance.mean_of_draws(0.0, 10, n=500).value == 0.002  # a zero spread still allows one example
    both = tolerance.difference(tolerance.binomial(0.2, 500), tolerance.binomial(0.3, 500), "a and b")
    assert both.value == round(tolerance.binomial(0.2, 500).value + tolerance.binomial(0.3, 500).value, 4)
