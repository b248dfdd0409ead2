"""Claim: the circuit found on the base model carries the task in the base and in its fine-tunes (paper,
docs/paper.md §8.1: the Llama-7B circuit keeps 0.66 of Llama's 0.66, 0.73 of Goat's 0.82, 0.72 of FLoat's 0.82,
while random circuits of the same sizes keep 0.00-0.01).

Everything outside the circuit is mean-ablated (position-specific means over 500 ablation prompts, docs/paper.md
§5). The circuit's accuracy is checked against the stored baseline with the binomial bound of the accuracy claim;
the mean accuracy of 10 random circuits (same per-group sizes) within 3*sqrt(2) of its standard error, which
comes mostly from the heads drawn (on the toy zoo single random circuits range from 0.01 to 0.5); and the circuit
must beat the random circuits, the paper's contrast, which holds or fails on the model without any stored number
(the lower end of the 95% interval of the difference, from resampling whole contexts, must be above 0).
"""

from mechbench.claims.spec import Claim
from mechbench.claims.tolerance import binomial, mean_of_draws
from mechbench.methods.ablation import faithfulness
from mechbench.stats import cluster_bootstrap, cluster_se

CLAIM = Claim(
    order=2,
    name="faithfulness",
    title="faithfulness",
    sections="8.1, 8.2",
    suite="test_faithfulness.py",
    measures="circuit accuracy with the rest mean-ablated; 10 random circuits; circuit beats random",
    description=(
        "Mean-ablated circuit accuracy (heads outside the circuit set to their position-specific mean) "
        "versus full-model accuracy, per circuit, evaluated model and metric."
    ),
    unit="fraction",
    keys=("circuit", "model", "metric"),
    rows=("circuit", "model"),
    column="metric",
    sizes=(("prompts", 500),),
    fixed=(("ablation_prompts", 500),),  # the paper's evaluation and ablation-mean sizes
    repeats=(("random_circuits", 10),),  # random circuits averaged (the paper's)
    tolerance="binomial; random circuits: 3*sqrt(2)*sd/sqrt(10); beating random: 95% interval over contexts > 0",
)


def _measured(run):
    """Full, circuit and random-circuit accuracy (and the prompts' contexts), computed once per model, circuit,
    sample size and seed: the three tests below check parts of one measurement."""
    model, circuit_name = run.model, run.circuit_name

    def compute():
        dataset = run.prompts()
        full = run.correct().float().mean().item()
        return (
            faithfulness(
                model,
                run.circuit(),
                dataset,
                run.ablation_means(),
                full,
                n_random=run.repeat("random_circuits"),
                seed=run.seed,
            ),
            dataset.clusters().numpy(),
            len(dataset),
        )

    return run.once(("faithfulness", model.name, circuit_name, run.size("prompts"), run.seed), compute)


@CLAIM.test(per="circuit")
def circuit_accuracy(run):
    f, clusters, n = _measured(run)
    run.check(
        {"circuit": run.circuit_name, "model": run.model.name, "metric": "circuit_accuracy"},
        f.circuit_accuracy,
        n=n,
        correct=f.circuit_correct,
        clusters=clusters,
        tolerance=binomial(f.circuit_accuracy, n),
    )


@CLAIM.test(per="circuit")
def random_circuit_accuracy(run):
    f, clusters, n = _measured(run)
    # the mean of the random circuits varies mostly with the heads drawn: the spread of the circuits' accuracies
    per_circuit = f.random_correct.float().mean(1)
    sd = float(per_circuit.std(unbiased=True)) if len(per_circuit) > 1 else 0.0
    # its interval adds what every circuit shares, the prompts: the cluster-robust SE of the per-prompt mean
    shared = cluster_se(f.random_correct.float().mean(0).numpy(), clusters)
    run.check(
        {"circuit": run.circuit_name, "model": run.model.name, "metric": "random_circuit_accuracy"},
        f.random_circuit_accuracy,
        n=n,
        std=sd,
        tolerance=mean_of_draws(sd, len(per_circuit), what="random circuits"),
        shared_se=shared,
    )


