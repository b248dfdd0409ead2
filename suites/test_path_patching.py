"""Claim: iterated path patching finds the stored circuit (paper, docs/paper.md §4: value fetchers from the
logits, position transmitters through the fetchers' queries, position detectors and structure readers
through values; the published circuits are pruned from these candidates).

The claim's facts and measurement: mechbench/claims/specs/path_patching.py; this file makes its pytest tests.
"""

from mechbench.pytest_plugin import claim_tests

globals().update(claim_tests("path_patching"))
