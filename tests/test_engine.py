"""The intervention engine against a slow, obviously-right reference (a hand-written Llama forward) on
random small Llamas, with and without grouped-query attention."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mechbench.intervene import HeadPatch, Knockout, Read, n_units, run
from tests.helpers import random_llama
from tests.reference_llama import reference_last_logits

N, S, D, LAYERS = 4, 9, 8, 3


@pytest.fixture(scope="module", params=[(4, 4), (4, 2)], ids=["mha", "gqa"])
def model(request):
    heads, kv = request.param
    return random_llama(n_layers=LAYERS, n_heads=heads, n_kv_heads=kv, head_dim=D, vocab_size=50, seed=1)


def ids_for(seed):
    return torch.randint(0, 50, (N, S), generator=torch.Generator().manual_seed(seed))


def test_reference_reproduces_the_model(model):
    ids = ids_for(0)
    plain = run(model, ids).last_logits
    for i in range(N):
        torch.testing.assert_close(reference_last_logits(model, ids[i]), plain[i], rtol=1e-4, atol=1e-5)


def test_no_patch_changes_nothing(model):
    ids = ids_for(0)
    with torch.no_grad():
        plain = model(input_ids=ids, logits_to_keep=1).logits[:, -1]
    assert torch.equal(run(model, ids, batch_size=N).last_logits, plain)  # same batch: bit for bit
    torch.testing.assert_close(run(model, ids, batch_size=3).last_logits, plain, rtol=1e-5, atol=1e-6)


@st.composite
def patch_sets(draw, model):
    seed = draw(st.integers(0, 10_000))
    g = torch.Generator().manual_seed(seed)
    patches = []
    for _ in range(draw(st.integers(0, 3))):
        component = draw(st.sampled_from(["head_out", "q", "k", "v"]))
        units = n_units(model, component)
        heads = draw(st.lists(st.integers(0, units - 1), min_size=1, max_size=units, unique=True))
        n_pos = draw(st.integers(1, 3))
        positions = torch.stack([torch.randperm(S, generator=g)[:n_pos] for _ in range(N)])  # distinct per row
        kind = draw(st.sampled_from(["replace", "per-head", "per-site"]))
        alpha = {
            "replace": 1.0,
            "per-head": torch.rand(len(heads), generator=g),
            "per-site": (torch.rand(N, n_pos, len(heads), generator=g) > 0.5).float(),
        }[kind]
        patches.append(
            HeadPatch(
                draw(st.integers(0, LAYERS - 1)),
                torch.tensor(heads),
                positions,
                torch.randn(N, n_pos, len(heads), D, generator=g),
                alpha,
                component,
            )
        )
    knockouts = []
    if draw(st.booleans()):
        q = torch.randint(1, S, (N,), generator=g)
        keys = torch.stack([torch.randint(0, int(qq), (2,), generator=g) for qq in q])
        knockouts.append(Knockout(draw(st.integers(0, LAYERS - 1)), q, keys))
    return seed, patches, knockouts


def as_reference(patches, knockouts, i):
    hp = []
    for p in patches:
        for j, pos in enumerate(p.positions[i].tolist()):
            for k, head in enumerate(p.heads.tolist()):
                alpha = (
                    float(p.alpha)
                    if isinstance(p.alpha, float)
                    else float(p.alpha[k])
                    if p.alpha.dim() == 1
                    else float(p.alpha[i, j, k])
                )
                hp.append((p.layer, p.component, pos, head, p.values[i, j, k], alpha))
    ko = [(k.from_layer, int(k.query_positions[i]), int(kp)) for k in knockouts for kp in k.key_positions[i]]
    return hp, ko


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_interventions_equal_the_reference(model, data):
    seed, patches, knockouts = data.draw(patch_sets(model))
    ids = ids_for(seed)
    got = run(model, ids, patches, knockouts=knockouts, batch_size=3).last_logits
    for i in range(N):
        hp, ko = as_reference(patches, knockouts, i)
        torch.testing.assert_close(got[i], reference_last_logits(model, ids[i], hp, ko), rtol=1e-4, atol=1e-4)


def test_alpha_zero_is_no_patch_and_patching_back_what_was_read_is_identity(model):
    ids = ids_for(3)
    everything = torch.arange(S).repeat(N, 1)
    for component in ("head_out", "q", "k", "v"):
        heads = torch.arange(n_units(model, component))
        base = run(model, ids, read=Read(component=component))
        noise = [
            HeadPatch(l, heads, everything, torch.randn(N, S, len(heads), D), 0.0, component) for l in range(LAYERS)
        ]
        assert torch.equal(run(model, ids, noise).last_logits, base.last_logits)
        same = [HeadPatch(l, heads, everything, base.reads[l], 1.0, component) for l in range(LAYERS)]
        torch.testing.assert_close(run(model, ids, same).last_logits, base.last_logits, rtol=0, atol=1e-5)


def test_patching_every_head_from_a_model_that_differs_only_in_attention_reproduces_it():
    """Patching everything from the counterfactual reproduces the counterfactual: when two models differ only
    in q/k/v weights (a LoRA on attention, say), every head output of one patched into the other, at every
    layer and position, makes every residual, and so the logits, those of the first."""
    model = random_llama(n_layers=LAYERS, n_heads=4, head_dim=D, vocab_size=50, seed=2)
    other = random_llama(n_layers=LAYERS, n_heads=4, head_dim=D, vocab_size=50, seed=2)
    with torch.no_grad():
        for layer in other.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.weight.add_(0.3 * torch.randn_like(proj.weight))
    ids = ids_for(7)
    source = run(other, ids, read=Read())
    everything = torch.arange(S).repeat(N, 1)
    patches = [HeadPatch(l, torch.arange(4), everything, source.reads[l]) for l in range(LAYERS)]
    assert not torch.allclose(run(model, ids).last_logits, source.last_logits, atol=1e-3)
    torch.testing.assert_close(run(model, ids, patches).last_logits, source.last_logits, rtol=1e-5, atol=1e-5)


def test_patched_values_are_what_later_reads_see():
    model = random_llama(n_layers=LAYERS, n_heads=4, head_dim=D, vocab_size=50, seed=2)
    ids, other = ids_for(5), ids_for(6)
    base, source = run(model, ids, read=Read()), run(model, other, read=Read())
    everything = torch.arange(S).repeat(N, 1)
    heads = torch.arange(4)
    patched = run(model, ids, [HeadPatch(l, heads, everything, source.reads[l]) for l in range(LAYERS)], read=Read())
    assert not torch.allclose(patched.last_logits, base.last_logits, atol=1e-3)
    for l in range(LAYERS):  # what a later read sees is exactly what was written
        torch.testing.assert_close(patched.reads[l], source.reads[l])


def test_reads_select_positions(model):
    ids = ids_for(4)
    positions = torch.randint(0, S, (N, 2))
    full = run(model, ids, read=Read([0]))
    assert full.reads[0].shape == (N, S, model.config.num_attention_heads, D)
    picked = run(model, ids, read=Read([0], positions)).reads[0]
    torch.testing.assert_close(picked, full.reads[0][torch.arange(N)[:, None], positions])
    kv = run(model, ids, read=Read([1], component="v")).reads[1]
    assert kv.shape == (N, S, model.config.num_key_value_heads, D)


def test_per_head_alpha_is_differentiable(model):
    ids = ids_for(5)
    alpha = torch.full((2,), 0.5, requires_grad=True)
    patch = HeadPatch(2, torch.tensor([1, 3]), torch.full((N, 1), S - 1), torch.randn(N, 1, 2, D), alpha)
    logits = run(model, ids, [patch], grad=True, batch_size=N).last_logits
    logits[:, 0].sum().backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0


def test_the_fast_path_with_gradients_gives_the_full_forwards_gradient(model):
    """DCM's training step through a prefix (held on the host, as between validations): the same logits and the
    same gradient of the per-head alpha as the full forward."""
    from mechbench.intervene import capture_prefixes

    ids = ids_for(7)
    grads = []
    for prefix in (None, capture_prefixes(model, ids, batch_size=3, on_host=True)):
        alpha = torch.full((2,), 0.3, requires_grad=True)
        patch = HeadPatch(
            1,
            torch.tensor([0, 2]),
            torch.full((N, 1), S - 2),
            torch.randn(N, 1, 2, D, generator=torch.Generator().manual_seed(0)),
            alpha,
        )
        logits = run(model, ids, [patch], grad=True, batch_size=N, prefix=prefix).last_logits
        logits[:, 1].sum().backward()
        grads.append((logits.detach(), alpha.grad.clone()))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-6)
    assert grads[0][1].abs().sum() > 0


def test_bad_patches_are_refused():
    with pytest.raises(ValueError, match="unknown component"):
        HeadPatch(0, [0], torch.zeros(2, 1), torch.zeros(2, 1, 1, D), component="mlp")
    with pytest.raises(ValueError, match="do not match"):
        HeadPatch(0, [0, 1], torch.zeros(2, 1), torch.zeros(2, 1, 1, D))


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_fast_path_equals_the_full_forward(model, data):
    """Recomputing only the layers and positions a patch can change gives the full forward's numbers."""
    from mechbench.intervene import capture_prefix

    seed, patches, knockouts = data.draw(patch_sets(model))
    ids = ids_for(seed)
    prefix = capture_prefix(model, ids)
    full = run(model, ids, patches, knockouts=knockouts, batch_size=N)
    fast = run(model, ids, patches, knockouts=knockouts, prefix=prefix)
    torch.testing.assert_close(fast.last_logits, full.last_logits, rtol=1e-5, atol=1e-5)
    if patches:  # reads of what the fast path recomputes match too
        from mechbench.intervene.prefix import start_of

        first_layer, first_pos = start_of(patches, knockouts, LAYERS)
        positions = torch.full((N, 1), S - 1)
        if first_layer < LAYERS:
            read = Read(list(range(first_layer, LAYERS)), positions)
            a = run(model, ids, patches, read=read, knockouts=knockouts, prefix=prefix).reads
            b = run(model, ids, patches, read=read, knockouts=knockouts, batch_size=N).reads
            for layer in a:
                torch.testing.assert_close(a[layer], b[layer], rtol=1e-5, atol=1e-5)


