from mechbench.claims.spec import Claim

CLAIM = Claim(
    order=5, name="dcm", title="DCM", sections="8.5", suite="test_dcm.py",
    measures="test accuracy of the rounded mask per group and desideratum",
    description=("Desiderata-based component masking (lambda 0.01, Adam lr 0.1, 2 epochs): heads of a circuit group "
                 "whose patching from the counterfactual makes the model output the desideratum target, and the "
                 "test accuracy with the rounded mask; run per circuit on the model it was discovered on."),
    unit="fraction", keys=("circuit", "model", "group", "role", "desideratum"),
    rows=("circuit", "model", "group"), column="desideratum",
    # the paper's test / train / validation pairs: --limit sets the test pairs; the masks train as the paper's did
    sizes=(("test_pairs", 500),), fixed=(("train_pairs", 1000), ("validation_pairs", 500)),
    tolerance="binomial + 0.05 for the mask's training path; 3/n on the baseline's own pairs",
)
