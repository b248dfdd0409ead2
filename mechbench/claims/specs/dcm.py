"""Claim: each circuit group carries one kind of information (paper, docs/paper.md §8.5, DCM on the Llama circuit in
Llama-7B): value fetchers the object's value (40 heads, 0.468), position transmitters and detectors its
position (0.362, 0.412), structure readers a little position (0.14); box-label value nowhere.

DCM (docs/paper.md §6: lambda 0.01, Adam lr 0.1, 2 epochs, 1000/500/500 pairs) runs per group and
desideratum on the circuit's own model; the test accuracy of the rounded mask is checked against the stored
baseline. Published records are compared with the paper's pairing (``paper_compat=True``: its query-position
and box-label-target bugs, docs/paper.md §1), measured ones with mechbench's corrected pairs. Tolerance on
the baseline's own pairs (same seed, CPU): 3/n; otherwise the binomial bound plus 0.05 for the mask's
training path (stated in each record). --limit N sets the test pairs to N (the masks train on the paper's 1000
pairs and validate on its 500 whatever the limit).
"""

import torch

from mechbench.claims.spec import Claim
from mechbench.claims.tolerance import binomial
from mechbench.data.counterfactuals import MAIN_DESIDERATA, desiderata_pairs
from mechbench.methods.dcm import train_dcm_cases, train_dcm_groups

CLAIM = Claim(
    order=5,
    name="dcm",
    title="DCM",
    sections="8.5",
    suite="test_dcm.py",
    measures="test accuracy of the rounded mask per group and desideratum",
    description=(
        "Desiderata-based component masking (lambda 0.01, Adam lr 0.1, 2 epochs): heads of a circuit group "
        "whose patching from the counterfactual makes the model output the desideratum target, and the "
        "test accuracy with the rounded mask; run per circuit on the model it was discovered on."
    ),
    unit="fraction",
    keys=("circuit", "model", "group", "role", "desideratum"),
    rows=("circuit", "model", "group"),
    column="desideratum",
    # the paper's test / train / validation pairs: --limit sets the test pairs; the masks train as the paper's did
    sizes=(("test_pairs", 500),),
    fixed=(("train_pairs", 1000), ("validation_pairs", 500)),
    tolerance="binomial + 0.05 for the mask's training path; 3/n on the baseline's own pairs",
)


@CLAIM.test(per="circuit", params={"desideratum": MAIN_DESIDERATA})
def dcm(run):
    run.settle(dcm_checks(run, [run.params["desideratum"]], list(run.circuit().groups.values())), "groups")


def require_own_model(run, or_checked_against_it: bool = False):
    """Skip unless the run's model is the circuit's own (DCM learns which of a circuit's heads carry what on the
    model the circuit was found on). ``or_checked_against_it``: a model checked against the own model's baselines
    (``--baseline-model``: a planted copy, a fine-tune held to its base) runs too."""
    from mechbench.models.registry import names_of

    circuit, against = run.circuit(), run.settings.baseline_model
    if circuit.found_on(run.model) or (or_checked_against_it and against and circuit.name in names_of(against)):
        return
    if or_checked_against_it:
        run.skip(
            f"the paper measures this on the circuit's own model; circuit {run.circuit_name!r} was not found on "
            f"{run.model.name!r}: pass --baseline-model={circuit.name} to hold this model to that model's numbers"
        )
    else:
        run.skip(
            f"DCM runs on the circuit's own model (the paper: Llama circuit on Llama, Goat on Goat); circuit "
            f"{run.circuit_name!r} was found on another model than {run.model.name!r} (neither its name nor its "
            f"stored weights fingerprint is this model's)"
        )


def same_base_buckets(items, base_of) -> list[list]:
    """``items`` bucketed by the base prompts ``base_of(item)`` they share (in order): desiderata drawn with one seed
    share their base prompts where they differ only in the source's form, and those share the base's clean runs."""
    buckets: list[list] = []
    for item in items:
        ids = base_of(item)
        for bucket in buckets:
            if torch.equal(base_of(bucket[0]), ids):
                bucket.append(item)
                break
        else:
            buckets.append([item])
    return buckets


def record_keys(run, group, desideratum: str, extra_keys: dict | None = None) -> dict:
    """The keys of a DCM-type record of ``group`` under ``desideratum`` on the run's model (DCM's, DCM patching's,
    the additional desiderata's with their ``measure``)."""
    return {
        "circuit": run.circuit_name,
        "model": run.model.name,
        "group": group.name,
        "role": group.role,
        "desideratum": desideratum,
    } | (extra_keys or {})


