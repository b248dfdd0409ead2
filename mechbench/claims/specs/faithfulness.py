from mechbench.claims.spec import Claim

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
