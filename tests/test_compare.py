"""Comparison mode (mechbench.compare): what it reports on an unchanged model, on planted changes of
mechanism, and the verdict rules; the CLI and the pytest route write the same report; --baseline-model keeps
the measured model's name."""

import copy
import json
from dataclasses import replace

import pytest
import torch

from mechbench.api import get_model
from mechbench.circuits import Circuit
from mechbench.compare import (
    QUICK, SAME_MECHANISM, Check, ClaimComparison, Comparison, Row, base_circuit_name, base_name_of,
)
from mechbench.errors import MechbenchError
from mechbench.models.loading import weights_hash
from mechbench.models.registry import zoo_dir
from mechbench.stats import Estimate

# the smallest lane that still runs every claim (the numbers of this file, not of the claims)
TINY = replace(QUICK, name="tiny", n_examples=70, verdict_examples=140, n_random=3, completeness_draws=2,
               dcm_split=(64, 32, 70), patching_pairs=70, patching_runs=2, discovery_pairs=20,
               minimality_examples=35, minimality_heads=3, n_boot=500)


@pytest.fixture(scope="module")
def base():
    return get_model("toy-llama")


@pytest.fixture(scope="module")
def circuit():
    return Circuit.load("toy-llama")


def variant(handle, name, zero_heads=(), zero_where="o_proj"):
    """A renamed copy of ``handle``; ``zero_heads``: (layer, head) whose W_O columns (``o_proj``) or value rows
    (``v_proj``) are zeroed, a planted change of mechanism."""
    model = copy.deepcopy(handle.model)
    d = handle.shape.head_dim
    with torch.no_grad():
        for layer, head in zero_heads:
            attn = model.model.layers[layer].self_attn
            if zero_where == "o_proj":
                attn.o_proj.weight[:, head * d:(head + 1) * d] = 0
            else:
                kv = head // (handle.shape.n_heads // handle.shape.n_kv_heads)
                attn.v_proj.weight[kv * d:(kv + 1) * d] = 0
    return replace(handle, name=name, model=model, fingerprint=dict(handle.fingerprint, weights_sha256=weights_hash(model)))


def test_an_unchanged_copy_differs_by_nothing_and_keeps_the_circuit(base, circuit):
    c = Comparison(variant(base, "copy"), base, circuit, TINY)
    for claim in ("accuracy", "faithfulness", "completeness", "attention_knockout", "dcm_patching", "path_patching",
                  "minimality"):
        result = c.claim(claim)
        assert result.rows and not result.failed, claim
        for row in result.rows:
            interval = () if row.estimate.lo is None else (row.estimate.lo, row.estimate.hi)  # path patching: none
            assert (row.estimate.value, *interval) == (0.0, *[0.0] * len(interval)), (claim, row.measure)
    assert c.verdict().label == "no gain, same circuit"


@pytest.mark.parametrize("heads, where", [
    (((0, 3), (0, 1), (0, 4), (0, 2)), "o_proj"),  # the structure readers silenced
    (((2, 0), (2, 5), (2, 6), (2, 1)), "o_proj"),  # the main value fetchers' W_O: invisible to CMAP (it patches
                                                   # head outputs before W_O), caught by DCM heads patched
])
def test_a_planted_change_of_mechanism_is_not_called_the_same_circuit(base, circuit, heads, where):
    c = Comparison(variant(base, "planted", heads, where), base, circuit, TINY)
    verdict = c.verdict()
    assert verdict.label == "circuit damaged" and not verdict.same_mechanism, verdict


def test_the_paper_zoo_gets_the_paper_verdicts(base, circuit):
    """toy-goat and toy-float: the gain runs through the circuit; toy-vicuna: no gain, same circuit. The quick
    lane (500 prompts for accuracy and CMAP, 140 for the rest)."""
    verdicts = {name: Comparison(get_model(name), base, circuit, QUICK).verdict().label
                for name in ("toy-goat", "toy-float", "toy-vicuna")}
    assert verdicts == {"toy-goat": "same circuit, strengthened", "toy-float": "same circuit, strengthened",
                        "toy-vicuna": "no gain, same circuit"}


