"""Claim: fine-tuning improves entity tracking through the circuit's own heads (paper, docs/paper.md §8.7):
patching Goat-7B's head outputs for its circuit into Llama-7B (through Llama's W_O) lifts Llama from 0.66 to
0.82, Goat's own accuracy; value fetchers alone 0.82, position transmitters 0.78, detectors 0.62, structure
readers 0.65.

The claim's facts and measurement: mechbench/claims/specs/cmap.py; this file makes its pytest tests.
"""

from mechbench.pytest_plugin import claim_tests

globals().update(claim_tests("cmap"))
