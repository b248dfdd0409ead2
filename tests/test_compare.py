"""Comparison mode (mechbench.compare): what it reports on an unchanged model, on planted changes of
mechanism, and the verdict rules; the CLI and the pytest route write the same report; --baseline-model keeps
the measured model's name."""

import copy
import itertools
import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from mechbench.api import get_model
from mechbench.circuits import Circuit, HeadGroup
from mechbench.compare import (
    QUICK,
    SAME_MECHANISM,
    Check,
    ClaimComparison,
    Comparison,
    Row,
    base_circuit_name,
)
from mechbench.errors import MechbenchError
from mechbench.models.loading import weights_hash
from mechbench.models.registry import base_name_of, zoo_dir
from mechbench.stats import Estimate

# the smallest lane that still runs every claim (the numbers of this file, not of the claims)
TINY = replace(
    QUICK,
    name="tiny",
    n_examples=70,
    verdict_examples=140,
    n_random=3,
    completeness_draws=2,
    dcm_split=(64, 32, 70),
    patching_pairs=70,
    patching_runs=2,
    discovery_pairs=20,
    minimality_examples=35,
    minimality_heads=3,
    n_boot=500,
)


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
                attn.o_proj.weight[:, head * d : (head + 1) * d] = 0
            else:
                kv = head // (handle.shape.n_heads // handle.shape.n_kv_heads)
                attn.v_proj.weight[kv * d : (kv + 1) * d] = 0
    return replace(
        handle, name=name, model=model, fingerprint=dict(handle.fingerprint, weights_sha256=weights_hash(model))
    )


def test_an_unchanged_copy_differs_by_nothing_and_keeps_the_circuit(base, circuit):
    c = Comparison(variant(base, "copy"), base, circuit, TINY)
    for claim in (
        "accuracy",
        "faithfulness",
        "completeness",
        "attention_knockout",
        "dcm_patching",
        "path_patching",
        "minimality",
    ):
        result = c.claim(claim)
        assert result.rows and not result.failed, claim
        for row in result.rows:
            interval = () if row.estimate.lo is None else (row.estimate.lo, row.estimate.hi)  # path patching: none
            assert (row.estimate.value, *interval) == (0.0, *[0.0] * len(interval)), (claim, row.measure)
    assert c.verdict().label == "no gain, same circuit"


@pytest.mark.parametrize(
    "heads, where",
    [
        (((0, 3), (0, 1), (0, 4), (0, 2)), "o_proj"),  # the structure readers silenced
        (((2, 0), (2, 5), (2, 6), (2, 1)), "o_proj"),  # the main value fetchers' W_O: invisible to CMAP (it patches
        # head outputs before W_O), caught by DCM heads patched
    ],
)
def test_a_planted_change_of_mechanism_is_not_called_the_same_circuit(base, circuit, heads, where):
    c = Comparison(variant(base, "planted", heads, where), base, circuit, TINY)
    verdict = c.verdict()
    assert verdict.label == "circuit damaged" and not verdict.same_mechanism, verdict


def test_the_paper_zoo_gets_the_paper_verdicts(base, circuit):
    """toy-goat and toy-float: the gain runs through the circuit; toy-vicuna: no gain, same circuit. The quick
    lane (500 prompts for accuracy and CMAP, 140 for the rest)."""
    verdicts = {
        name: Comparison(get_model(name), base, circuit, QUICK).verdict().label
        for name in ("toy-goat", "toy-float", "toy-vicuna")
    }
    assert verdicts == {
        "toy-goat": "same circuit, strengthened",
        "toy-float": "same circuit, strengthened",
        "toy-vicuna": "no gain, same circuit",
    }


# --- the comparison's rules on synthetic numbers: no model runs -----------------------------------------------

STUB_CIRCUIT = Circuit(
    "stub",
    {
        "value_fetcher": HeadGroup("value_fetcher", "last", ((0, 0), (0, 1), (0, 2), (0, 3))),
        "pos_transmitter": HeadGroup("pos_transmitter", "last", ((1, 0), (1, 1), (1, 2), (1, 3))),
        "pos_detector": HeadGroup("pos_detector", "query_label", ((2, 0), (2, 1), (2, 2), (2, 3))),
        "struct_reader": HeadGroup("struct_reader", "prev_query_label", ((2, 0), (1, 0), (0, 0), (0, 1))),
    },
)