def dcm_checks(run, desiderata, groups, extra_keys: dict | None = None, or_checked_against_it=False) -> list:
    """DCM of ``groups`` for each of ``desiderata`` on the circuit's own model, each (group, desideratum)'s test
    accuracy checked against its record (keys: circuit, model, group, role, desideratum, and ``extra_keys``) with
    the heads it selected stored beside it; the soft outcomes, for :meth:`Run.settle`. The additional desiderata's
    claim runs it too (``or_checked_against_it``: :func:`require_own_model`'s)."""
    require_own_model(run, or_checked_against_it)
    model, stored = run.model, run.stored()
    split = [run.size(name) for name in ("train_pairs", "validation_pairs", "test_pairs")]
    n_test = split[2]
    # published records are compared on the paper's pairing, measured ones on mechbench's; every case of a pairing
    # whose pairs share base prompts trains together (each its own mask; they share the batches' clean runs)
    by_compat: dict[bool, list] = {}
    for desideratum in desiderata:
        for group in groups:
            keys = record_keys(run, group, desideratum, extra_keys)
            record = stored.find(**run.with_boxes(keys))
            by_compat.setdefault(record is not None and not record.measured, []).append((keys, group))
    outcomes = []
    for paper_compat, chosen in by_compat.items():
        splits = {
            d: desiderata_pairs(
                model.tokenizer,
                d,
                n_pairs=sum(split),
                num_boxes=run.settings.boxes,
                seed=run.seed,
                paper_compat=paper_compat,
            ).split(split)
            for d in dict.fromkeys(keys["desideratum"] for keys, _ in chosen)
        }

        def bases(item, splits=splits):
            return torch.cat([pairs.base.input_ids for pairs in splits[item[0]["desideratum"]]])

        for bucket in same_base_buckets(chosen, bases):
            cases = [(g, *splits[keys["desideratum"]]) for keys, g in bucket]
            for (keys, _), result in zip(bucket, train_dcm_cases(model, cases, seed=run.seed)):
                acc = result.test_accuracy
                outcomes.append(
                    run.check(
                        keys,
                        acc,
                        n=n_test,
                        soft=True,
                        field="test_accuracy",
                        stored_value={
                            "n_heads": len(result.heads),
                            "heads": [list(h) for h in result.heads],
                            "test_accuracy": round(acc, 6),
                        },
                        tolerance=binomial(acc, n_test, rounding=0.05, why_rounding="the mask's training path"),
                    )
                )
    return outcomes


def dcm_model_of(run, circuit) -> str:
    """The model DCM (and the claims that read its heads) runs on for ``circuit``: the run's model where the circuit was found on it, else the circuit's
    name (a registered circuit is named by its model)."""
    return run.model.name if circuit.found_on(run.model) else circuit.name


def on_own_model(record, circuit) -> bool:
    """A DCM record of ``circuit`` measured on the model it was found on: named as the circuit (the registered
    circuits), or carrying the weights fingerprint the circuit was stored with (a directory's circuit)."""
    return record.keys.get("circuit") == circuit.name and (
        record.keys.get("model") == circuit.name
        or (circuit.fingerprint is not None and record.get("fingerprint") == circuit.fingerprint)
    )


def stored_runs(c) -> dict:
    """The comparison's base circuit's stored DCM runs (on its own model): (group, desideratum) -> the record's
    value (heads, test accuracy); the DCM-patching claim patches their heads."""
    return {
        (r.keys["group"], r.keys["desideratum"]): r.value
        for r in c.stored_records("dcm")
        if on_own_model(r, c.circuit)
        and isinstance(r.value, dict)
        and r.keys.get("desideratum") in MAIN_DESIDERATA
        and r.keys.get("boxes", 7) == c.boxes
    }


def _main_desiderata(c) -> dict[str, str]:
    """Per group, the desideratum its stored DCM run carries best in the base (object_value for a group with none)."""
    best: dict[str, tuple[float, str]] = {}
    for (group, desideratum), value in stored_runs(c).items():
        acc = value.get("test_accuracy", 0.0)
        if group not in best or acc > best[group][0]:
            best[group] = (acc, desideratum)
    return {g: best[g][1] if g in best else MAIN_DESIDERATA[0] for g in c.circuit.groups}