def _synthetic(base, circuit, *, gain, share=0.7, beats=True, moved=False, patching=True, ft_task=True):
    """A comparison whose claims are set by hand: the verdict rules alone."""
    c = Comparison(variant(base, "synthetic"), base, circuit, TINY)
    task = [Check("accuracy", "base does the task", True, ""), Check("accuracy", "fine_tune does the task", ft_task, "ft")]
    c._claims = {
        "accuracy": ClaimComparison("accuracy", [Row("accuracy", "accuracy", {}, 0.6, 0.6 + gain.value, gain)], task),
        "faithfulness": ClaimComparison("faithfulness", [
            Row("faithfulness", "faithfulness (circuit / full)", {}, 0.6, 0.6, Estimate(0.0, -0.1, 0.1))],
            [Check("faithfulness", "circuit beats random circuits", beats, "random")]),
        "attention_knockout": ClaimComparison("attention_knockout", [], [Check("k", "same attention routes", not moved, "routes")]),
        "dcm_patching": ClaimComparison("dcm_patching", [], [Check("d", "the base's DCM heads carry as much", patching, "dcm")]),
        "cmap": ClaimComparison("cmap", [Row("cmap", "share", {"group": "full_circuit"}, 0.6, 0.8,
                                             Estimate(share, share - 0.1, share + 0.1), "share of gain")], []),
    }
    return c.verdict()


@pytest.mark.parametrize("kwargs, label", [
    (dict(gain=Estimate(0.2, 0.1, 0.3), share=0.75), "same circuit, strengthened"),
    (dict(gain=Estimate(0.2, 0.1, 0.3), share=0.3), "gain largely outside the circuit"),
    (dict(gain=Estimate(0.01, -0.02, 0.04)), "no gain, same circuit"),
    (dict(gain=Estimate(-0.2, -0.3, -0.1), share=0.2), "same circuit, weakened"),
    (dict(gain=Estimate(-0.2, -0.3, -0.1), share=0.9), "circuit damaged"),
    (dict(gain=Estimate(0.2, 0.1, 0.3), beats=False), "circuit damaged"),
    (dict(gain=Estimate(0.2, 0.1, 0.3), moved=True), "circuit damaged"),
    (dict(gain=Estimate(0.2, 0.1, 0.3), patching=False), "circuit damaged"),
    (dict(gain=Estimate(-0.5, -0.6, -0.4), ft_task=False), "does not do the task"),
])
def test_verdict_rules(base, circuit, kwargs, label):
    verdict = _synthetic(base, circuit, **kwargs)
    assert verdict.label == label
    assert verdict.same_mechanism == (label in SAME_MECHANISM)


def test_a_fine_tune_of_another_shape_or_itself_is_refused(base, circuit):
    with pytest.raises(MechbenchError, match="two models"):
        Comparison(base, base, circuit, TINY)


def test_bases_and_circuits_are_found_or_asked_for():
    assert base_name_of("toy-goat") == "toy-llama"
    assert base_name_of(zoo_dir("toy-goat")) == "toy-llama"  # an adapter directory names its base
    with pytest.raises(MechbenchError, match="--base"):
        base_name_of(zoo_dir("toy-float"))
    assert base_circuit_name("toy-llama") == "toy-llama"
    with pytest.raises(MechbenchError, match="mechbench discover"):
        base_circuit_name("toy-vicuna")


def test_cli_compare_writes_the_report_and_keeps_the_model_name(tmp_path, capsys):
    from mechbench.cli import main

    assert main(["compare", "toy-vicuna", "--quick", "--claims", "accuracy,cmap", "--results-dir", str(tmp_path)]) == 0
    report = (tmp_path / "compare-toy-vicuna.md").read_text()
    assert "against its base `toy-llama`" in report and "## cmap" in report and "not reached" in report
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {r["model"] for r in rows} == {"toy-vicuna"} and {r["base_model"] for r in rows} == {"toy-llama"}
    assert any(r["claim"] == "check:accuracy" and r["passed"] is True for r in rows)
    assert (tmp_path / "compare-toy-vicuna-cmap.png").is_file()


def test_checked_against_another_models_baseline_the_measurement_keeps_its_name(tmp_path):
    from mechbench.claims import check_claim
    from mechbench.results import ResultsWriter

    writer = ResultsWriter(tmp_path)
    outcome = check_claim("accuracy", {"model": "my-ckpt"}, 0.8, n=500, lookup_keys={"model": "toy-goat"},
                          baseline_model="toy-goat", results=writer)
    assert outcome.passed and "toy-goat's baseline" in outcome.message()
    line = writer.read()[-1]
    assert line["model"] == "my-ckpt" and line["baseline_model"] == "toy-goat" and line["baseline"] == 0.82
    with pytest.raises(ValueError, match="never stored"):
        check_claim("accuracy", {"model": "my-ckpt"}, 0.8, lookup_keys={"model": "toy-goat"}, update=True)


def test_readme_states_the_verdict_rules_the_code_applies():
    from pathlib import Path

    from mechbench.compare import VERDICT_RULES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for label, rule in VERDICT_RULES:
        assert f"| {label} | {rule} |" in readme, f"README's verdict table lacks the rule of {label!r}"
