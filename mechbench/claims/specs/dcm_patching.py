"""Claim: fine-tuning strengthens the same mechanism (paper, docs/paper.md §8.6): the heads DCM found in Llama's
circuit, patched from the counterfactual into each model, move it to the desideratum's target more often in the
fine-tunes: value fetchers' object value 45.6% in Llama, 65.9% in Goat, 63.3% in FLoat; transmitters'
position 36.9%, 38.6%, 47.1%.

For each group and desideratum, the DCM heads stored for the circuit (baselines/dcm.json) are patched at the
group's position in the model under test on 10 draws of 500 pairs; the mean accuracy (percent) is checked
against the baseline within 3*sqrt(2)*std/sqrt(10) (two means over 10 draws) plus the paper's rounding.
Published records use the paper's pairing (``paper_compat``), measured ones mechbench's corrected pairs.
"""

import statistics
from pathlib import Path

from mechbench.circuits import HeadGroup
from mechbench.claims.spec import Claim, derived_seed
from mechbench.claims.specs.dcm import dcm_model_of, on_own_model, record_keys, same_base_buckets
from mechbench.claims.tolerance import mean_of_draws, spread_of_fresh_draws
from mechbench.data.counterfactuals import MAIN_DESIDERATA, desiderata_pairs
from mechbench.data.dataset import tokenizer_key
from mechbench.methods.dcm import patched_correct, patched_correct_cases, source_values_at

CLAIM = Claim(
    order=6,
    name="dcm_patching",
    title="DCM heads patched in each model",
    sections="8.6",
    suite="test_dcm_patching.py",
    measures="target accuracy (%) with the circuit's DCM heads patched, 10 x 500 pairs",
    description=(
        "Accuracy (%) of producing the desideratum target when a circuit's DCM-selected heads of a group "
        "are patched from the counterfactual run into each model at the group's position; mean and std "
        "over runs of fresh pairs."
    ),
    unit="percent",
    keys=("circuit", "model", "group", "role", "desideratum"),
    rows=("circuit", "model", "group"),
    column="desideratum",
    sizes=(("pairs", 500),),
    repeats=(("runs", 10),),  # the paper's
    tolerance="3*sqrt(2)*std/sqrt(10) + 0.05 (rounding) + 100/n",
    reads=("dcm",),
)


def _pairs(run, tokenizer, desideratum, n, seed, paper_compat):
    boxes = run.settings.boxes
    return run.once(
        ("desiderata pairs", tokenizer_key(tokenizer), desideratum, n, seed, paper_compat, boxes),
        lambda: desiderata_pairs(
            tokenizer, desideratum, n_pairs=n, num_boxes=boxes, seed=seed, paper_compat=paper_compat
        ),
    )


@CLAIM.test(per="circuit", params={"desideratum": MAIN_DESIDERATA})
def dcm_heads_patched(run):
    desideratum = run.params["desideratum"]
    outcomes = patching_checks(run, [desideratum], run.stored("dcm"))
    if not outcomes:
        run.skip(
            f"no DCM run of circuit {run.circuit_name!r} on its own model for {desideratum!r} in "
            f"{run.settings.baselines_dir / 'dcm.json'}: store one first, in the same run or before it: "
            f"{run.store_command('dcm', model=dcm_model_of(run, run.circuit()))}"
        )
    run.settle(outcomes, "groups")


