from mechbench.intervene.engine import (
    COMPONENTS, HeadPatch, Knockout, Prefix, Read, RunOutput, capture_prefix, hooked, run,
)

__all__ = ["COMPONENTS", "HeadPatch", "Knockout", "Prefix", "Read", "RunOutput", "capture_prefix", "hooked", "run"]
