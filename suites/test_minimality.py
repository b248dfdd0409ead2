"""Claim: each head of the circuit matters once the heads most entangled with it are gone (paper, docs/paper.md
§4 and §8.4: minimality on 100 examples, e.g. L8H21 0.65 -> 0.48, L14H27 0.60 -> 0.17; Llama's
threshold 0.01 keeps exactly its 40/7/20/5 heads).

The claim's facts and measurement: mechbench/claims/specs/minimality.py; this file makes its pytest tests.
"""

from mechbench.pytest_plugin import claim_tests

globals().update(claim_tests("minimality"))
