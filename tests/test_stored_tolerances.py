"""Every stored tolerance is what its rule gives today for the record's own fields.

A record stored under ``--update-baselines`` carries the bound its claim's rule gave at the time (``tolerance``,
``tolerance_same_sample``) beside the numbers that rule read (``value``, ``n``, ``std``). When a rule changes (a
floor on a spread, Agresti-Coull in place of the plain binomial p), a record stored before it keeps the old bound,
and every later check of that record applies a rule nobody states any more. Here each measured record's bound is
recomputed from its own fields with the rule its claim's spec (mechbench/claims/specs) calls today, and a published
record's from the formula its ``tolerance_rule`` states; a mismatch names the file, the record's keys, the stored
and the recomputed numbers. The fix is to re-store the record (``pytest suites/<claim suite> --model=<model>
--update-baselines``), never to edit the number.

What a rule reads beyond the record (a record stores neither): the number of draws of a mean over draws, which is
the claim's repeat (DCM patching's runs of pairs, faithfulness's random circuits) or the circuit's registered
completeness draws; and a whole-group incompleteness's bound is the sum of its F(C\\K) and F(M\\K) records' bounds,
so it is recomputed from those two records' values. DCM patching's spread (``std``) is the larger of the runs'
population spread and one run's binomial spread at their mean (tolerance.spread_of_fresh_draws); the runs are not
stored, so only that floor can be recomputed: a stored std below it was written by the plain spread.

Stored numbers are rounded (check.py: value and std to 6 decimals; the rules: tolerances to 4), so a recomputed
bound matches when the stored one is what the rule gives for some inputs within half a unit of the stored ones.
No model is loaded.
"""

from __future__ import annotations

import importlib
import itertools
import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from mechbench import baselines
from mechbench.claims import CLAIMS
from mechbench.claims import tolerance as rules
from mechbench.models.registry import completeness_draws

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ROOT / "baselines"
FILES = sorted(p.stem for p in BASELINES.glob("*.json"))

#: How each stored field is rounded: check.py stores value and std to 6 decimals, the rules round bounds to 4.
DIGITS = {"tolerance": 4, "tolerance_same_sample": 4, "std": 6}
INPUT_HALF_UNIT = 0.5e-6  # a measured record's value and std, rounded to 6 decimals when stored

# --- the rules measured records are stored by, as the specs call them today ----------------------------------
#
# Each rule maps its inputs (numbers read from the record, or from the records it is derived from) to the fields it
# stores. SPEC_CALLS holds each spec's call of the rule (whitespace aside): where a spec calls its rule otherwise,
# RULES below must follow it, and the test of the specs fails until it does.


def _bound(t: rules.Tolerance, **more) -> dict:
    return {"tolerance": t.value, "tolerance_same_sample": t.same_sample, **more}


def _binomial(record, records):
    return {"p": record.value}, lambda x: _bound(rules.binomial(x["p"], record.get("n")))


def _dcm(record, records):
    return {"p": record.value["test_accuracy"]}, lambda x: _bound(
        rules.binomial(x["p"], record.get("n"), rounding=0.05, why_rounding="the mask's training path")
    )


def _dcm_patching(record, records, claim="dcm_patching"):
    n, runs = record.get("n"), CLAIMS[claim].repeat("runs")

    def rule(x):
        # spread_of_fresh_draws(runs) = max(pstdev(runs), one run's binomial spread at their mean); of the mean alone
        # it is that floor, and the stored std is at least the runs' pstdev
        std = max(x["std"], rules.spread_of_fresh_draws([x["mean"]], n, unit=100))
        return _bound(rules.mean_of_draws(std, runs, n=n, unit=100, rounding=0.05, what="runs of pairs"), std=std)

    return {"mean": record.value, "std": record.get("std")}, rule


def _dcm_additional(record, records):
    # the DCM claim's rule for its heads, DCM patching's (with this claim's runs) for its percentages
    if record.keys["measure"] == "dcm":
        return _dcm(record, records)
    return _dcm_patching(record, records, claim="dcm_additional")


def _completeness(record, records):
    n = record.get("n")
    if record.keys["k_method"] == "random_sampling":
        draws = completeness_draws(record.keys["circuit"])
        return {"std": record.get("std")}, lambda x: _bound(
            rules.mean_of_draws(x["std"], draws, n=n, what="draws of K")
        )
    if record.keys["metric"] != "incompleteness":
        return _binomial(record, records)
    c, m = (_sibling(record, records, metric=f) for f in ("F_C_minus_K", "F_M_minus_K"))
    return {"c": c.value, "m": m.value}, lambda x: _bound(
        rules.difference(rules.binomial(x["c"], c.get("n")), rules.binomial(x["m"], m.get("n")), "F(C\\K) and F(M\\K)")
    )