@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_run_many_in_small_batches_equals_one_full_run_per_set(model, data):
    """Several intervention sets through one prefix per batch (the engine owns the batching, so one batch's
    prefix is on the device at a time) give each set's full-forward numbers."""
    from mechbench.intervene import Interventions, run_many

    seed, patches, knockouts = data.draw(patch_sets(model))
    _, other, _ = data.draw(patch_sets(model))
    ids = ids_for(seed)
    sets = [Interventions(patches, knockouts=knockouts), Interventions(other), Interventions()]
    outs = run_many(model, ids, sets, batch_size=data.draw(st.integers(1, N)))
    for s, out in zip(sets, outs):
        full = run(model, ids, s.patches, knockouts=s.knockouts, batch_size=N)
        torch.testing.assert_close(out.last_logits, full.last_logits, rtol=1e-5, atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_a_prefix_under_common_patches_serves_runs_that_add_to_them(model, data):
    """A prefix captured under an ablation of every position (mean ablation's shape) serves runs that add patches
    and knockouts: common + additions as one full forward, whatever batch size."""
    from mechbench.intervene import Interventions, run_many

    seed, patches, knockouts = data.draw(patch_sets(model))
    g = torch.Generator().manual_seed(seed + 1)
    everywhere = torch.arange(S).repeat(N, 1)
    common = [
        HeadPatch(
            layer,
            torch.arange(4),
            everywhere,
            torch.randn(N, S, 4, D, generator=g),
            (torch.rand(N, S, 4, generator=g) > 0.5).float(),
        )
        for layer in data.draw(st.lists(st.integers(0, LAYERS - 1), min_size=1, max_size=3, unique=True))
    ]
    ids = ids_for(seed)
    sets = [Interventions(patches, knockouts=knockouts), Interventions()]
    outs = run_many(model, ids, sets, batch_size=data.draw(st.integers(1, N)), common=common)
    for s, out in zip(sets, outs):
        full = run(model, ids, common + list(s.patches), knockouts=s.knockouts, batch_size=N)
        torch.testing.assert_close(out.last_logits, full.last_logits, rtol=1e-5, atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), layer=st.integers(0, LAYERS - 1), component=st.sampled_from(["q", "k", "v"]))
