from mechbench.claims.spec import Claim
from mechbench.models.registry import COMPLETENESS_ITERATIONS

CLAIM = Claim(
    order=3, name="completeness", title="completeness", sections="8.3", suite="test_completeness.py",
    measures="F(C\\K), F(M\\K), incompleteness; K random or a whole group",
    description=("Completeness by mean ablation: accuracy of the circuit with K also ablated, F(C\\K), versus the "
                 "full model with only K ablated, F(M\\K); incompleteness = |F(M\\K) - F(C\\K)|, K random (p=0.5 "
                 "per head) or a whole group."),
    unit="fraction", keys=("circuit", "model", "k_method", "metric", "group"),
    rows=("circuit", "model", "k_method", "group"), column="metric",
    sizes=(("prompts", 500),), fixed=(("ablation_prompts", 500),),
    # random draws of K: the circuit's model's completeness_iterations (the paper ran 20 for Goat and FLoat), else
    repeats=(("draws_of_k", COMPLETENESS_ITERATIONS),),
    tolerance="random K: 3*sqrt(2)*std/sqrt(draws); a whole group: binomial; incompleteness: their sum",
)