def _faithfulness(record, records):
    if record.keys["metric"] == "circuit_accuracy":
        return _binomial(record, records)
    if record.keys["metric"] == "random_circuit_accuracy":
        draws = CLAIMS["faithfulness"].repeat("random_circuits")
        return {"std": record.get("std")}, lambda x: _bound(
            rules.mean_of_draws(x["std"], draws, what="random circuits")
        )
    return None


def _minimality(record, records):
    if record.keys.get("kind") != "head":
        return None
    return {}, lambda x: _bound(rules.widest_binomial(record.get("n")))


def _path_patching(record, records):
    from mechbench.claims.specs.path_patching import MARGIN_RULE

    return {}, lambda x: _bound(rules.fixed(0.05, MARGIN_RULE))


#: claim -> the rule of its measured records: (inputs, rule) for a record, or None where it stores no bound
RULES: dict[str, Callable] = {
    "accuracy": _binomial,
    "attention_knockout": _binomial,
    "cmap": _binomial,
    "completeness": _completeness,
    "dcm": _dcm,
    "dcm_patching": _dcm_patching,
    "dcm_additional": _dcm_additional,
    "input_cmap": _binomial,
    "faithfulness": _faithfulness,
    "minimality": _minimality,
    "path_patching": _path_patching,
    "circuits": lambda record, records: None,  # heads, stored by discovery with no bound
}

#: claim -> the calls of its rules in its spec, which RULES mirrors
SPEC_CALLS = {
    "accuracy": ["tolerance=binomial(measured, n)"],
    "attention_knockout": ["tolerance=binomial(correct.float().mean().item(), n)"],
    "cmap": ["tolerance=binomial(correct.float().mean().item(), n)"],
    "completeness": [
        "iterations = completeness_draws(circuit_name)",
        'tolerance=mean_of_draws(std, iterations, n=n, what="draws of K")',
        "c_tolerance, m_tolerance = binomial(f_c, n), binomial(f_m, n)",
        "difference(c_tolerance, m_tolerance,",
    ],
    "dcm": ['tolerance=binomial(acc, n_test, rounding=0.05, why_rounding="the mask\'s training path")'],
    "dcm_patching": [
        'n, n_runs = run.size("pairs"), run.repeat("runs")',
        "std = spread_of_fresh_draws(values, n, unit=100)",
        'tolerance=mean_of_draws(std, n_runs, n=n, unit=100, rounding=0.05, what="runs of pairs")',
    ],
    "dcm_additional": ["dcm_checks(run,", "patching_checks("],  # the two rules above, called through them
    "input_cmap": ["tolerance=binomial(value, n)"],
    "faithfulness": [
        "tolerance=binomial(f.circuit_accuracy, n)",
        'n_random=run.repeat("random_circuits")',
        'tolerance=mean_of_draws(sd, len(per_circuit), what="random circuits")',
    ],
    "minimality": ["tolerance=widest_binomial(n)"],
    "path_patching": ["tolerance=fixed(0.05, MARGIN_RULE)"],
}


def _sibling(record, records, **change):
    keys = {**record.keys, **change}
    found = [r for r in records if r.keys == keys and r.measured == record.measured]
    assert len(found) == 1, f"{record.keys}: its bound is derived from the record {keys}, which is not stored once"
    return found[0]


# --- the rules published records state (each record's tolerance_rule names its formula) ----------------------


def _plain_binomial(p: float, n: int, extra: float) -> float:
    return round(3 * math.sqrt(2 * p * (1 - p) / n) + extra, 4)


#: the opening of a published record's tolerance_rule -> its inputs and formula
PAPER_RULES = [
    ("3*sqrt(p(1-p)/500 + p(1-p)/500) + 0.005", lambda r, rs: ({"p": r.value}, _paper_binomial(r))),
    ("3*sqrt(p(1-p)/n_measured + p(1-p)/n_baseline) + 0.005", lambda r, rs: ({"p": r.value}, _paper_binomial(r))),
    (
        "on value.test_accuracy: 3*sqrt(p(1-p)/500 + p(1-p)/500) + 0.005",
        lambda r, rs: (
            {"p": r.value["test_accuracy"]},
            lambda x: {"tolerance": _plain_binomial(x["p"], r.get("n"), 0.005 + 0.05)},
        ),
    ),
    (
        "3*sqrt(2)*std/sqrt(n_iterations) + 0.005",
        lambda r, rs: (
            {"std": r.get("std")},
            lambda x: {"tolerance": rules.mean_of_draws(x["std"], r.keys["n_iterations"], rounding=0.005).value},
        ),
    ),
    (
        "3*sqrt(2)*std/sqrt(n_runs) + 0.05 + 100/n",
        lambda r, rs: (
            {"std": r.get("std")},
            lambda x: {
                "tolerance": rules.mean_of_draws(
                    x["std"], r.keys["n_runs"], n=r.get("n"), unit=100, rounding=0.05
                ).value
            },
        ),
    ),
    (
        "the sum of the tolerances of F(C\\K) and F(M\\K)",
        lambda r, rs: (
            {},
            lambda x: {
                "tolerance": round(
                    sum(_sibling(r, rs, metric=f).get("tolerance") for f in ("F_C_minus_K", "F_M_minus_K")), 4
                )
            },
        ),
    ),
    (
        "on value.before and value.after: 3*sqrt(2*0.25/100) + 0.005",
        lambda r, rs: ({}, lambda x: {"tolerance": _plain_binomial(0.5, 100, 0.005)}),
    ),
    ("0.05:", lambda r, rs: ({}, lambda x: {"tolerance": 0.05})),
    ("0.1:", lambda r, rs: ({}, lambda x: {"tolerance": 0.1})),
]