def _stub_handle(name, tokenizer=None):
    return SimpleNamespace(
        name=name, shape=SimpleNamespace(n_layers=3, n_heads=4), fingerprint={}, tokenizer=tokenizer, model=None
    )


def _without_models(tokenizer, lane=TINY) -> Comparison:
    """A comparison of two stand-in handles: its claims, or each side's measurements (``side`` keys), are set by hand,
    so that only the comparison's own rules run."""
    c = Comparison(_stub_handle("synthetic", tokenizer), _stub_handle("synthetic-base", tokenizer), STUB_CIRCUIT, lane)
    c._base_cache = {}  # not the process-wide base side: each test sets its own
    return c


@pytest.fixture
def stub(toy_tokenizer):
    return _without_models(toy_tokenizer)


def _synthetic(
    c: Comparison,
    *,
    gain,
    share=0.7,
    beats=True,
    routes=True,
    patching=True,
    ft_task=True,
    base_task=True,
    faithfulness=(0.6, 0.6),
):
    """The verdict of a comparison whose claims are set by hand: ``beats``, ``routes``, ``patching``, ``*_task``: what
    each check says (None: does not apply); ``faithfulness``: the base's and the fine-tune's circuit / full ratio."""
    task = [
        Check("accuracy", "base does the task", base_task, "base at chance"),
        Check("accuracy", "fine_tune does the task", ft_task, "fine-tune at chance"),
    ]
    c._claims = {
        "accuracy": ClaimComparison("accuracy", [Row("accuracy", "accuracy", {}, 0.6, 0.6 + gain.value, gain)], task),
        "faithfulness": ClaimComparison(
            "faithfulness",
            [Row("faithfulness", "faithfulness (circuit / full)", {}, *faithfulness, Estimate(0.0, -0.1, 0.1))],
            [Check("faithfulness", "circuit beats random circuits", beats, "not above random")],
        ),
        "attention_knockout": ClaimComparison(
            "attention_knockout", [], [Check("k", "same attention routes", routes, "routes moved")]
        ),
        "dcm_patching": ClaimComparison(
            "dcm_patching", [], [Check("d", "the base's DCM heads carry as much", patching, "dcm weaker")]
        ),
        "cmap": ClaimComparison(
            "cmap",
            [
                Row(
                    "cmap",
                    "share",
                    {"group": "full_circuit"},
                    0.6,
                    0.8,
                    Estimate(share, share - 0.1, share + 0.1),
                    "share of gain",
                )
            ],
            [],
        ),
    }
    return c.verdict()


@pytest.mark.parametrize(
    "kwargs, label",
    [
        (dict(gain=Estimate(0.2, 0.1, 0.3), share=0.75), "same circuit, strengthened"),
        (dict(gain=Estimate(0.2, 0.1, 0.3), share=0.3), "gain largely outside the circuit"),
        (dict(gain=Estimate(0.01, -0.02, 0.04)), "no gain, same circuit"),
        (dict(gain=Estimate(-0.2, -0.3, -0.1), share=0.2), "same circuit, weakened"),
        (dict(gain=Estimate(-0.2, -0.3, -0.1), share=0.9), "circuit damaged"),
        (dict(gain=Estimate(0.2, 0.1, 0.3), beats=False), "circuit damaged"),
        (dict(gain=Estimate(0.2, 0.1, 0.3), routes=False), "circuit damaged"),
        (dict(gain=Estimate(0.2, 0.1, 0.3), patching=False), "circuit damaged"),
        (dict(gain=Estimate(-0.5, -0.6, -0.4), ft_task=False), "does not do the task"),
    ],
)
def test_verdict_rules(stub, kwargs, label):
    verdict = _synthetic(stub, **kwargs)
    assert verdict.label == label
    assert verdict.same_mechanism == (label in SAME_MECHANISM)


