from mechbench.claims.spec import Claim

CLAIM = Claim(
    order=6, name="dcm_patching", title="DCM heads patched in each model", sections="8.6", suite="test_dcm_patching.py",
    measures="target accuracy (%) with the circuit's DCM heads patched, 10 x 500 pairs",
    description=("Accuracy (%) of producing the desideratum target when a circuit's DCM-selected heads of a group "
                 "are patched from the counterfactual run into each model at the group's position; mean and std "
                 "over runs of fresh pairs."),
    unit="percent", keys=("circuit", "model", "group", "role", "desideratum"),
    rows=("circuit", "model", "group"), column="desideratum",
    sizes=(("pairs", 500),), repeats=(("runs", 10),),  # the paper's
    tolerance="3*sqrt(2)*std/sqrt(10) + 0.05 (rounding) + 100/n",
    reads=("dcm",),
)