def test_a_frozen_attention_run_equals_the_full_forward_with_every_later_head_frozen(model, seed, layer, component):
    """Every head of ``layer`` and above given at one position per example (the rest frozen from there on) leaves
    every other position as it was: one token's run gives the full forward's logits (at the last token) and reads."""
    from mechbench.intervene import capture_prefix, run_frozen_attention

    g = torch.Generator().manual_seed(seed)
    ids = ids_for(seed)
    clean = run(model, ids, read=Read())
    pos = torch.randint(1, S, (N,), generator=g)
    pos[0] = S - 1
    rows = torch.arange(N)
    given = {
        l: clean.reads[l][rows, pos] + (torch.randn(N, 4, D, generator=g) if l == layer else 0)
        for l in range(layer, LAYERS)
    }
    frozen = (torch.arange(S)[None] >= pos[:, None]).float()[:, :, None].expand(N, S, 4)
    patches = [HeadPatch(layer, torch.arange(4), pos[:, None], given[layer][:, None])] + [
        HeadPatch(l, torch.arange(4), torch.arange(S).repeat(N, 1), clean.reads[l], frozen)
        for l in range(layer + 1, LAYERS)
    ]
    full = run(model, ids, patches, read=Read(None, None, component), batch_size=N)
    hidden = capture_prefix(model, ids).hidden[layer][rows, pos]
    one = run_frozen_attention(model, hidden, pos, given, Read(None, None, component))
    torch.testing.assert_close(one.last_logits[0], full.last_logits[0], rtol=1e-5, atol=1e-5)  # row 0: the last token
    for l in range(layer, LAYERS):
        torch.testing.assert_close(one.reads[l][:, 0], full.reads[l][rows, pos], rtol=1e-5, atol=1e-5)