# each way the circuit can be damaged, and the accuracy differences and shares of the rules below "circuit damaged"
DAMAGE = {
    "none": {},
    "beats random": dict(beats=False),
    "routes moved": dict(routes=False),
    "DCM heads weaker": dict(patching=False),
    "faithfulness halved": dict(faithfulness=(0.6, 0.29)),
}
GAINS = {
    "rose": Estimate(0.2, 0.1, 0.3),
    "rose, interval contains 0": Estimate(0.01, -0.02, 0.04),
    "fell, interval contains 0": Estimate(-0.01, -0.04, 0.02),
    "fell": Estimate(-0.2, -0.3, -0.1),
}
TASK = {"both do the task": {}, "fine-tune at chance": dict(ft_task=False), "base at chance": dict(base_task=False)}


def _rules_that_apply(task, damage, gain, share) -> set[str]:
    """README's verdict rules, each read on its own (the order between them is what the test checks)."""
    fell, rose, contains_0 = gain.hi < 0, gain.lo > 0, gain.lo <= 0 <= gain.hi
    through = share >= 0.5
    applies = {
        "does not do the task": bool(TASK[task]),
        "circuit damaged": bool(DAMAGE[damage]) or (fell and through),
        "same circuit, weakened": fell and not through,
        "no gain, same circuit": contains_0,
        "same circuit, strengthened": rose and through,
        "gain largely outside the circuit": rose and not through,
    }
    return {label for label, holds in applies.items() if holds}


def test_the_first_verdict_rule_that_applies_wins_for_every_pair_of_rules(stub):
    """Every combination of the task guard, each kind of damage, the accuracy difference (a gain interval
    containing 0 included) and the share of it the circuit carries: the verdict is the first of VERDICT_RULES that
    applies, so that every pair of rules that can hold at once is decided in the stated order."""
    from mechbench.compare import VERDICT_RULES

    order = [label for label, _ in VERDICT_RULES]
    pairs_decided = set()
    for task, damage, (gain_name, gain), share in itertools.product(TASK, DAMAGE, GAINS.items(), (0.3, 0.75)):
        applies = _rules_that_apply(task, damage, gain, share)
        expected = min(applies, key=order.index)
        verdict = _synthetic(stub, gain=gain, share=share, **TASK[task], **DAMAGE[damage])
        assert verdict.label == expected, (task, damage, gain_name, share, sorted(applies), verdict)
        pairs_decided |= {(expected, other) for other in applies - {expected}}
    impossible = {
        ("same circuit, weakened", "no gain, same circuit"),
        ("same circuit, weakened", "same circuit, strengthened"),
        ("same circuit, weakened", "gain largely outside the circuit"),
        ("same circuit, strengthened", "gain largely outside the circuit"),  # opposite differences or shares
        ("no gain, same circuit", "same circuit, strengthened"),  # a rise is an interval above 0 (the cases
        ("no gain, same circuit", "gain largely outside the circuit"),
    }  # "rose, interval contains 0" decide it)
    assert pairs_decided == {(a, b) for i, a in enumerate(order) for b in order[i + 1 :]} - impossible


@pytest.mark.parametrize(
    "kwargs, label",
    [
        (
            dict(gain=Estimate(0.03, 0.0, 0.06), share=0.9),
            "no gain, same circuit",
        ),  # an interval touching 0 contains it
        (dict(gain=Estimate(-0.03, -0.06, 0.0), share=0.9), "no gain, same circuit"),
        (dict(gain=Estimate(-0.03, -0.06, -0.001), share=0.9), "circuit damaged"),
        (dict(gain=Estimate(0.2, 0.1, 0.3), share=0.5), "same circuit, strengthened"),  # "at least half" of the gain
        (dict(gain=Estimate(0.2, 0.1, 0.3), share=0.49), "gain largely outside the circuit"),
        (dict(gain=Estimate(-0.2, -0.3, -0.1), share=0.5), "circuit damaged"),  # at least half of the loss
        (dict(gain=Estimate(-0.2, -0.3, -0.1), share=0.49), "same circuit, weakened"),
        (dict(gain=Estimate(0.01, -0.02, 0.04), faithfulness=(0.6, 0.3)), "no gain, same circuit"),  # keeps 0.5 of it
        (dict(gain=Estimate(0.01, -0.02, 0.04), faithfulness=(0.6, 0.2999)), "circuit damaged"),
        (dict(gain=Estimate(0.01, -0.02, 0.04), beats=None, routes=None, patching=None), "no gain, same circuit"),
    ],
)
def test_verdict_thresholds_at_their_boundaries(stub, kwargs, label):
    """Each threshold on its boundary; a check that does not apply (None) is no damage."""
    assert _synthetic(stub, **kwargs).label == label