def patching_checks(run, desiderata, dcm, heads_keys: dict | None = None, extra_keys: dict | None = None) -> list:
    """The heads of the circuit's DCM runs on its own model in ``dcm`` (a baseline file; records matching
    ``heads_keys`` too) patched for each of ``desiderata`` in the run's model on its draws of pairs, each (group,
    desideratum)'s mean percentage checked against its record (keys: circuit, model, group, role, desideratum, and
    ``extra_keys``); the soft outcomes, none where no DCM run is stored. The additional desiderata's claim runs
    it too."""
    model, circuit, stored = run.model, run.circuit(), run.stored()
    n, n_runs = run.size("pairs"), run.repeat("runs")
    patched = []  # (keys, heads, paper_compat) of every (group, desideratum) DCM found heads for
    for desideratum in desiderata:
        for group in circuit.groups.values():
            wanted = run.with_boxes(
                {"group": group.name, "role": group.role, "desideratum": desideratum} | (heads_keys or {})
            )
            found = next(
                (
                    r
                    for r in dcm.records
                    if on_own_model(r, circuit)
                    and {k: v for k, v in r.keys.items() if k not in ("circuit", "model")} == wanted
                ),
                None,
            )
            if found is None:
                continue
            keys = record_keys(run, group, desideratum, extra_keys)
            record = stored.find(**run.with_boxes(keys))
            heads = HeadGroup(group.name, group.role, tuple(tuple(h) for h in found.value["heads"]))
            patched.append((keys, heads, record is not None and not record.measured))
    runs = [[] for _ in patched]
    # one draw of pairs at a time, every group of every desideratum patched on it; the desiderata whose pairs share
    # base prompts share each batch's clean prefix (the engine holds one batch's on the device at a time)
    for paper_compat in sorted({p[2] for p in patched}):
        chosen = [i for i, p in enumerate(patched) if p[2] == paper_compat]
        for draw in range(n_runs):
            seed = run.derived_seed(draw=draw)
            pairs = {
                d: _pairs(run, model.tokenizer, d, n, seed, paper_compat)
                for d in dict.fromkeys(patched[i][0]["desideratum"] for i in chosen)
            }
            reads = {}  # per desideratum: the source read once, at the layers of its groups' heads
            for d, pair in pairs.items():
                heads = [patched[i][1] for i in chosen if patched[i][0]["desideratum"] == d]
                layers = sorted({layer for h in heads for layer, _ in h.heads})
                reads[d] = source_values_at(model, pair, circuit.roles, layers)
            for bucket in same_base_buckets(chosen, lambda i: pairs[patched[i][0]["desideratum"]].base.input_ids):
                cases = []
                for i in bucket:
                    d, heads = patched[i][0]["desideratum"], patched[i][1]
                    cases.append((heads, pairs[d], reads[d][heads.role]))
                for i, correct in zip(bucket, patched_correct_cases(model, cases)):
                    runs[i].append(100 * correct.float().mean().item())
    outcomes = []
    for (keys, _heads, _compat), values in zip(patched, runs):
        std = spread_of_fresh_draws(values, n, unit=100)  # each run draws fresh pairs: at least a binomial spread
        outcomes.append(
            run.check(
                keys,
                statistics.fmean(values),
                n=n,
                soft=True,
                std=std,
                tolerance=mean_of_draws(std, n_runs, n=n, unit=100, rounding=0.05, what="runs of pairs"),
            )
        )
    return outcomes


