"""Side-by-side benchmarks of mechbench against the obvious nnsight loop (see docs/performance.md). A package, so that pytest
and tests/test_side_by_side.py import its modules under the same names (benchmarks.conftest, ...)."""
