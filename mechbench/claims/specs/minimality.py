from mechbench.claims.spec import Claim
from mechbench.models.discovery_settings import DiscoveryConfig

CLAIM = Claim(
    order=8, name="minimality", title="minimality", sections="4, 8.4", suite="test_minimality.py",
    measures=("per group, the mean drop when a head goes after its most entangled peers (pair-drop K); every "
              "head's before/after recorded"),
    description=("Minimality pruning per candidate head: mean-ablated circuit accuracy with the K top pair-drop "
                 "heads removed (before) and additionally without the head (after); heads with a large enough "
                 "drop are kept."),
    unit="fraction", keys=("circuit", "group", "kind", "rank", "layer", "head"),
    rows=("circuit", "group", "layer", "head"), column="field",
    # prompts: the circuit's discovery settings give them (minimality_examples, the paper's 100)
    sizes=(("prompts", DiscoveryConfig.minimality_examples),), fixed=(("ablation_prompts", 500),),
    tolerance="a group's mean drop within 3 x sqrt(2) x its SE, K re-chosen in every resample; 3/n on the same prompts",
)
