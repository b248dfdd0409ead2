"""Claim: the circuit found on the base model carries the task in the base and in its fine-tunes (paper,
docs/paper.md §8.1: the Llama-7B circuit keeps 0.66 of Llama's 0.66, 0.73 of Goat's 0.82, 0.72 of FLoat's 0.82,
while random circuits of the same sizes keep 0.00-0.01).

Everything outside the circuit is mean-ablated (position-specific means over 500 ablation prompts, docs/paper.md
§5). The circuit's accuracy is checked against the stored baseline with the binomial bound of the
accuracy claim; the mean accuracy of 10 random circuits (same per-group sizes) within 3*sqrt(2) of its
standard error, which comes mostly from the heads drawn (on the toy zoo single random circuits range from 0.01
to 0.5); and the circuit must beat the random circuits, the
paper's contrast, which holds or fails on the model without any stored number (the lower end of the 95%
interval of the difference, from resampling whole contexts, must be above 0).
"""

import pytest

from mechbench.baselines import BINOMIAL_RULE, SAME_SAMPLE_RULE, binomial_tolerance
from mechbench.data.dataset import build_dataset
from mechbench.evaluate import accuracy_on
from mechbench.methods.ablation import faithfulness
from mechbench.pytest_plugin import ablation_means, load_circuit
from mechbench.stats import cluster_bootstrap

pytestmark = pytest.mark.claim
N_EXAMPLES = 500  # the paper's evaluation and ablation-mean sizes
N_RANDOM = 10  # random circuits averaged (the paper's)
RANDOM_RULE = ("3*sqrt(2)*sd/sqrt(10): the mean of 10 random circuits varies mostly with the heads drawn (sd, the "
               "spread of the circuits' accuracies, stored as std); two such means differ by sqrt(2) of its error")


def random_tolerance(per_circuit) -> tuple[float, float]:
    """(tolerance, sd) for the mean accuracy of random circuits, from the accuracies of the ones drawn."""
    sd = float(per_circuit.std(unbiased=True)) if len(per_circuit) > 1 else 0.0
    return round(3 * 2 ** 0.5 * sd / len(per_circuit) ** 0.5, 4), sd

_MEASURED: dict[tuple, object] = {}


def measure(model, circuit_name, settings):
    """Full, circuit and random-circuit accuracy, computed once per (model, circuit, n, seed)."""
    n = settings.n_examples(N_EXAMPLES)
    key = (model.name, circuit_name, n, settings.seed)
    if key not in _MEASURED:
        circuit = load_circuit(circuit_name, model, settings)
        dataset = build_dataset(model.tokenizer, n_examples=n, seed=settings.seed)
        means = ablation_means(model, settings)
        full = accuracy_on(model, dataset)
        _MEASURED[key] = (faithfulness(model.model, circuit, dataset, means, full, n_random=N_RANDOM, seed=settings.seed),
                          dataset.clusters().numpy())
    return *_MEASURED[key], n


def test_circuit_accuracy(model, circuit_name, settings, claim_check):
    f, clusters, n = measure(model, circuit_name, settings)
    claim_check(
        "faithfulness", {"circuit": circuit_name, "model": model.name, "metric": "circuit_accuracy"},
        f.circuit_accuracy, n=n, model=model, correct=f.circuit_correct, clusters=clusters,
        tolerance=binomial_tolerance(f.circuit_accuracy, n, n), tolerance_same_sample=round(3 / n, 4),
        tolerance_rule=BINOMIAL_RULE.format(rounding="") + "; " + SAME_SAMPLE_RULE,
    )


def test_random_circuit_accuracy(model, circuit_name, settings, claim_check):
    f, _, n = measure(model, circuit_name, settings)
    tolerance, sd = random_tolerance(f.random_correct.float().mean(1))
    claim_check(
        "faithfulness", {"circuit": circuit_name, "model": model.name, "metric": "random_circuit_accuracy"},
        f.random_circuit_accuracy, n=n, model=model, tolerance=tolerance, tolerance_rule=RANDOM_RULE, std=sd,
    )


def test_circuit_beats_random_circuits(model, circuit_name, settings, record_check):
    f, clusters, n = measure(model, circuit_name, settings)
    beats = cluster_bootstrap(lambda m: m["circuit"] - m["random"],
                              {"circuit": f.circuit_correct.numpy(), "random": f.random_correct.float().mean(0).numpy()},
                              clusters, seed=settings.seed)
    passed = beats.lo is not None and beats.lo > 0
    message = (f"circuit {circuit_name} on {model.name}: accuracy {f.circuit_accuracy:.3f} (faithfulness "
               f"{f.faithfulness:.2f}) minus random circuits' {f.random_circuit_accuracy:.3f} = {beats:+.3f} (95% "
               f"interval over contexts), {'above' if passed else 'not above'} 0")
    record_check("faithfulness", "circuit beats random circuits", {"circuit": circuit_name, "model": model.name},
                 round(beats.value, 6), passed, message)
    assert passed, message
