"""Claim: fine-tuning strengthens the same mechanism (paper, docs/paper.md §8.6): the heads DCM found in Llama's
circuit, patched from the counterfactual into each model, move it to the desideratum's target more often in the
fine-tunes: value fetchers' object value 45.6% in Llama, 65.9% in Goat, 63.3% in FLoat; transmitters'
position 36.9%, 38.6%, 47.1%.

The claim's facts and measurement: mechbench/claims/specs/dcm_patching.py; this file makes its pytest tests.
"""

from mechbench.pytest_plugin import claim_tests

globals().update(claim_tests("dcm_patching"))
