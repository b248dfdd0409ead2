"""Every family in the site map (mechbench.models.architectures.FAMILIES) passes the engine's identities on a tiny
random model of that family, with grouped-query attention: patching back what was read changes nothing; what a
later read sees is exactly what was patched in; the fast path (a prefix) equals the full forward for patches and
knockouts; path patching's frozen-attention run equals the full forward with every later head frozen; a knockout
changes the output. And the loader takes a saved model of each family (safetensors)."""

import pytest
import torch
import transformers

from mechbench.intervene import HeadPatch, Knockout, Read, capture_prefix, run, run_frozen_attention
from mechbench.models.architectures import FAMILIES
from mechbench.models.loading import load_model

N, S, H, KV, D, LAYERS, VOCAB = 3, 9, 4, 2, 8, 3, 60
CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
}


def test_every_family_of_the_site_map_is_tested_here():
    assert set(FAMILIES) == set(CLASSES)


def tiny(family: str, seed: int = 0, vocab: int = VOCAB):
    config_class, model_class = (getattr(transformers, name) for name in CLASSES[family])
    torch.manual_seed(seed)
    config = config_class(
        vocab_size=vocab,
        hidden_size=H * D,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=H,
        num_key_value_heads=KV,
        head_dim=D,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return model_class(config).eval()


@pytest.fixture(scope="module", params=sorted(CLASSES))
def model(request):
    m = tiny(request.param)
    assert m.config.model_type == request.param
    return m


def ids_for(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (N, S), generator=torch.Generator().manual_seed(seed))


def test_the_site_map_s_geometry_lora_names_and_layer_call_fit_the_family(model):
    """The map's geometry is the model's (from the transformers config and from its config.json dict alike), its
    LoRA module names are the layer's modules at the widths it states, and its decoder-layer call gives the
    decoder's own output of a layer."""
    import inspect

    from mechbench.intervene.hooks import attention_mask
    from mechbench.models.architectures import geometry, sites

    shape, family = geometry(model.config), sites(model)
    assert (shape.n_layers, shape.n_heads, shape.n_kv_heads, shape.head_dim, shape.d_model) == (LAYERS, H, KV, D, H * D)
    assert geometry(model.config.to_dict()) == shape
    layer = family.layer_list(model)[0]
    modules = dict(layer.named_modules())
    attention_modules = set(dict(family.projections).values())
    for name, (width_in, width_out) in family.lora_widths(shape).items():
        block = family.attention if name in attention_modules else family.mlp
        assert tuple(modules[f"{block}.{name}"].weight.shape) == (width_out, width_in)
    assert family.cache_argument(type(layer)) in inspect.signature(type(layer).forward).parameters
    ids, positions = ids_for(7), torch.arange(S)[None]
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        rotary = family.position_embeddings(model, hidden[0], positions)
        mask = attention_mask([], N, S, hidden[0].dtype, hidden[0].device)
        out = family.call_layer(model, 0, hidden[0], mask, positions, rotary)
    torch.testing.assert_close(out, hidden[1], rtol=1e-5, atol=1e-6)


def test_patching_back_what_was_read_changes_nothing(model):
    ids = ids_for(1)
    clean = run(model, ids, read=Read())
    every = torch.arange(S).repeat(N, 1)
    same = run(model, ids, [HeadPatch(l, torch.arange(H), every, clean.reads[l]) for l in range(LAYERS)])
    torch.testing.assert_close(same.last_logits, clean.last_logits, rtol=1e-5, atol=1e-6)
    for component, units in (("q", H), ("k", KV), ("v", KV)):
        reads = run(model, ids, read=Read(component=component)).reads
        back = run(
            model, ids, [HeadPatch(l, torch.arange(units), every, reads[l], component=component) for l in range(LAYERS)]
        )
        torch.testing.assert_close(back.last_logits, clean.last_logits, rtol=1e-5, atol=1e-6)


def test_a_later_read_sees_exactly_what_was_patched_in(model):
    ids, other = ids_for(2), ids_for(3)
    source = run(model, other, read=Read())
    every = torch.arange(S).repeat(N, 1)
    patched = run(
        model, ids, [HeadPatch(l, torch.arange(H), every, source.reads[l]) for l in range(LAYERS)], read=Read()
    )
    assert not torch.allclose(patched.last_logits, run(model, ids).last_logits, atol=1e-4)
    for l in range(LAYERS):
        torch.testing.assert_close(patched.reads[l], source.reads[l])


def test_the_fast_path_equals_the_full_forward(model):
    ids = ids_for(4)
    g = torch.Generator().manual_seed(0)
    patches = [
        HeadPatch(1, torch.tensor([0, 3]), torch.full((N, 1), 6), torch.randn(N, 1, 2, D, generator=g)),
        HeadPatch(2, torch.tensor([1]), torch.full((N, 1), 7), torch.randn(N, 1, 1, D, generator=g), component="v"),
    ]
    knockouts = [Knockout(1, torch.full((N,), S - 1), torch.tensor([[2], [3], [4]]))]
    prefix = capture_prefix(model, ids)
    for p, k in ((patches, []), ([], knockouts), (patches, knockouts)):
        fast, full = run(model, ids, p, knockouts=k, prefix=prefix), run(model, ids, p, knockouts=k)
        torch.testing.assert_close(fast.last_logits, full.last_logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(run(model, ids, knockouts=knockouts).last_logits, prefix.last_logits, atol=1e-4)


def test_a_frozen_attention_run_equals_the_full_forward(model):
    ids = ids_for(5)
    clean = run(model, ids, read=Read())
    layer, pos, rows = 1, torch.tensor([S - 1, 4, 6]), torch.arange(N)
    given = {
        l: clean.reads[l][rows, pos]
        + (torch.randn(N, H, D, generator=torch.Generator().manual_seed(1)) if l == layer else 0)
        for l in range(layer, LAYERS)
    }
    frozen = (torch.arange(S)[None] >= pos[:, None]).float()[:, :, None].expand(N, S, H)
    patches = [HeadPatch(layer, torch.arange(H), pos[:, None], given[layer][:, None])] + [
        HeadPatch(l, torch.arange(H), torch.arange(S).repeat(N, 1), clean.reads[l], frozen)
        for l in range(layer + 1, LAYERS)
    ]
    full = run(model, ids, patches, read=Read(None, None, "v"))
    one = run_frozen_attention(
        model, capture_prefix(model, ids).hidden[layer][rows, pos], pos, given, Read(None, None, "v")
    )
    torch.testing.assert_close(one.last_logits[0], full.last_logits[0], rtol=1e-5, atol=1e-5)
    for l in range(layer, LAYERS):
        torch.testing.assert_close(one.reads[l][:, 0], full.reads[l][rows, pos], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(CLASSES))
def test_the_loader_takes_a_saved_model_of_each_family(tmp_path, family):
    from mechbench.zoo.tokenizer import build_tokenizer

    tiny(family, vocab=len(build_tokenizer())).save_pretrained(tmp_path)  # an embedding row for every token
    build_tokenizer().save_pretrained(tmp_path)
    handle = load_model(str(tmp_path))
    assert (handle.shape.n_layers, handle.shape.n_heads, handle.shape.n_kv_heads) == (LAYERS, H, KV)
    assert len(handle.layers) == LAYERS
