"""The claims mechbench checks, each declared once as data (:class:`Claim`, one module per claim in
``mechbench/claims/specs/``), and the check of a measured number against its stored baseline
(:func:`check_claim`). The suites under ``suites/`` measure; their sizes, seeds, key fields and tolerance rules come
from here (:mod:`mechbench.claims.tolerance` holds the rules), and so do the report's tables and the README's
claims table (``python -m mechbench.claims`` prints it)."""

from mechbench.claims.check import ClaimOutcome, check_claim
from mechbench.claims.registry import CLAIMS, get
from mechbench.claims.spec import Claim, derived_seed

__all__ = ["CLAIMS", "Claim", "ClaimOutcome", "check_claim", "derived_seed", "get"]
