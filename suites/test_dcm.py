"""Claim: each circuit group carries one kind of information (paper, docs/paper.md §8.5, DCM on the Llama circuit in
Llama-7B): value fetchers the object's value (40 heads, 0.468), position transmitters and detectors its
position (0.362, 0.412), structure readers a little position (0.14); box-label value nowhere.

The claim's facts and measurement: mechbench/claims/specs/dcm.py; this file makes its pytest tests.
"""

from mechbench.pytest_plugin import claim_tests

globals().update(claim_tests("dcm"))
