"""Every registered claim without a suite file of its own (a spec in mechbench/claims/specs/ that sets no
``suite``): a claim is one module there, and this file makes its pytest tests. Give a claim its own file (and
set its spec's ``suite``) to select it by file."""

from mechbench.claims import CLAIMS
from mechbench.pytest_plugin import claim_tests

globals().update(claim_tests(*[claim for claim in CLAIMS.values() if claim.suite is None]))