def test_path_patching_loses_a_group_under_half_the_bases_recall(stub):
    """ "Under half of the circuit's heads that lead the base's scores lead the fine-tune's": a group whose
    fine-tune recall is exactly half the base's is kept, one below half is lost."""
    from mechbench.compare import CLAIMS

    def scores(leading):  # the given heads lead the grid, in that order
        grid = torch.zeros(3, 4)
        for rank, (layer, head) in enumerate(leading):
            grid[layer, head] = -1.0 + 0.01 * rank
        return grid

    others = [(1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1), (2, 2), (2, 3)]
    vf, pt = STUB_CIRCUIT.groups["value_fetcher"].heads, STUB_CIRCUIT.groups["pos_transmitter"].heads
    base = {
        "value_fetcher": scores(vf),
        "pos_transmitter": scores(pt),  # recall 1
        "pos_detector": scores([(2, 0), (2, 1), (0, 0), (0, 1)]),  # recall 0.5
        "struct_reader": scores([(2, 0), (1, 0), (2, 1), (2, 2)]),
    }  # recall 0.5
    fine_tune = {
        "value_fetcher": scores(vf[:2] + tuple(others[:2])),  # 0.5 of 1: kept
        "pos_transmitter": scores(pt[:1] + tuple(others[4:7])),  # 0.25 of 1: lost
        "pos_detector": scores([(2, 0), (0, 0), (0, 1), (0, 2)]),  # 0.25 of 0.5: kept
        "struct_reader": scores([(2, 1), (2, 2), (2, 3), (0, 2)]),
    }  # 0 of 0.5: lost
    stub._base_cache["discovery"] = SimpleNamespace(scores=base)
    stub._cache["discovery"] = SimpleNamespace(scores=fine_tune)
    rows, (check,) = CLAIMS["path_patching"](stub)
    assert {r.keys["group"]: (r.base, r.fine_tune) for r in rows} == {
        "value_fetcher": (1.0, 0.5),
        "pos_transmitter": (1.0, 0.25),
        "pos_detector": (0.5, 0.25),
        "struct_reader": (0.5, 0.0),
    }
    assert check.passed is False and check.value == 2, check
    assert "pos_transmitter 0.25 vs 1.00" in check.message and "struct_reader 0.00 vs 0.50" in check.message
    assert "value_fetcher" not in check.message and "pos_detector" not in check.message


def _correct(hits: int, n: int) -> torch.Tensor:
    return torch.arange(n) < hits


def test_dcm_heads_patched_carry_from_10_percent_of_the_targets(monkeypatch, toy_tokenizer):
    """A (group, desideratum) is checked when its DCM heads, patched in the base, reach CARRIED (10%) of the
    targets; the measure is in percent: 9.5% is not carried (its loss is not checked), 10% is."""
    from mechbench import compare
    from mechbench.claims.specs import dcm

    n = 200
    monkeypatch.setattr(
        dcm,
        "stored_runs",
        lambda c: {(g, "object_value"): {"heads": [[0, 0]], "test_accuracy": 0.5} for g in STUB_CIRCUIT.groups},
    )
    lane = replace(TINY, patching_runs=1, patching_pairs=n, n_boot=400)
    c = _without_models(toy_tokenizer, lane)
    hits = {"value_fetcher": (19, 0), "pos_transmitter": (20, 0), "pos_detector": (60, 60), "struct_reader": (2, 0)}
    c._base_cache[("dcm_patching", "object_value")] = {g: [_correct(b, n)] for g, (b, _) in hits.items()}
    c._cache[("dcm_patching", "object_value")] = {g: [_correct(f, n)] for g, (_, f) in hits.items()}
    rows, (check,) = compare.CLAIMS["dcm_patching"](c)
    assert {r.keys["group"]: r.base for r in rows} == {
        "value_fetcher": 9.5,
        "pos_transmitter": 10.0,
        "pos_detector": 30.0,
        "struct_reader": 1.0,
    }
    assert check.passed is False and check.value == 1, check
    assert "pos_transmitter object_value" in check.message and "value_fetcher" not in check.message
    assert "Bonferroni over the 2 carried" in check.message