@CLAIM.comparison
def compare(c):
    """The base circuit's DCM heads patched in both models on the same runs of pairs: percentage points above or
    below the base; a (group, desideratum) the base carries (>= CARRIED) that the fine-tune carries significantly
    less often (Bonferroni over them) fails."""
    import numpy as np
    import torch

    from mechbench.claims.specs.dcm import stored_runs
    from mechbench.compare import CARRIED, Check, Row  # comparison mode imports the registry, which imports this
    from mechbench.errors import MechbenchError

    records = stored_runs(c)
    if not records:
        from mechbench.baselines import DEFAULT_DIR
        from mechbench.claims.run import store_command

        where = Path(c.baselines_dir or DEFAULT_DIR) / "dcm.json"
        raise MechbenchError(
            f"no DCM run of circuit {c.circuit.name!r} on its own model in {where} to take heads from: store "
            f"them with {store_command('dcm', c.base.name, c.circuit.name, c.baselines_dir, boxes=c.boxes)}"
        )
    rows, weaker, per_row = [], [], {}
    for desideratum in MAIN_DESIDERATA:
        groups = [(g, records[(g, desideratum)]) for g in c.circuit.groups if (g, desideratum) in records]
        if not groups:
            continue

        def patched(who, desideratum=desideratum, groups=groups):
            """Per group, the pairs of every run the model moves to the target with the DCM heads patched."""
            out = {g: [] for g, _ in groups}
            model = c.models[who].model
            heads = [
                HeadGroup(g, c.circuit.groups[g].role, tuple(tuple(h) for h in value["heads"])) for g, value in groups
            ]
            layers = sorted({layer for h in heads for layer, _ in h.heads})  # the source is read there only
            for draw in range(c.lane.patching_runs):
                pairs = c.side(
                    "base",
                    ("pairs", desideratum, draw),
                    lambda draw=draw: desiderata_pairs(
                        c.base.tokenizer,
                        desideratum,
                        n_pairs=c.lane.patching_pairs,
                        num_boxes=c.boxes,
                        seed=derived_seed(c.seed, draw=draw),
                    ),
                )
                for (g, _), correct in zip(
                    groups,
                    patched_correct(model, heads, pairs, source_values_at(model, pairs, c.circuit.roles, layers)),
                ):
                    out[g].append(correct)
            return out

        per = {
            key: c.side(who, ("dcm_patching", desideratum), lambda who=who: patched(who))
            for who, key in (("base", "b"), ("fine_tune", "f"))
        }
        clusters = np.arange(c.lane.patching_runs * c.lane.patching_pairs)  # a fresh base context per pair
        for g, value in groups:
            b, f = torch.cat(per["b"][g]).float() * 100, torch.cat(per["f"][g]).float() * 100
            rows.append(
                Row(
                    "dcm_patching",
                    f"{g}: {desideratum} (% of targets, {len(value['heads'])} DCM heads)",
                    {"group": g, "desideratum": desideratum},
                    float(b.mean()),
                    float(f.mean()),
                    c.diff(b, f, clusters),
                    references=c.refs(
                        lambda ref, g=g, d=desideratum: c.stored(
                            "dcm_patching", circuit=c.circuit.name, model=ref, group=g, desideratum=d
                        )
                    ),
                )
            )
            per_row[len(rows) - 1] = (b, f, clusters)
    # the check looks at every (group, desideratum) the base carries at once: Bonferroni over them
    carried = [i for i, row in enumerate(rows) if row.base >= 100 * CARRIED]
    level = 1 - 0.05 / max(len(carried), 1)
    for i in carried:
        est = c.diff(*per_row[i], level=level)
        if est.hi is not None and est.hi < 0:
            weaker.append(f"{rows[i].keys['group']} {rows[i].keys['desideratum']} {est:+.1f} points")
    check = Check(
        "dcm_patching",
        "the base's DCM heads carry as much",
        not weaker,
        f"{c.fine_tune.name}: "
        + (
            f"carried less than the base (whole {level:.1%} interval below 0, "
            f"Bonferroni over the {len(carried)} carried): " + "; ".join(weaker)
            if weaker
            else f"none of the {len(carried)} desiderata the base's groups "
            f"carry (>= {100 * CARRIED:g}%) is carried significantly less "
            f"(Bonferroni over them)"
        ),
        float(len(weaker)),
    )
    return rows, [check]


@CLAIM.workloads
def workloads(p):

    d = len(MAIN_DESIDERATA)
    return [patching_workload(CLAIM, d, p.all_groups_share(), f"{d} desiderata")]


def patching_workload(claim, desiderata: int, share: float, what: str):
    """DCM patching as the plan sees it, for ``claim``'s sizes: per desideratum and draw of pairs, the clean runs of
    both prompts and the patched fast run over the ``share`` of the model the patched groups' fast path runs."""
    from mechbench.plan import Workload

    pairs, runs = claim.size("pairs"), claim.repeat("runs")
    return Workload(
        claim.name,
        forwards=desiderata * runs * pairs * 2,
        fast=desiderata * runs * pairs * share,
        prefix=True,
        note=f"{what} x {runs} draws of {pairs} pairs",
    )
