"""Input CMAP (the fine-tune's queries, keys and values of a group's heads at their role, patched into the base)
against a hand-written reference on random Llamas, with and without grouped-query attention."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mechbench.circuits import HeadGroup
from mechbench.data.dataset import build_dataset
from mechbench.evaluate import correct_on
from mechbench.intervene import Read, run
from mechbench.methods.cmap import INPUT_SETS, input_cmap_correct, input_cmap_patches
from tests.helpers import random_llama
from tests.reference_llama import _rms, _rope, reference_last_logits, with_mlp

LAYERS, HEADS, D = 3, 4, 8
ROLES = ("last", "query_label", "prev_query_label")


def _pair(n_kv_heads, seed=5):
    """A base and a donor that differs from it in every attention input (and nowhere else)."""
    base = random_llama(n_layers=LAYERS, n_heads=HEADS, n_kv_heads=n_kv_heads, head_dim=D, seed=seed)
    donor = random_llama(n_layers=LAYERS, n_heads=HEADS, n_kv_heads=n_kv_heads, head_dim=D, seed=seed)
    with torch.no_grad():
        for i, layer in enumerate(donor.model.layers):
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.weight.add_(0.5 * torch.randn_like(proj.weight, generator=torch.Generator().manual_seed(i)))
    return base, donor


@torch.no_grad()
def reference_input_cmap(base, ids, group, position, inputs, donor_qkv, clean_heads):
    """Logits at the last token of ``base`` on ``ids`` ([S]) where ``group``'s heads attend at ``position`` with
    the donor's query there (``q``) and the donor's keys / values before it (``k``, ``v``), written out in loops:
    with keys or values moved, the group's heads elsewhere, and every query head sharing a moved key/value head,
    output what the clean base outputs (``clean_heads``: layer -> [S, H, d]). ``donor_qkv``: (layer, component)
    -> the donor's [S, units, d]."""
    cfg = base.config
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    theta = cfg.rope_parameters["rope_theta"]
    S, pos = len(ids), torch.arange(len(ids))
    x = base.model.embed_tokens.weight[ids].clone()
    moves_kv = "k" in inputs or "v" in inputs
    for li, layer in enumerate(base.model.layers):
        a = layer.self_attn
        h_in = _rms(x, layer.input_layernorm.weight, cfg.rms_norm_eps)
        q = (h_in @ a.q_proj.weight.T).view(S, H, D)
        k = (h_in @ a.k_proj.weight.T).view(S, KV, D)
        v = (h_in @ a.v_proj.weight.T).view(S, KV, D)
        mine = {h for l, h in group.heads if l == li}
        shared = {kv for kv in range(KV) if any(h // (H // KV) == kv for h in mine)}
        heads = torch.zeros(S, H, D)
        for head in range(H):
            kvh = head // (H // KV)
            if moves_kv and kvh in shared and head not in mine:  # reads a moved key/value head: kept clean
                heads[:, head] = clean_heads[li][:, head]
                continue
            for i in range(S):
                if head in mine and moves_kv and i != position:
                    heads[i, head] = clean_heads[li][i, head]
                    continue
                qi = q[i, head]
                keys, values = k[: i + 1, kvh].clone(), v[: i + 1, kvh].clone()
                if head in mine and i == position:
                    if "q" in inputs:
                        qi = donor_qkv[(li, "q")][i, head]
                    if "k" in inputs:
                        keys[:i] = donor_qkv[(li, "k")][:i, kvh]
                    if "v" in inputs:
                        values[:i] = donor_qkv[(li, "v")][:i, kvh]
                qr = _rope(qi[None], torch.tensor([i]), theta)[0]
                kr = _rope(keys, pos[: i + 1], theta)
                w = torch.softmax((kr @ qr) / D**0.5, -1)
                heads[i, head] = w @ values
        x = x + heads.reshape(S, H * D) @ a.o_proj.weight.T
        x = with_mlp(layer, x, cfg.rms_norm_eps)
    x = _rms(x, base.model.norm.weight, cfg.rms_norm_eps)
    return x[-1] @ base.lm_head.weight.T


@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_input_cmap_equals_the_reference(data, toy_tokenizer):
    """Every input set, on a group of heads over one or more layers at any role, with or without shared key/value
    heads: the engine's patched base equals the loop-by-loop reference to float tolerance."""
    n_kv = data.draw(st.sampled_from([HEADS, 2]), label="kv heads")
    base, donor = _pair(n_kv)
    role = data.draw(st.sampled_from(ROLES), label="role")
    every = [(l, h) for l in range(LAYERS) for h in range(HEADS)]
    heads = data.draw(st.lists(st.sampled_from(every), min_size=1, max_size=5, unique=True), label="heads")
    name = data.draw(st.sampled_from(list(INPUT_SETS)), label="input set")
    group = HeadGroup("g", role, tuple(sorted(heads)))
    ds = build_dataset(toy_tokenizer, n_examples=2, num_boxes=3, seed=data.draw(st.integers(0, 50), label="seed"))
    layers = list(range(LAYERS))
    donor_reads = {c: run(donor, ds.input_ids, read=Read(layers, component=c)).reads for c in ("q", "k", "v")}
    clean = run(base, ds.input_ids, read=Read(layers)).reads
    positions = ds.positions(role)
    patches = input_cmap_patches(group, INPUT_SETS[name], positions, donor_reads, clean, HEADS // n_kv)
    got = run(base, ds.input_ids, patches).last_logits
    for i in range(len(ds)):
        record = {}
        reference_last_logits(donor, ds.input_ids[i], record=record)  # the donor's own q, k, v, written out
        clean_record = {}
        reference_last_logits(base, ds.input_ids[i], record=clean_record)
        ref = reference_input_cmap(
            base,
            ds.input_ids[i],
            group,
            int(positions[i]),
            INPUT_SETS[name],
            record,
            {l: clean_record[(l, "head_out")] for l in layers},
        )
        torch.testing.assert_close(got[i], ref, rtol=1e-4, atol=1e-4)


def test_input_cmap_with_the_base_as_donor_changes_nothing(toy_tokenizer):
    """The base's own inputs patched into it: every group and input set answers as the clean base does; and the
    donor's inputs do move a prediction somewhere (the patch is not a no-op)."""
    base, donor = _pair(2)
    ds = build_dataset(toy_tokenizer, n_examples=12, num_boxes=3, seed=3)
    groups = [
        HeadGroup("fetch", "last", ((2, 1), (1, 3))),
        HeadGroup("detect", "query_label", ((0, 2), (1, 1))),
        HeadGroup("read", "prev_query_label", ((0, 0),)),
    ]
    same = input_cmap_correct(base, base, groups, ds, batch_size=5)
    assert set(same) == {(g.name, s) for g in groups for s in INPUT_SETS}
    clean = correct_on(base, ds)
    assert all(torch.equal(c, clean) for c in same.values())
    layers = list(range(LAYERS))
    donor_reads = {c: run(donor, ds.input_ids, read=Read(layers, component=c)).reads for c in ("q", "k", "v")}
    reads = run(base, ds.input_ids, read=Read(layers)).reads
    moved = run(
        base,
        ds.input_ids,
        input_cmap_patches(groups[0], INPUT_SETS["QKV"], ds.positions("last"), donor_reads, reads, 2),
    ).last_logits
    assert not torch.allclose(moved, run(base, ds.input_ids).last_logits)