def test_dcm_groups_carry_from_a_test_accuracy_of_a_tenth(monkeypatch, toy_tokenizer):
    """The same threshold on DCM's own measure, a fraction: a group at 0.095 test accuracy is not checked, one at
    0.10 is."""
    from mechbench import compare
    from mechbench.claims.specs import dcm
    from mechbench.methods.dcm import DCMResult

    n = 200
    monkeypatch.setattr(
        dcm,
        "stored_runs",
        lambda c: {(g, "object_value"): {"heads": [[0, 0]], "test_accuracy": 0.5} for g in STUB_CIRCUIT.groups},
    )
    c = _without_models(toy_tokenizer, replace(TINY, dcm_split=(1, 1, n), dcm_all_desiderata=False, n_boot=400))
    hits = {"value_fetcher": (19, 0), "pos_transmitter": (20, 0), "pos_detector": (60, 60), "struct_reader": (2, 0)}
    for cache, side in ((c._base_cache, 0), (c._cache, 1)):
        cache[("dcm", "object_value", tuple(STUB_CIRCUIT.groups))] = {
            g: DCMResult(
                g,
                "object_value",
                ((0, 0),),
                torch.zeros(1),
                0.0,
                _correct(h[side], n).float().mean().item(),
                _correct(h[side], n),
            )
            for g, h in hits.items()
        }
    rows, (check,) = compare.CLAIMS["dcm"](c)
    assert check.passed is False and check.value == 1, check
    assert "pos_transmitter object_value" in check.message and "value_fetcher" not in check.message


def test_a_fine_tune_of_another_shape_or_itself_is_refused(base, circuit):
    with pytest.raises(MechbenchError, match="two models"):
        Comparison(base, base, circuit, TINY)


def test_bases_and_circuits_are_found_or_asked_for():
    assert base_name_of("toy-goat") == "toy-llama"
    assert base_name_of(zoo_dir("toy-goat")) == "toy-llama"  # an adapter directory names its base
    with pytest.raises(MechbenchError, match="--base"):
        base_name_of(zoo_dir("toy-float"))
    assert base_circuit_name("toy-llama") == "toy-llama"
    with pytest.raises(MechbenchError, match="mechbench baseline toy-vicuna --baselines-dir"):
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
    outcome = check_claim(
        "accuracy",
        {"model": "my-ckpt"},
        0.8,
        n=500,
        lookup_keys={"model": "toy-goat"},
        baseline_model="toy-goat",
        results=writer,
    )
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


def test_the_pytest_route_compares_a_fine_tune_deselects_its_own_claims_and_writes_the_report(pytester, tmp_path):
    """``pytest suites/ --model=toy-goat --compare --quick``, one claim of it for time: toy-goat's absolute-claim
    tests are deselected, its comparison runs beside toy-llama, the results keep toy-goat's name, and the report
    is written when the session ends (the route CI once ran in full, 72 s, beside this file's in-process
    verdicts)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    results = tmp_path / "results"
    done = pytester.runpytest_subprocess(
        str(root / "suites"),
        "--model=toy-goat",
        "--compare",
        "--quick",
        "-k",
        "test_compared_with_base and accuracy",
        f"--results-dir={results}",
        "-p",
        "no:cacheprovider",
        "-rA",
    )
    done.assert_outcomes(passed=1)
    assert done.ret == pytest.ExitCode.OK
    said = done.stdout.str()
    assert "deselected" in said and "compare:accuracy [toy-goat vs toy-llama]" in said
    assert (results / "compare-toy-goat.md").is_file()
    rows = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    assert any(r["claim"] == "compare:accuracy" and r.get("model") == "toy-goat" for r in rows)
