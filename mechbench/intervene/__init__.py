from mechbench.intervene.engine import (
    COMPONENTS, HeadPatch, Interventions, Knockout, Prefix, Read, RunOutput, capture_prefix, hooked, run, run_many,
)

__all__ = ["COMPONENTS", "HeadPatch", "Interventions", "Knockout", "Prefix", "Read", "RunOutput", "capture_prefix",
           "hooked", "run", "run_many"]
