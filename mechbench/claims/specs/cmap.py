"""Claim: fine-tuning improves entity tracking through the circuit's own heads (paper, docs/paper.md §8.7):
patching Goat-7B's head outputs for its circuit into Llama-7B (through Llama's W_O) lifts Llama from 0.66 to
0.82, Goat's own accuracy; value fetchers alone 0.82, position transmitters 0.78, detectors 0.62, structure
readers 0.65.

The donor is the model under test, the receiver its base (--base-model or the registered one). Head sets are
the paper's (the fine-tuned circuit's DCM heads, from baselines/) where they exist, else the groups of the
circuit evaluated (--circuit; default the base's). Each accuracy is checked against the stored baseline with
the accuracy claim's binomial bound; and where the donor beats the base, the patched full circuit must carry
a gain over the base as well, the paper's point, which holds or fails on the models alone (the lower ends of
both 95% intervals, from resampling whole contexts, above 0).
"""

from mechbench.claims.spec import Claim
from mechbench.claims.tolerance import binomial
from mechbench.errors import MechbenchError
from mechbench.methods.cmap import cmap_correct, cmap_head_sets
from mechbench.models.registry import REGISTRY
from mechbench.stats import cluster_bootstrap

CLAIM = Claim(
    order=7, name="cmap", title="CMAP", sections="8.7", suite="test_cmap.py",
    measures="the fine-tune's head outputs in its base; the patch must carry the gain",
    description=("Cross-model activation patching: per-head o_proj inputs of a fine-tuned model on the same input "
                 "replace its base's for the given head set at its position, then the base's own W_O; top-1 "
                 "accuracy of the base."),
    unit="fraction", keys=("kind", "source_model", "target_model", "checkpoint", "group", "role", "n_heads"),
    rows=("target_model", "group"), column="source_model",
    sizes=(("prompts", 500),),
    tolerance="binomial; the gain carried: 95% intervals over contexts > 0",
    reads=("dcm",),
)


def _setup(run):
    """The base (the receiver), the head sets patched and the prompts, all on the base's side."""
    model = run.model
    base_name = run.settings.base_of(model.name)
    if base_name is None or base_name == model.name:
        run.skip(f"{model.name!r} has no base to patch into: CMAP runs on a fine-tune (pass --base-model)")
    base = run.load(base_name, keep=(model.name,))
    circuit = run.circuit(model=base)
    try:
        sets = cmap_head_sets(circuit, run.settings.baselines_dir)
    except MechbenchError as e:
        run.fail(str(e))
    return base, sets, run.prompts(tokenizer=base.tokenizer)


def _keys(model, base, group, head_set=None):
    keys = {"kind": "output_cmap", "source_model": model.name, "target_model": base.name,
            "checkpoint": "release" if model.name in REGISTRY else "local", "group": group}
    if head_set is not None:
        keys |= {"role": head_set.role, "n_heads": len(head_set)}
    return keys


@CLAIM.test(per="circuit")
def cmap(run):
    model = run.model
    base, sets, dataset = _setup(run)
    n, clusters = len(dataset), dataset.clusters()
    measured = {"full_circuit": (cmap_correct(base, model, list(sets.values()), dataset), None)}
    measured |= {g: (cmap_correct(base, model, [hs], dataset), hs) for g, hs in sets.items()}
    outcomes = [run.check(_keys(model, base, group, hs), correct.float().mean().item(), n=n, soft=True,
                          correct=correct, clusters=clusters, tolerance=binomial(correct.float().mean().item(), n))
                for group, (correct, hs) in measured.items()]
    run.settle(outcomes, "CMAP accuracies")


@CLAIM.test(per="circuit")
def cmap_carries_the_finetune_gain(run):
    model = run.model
    base, sets, dataset = _setup(run)
    q = {"base": run.correct(base).numpy(), "donor": run.correct(model, tokenizer=base.tokenizer).numpy(),
         "patched": cmap_correct(base, model, list(sets.values()), dataset).numpy()}
    clusters = dataset.clusters().numpy()
    gain = cluster_bootstrap(lambda m: m["donor"] - m["base"], q, clusters, seed=run.seed)
    keys = {"circuit": run.circuit_name, "source_model": model.name, "target_model": base.name}
    if gain.lo is None or gain.lo <= 0:
        message = (f"{model.name} does not beat {base.name} beyond the 95% interval ({gain:+.3f}): no gain for its "
                   f"heads to carry")
        run.record("circuit carries the gain", keys, None, None, message)
        run.skip(message)
    carried = cluster_bootstrap(lambda m: m["patched"] - m["base"], q, clusters, seed=run.seed)
    run.effect_above_zero("circuit carries the gain", keys, carried, lambda passed: (
        f"{model.name}'s circuit heads patched into {base.name} lift it by {carried:+.3f} of the fine-tune's "
        f"{gain:+.3f} (95% intervals over contexts): {'a' if passed else 'no'} gain carried"))
