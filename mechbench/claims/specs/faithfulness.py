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
from mechbench.stats import cluster_bootstrap

CLAIM = Claim(
    order=2, name="faithfulness", title="faithfulness", sections="8.1, 8.2", suite="test_faithfulness.py",
    measures="circuit accuracy with the rest mean-ablated; 10 random circuits; circuit beats random",
    description=("Mean-ablated circuit accuracy (heads outside the circuit set to their position-specific mean) "
                 "versus full-model accuracy, per circuit, evaluated model and metric."),
    unit="fraction", keys=("circuit", "model", "metric"), rows=("circuit", "model"), column="metric",
    sizes=(("prompts", 500),), fixed=(("ablation_prompts", 500),),  # the paper's evaluation and ablation-mean sizes
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
        return (faithfulness(model, run.circuit(), dataset, run.ablation_means(), full,
                             n_random=run.repeat("random_circuits"), seed=run.seed),
                dataset.clusters().numpy(), len(dataset))

    return run.once(("faithfulness", model.name, circuit_name, run.size("prompts"), run.seed), compute)


@CLAIM.test(per="circuit")
def circuit_accuracy(run):
    f, clusters, n = _measured(run)
    run.check({"circuit": run.circuit_name, "model": run.model.name, "metric": "circuit_accuracy"},
              f.circuit_accuracy, n=n, correct=f.circuit_correct, clusters=clusters,
              tolerance=binomial(f.circuit_accuracy, n))


@CLAIM.test(per="circuit")
def random_circuit_accuracy(run):
    f, _, n = _measured(run)
    # the mean of the random circuits varies mostly with the heads drawn: the spread of the circuits' accuracies
    per_circuit = f.random_correct.float().mean(1)
    sd = float(per_circuit.std(unbiased=True)) if len(per_circuit) > 1 else 0.0
    run.check({"circuit": run.circuit_name, "model": run.model.name, "metric": "random_circuit_accuracy"},
              f.random_circuit_accuracy, n=n, std=sd,
              tolerance=mean_of_draws(sd, len(per_circuit), what="random circuits"))


@CLAIM.test(per="circuit")
def circuit_beats_random_circuits(run):
    f, clusters, n = _measured(run)
    circuit_name, model = run.circuit_name, run.model
    beats = cluster_bootstrap(lambda m: m["circuit"] - m["random"],
                              {"circuit": f.circuit_correct.numpy(), "random": f.random_correct.float().mean(0).numpy()},
                              clusters, seed=run.seed)
    keys = {"circuit": circuit_name, "model": model.name}
    run.effect_above_zero("circuit beats random circuits", keys, beats, lambda passed: (
        f"circuit {circuit_name} on {model.name}: accuracy {f.circuit_accuracy:.3f} (faithfulness "
        f"{f.faithfulness:.2f}) minus random circuits' {f.random_circuit_accuracy:.3f} = {beats:+.3f} (95% "
        f"interval over contexts), {'above' if passed else 'not above'} 0"))