@CLAIM.comparison
def compare(c):
    """Masks trained on the fine-tune for the base circuit's groups (all desiderata, or in the quick lane each
    group's main one), test accuracy beside the base's; a group that carries its main information significantly
    less (Bonferroni over the groups checked) fails."""
    import numpy as np

    from mechbench.compare import CARRIED, Check, Row  # comparison mode imports the registry, which imports this

    main = _main_desiderata(c)
    train_n, val_n, test_n = c.lane.dcm_split
    rows, weaker, carried = [], [], []
    for desideratum in MAIN_DESIDERATA:
        groups = [g for g in c.circuit.groups if c.lane.dcm_all_desiderata or main[g] == desideratum]
        if not groups:
            continue
        pairs = desiderata_pairs(
            c.base.tokenizer, desideratum, n_pairs=train_n + val_n + test_n, num_boxes=c.boxes, seed=c.seed
        )
        train, val, test = pairs.split([train_n, val_n, test_n])
        # every group of a desideratum trains in one pass (each its own mask; they share the clean runs)
        trained = {
            who: c.side(
                who,
                ("dcm", desideratum, tuple(groups)),
                lambda h=h, train=train, val=val, test=test: dict(
                    zip(
                        groups,
                        train_dcm_groups(h, [c.circuit.groups[g] for g in groups], train, val, test, seed=c.seed),
                    )
                ),
            )
            for who, h in c.models.items()
        }
        for g in groups:
            res = {who: trained[who][g] for who in c.models}
            est = c.diff(res["base"].test_correct, res["fine_tune"].test_correct, np.arange(test_n))
            shared = set(res["base"].heads) & set(res["fine_tune"].heads)
            union = set(res["base"].heads) | set(res["fine_tune"].heads)
            rows.append(
                Row(
                    "dcm",
                    f"{g}: {desideratum} (test accuracy of the rounded mask)",
                    {"group": g, "desideratum": desideratum},
                    res["base"].test_accuracy,
                    res["fine_tune"].test_accuracy,
                    est,
                    note=f"heads selected {len(res['base'].heads)} / {len(res['fine_tune'].heads)}, "
                    f"overlap {len(shared)}/{len(union) or 1}",
                )
            )
            if main[g] == desideratum and res["base"].test_accuracy >= CARRIED:
                carried.append((rows[-1], res["base"].test_correct, res["fine_tune"].test_correct))
    level = 1 - 0.05 / max(len(carried), 1)  # Bonferroni over the groups checked
    for row, b, f in carried:
        est = c.diff(b, f, np.arange(test_n), level=level)
        if est.hi is not None and est.hi < 0:
            weaker.append(f"{row.keys['group']} {row.keys['desideratum']} {est:+.3f} ({level:.1%} interval)")
    check = Check(
        "dcm",
        "each group carries what it carries in the base",
        not weaker,
        f"{c.fine_tune.name}: "
        + (
            "a group carries its information significantly less: " + "; ".join(weaker)
            if weaker
            else f"none of the {len(carried)} groups carries its main "
            f"information significantly less (Bonferroni over them)"
        ),
        float(len(weaker)),
    )
    return rows, [check]


@CLAIM.workloads
def workloads(p):
    """Per desideratum (its groups train together): one read of the source prompts, the clean runs of the
    validation pairs (once, kept on the host), of each training batch (both epochs) and of the test pairs; per
    group 16 validations and the test from those, and each batch's fast forward + backward."""

    if not p.own:
        return []
    d = len(MAIN_DESIDERATA)
    return [training_workload(CLAIM, d, p.all_groups_share(), f"4 groups x {d} desiderata")]


def training_workload(claim, desiderata: int, share: float, what: str):
    """DCM's training as the plan sees it, for ``claim``'s sizes: per desideratum one read of the source prompts,
    the clean runs of the validation pairs (once, kept on the host), of each training batch (both epochs) and of
    the test pairs; 16 validations and the test from those, and each batch's fast forward + backward, over the
    ``share`` of the model the trained groups' fast path runs."""
    from mechbench.plan import Workload

    train, validation, test = (claim.size(s) for s in ("train_pairs", "validation_pairs", "test_pairs"))
    return Workload(
        claim.name,
        forwards=desiderata * (train + validation + test) + desiderata * (validation + 2 * train + test),
        fast=desiderata * (16 + 1) * validation * share,
        train=desiderata * 2 * train * share,
        train_batch=32,
        host_prefix=validation,
        note=f"{what}; validation every 4 of 32-pair steps",
    )
