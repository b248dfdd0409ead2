"""Claim: top-1 entity-tracking accuracy of each model (paper, docs/paper.md §8.1: Llama-7B 0.66, Vicuna-7B 0.67,
Goat-7B 0.82, FLoat-7B 0.82 on 500 examples).

The claim's facts and measurement: mechbench/claims/specs/accuracy.py; this file makes its pytest tests.
"""

from mechbench.pytest_plugin import claim_tests

globals().update(claim_tests("accuracy"))
