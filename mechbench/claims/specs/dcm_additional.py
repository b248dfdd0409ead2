"""Claim: what the position transmitters carry is position, whatever the surface form (paper, docs/paper.md §1
and §8.6, "Additional desiderata", evidence for its finding that the circuit tracks entities by position): DCM on
the Llama circuit's position transmitters in Llama-7B, with the source prompt altered eleven ways (unrelated text
at the start or end, more tokens between object and box, an extra segment, boxes named before the queried
segment, the next segment as the target, the box before the object, "is not in", no commas, an extra comma).
Where the alteration keeps the position (random text, more tokens, no comma, an extra comma) DCM finds 5 or 6
heads at about the plain positional accuracy (0.35-0.41 against 0.362; patched 34-39% against 36.9%); where it
moves or muddles it (an extra segment or boxes before the queried one, the next segment, the altered order or
association) the accuracy falls (0.17-0.33; patched 16-31%).

Per additional desideratum, two measurements of the groups it is defined for (the position transmitters):

- ``dcm_additional``: DCM (the DCM claim's training and rule, mechbench.claims.specs.dcm): the heads it selects
  and their test accuracy (``measure: dcm``), binomial + 0.05 for the mask's path;
- ``dcm_additional_patched``: those stored heads patched from the counterfactual on 10 draws of 500 pairs (the
  DCM-patching claim's, mechbench.claims.specs.dcm_patching): the mean percentage of targets (``measure:
  patching``), within 3*sqrt(2)*std/sqrt(10) + 0.05 + 100/n.

Both run on the circuit's own model, as the paper's did, and on a model held to that model's numbers with
``--baseline-model`` (a planted copy in the audit; a fine-tune a researcher asks about); another model skips,
naming that option. (On every model, as DCM patching runs, they would cost the toy zoo's CI run 3 more minutes.)
Each runs its eleven desiderata in one test: those whose pairs share base prompts (all but the added segments)
share the base's clean runs, in DCM's training as in the patching.

The paper's pairs carry its query-position bug (the base's position read as 0, docs/paper.md §1); as in the
other DCM claims, published records are compared on its pairing (``paper_compat``), measured ones on mechbench's
corrected pairs.
"""

from mechbench.claims.spec import Claim
from mechbench.claims.specs.dcm import dcm_checks, dcm_model_of, require_own_model, training_workload
from mechbench.claims.specs.dcm_patching import patching_checks, patching_workload
from mechbench.data.counterfactuals import ADDITIONAL_DESIDERATA, DESIDERATA

CLAIM = Claim(
    order=6,
    name="dcm_additional",
    title="DCM: additional desiderata",
    sections="1, 8.6",
    measures="DCM heads and test accuracy on 11 altered sources; those heads patched, 10 x 500 pairs (%)",
    description=(
        "The position transmitters under the paper's eleven additional desiderata (the source prompt's surface "
        "form altered): DCM's selected heads and test accuracy on the circuit's own model (measure dcm, a "
        "fraction), and the accuracy (%) of producing the target with those heads patched from the counterfactual "
        "run, mean and std over 10 runs of fresh pairs (measure patching, a percent)."
    ),
    unit="fraction",
    keys=("circuit", "model", "group", "role", "desideratum", "measure"),
    rows=("circuit", "model", "measure", "group"),
    column="desideratum",
    sizes=(("test_pairs", 500), ("pairs", 500)),
    repeats=(("runs", 10),),
    fixed=(("train_pairs", 1000), ("validation_pairs", 500)),
    tolerance="DCM: binomial + 0.05 (3/n on the baseline's pairs); patching: 3*sqrt(2)*std/sqrt(10) + 0.05 + 100/n",
)


def _groups(run):
    """The circuit's groups the additional desiderata are defined for (the paper: the position transmitters)."""
    wanted = {name for d in ADDITIONAL_DESIDERATA for name in DESIDERATA[d].groups}
    groups = [g for name, g in run.circuit().groups.items() if name in wanted]
    if not groups:
        run.skip(f"circuit {run.circuit_name!r} has no {' or '.join(sorted(wanted))} group")
    return groups


@CLAIM.test(per="circuit")
def dcm_additional(run):
    # every desideratum in one test: those whose pairs share base prompts (all but the added segments) train together
    outcomes = dcm_checks(run, ADDITIONAL_DESIDERATA, _groups(run), {"measure": "dcm"}, or_checked_against_it=True)
    run.settle(outcomes, "desiderata")


@CLAIM.test(per="circuit")
def dcm_additional_patched(run):
    require_own_model(run, or_checked_against_it=True)  # the paper's: the Llama circuit's heads in Llama-7B
    _groups(run)
    outcomes = patching_checks(
        run, ADDITIONAL_DESIDERATA, run.stored(), heads_keys={"measure": "dcm"}, extra_keys={"measure": "patching"}
    )
    if not outcomes:
        run.skip(
            f"no DCM run of circuit {run.circuit_name!r} on its own model for the additional desiderata in "
            f"{run.settings.baselines_dir / 'dcm_additional.json'}: store them first, in the same run or before it: "
            f"{run.store_command('dcm_additional', model=dcm_model_of(run, run.circuit()))}"
        )
    run.settle(outcomes, "desiderata")


CLAIM.no_comparison(
    "the paper measures the additional desiderata on Llama-7B alone; a fine-tune's are a pytest run held to its "
    "base's numbers (pytest suites/ --model=FT --baseline-model=BASE -k dcm_additional), with no side-by-side form yet"
)


@CLAIM.workloads
def workloads(p):
    """On the circuit's own model: DCM per desideratum (the DCM claim's training, for the one group), and its stored
    heads patched over 10 draws of 500 pairs (DCM patching's)."""
    if not p.own:
        return []
    d, share = len(ADDITIONAL_DESIDERATA), p.group_share("pos_transmitter")
    return [
        patching_workload(CLAIM, d, share, f"{d} desiderata, the position transmitters' stored heads"),
        training_workload(CLAIM, d, share, f"DCM of the position transmitters, {d} desiderata"),
    ]
