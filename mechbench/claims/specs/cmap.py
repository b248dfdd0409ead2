from mechbench.claims.spec import Claim

CLAIM = Claim(
    order=7, name="cmap", title="CMAP", sections="8.7", suite="test_cmap.py",
    measures="the fine-tune's head outputs in its base; the patch must carry the gain",
    description=("Cross-model activation patching: per-head o_proj inputs of a fine-tuned model on the same input "
                 "replace its base's for the given head set at its position, then the base's own W_O; top-1 "
                 "accuracy of the base."),
    unit="fraction", keys=("kind", "source_model", "target_model", "checkpoint", "group", "role", "n_heads"),
    rows=("target_model", "group"), column="source_model",
    sizes=(("prompts", 500),),
    tolerance="binomial; the gain carried: 95% intervals over contexts > 0",
    reads=("dcm",),
)
