from mechbench.claims.spec import Claim
from mechbench.models.discovery_settings import DiscoveryConfig

CLAIM = Claim(
    order=4, name="path_patching", title="path patching", sections="4", suite="test_path_patching.py",
    measures=("re-discovery on the circuit's own model: recall per group, a head found when it scores below the cut "
              "+ 3 SEs"),
    description=("Iterated path patching re-run on the circuit's own model with the circuit's discovery settings: "
                 "recall = the fraction of the stored group's heads that the re-run selects."),
    unit="fraction", keys=("circuit", "model", "group", "metric"), rows=("circuit", "model"), column="group",
    sizes=(("pairs", DiscoveryConfig.n_pairs),),  # noise pairs per step: the circuit's discovery settings give it
    tolerance="0.05 on a recall whose margin is 3 cluster-robust SEs of each head's score",
    reads=("circuits",),
)