def test_fast_path_refuses_what_it_cannot_serve(model):
    from mechbench.intervene import capture_prefix

    ids = ids_for(1)
    prefix = capture_prefix(model, ids)
    assert torch.equal(run(model, ids, prefix=prefix).last_logits, prefix.last_logits)
    patch = HeadPatch(1, [0], torch.full((N, 1), 5), torch.zeros(N, 1, 1, D))
    with pytest.raises(ValueError, match="fast path recomputes"):
        run(model, ids, [patch], read=Read([0], torch.full((N, 1), 6)), prefix=prefix)
    with pytest.raises(ValueError, match="exact input_ids"):
        run(model, ids_for(2), [patch], prefix=prefix)


# --- knockout under each attention implementation the loader allows -------------------------------------


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_knockout_blocks_the_edge_under_eager_and_sdpa_alike(n_kv_heads):
    from mechbench.intervene import Knockout, run
    from tests.helpers import random_llama

    ids = torch.randint(3, 60, (3, 12), generator=torch.Generator().manual_seed(0))
    blocked = Knockout(0, torch.full((3,), 11), torch.tensor([2, 5, 7]))
    outputs = {}
    for impl in ("eager", "sdpa"):
        model = random_llama(n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, seed=3)
        model.set_attn_implementation(impl)
        clean, knocked = run(model, ids).last_logits, run(model, ids, knockouts=[blocked]).last_logits
        assert (clean - knocked).abs().max() > 1e-3, f"knockout changed nothing under {impl}"
        outputs[impl] = knocked
    torch.testing.assert_close(outputs["eager"], outputs["sdpa"], atol=1e-5, rtol=1e-4)


def test_knockout_refuses_an_attention_that_ignores_the_mask():
    from mechbench.errors import MechbenchError
    from mechbench.intervene import Knockout, run
    from tests.helpers import random_llama

    model = random_llama(n_layers=1, n_heads=2, seed=1)
    model.config._attn_implementation = "flash_attention_2"  # set by hand: flash does not run on a CPU
    with pytest.raises(MechbenchError, match="ignores it"):
        run(model, torch.ones(1, 5, dtype=torch.long), knockouts=[Knockout(0, torch.tensor([4]), torch.tensor([1]))])


def test_the_loader_pins_an_attention_that_applies_the_mask(tmp_path):
    from mechbench.errors import ModelLoadError
    from mechbench.models.loading import load_model
    from tests.helpers import save_random_llama

    path = save_random_llama(tmp_path / "m")
    assert load_model(str(path)).model.config._attn_implementation == "sdpa"
    assert load_model(str(path), attn_implementation="eager").model.config._attn_implementation == "eager"
    with pytest.raises(ModelLoadError, match="block nothing"):
        load_model(str(path), attn_implementation="flash_attention_2")


def test_paper_compat_o_proj_drops_goats_o_proj_lora_in_hooked_runs_only():
    """The paper's hooks recomputed o_proj from the base weight, dropping Goat's o_proj LoRA in every hooked run;
    ``paper_compat_o_proj`` reproduces that for like-for-like comparisons, the default keeps the adapter."""
    from mechbench.intervene import Read, run
    from mechbench.models.loading import load_model

    real, compat = load_model("toy-goat"), load_model("toy-goat", paper_compat_o_proj=True)
    ids = torch.randint(3, 60, (4, 10), generator=torch.Generator().manual_seed(0))
    assert torch.equal(run(real, ids).last_logits, run(compat, ids).last_logits)  # unhooked: the same model
    hooked_real = run(real, ids, read=Read([0])).last_logits
    hooked_compat = run(compat, ids, read=Read([0])).last_logits
    assert torch.equal(hooked_real, run(real, ids).last_logits)  # the default: hooks change nothing
    with torch.no_grad():  # reference: every o_proj without its LoRA, by hand
        o_projs = [layer.self_attn.o_proj for layer in real.model.model.layers]
        for o in o_projs:
            o.enable_adapters(False)
        try:
            without = run(real, ids).last_logits
        finally:
            for o in o_projs:
                o.enable_adapters(True)
    torch.testing.assert_close(hooked_compat, without)
    assert (hooked_compat - hooked_real).abs().max() > 1e-4
    assert torch.equal(run(compat, ids).last_logits, hooked_real)  # the switch is undone after each run
