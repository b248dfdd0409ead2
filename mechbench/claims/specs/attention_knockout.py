from mechbench.claims.spec import Claim

CLAIM = Claim(
    order=9, name="attention_knockout", title="attention knockout", sections="8.8", suite="test_knockout.py",
    measures="accuracy with an edge blocked from each layer on",
    description=("Accuracy when one attention edge is knocked out (pre-softmax score set to the dtype minimum) for "
                 "all heads in all layers >= layer (0-based)."),
    unit="fraction", keys=("edge", "layer", "model"), rows=("model", "edge"), column="layer",
    sizes=(("prompts", 500),),  # the paper's
    tolerance="binomial per layer; 3/n on the baseline's own prompts",
)
