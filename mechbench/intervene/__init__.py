from mechbench.intervene.engine import (
    COMPONENTS, HeadPatch, Interventions, Knockout, Prefix, Read, RunOutput, capture_prefix, capture_prefixes, hooked,
    run, run_frozen_attention, run_many,
)

__all__ = ["COMPONENTS", "HeadPatch", "Interventions", "Knockout", "Prefix", "Read", "RunOutput", "capture_prefix",
           "capture_prefixes", "hooked", "run", "run_frozen_attention", "run_many"]
