"""Claim: attention knockout (paper, docs/paper.md §8.8, Llama-7B): blocking the last token's attention to the
correct object from any layer up to ~16 leaves 0.04-0.07 accuracy and only blocking it from layer 20 on lets
the answer through, while blocking an edge to a random context token changes nothing (0.63-0.66).

The claim's facts and measurement: mechbench/claims/specs/attention_knockout.py; this file makes its pytest tests.
"""

from mechbench.pytest_plugin import claim_tests

globals().update(claim_tests("attention_knockout"))