@CLAIM.test(per="circuit")
def circuit_beats_random_circuits(run):
    f, clusters, n = _measured(run)
    circuit_name, model = run.circuit_name, run.model
    beats = cluster_bootstrap(
        lambda m: m["circuit"] - m["random"],
        {"circuit": f.circuit_correct.numpy(), "random": f.random_correct.float().mean(0).numpy()},
        clusters,
        seed=run.seed,
    )
    keys = {"circuit": circuit_name, "model": model.name}
    run.effect_above_zero(
        "circuit beats random circuits",
        keys,
        beats,
        lambda passed: (
            f"circuit {circuit_name} on {model.name}: accuracy {f.circuit_accuracy:.3f} (faithfulness "
            f"{f.faithfulness:.2f}) minus random circuits' {f.random_circuit_accuracy:.3f} = {beats:+.3f} (95% "
            f"interval over contexts), {'above' if passed else 'not above'} 0"
        ),
    )


@CLAIM.comparison
def compare(c):
    """The base circuit's accuracy, faithfulness (circuit / full) and random circuits' accuracy in both models; the
    fine-tune's circuit must beat its random circuits."""
    from mechbench.compare import Check, Row, as_array  # comparison mode imports the registry, which imports this

    res = {
        who: c.side(
            who,
            "faithfulness",
            lambda who=who, h=h: faithfulness(
                h.model,
                c.circuit,
                c.dataset(),
                c.means(who),
                as_array(c.correct(who)).mean(),
                n_random=c.lane.n_random,
                seed=c.seed,
            ),
        )
        for who, h in c.models.items()
    }
    q = {}
    for who, key in (("base", "b"), ("fine_tune", "f")):
        q[f"full_{key}"] = c.correct(who)
        q[f"circ_{key}"] = res[who].circuit_correct
        q[f"rand_{key}"] = res[who].random_correct.float().mean(0)
    circuit = c.circuit.name

    def ref_circuit(ref):
        return c.stored("faithfulness", circuit=circuit, model=ref, metric="circuit_accuracy")

    def ref_ratio(ref):
        circ, full = ref_circuit(ref), c.stored_accuracy(ref)
        return circ / full if circ is not None and full else None

    def ref_random(ref):
        return c.stored("faithfulness", circuit=circuit, model=ref, metric="random_circuit_accuracy")

    rows = [
        Row(
            "faithfulness",
            "circuit accuracy (rest mean-ablated)",
            {"metric": "circuit_accuracy"},
            res["base"].circuit_accuracy,
            res["fine_tune"].circuit_accuracy,
            c.boot(lambda m: m["circ_f"] - m["circ_b"], q),
            references=c.refs(ref_circuit),
        ),
        Row(
            "faithfulness",
            "faithfulness (circuit / full)",
            {"metric": "faithfulness"},
            res["base"].faithfulness,
            res["fine_tune"].faithfulness,
            c.boot(lambda m: m["circ_f"] / m["full_f"] - m["circ_b"] / m["full_b"], q),
            references=c.refs(ref_ratio),
        ),
        Row(
            "faithfulness",
            f"random circuits' accuracy ({c.lane.n_random} circuits)",
            {"metric": "random_circuit_accuracy"},
            res["base"].random_circuit_accuracy,
            res["fine_tune"].random_circuit_accuracy,
            c.boot(lambda m: m["rand_f"] - m["rand_b"], q),
            references=c.refs(ref_random),
        ),
    ]
    beats = c.boot(lambda m: m["circ_f"] - m["rand_f"], q)
    passed = beats.lo is not None and beats.lo > 0
    check = Check(
        "faithfulness",
        "circuit beats random circuits",
        passed,
        f"{c.fine_tune.name}: circuit {c.circuit.name} minus random circuits = {beats:+.3f} (95% interval "
        f"over contexts) {'above' if passed else 'not above'} 0",
        beats.value,
    )
    return rows, [check]


@CLAIM.workloads
def workloads(p):
    from mechbench.plan import Workload

    n, means, n_random = CLAIM.size("prompts"), CLAIM.size("ablation_prompts"), CLAIM.repeat("random_circuits")
    return [
        Workload(
            "faithfulness",
            forwards=n * (2 + n_random) + means,
            host_reads=means,
            note=f"means over {means} prompts, circuit, {n_random} random circuits",
        )
    ]
