"""Claim: the circuit is nearly complete (paper, docs/paper.md §8.3): removing a set K of circuit heads hurts the
circuit about as much as it hurts the whole model. Llama circuit on Llama, K random (p=0.5 per head, 10
draws): F(M\\K) 0.11 +- 0.06, F(C\\K) 0.00 +- 0.01, incompleteness 0.10 +- 0.06; K = a whole group: value
fetchers 0.00 vs 0.19, position transmitters 0.02 vs 0.23, detectors 0.02 vs 0.04, structure readers 0.46 vs
0.58. Spec: mechbench/claims/specs/completeness.py.

Random-K metrics are means over draws, checked within 3*sqrt(2)*std/sqrt(draws) (the difference of two means
over draws); whole-group F values within the accuracy claim's binomial bound, their incompleteness within the
sum of the two.
"""

import statistics

import pytest

from mechbench.claims import get, tolerance
from mechbench.data.dataset import build_dataset
from mechbench.methods.ablation import completeness
from mechbench.models.registry import completeness_draws
from mechbench.pytest_plugin import ablation_means, load_circuit, settle
from mechbench.stats import design_effect

pytestmark = pytest.mark.claim
CLAIM = get("completeness")


def _setup(model, circuit_name, settings):
    circuit = load_circuit(circuit_name, model, settings)
    n = settings.size(CLAIM, "prompts")
    dataset = build_dataset(model.tokenizer, n_examples=n, seed=settings.seed)
    return circuit, dataset, ablation_means(model, settings, CLAIM), n


def test_completeness_random_k(model, circuit_name, settings, claim_check):
    circuit, dataset, means, n = _setup(model, circuit_name, settings)
    iterations = completeness_draws(circuit_name)  # as the paper ran them for this circuit (its model's spec)
    result = completeness(model, circuit, dataset, means, "random_sampling", iterations, seed=settings.seed)
    outcomes = []
    for metric, values in (("F_C_minus_K", result.circuit_minus_k), ("F_M_minus_K", result.model_minus_k),
                           ("incompleteness", result.incompleteness)):
        std = statistics.pstdev(values)
        outcomes.append(claim_check(
            CLAIM, {"circuit": circuit_name, "model": model.name, "k_method": "random_sampling", "metric": metric},
            statistics.fmean(values), n=n, model=model, soft=True, std=std,
            tolerance=tolerance.mean_of_draws(std, iterations, n=n, what="draws of K")))
    settle(outcomes)


def test_completeness_entire_group(model, circuit_name, settings, claim_check):
    circuit, dataset, means, n = _setup(model, circuit_name, settings)
    clusters = dataset.clusters()
    outcomes = []
    for group in circuit.groups:
        r = completeness(model, circuit, dataset, means, "entire_group", group=group)
        f_c, f_m = r.circuit_minus_k[0], r.model_minus_k[0]
        c_effect = design_effect(r.circuit_minus_k_correct[0].float(), clusters)
        m_effect = design_effect(r.model_minus_k_correct[0].float(), clusters)
        c_tolerance, m_tolerance = tolerance.binomial(f_c, n), tolerance.binomial(f_m, n)
        keys = {"circuit": circuit_name, "model": model.name, "k_method": "entire_group", "group": group}
        for metric, value, bound, effect in (
                ("F_C_minus_K", f_c, c_tolerance, c_effect),
                ("F_M_minus_K", f_m, m_tolerance, m_effect),
                # incompleteness is their difference: the larger design effect of the two
                ("incompleteness", abs(f_m - f_c),
                 tolerance.difference(c_tolerance, m_tolerance, "F(C\\K) and F(M\\K)"), max(c_effect, m_effect))):
            outcomes.append(claim_check(CLAIM, {**keys, "metric": metric}, value, n=n, model=model, soft=True,
                                        design_effect=effect, clusters=clusters, tolerance=bound))
    settle(outcomes)
