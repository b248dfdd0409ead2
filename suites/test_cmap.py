"""Claim: fine-tuning improves entity tracking through the circuit's own heads (paper, docs/paper.md §8.7):
patching Goat-7B's head outputs for its circuit into Llama-7B (through Llama's W_O) lifts Llama from 0.66 to
0.82, Goat's own accuracy; value fetchers alone 0.82, position transmitters 0.78, detectors 0.62, structure
readers 0.65.

The donor is the model under test, the receiver its base (--base-model or the registered one). Head sets are
the paper's (the fine-tuned circuit's DCM heads, from baselines/) where they exist, else the groups of the
circuit evaluated (--circuit; default the base's). Each accuracy is checked against the stored baseline with
the accuracy claim's binomial bound; and where the donor beats the base, the patched full circuit must carry
a gain over the base as well, the paper's point, which holds or
fails on the models alone (the lower ends of both 95% intervals, from resampling whole contexts, above 0).
Spec: mechbench/claims/specs/cmap.py.
"""

import pytest

from mechbench.claims import get, tolerance
from mechbench.data.dataset import build_dataset
from mechbench.errors import MechbenchError
from mechbench.evaluate import correct_on
from mechbench.methods.cmap import cmap_correct, cmap_head_sets
from mechbench.stats import cluster_bootstrap
from mechbench.models.registry import REGISTRY
from mechbench.pytest_plugin import load_circuit, load_or_skip, settle, underpowered

pytestmark = pytest.mark.claim
CLAIM = get("cmap")


def _setup(model, circuit_name, settings):
    base_name = settings.base_of(model.name)
    if base_name is None or base_name == model.name:
        pytest.skip(f"{model.name!r} has no base to patch into: CMAP runs on a fine-tune (pass --base-model)")
    base = load_or_skip(base_name, settings, keep=(model.name,))
    circuit = load_circuit(circuit_name, base, settings)
    try:
        sets = cmap_head_sets(circuit, settings.baselines_dir)
    except MechbenchError as e:
        pytest.fail(str(e), pytrace=False)
    n = settings.size(CLAIM, "prompts")
    return base, sets, build_dataset(base.tokenizer, n_examples=n, seed=settings.seed), n


def _keys(model, base, group, head_set=None):
    keys = {"kind": "output_cmap", "source_model": model.name, "target_model": base.name,
            "checkpoint": "release" if model.name in REGISTRY else "local", "group": group}
    if head_set is not None:
        keys |= {"role": head_set.role, "n_heads": len(head_set)}
    return keys


def test_cmap(model, circuit_name, settings, claim_check):
    base, sets, dataset, n = _setup(model, circuit_name, settings)
    measured = {"full_circuit": (cmap_correct(base, model, list(sets.values()), dataset), None)}
    measured |= {g: (cmap_correct(base, model, [hs], dataset), hs) for g, hs in sets.items()}
    clusters = dataset.clusters()
    outcomes = [claim_check(CLAIM, _keys(model, base, group, hs), correct.float().mean().item(), n=n, model=model,
                            soft=True, correct=correct, clusters=clusters,
                            tolerance=tolerance.binomial(correct.float().mean().item(), n))
                for group, (correct, hs) in measured.items()]
    settle(outcomes, "CMAP accuracies")


def test_cmap_carries_the_finetune_gain(model, circuit_name, settings, record_check):
    base, sets, dataset, n = _setup(model, circuit_name, settings)
    q = {"base": correct_on(base, dataset).numpy(), "donor": correct_on(model, dataset).numpy(),
         "patched": cmap_correct(base, model, list(sets.values()), dataset).numpy()}
    clusters = dataset.clusters().numpy()
    gain = cluster_bootstrap(lambda m: m["donor"] - m["base"], q, clusters, seed=settings.seed)
    keys = {"circuit": circuit_name, "source_model": model.name, "target_model": base.name}
    if gain.lo is None or gain.lo <= 0:
        message = (f"{model.name} does not beat {base.name} beyond the 95% interval ({gain:+.3f}): no gain for its "
                   f"heads to carry")
        record_check("cmap", "circuit carries the gain", keys, None, None, message)
        pytest.skip(message)
    carried = cluster_bootstrap(lambda m: m["patched"] - m["base"], q, clusters, seed=settings.seed)
    passed = carried.lo > 0
    message = (f"{model.name}'s circuit heads patched into {base.name} lift it by {carried:+.3f} of the fine-tune's "
               f"{gain:+.3f} (95% intervals over contexts): {'a' if passed else 'no'} gain carried")
    if not passed and underpowered(settings, CLAIM, carried):
        record_check("cmap", "circuit carries the gain", keys, round(carried.value, 6), None, message)
        pytest.skip(f"inconclusive at --limit {settings.limit}: {message}")
    record_check("cmap", "circuit carries the gain", keys, round(carried.value, 6), passed, message)
    assert passed, message
