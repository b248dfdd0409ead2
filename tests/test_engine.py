"""The intervention engine against a slow, obviously-right reference on random small Llamas."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from mechbench.intervene import HeadPatch, Read, run
from tests.helpers import random_llama

N, S = 5, 11


def reference_run(model, input_ids, patches):
    """One example at a time; a hook that overwrites one (position, head) at a time in Python loops."""
    n_heads = model.config.num_attention_heads
    d = model.config.hidden_size // n_heads if not getattr(model.config, "head_dim", None) else model.config.head_dim
    out = []
    for i in range(len(input_ids)):
        hooks = []
        for layer, o_proj in enumerate(m.self_attn.o_proj for m in model.model.layers):
            def hook(module, args, layer=layer):
                x = args[0].clone()
                for p in patches:
                    if p.layer != layer:
                        continue
                    for j, pos in enumerate(p.positions[i].tolist()):
                        for k, head in enumerate(p.heads.tolist()):
                            a = p.alpha if isinstance(p.alpha, float) else float(p.alpha[k])
                            cur = x[0, pos, head * d : (head + 1) * d]
                            x[0, pos, head * d : (head + 1) * d] = cur + a * (p.values[i, j, k] - cur)
                return (x,)
            hooks.append(o_proj.register_forward_pre_hook(hook))
        try:
            with torch.no_grad():
                out.append(model(input_ids=input_ids[i : i + 1]).logits[0, -1])
        finally:
            for h in hooks:
                h.remove()
    return torch.stack(out)


@pytest.fixture(scope="module", params=[(4, 4), (4, 2)], ids=["mha", "gqa"])
def model(request):
    heads, kv = request.param
    return random_llama(n_layers=3, n_heads=heads, n_kv_heads=kv, head_dim=8, vocab_size=50, seed=1)


def test_no_patch_changes_nothing(model):
    ids = torch.randint(0, 50, (N, S), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model(input_ids=ids, logits_to_keep=1).logits[:, -1]
    assert torch.equal(run(model, ids, batch_size=N).last_logits, plain)  # same batch: bit for bit
    torch.testing.assert_close(run(model, ids, batch_size=2).last_logits, plain, rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_patches_equal_the_reference(model, data):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 10_000)))
    ids = torch.randint(0, 50, (N, S), generator=g)
    n_heads, d = model.config.num_attention_heads, 8
    patches = []
    for _ in range(data.draw(st.integers(0, 3))):
        heads = data.draw(st.lists(st.integers(0, n_heads - 1), min_size=1, max_size=n_heads, unique=True))
        p = data.draw(st.integers(1, 3))
        positions = torch.randint(0, S, (N, p), generator=g)
        alpha = data.draw(st.sampled_from([1.0, "per-head"]))
        alpha = torch.rand(len(heads), generator=g) if alpha == "per-head" else alpha
        patches.append(HeadPatch(data.draw(st.integers(0, 2)), torch.tensor(heads), positions,
                                 torch.randn(N, p, len(heads), d, generator=g), alpha))
    # positions repeated within one example: the reference applies them in order, so make them unique
    for p in patches:
        p.positions = torch.stack([row if len(set(row.tolist())) == len(row) else row[:1].repeat(len(row)) for row in p.positions])
        if any(len(set(r.tolist())) != len(r) for r in p.positions):
            p.positions = p.positions[:, :1]
            p.values = p.values[:, :1]
    got = run(model, ids, patches, batch_size=2).last_logits
    torch.testing.assert_close(got, reference_run(model, ids, patches), rtol=1e-5, atol=1e-5)


def test_alpha_zero_is_no_patch_and_reading_then_patching_back_is_identity(model):
    ids = torch.randint(0, 50, (N, S), generator=torch.Generator().manual_seed(3))
    base = run(model, ids, read=Read())
    everything = torch.arange(S).repeat(N, 1)
    heads = torch.arange(model.config.num_attention_heads)
    noise = [HeadPatch(l, heads, everything, torch.randn(N, S, len(heads), 8), 0.0) for l in range(3)]
    assert torch.equal(run(model, ids, noise).last_logits, base.last_logits)
    same = [HeadPatch(l, heads, everything, base.reads[l], 1.0) for l in range(3)]
    torch.testing.assert_close(run(model, ids, same).last_logits, base.last_logits, rtol=0, atol=1e-5)


def test_reads_see_patched_values_and_positions_select_tokens(model):
    ids = torch.randint(0, 50, (N, S), generator=torch.Generator().manual_seed(4))
    values = torch.randn(N, 1, 2, 8)
    positions = torch.randint(0, S, (N, 1))
    out = run(model, ids, [HeadPatch(1, torch.tensor([0, 2]), positions, values)], read=Read([1], positions))
    torch.testing.assert_close(out.reads[1][:, :, [0, 2]], values)
    full = run(model, ids, read=Read([0]))
    assert full.reads[0].shape == (N, S, model.config.num_attention_heads, 8)
    picked = run(model, ids, read=Read([0], positions)).reads[0]
    torch.testing.assert_close(picked[:, 0], full.reads[0][torch.arange(N), positions[:, 0]])


def test_per_head_alpha_is_differentiable(model):
    ids = torch.randint(0, 50, (N, S), generator=torch.Generator().manual_seed(5))
    alpha = torch.full((2,), 0.5, requires_grad=True)
    patch = HeadPatch(2, torch.tensor([1, 3]), torch.full((N, 1), S - 1), torch.randn(N, 1, 2, 8), alpha)
    logits = run(model, ids, [patch], grad=True, batch_size=N).last_logits
    logits[:, 0].sum().backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0
