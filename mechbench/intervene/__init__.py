from mechbench.intervene.engine import COMPONENTS, HeadPatch, Knockout, Read, RunOutput, hooked, run

__all__ = ["COMPONENTS", "HeadPatch", "Knockout", "Read", "RunOutput", "hooked", "run"]
