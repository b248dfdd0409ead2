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
from dataclasses import replace

from mechbench.claims.spec import Claim
from mechbench.claims.tolerance import binomial, difference, mean_of_draws
from mechbench.methods.ablation import completeness
from mechbench.models.registry import COMPLETENESS_ITERATIONS, completeness_draws
from mechbench.stats import cluster_se, design_effect, shared_binomial_se

CLAIM = Claim(
    order=3,
    name="completeness",
    title="completeness",
    sections="8.3",
    suite="test_completeness.py",
    measures="F(C\\K), F(M\\K), incompleteness; K random or a whole group",
    description=(
        "Completeness by mean ablation: accuracy of the circuit with K also ablated, F(C\\K), versus the "
        "full model with only K ablated, F(M\\K); incompleteness = |F(M\\K) - F(C\\K)|, K random (p=0.5 "
        "per head) or a whole group."
    ),
    unit="fraction",
    keys=("circuit", "model", "k_method", "metric", "group"),
    rows=("circuit", "model", "k_method", "group"),
    column="metric",
    sizes=(("prompts", 500),),
    fixed=(("ablation_prompts", 500),),
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
    result = completeness(
        model, run.circuit(), dataset, run.ablation_means(), "random_sampling", iterations, seed=run.seed
    )
    f_c, f_m = statistics.fmean(result.circuit_minus_k), statistics.fmean(result.model_minus_k)
    means = {"F_C_minus_K": (f_c,), "F_M_minus_K": (f_m,), "incompleteness": (f_c, f_m)}
    outcomes = []
    for metric, values in (
        ("F_C_minus_K", result.circuit_minus_k),
        ("F_M_minus_K", result.model_minus_k),
        ("incompleteness", result.incompleteness),
    ):
        std = statistics.stdev(values) if len(values) > 1 else 0.0  # unbiased: pstdev under-covers (0.78%)
        outcomes.append(
            run.check(
                {"circuit": circuit_name, "model": model.name, "k_method": "random_sampling", "metric": metric},
                statistics.fmean(values),
                n=n,
                soft=True,
                std=std,
                tolerance=mean_of_draws(std, iterations, n=n, what="draws of K"),
                # its interval adds the prompts every draw shares: a binomial's at the draws' mean accuracies
                shared_se=shared_binomial_se(*means[metric], n=n),
            )
        )
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
            # (its interval: the cluster-robust standard error of the paired per-prompt difference)
            (
                "incompleteness",
                abs(f_m - f_c),
                replace(
                    difference(c_tolerance, m_tolerance, "F(C\\K) and F(M\\K)"),
                    se=cluster_se(
                        (r.model_minus_k_correct[0].float() - r.circuit_minus_k_correct[0].float()).numpy(),
                        clusters.numpy(),
                    ),
                    dof=len(set(clusters.tolist())) - 1,
                ),
                max(c_effect, m_effect),
            ),
        ):
            outcomes.append(
                run.check(
                    {**keys, "metric": metric},
                    value,
                    n=n,
                    soft=True,
                    design_effect=effect,
                    clusters=clusters,
                    tolerance=bound,
                )
            )
    run.settle(outcomes)


@CLAIM.comparison
def compare(c):
    """Incompleteness |F(M\\K) - F(C\\K)| for random K (the same draws in both models) and for each whole group;
    the fine-tune fails only where the whole interval of its difference from the base exceeds the margin."""
    import numpy as np

    from mechbench.compare import INCOMPLETENESS_MARGIN, Check, Row, as_array  # imports the registry: see accuracy

    draws = c.lane.completeness_draws

    def incompleteness(key):
        return lambda m: np.mean([np.abs(m[f"M{key}{d}"] - m[f"C{key}{d}"]) for d in range(draws)], axis=0)

    q = {}
    for who, key in (("base", "b"), ("fine_tune", "f")):
        r = c.side(
            who,
            "completeness",
            lambda who=who: completeness(
                c.models[who].model, c.circuit, c.dataset(), c.means(who), "random_sampling", draws, seed=c.seed
            ),
        )
        for d in range(draws):
            q[f"M{key}{d}"], q[f"C{key}{d}"] = r.model_minus_k_correct[d], r.circuit_minus_k_correct[d]
    inc_b, inc_f = incompleteness("b"), incompleteness("f")
    est = c.boot(lambda m: inc_f(m) - inc_b(m), q)
    means = {k: as_array(v).mean() for k, v in q.items()}
    base_value, ft_value = float(inc_b(means)), float(inc_f(means))
    circuit = c.circuit.name
    rows = [
        Row(
            "completeness",
            f"incompleteness, random K ({draws} draws)",
            {"k_method": "random_sampling"},
            base_value,
            ft_value,
            est,
            references=c.refs(
                lambda ref: c.stored(
                    "completeness", circuit=circuit, model=ref, k_method="random_sampling", metric="incompleteness"
                )
            ),
            note="the interval resamples contexts; the draws of K are the same for both models",
        )
    ]
    check = Check(
        "completeness",
        "as complete as in the base",
        not (est.lo is not None and est.lo > INCOMPLETENESS_MARGIN),
        f"{c.fine_tune.name}: random-K incompleteness {ft_value:.3f} vs the base's {base_value:.3f}, "
        f"difference {est:+.3f}; fails only if the whole interval exceeds {INCOMPLETENESS_MARGIN:g}",
        est.value,
    )
    for group in c.circuit.groups:
        qg = {}
        for who, key in (("base", "b"), ("fine_tune", "f")):
            r = c.side(
                who,
                ("completeness", group),
                lambda who=who, group=group: completeness(
                    c.models[who].model, c.circuit, c.dataset(), c.means(who), "entire_group", group=group
                ),
            )
            qg[f"M{key}"], qg[f"C{key}"] = r.model_minus_k_correct[0], r.circuit_minus_k_correct[0]
        means = {k: as_array(v).mean() for k, v in qg.items()}
        rows.append(
            Row(
                "completeness",
                f"incompleteness, K = {group}",
                {"k_method": "entire_group", "group": group},
                abs(means["Mb"] - means["Cb"]),
                abs(means["Mf"] - means["Cf"]),
                c.boot(lambda m: np.abs(m["Mf"] - m["Cf"]) - np.abs(m["Mb"] - m["Cb"]), qg),
                references=c.refs(
                    lambda ref, group=group: c.stored(
                        "completeness",
                        circuit=circuit,
                        model=ref,
                        k_method="entire_group",
                        group=group,
                        metric="incompleteness",
                    )
                ),
            )
        )
    return rows, [check]


@CLAIM.workloads
def workloads(p):
    from mechbench.plan import Workload, random_k_share

    n, means, draws = CLAIM.size("prompts"), CLAIM.size("ablation_prompts"), completeness_draws(p.circuit)
    # K drawn from every group: the structure readers' early role makes each run nearly whole
    return [
        Workload(
            "completeness",
            forwards=n * (2 + 2 * len(p.roles)) + means,
            host_reads=means,
            prefix=True,
            fast=n * 2 * draws * random_k_share(p.stored, p.shape.n_layers, p.seq) + n * 2 * p.all_groups_share(),
            note=f"{draws} draws of K and 4 groups, C \\ K on the circuit's run, M \\ K on the clean run",
        )
    ]
