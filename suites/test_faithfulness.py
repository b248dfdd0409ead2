"""Claim: the circuit found on the base model carries the task in the base and in its fine-tunes (paper,
docs/paper.md §8.1: the Llama-7B circuit keeps 0.66 of Llama's 0.66, 0.73 of Goat's 0.82, 0.72 of FLoat's 0.82,
while random circuits of the same sizes keep 0.00-0.01).

The claim's facts and measurement: mechbench/claims/specs/faithfulness.py; this file makes its pytest tests.
"""

from mechbench.pytest_plugin import claim_tests

globals().update(claim_tests("faithfulness"))
