from mechbench.intervene.engine import HeadPatch, Read, RunOutput, hooked, run

__all__ = ["HeadPatch", "Read", "RunOutput", "hooked", "run"]