def _paper_binomial(record):
    return lambda x: {"tolerance": _plain_binomial(x["p"], record.get("n"), 0.005)}


def _paper_rule(record, records):
    rule = record.get("tolerance_rule")
    if rule is None:
        return None
    for opening, make in PAPER_RULES:
        if rule.startswith(opening):
            return make(record, records)
    raise AssertionError(f"{record.keys}: no formula known for the published tolerance_rule {rule!r}")


# --- the comparison ------------------------------------------------------------------------------------------


def recomputed(record, records, claim) -> tuple[dict[str, tuple[float, float]], dict]:
    """Each field the record's rule gives, as the range of its rounded value over inputs within half a unit of the
    stored ones (a published record's inputs are its published numbers, as they are), and the inputs read."""
    made = RULES[claim](record, records) if record.measured else _paper_rule(record, records)
    if made is None:
        return {}, {}
    inputs, rule = made
    half = INPUT_HALF_UNIT if record.measured else 0.0
    ranges: dict[str, list[float]] = {}
    for signs in itertools.product((-1, 0, 1), repeat=len(inputs)):
        nudged = {k: v + s * half for (k, v), s in zip(inputs.items(), signs)}
        for name, v in rule(nudged).items():
            if v is not None:
                ranges.setdefault(name, []).append(round(v, DIGITS[name]))
    return {k: (min(v), max(v)) for k, v in ranges.items()}, inputs


def mismatches(claim: str) -> list[str]:
    table = baselines.load(claim, BASELINES)
    found = []
    for record in table.records:
        bounds, inputs = recomputed(record, table.records, claim)
        fields = ("tolerance", "tolerance_same_sample") + (("std",) if "std" in bounds else ())
        wrong = []
        for name in fields:
            stored, want = record.get(name), bounds.get(name)
            if stored is None and want is None:
                continue
            if stored is None or want is None or not want[0] - 1e-9 <= stored <= want[1] + 1e-9:
                shown = "none" if want is None else f"{want[0]}" if want[0] == want[1] else f"{want[0]}..{want[1]}"
                wrong.append(f"{name} stored {stored if stored is not None else 'none'}, recomputed {shown}")
        if wrong:
            kind = "measured" if record.measured else "published"
            read = ", ".join(f"{k}={v}" for k, v in inputs.items())
            found.append(
                f"{table.path.name} {kind} {record.keys}: {'; '.join(wrong)} (from n={record.get('n')}, {read})"
            )
    return found


@pytest.mark.parametrize("claim", FILES)
def test_every_stored_tolerance_is_what_its_rule_gives_today(claim):
    found = mismatches(claim)
    assert not found, (
        f"{len(found)} records of baselines/{claim}.json carry another tolerance than their rule gives for their "
        f"own fields (re-store them with --update-baselines):\n" + "\n".join(found)
    )


def test_every_file_has_a_rule():
    missing = sorted(set(FILES) - set(RULES))
    assert not missing, f"baseline files with no recomputation here: add their claims' rules to RULES: {missing}"


@pytest.mark.parametrize("claim", sorted(SPEC_CALLS))
def test_the_recomputed_rules_are_the_specs(claim):
    """RULES mirrors each spec's call of its rule: a spec that calls it otherwise fails here until RULES follows."""
    source = Path(importlib.import_module(f"mechbench.claims.specs.{claim}").__file__).read_text(encoding="utf-8")
    flat = re.sub(r"\s+", "", source)
    missing = [call for call in SPEC_CALLS[claim] if re.sub(r"\s+", "", call) not in flat]
    assert not missing, (
        f"mechbench/claims/specs/{claim}.py no longer calls {missing}: update RULES (and SPEC_CALLS) in "
        f"{Path(__file__).name} to the rule it stores today"
    )
