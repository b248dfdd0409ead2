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
    order=7,
    name="cmap",
    title="CMAP",
    sections="8.7",
    suite="test_cmap.py",
    measures="the fine-tune's head outputs in its base; the patch must carry the gain",
    description=(
        "Cross-model activation patching: per-head o_proj inputs of a fine-tuned model on the same input "
        "replace its base's for the given head set at its position, then the base's own W_O; top-1 "
        "accuracy of the base."
    ),
    unit="fraction",
    keys=("kind", "source_model", "target_model", "checkpoint", "group", "role", "n_heads"),
    rows=("target_model", "group"),
    column="source_model",
    sizes=(("prompts", 500),),
    tolerance="binomial; the gain carried: 95% intervals over contexts > 0",
    reads=("dcm",),
)


def base_and_head_sets(run):
    """The base (the receiver), the head sets patched and the prompts, all on the base's side (input CMAP's too)."""
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


def record_keys(model, base, group, head_set=None, kind="output_cmap"):
    """A CMAP record's keys (input CMAP's without ``kind``: its own file)."""
    keys = {} if kind is None else {"kind": kind}
    keys |= {
        "source_model": model.name,
        "target_model": base.name,
        "checkpoint": "release" if model.name in REGISTRY else "local",
        "group": group,
    }
    if head_set is not None:
        keys |= {"role": head_set.role, "n_heads": len(head_set)}
    return keys


@CLAIM.test(per="circuit")
def cmap(run):
    model = run.model
    base, sets, dataset = base_and_head_sets(run)
    n, clusters = len(dataset), dataset.clusters()
    measured = {"full_circuit": (cmap_correct(base, model, list(sets.values()), dataset), None)}
    measured |= {g: (cmap_correct(base, model, [hs], dataset), hs) for g, hs in sets.items()}
    # under --baseline-model the record is that model's, a registered one: its checkpoint is a release's
    release = {"checkpoint": "release" if run.settings.baseline_model in REGISTRY else "local"}
    outcomes = [
        run.check(
            record_keys(model, base, group, hs),
            correct.float().mean().item(),
            n=n,
            soft=True,
            correct=correct,
            clusters=clusters,
            tolerance=binomial(correct.float().mean().item(), n),
            baseline_keys=release,
        )
        for group, (correct, hs) in measured.items()
    ]
    run.settle(outcomes, "CMAP accuracies")


@CLAIM.test(per="circuit")
def cmap_carries_the_finetune_gain(run):
    model = run.model
    base, sets, dataset = base_and_head_sets(run)
    q = {
        "base": run.correct(base).numpy(),
        "donor": run.correct(model, tokenizer=base.tokenizer).numpy(),
        "patched": cmap_correct(base, model, list(sets.values()), dataset).numpy(),
    }
    clusters = dataset.clusters().numpy()
    gain = cluster_bootstrap(lambda m: m["donor"] - m["base"], q, clusters, seed=run.seed)
    keys = {"circuit": run.circuit_name, "source_model": model.name, "target_model": base.name}
    if gain.lo is None or gain.lo <= 0:
        message = (
            f"{model.name} does not beat {base.name} beyond the 95% interval ({gain:+.3f}): no gain for its "
            f"heads to carry"
        )
        run.record("circuit carries the gain", keys, None, None, message)
        run.skip(message)
    carried = cluster_bootstrap(lambda m: m["patched"] - m["base"], q, clusters, seed=run.seed)
    run.effect_above_zero(
        "circuit carries the gain",
        keys,
        carried,
        lambda passed: (
            f"{model.name}'s circuit heads patched into {base.name} lift it by {carried:+.3f} of the fine-tune's "
            f"{gain:+.3f} (95% intervals over contexts): {'a' if passed else 'no'} gain carried"
        ),
    )


@CLAIM.comparison
def compare(c):
    """The fine-tune's head outputs for the circuit patched into the base, as the share of the gain they carry,
    (patched - base) / (fine-tune - base), per group and for the full circuit; where the fine-tune gained, the
    full circuit must carry at least SHARE_LARGELY of it, and where it lost, less than that of the loss."""
    from mechbench.compare import SHARE_LARGELY, Check, Row, as_array  # imports the registry, which imports this

    sets = cmap_head_sets(c.circuit, c.baselines_dir)
    n = c.lane.verdict_examples
    dataset, clusters = c.dataset(n), c.clusters(n)
    patched = {"full_circuit": cmap_correct(c.base.model, c.fine_tune.model, list(sets.values()), dataset)}
    patched |= {g: cmap_correct(c.base.model, c.fine_tune.model, [hs], dataset) for g, hs in sets.items()}
    b, f = c.correct("base", n), c.correct("fine_tune", n)
    base_acc, ft_acc = as_array(b).mean(), as_array(f).mean()
    gain = c.diff(b, f, clusters)
    rows = []
    for group, p in patched.items():
        q = {"b": b, "f": f, "p": p}
        est = c.boot(lambda m: (m["p"] - m["b"]) / (m["f"] - m["b"]), q, clusters)

        def ref_share(ref, group=group):
            patched_ref = c.stored("cmap", source_model=ref, target_model=c.base.name, group=group)
            full, base_stored = c.stored_accuracy(ref), c.stored_accuracy(c.base.name)
            if None in (patched_ref, full, base_stored) or full == base_stored:
                return None
            return (patched_ref - base_stored) / (full - base_stored)

        n_heads = sum(len(hs) for hs in sets.values()) if group == "full_circuit" else len(sets[group])
        rows.append(
            Row(
                "cmap",
                f"share of the gain carried: {group} ({n_heads} heads)",
                {"group": group},
                base_acc,
                ft_acc,
                est,
                statistic="share of gain",
                references=c.refs(ref_share),
                note=f"base with the fine-tune's heads: {as_array(p).mean():.3f}; {n} prompts",
            )
        )
    share = rows[0].estimate
    if gain.lo is None or gain.lo <= 0 <= gain.hi:
        check = Check(
            "cmap",
            "the circuit carries the gain",
            None,
            f"{c.fine_tune.name} ({ft_acc:.3f}) and {c.base.name} ({base_acc:.3f}) differ by {gain:+.3f}, "
            f"an interval that contains 0: no gain for the circuit to carry",
            None,
        )
    elif gain.value > 0:
        check = Check(
            "cmap",
            "the circuit carries the gain",
            share.value >= SHARE_LARGELY,
            f"{c.fine_tune.name}'s circuit heads patched into {c.base.name} carry a share {share:.2f} of "
            f"its gain {gain:+.3f} (needed {SHARE_LARGELY:g})",
            share.value,
        )
    else:  # a loss: it must not run through the circuit's heads
        check = Check(
            "cmap",
            "the loss is not in the circuit",
            share.value < SHARE_LARGELY,
            f"{c.fine_tune.name} lost accuracy ({gain:+.3f}); its circuit heads patched into {c.base.name} "
            f"carry a share {share:.2f} of the loss (fails from {SHARE_LARGELY:g}: the circuit is damaged)",
            share.value,
        )
    return rows, [check]


@CLAIM.workloads
def workloads(p):
    """On a fine-tune with a base: both models held at once, the base's and the donor's clean runs and one patched
    run per group and for the full circuit."""
    from mechbench.plan import Workload

    if p.base is None:
        return []
    groups = len(p.group_sizes)
    return [
        Workload(
            "cmap", models=2, forwards=2 * CLAIM.size("prompts") * (groups + 2), note="fine-tune and base held at once"
        )
    ]
