"""Claim: the circuit is nearly complete (paper, docs/paper.md §8.3): removing a set K of circuit heads hurts the
circuit about as much as it hurts the whole model. Llama circuit on Llama, K random (p=0.5 per head, 10
draws): F(M\\K) 0.11 +- 0.06, F(C\\K) 0.00 +- 0.01, incompleteness 0.10 +- 0.06; K = a whole group: value
fetchers 0.00 vs 0.19, position transmitters 0.02 vs 0.23, detectors 0.02 vs 0.04, structure readers 0.46 vs
0.58.

Random-K metrics are means over draws, checked within 3*sqrt(2)*std/sqrt(draws) (the difference of two means
over draws); whole-group F values within the accuracy claim's binomial bound, their incompleteness within the
sum of the two.
"""

import statistics

from mechbench.claims.spec import Claim
from mechbench.claims.tolerance import binomial, difference, mean_of_draws
from mechbench.methods.ablation import completeness
from mechbench.models.registry import COMPLETENESS_ITERATIONS, completeness_draws
from mechbench.stats import design_effect

CLAIM = Claim(
    order=3, name="completeness", title="completeness", sections="8.3", suite="test_completeness.py",
    measures="F(C\\K), F(M\\K), incompleteness; K random or a whole group",
    description=("Completeness by mean ablation: accuracy of the circuit with K also ablated, F(C\\K), versus the "
                 "full model with only K ablated, F(M\\K); incompleteness = |F(M\\K) - F(C\\K)|, K random (p=0.5 "
                 "per head) or a whole group."),
    unit="fraction", keys=("circuit", "model", "k_method", "metric", "group"),
    rows=("circuit", "model", "k_method", "group"), column="metric",
    sizes=(("prompts", 500),), fixed=(("ablation_prompts", 500),),
    # random draws of K: the circuit's model's completeness_iterations (the paper ran 20 for Goat and FLoat), else
    repeats=(("draws_of_k", COMPLETENESS_ITERATIONS),),
    tolerance="random K: 3*sqrt(2)*std/sqrt(draws); a whole group: binomial; incompleteness: their sum",
)


@CLAIM.test(per="circuit")
def completeness_random_k(run):
    model, circuit_name = run.model, run.circuit_name
    dataset = run.prompts()
    n = len(dataset)
    iterations = completeness_draws(circuit_name)  # as the paper ran them for this circuit (its model's spec)
    result = completeness(model, run.circuit(), dataset, run.ablation_means(), "random_sampling", iterations,
                          seed=run.seed)
    outcomes = []
    for metric, values in (("F_C_minus_K", result.circuit_minus_k), ("F_M_minus_K", result.model_minus_k),
                           ("incompleteness", result.incompleteness)):
        std = statistics.stdev(values) if len(values) > 1 else 0.0  # unbiased: pstdev under-covers (0.78%)
        outcomes.append(run.check(
            {"circuit": circuit_name, "model": model.name, "k_method": "random_sampling", "metric": metric},
            statistics.fmean(values), n=n, soft=True, std=std,
            tolerance=mean_of_draws(std, iterations, n=n, what="draws of K")))
    run.settle(outcomes)


@CLAIM.test(per="circuit")
def completeness_entire_group(run):
    model, circuit_name, circuit = run.model, run.circuit_name, run.circuit()
    dataset, means = run.prompts(), run.ablation_means()
    n, clusters = len(dataset), dataset.clusters()
    outcomes = []
    for group in circuit.groups:
        r = completeness(model, circuit, dataset, means, "entire_group", group=group)
        f_c, f_m = r.circuit_minus_k[0], r.model_minus_k[0]
        c_effect = design_effect(r.circuit_minus_k_correct[0].float(), clusters)
        m_effect = design_effect(r.model_minus_k_correct[0].float(), clusters)
        c_tolerance, m_tolerance = binomial(f_c, n), binomial(f_m, n)
        keys = {"circuit": circuit_name, "model": model.name, "k_method": "entire_group", "group": group}
        for metric, value, bound, effect in (
                ("F_C_minus_K", f_c, c_tolerance, c_effect),
                ("F_M_minus_K", f_m, m_tolerance, m_effect),
                # incompleteness is their difference: the larger design effect of the two
                ("incompleteness", abs(f_m - f_c), difference(c_tolerance, m_tolerance, "F(C\\K) and F(M\\K)"),
                 max(c_effect, m_effect))):
            outcomes.append(run.check({**keys, "metric": metric}, value, n=n, soft=True, design_effect=effect,
                                      clusters=clusters, tolerance=bound))
    run.settle(outcomes)
