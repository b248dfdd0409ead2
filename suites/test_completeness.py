"""Claim: the circuit is nearly complete (paper, docs/paper.md §8.3): removing a set K of circuit heads hurts the
circuit about as much as it hurts the whole model. Llama circuit on Llama, K random (p=0.5 per head, 10
draws): F(M\\K) 0.11 +- 0.06, F(C\\K) 0.00 +- 0.01, incompleteness 0.10 +- 0.06; K = a whole group: value
fetchers 0.00 vs 0.19, position transmitters 0.02 vs 0.23, detectors 0.02 vs 0.04, structure readers 0.46 vs
0.58.

The claim's facts and measurement: mechbench/claims/specs/completeness.py; this file makes its pytest tests.
"""

from mechbench.pytest_plugin import claim_tests

globals().update(claim_tests("completeness"))
