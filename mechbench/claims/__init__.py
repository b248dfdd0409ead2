"""The claims mechbench checks, each declared once, in one module of ``mechbench/claims/specs/``: its facts as data
(:class:`Claim`: baseline file and key fields, sample sizes, tolerance rule in words, report table, README row) and
its measurements (functions of a :class:`Run`, which hands them the model, the claim's samples under
``--limit``/``--seed`` and :meth:`Run.check`, the one comparison with a stored baseline, :func:`check_claim`).
:mod:`mechbench.claims.tolerance` holds the tolerance rules. The pytest plugin makes the suites' tests from the
registry, and the report's tables and the README's claims table come from it (``python -m mechbench.claims``)."""

# what a spec module imports from here comes first: loading the registry imports every spec, those of other
# packages (the mechbench.claims entry points) included, while this package is still being initialised
from mechbench.claims.spec import Claim, ClaimTest, derived_seed  # isort: skip
from mechbench.claims.settings import Settings  # isort: skip
from mechbench.claims.check import ClaimOutcome, check_claim
from mechbench.claims.registry import CLAIMS, get
from mechbench.claims.run import ClaimFailed, ClaimSkipped, Run

__all__ = [
    "CLAIMS",
    "Claim",
    "ClaimFailed",
    "ClaimOutcome",
    "ClaimSkipped",
    "ClaimTest",
    "Run",
    "Settings",
    "check_claim",
    "derived_seed",
    "get",
]
