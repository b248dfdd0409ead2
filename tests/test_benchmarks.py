"""Speed of the engine's paths, measured with pytest-benchmark (never asserted as a time).

    pytest tests/test_benchmarks.py --benchmark-enable --benchmark-autosave   # store a run in .benchmarks/
    pytest-benchmark compare                                                  # compare stored runs

By default (``--benchmark-disable`` in pyproject.toml) each runs once, as a smoke test of the benchmarked code.
"""

import pytest
import torch

from mechbench.intervene import HeadPatch, capture_prefix, run
from tests.helpers import random_llama

N, S = 32, 54  # the paper's prompt length


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    model = random_llama(n_layers=6, n_heads=8, head_dim=16, vocab_size=200, seed=0)
    ids = torch.randint(0, 200, (N, S))
    # a late patch: one head at the last token of the fourth layer, as in path patching's value-fetcher step
    patch = HeadPatch(4, [3], torch.full((N, 1), S - 1), torch.randn(N, 1, 1, 16))
    return model, ids, patch


@pytest.mark.benchmark(group="patch-last-token-layer-4")
def test_full_forward(benchmark, setting):
    model, ids, patch = setting
    benchmark(lambda: run(model, ids, [patch], batch_size=N))


@pytest.mark.benchmark(group="patch-last-token-layer-4")
def test_fast_path(benchmark, setting):
    model, ids, patch = setting
    prefix = capture_prefix(model, ids)
    out = benchmark(lambda: run(model, ids, [patch], prefix=prefix))
    torch.testing.assert_close(
        out.last_logits, run(model, ids, [patch], batch_size=N).last_logits, rtol=1e-5, atol=1e-5
    )
