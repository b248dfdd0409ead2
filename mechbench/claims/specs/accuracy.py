from mechbench.claims.spec import Claim

CLAIM = Claim(
    order=1, name="accuracy", title="accuracy", sections="8.1", suite="test_accuracy.py",
    measures="top-1 on 500 prompts",
    description=("Full-model top-1 accuracy on the 7-box entity-tracking task: argmax of the last-position logits "
                 "must equal the first token of the correct object."),
    unit="fraction", keys=("model",), rows=("model",), column=None,
    sizes=(("prompts", 500),),  # the paper's evaluation size
    tolerance="binomial, 3 SE of two estimates; 3/n on the baseline's own prompts",
)
