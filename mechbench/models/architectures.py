"""What mechbench knows of a model family: one small map per ``model_type``, read by the loader, the memory plan
and the intervention engine alike (as TransformerLens and pyvene keep one map per architecture).

A family's map says

- its **geometry**, from its config (:func:`geometry`: layers, query and key/value heads, head width, model and
  MLP width, vocabulary), whether the config is a ``config.json`` dict (the plan, before anything loads) or a
  transformers config (the loader, the engine);
- where the engine's **sites** are: the decoder's layers, each layer's attention and its q/k/v/o projections, the
  rotary embedding, the final norm and the unembedding;
- the **decoder-layer call**: the keyword arguments a layer takes when the engine runs it on a suffix of the prompt
  (the fast path) or on one token (frozen attention): the attention mask, the positions, the rotary embeddings and
  the key/value cache;
- the **LoRA module names**: which modules of a layer an adapter may adapt and the width of each (the loader checks
  an adapter against its base with them; the engine finds o_proj's LoRA, which ``paper_compat_o_proj`` drops).

A family is supported when its modules sit where its :class:`SiteMap` says and its decoder layer takes those
keyword arguments. In transformers 5, Mistral, Qwen2 and Qwen3 share Llama's layout (Qwen3 adds q/k norms after the
projections: a ``q`` or ``k`` site is the projection's output, before the norm, as it is before RoPE in Llama);
each is tested with a tiny random model on the engine's identities (``tests/test_families.py``).

This is a model fact, so it lives under ``mechbench.models``: the engine (``mechbench.intervene``) imports it, and
nothing under ``mechbench.models`` imports the engine (``tests/test_imports.py``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class ModelShape:
    """A model's geometry, as :func:`geometry` reads it from its config."""

    n_layers: int
    n_heads: int  # query heads: one head output per query head at o_proj's input
    n_kv_heads: int
    head_dim: int
    d_model: int
    vocab_size: int
    d_mlp: int | None = None  # the MLP's inner width (intermediate_size), where the config gives it


def geometry(config) -> ModelShape:
    """The geometry of a model from its config: a ``config.json`` dict or a transformers config (the one place it
    is derived; the loader's handle shape, the plan's :class:`mechbench.plan.Shape` and the engine read it).
    ``head_dim`` and ``num_key_value_heads`` are optional (``hidden_size / num_attention_heads`` and one key/value
    head per query head); a missing required field raises the config's own KeyError or AttributeError."""
    if isinstance(config, Mapping):
        need, may = config.__getitem__, config.get
    else:
        need, may = (lambda key: getattr(config, key)), (lambda key: getattr(config, key, None))
    n_heads, d_model = need("num_attention_heads"), need("hidden_size")
    return ModelShape(
        n_layers=need("num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=may("num_key_value_heads") or n_heads,
        head_dim=may("head_dim") or d_model // n_heads,
        d_model=d_model,
        vocab_size=need("vocab_size"),
        d_mlp=may("intermediate_size"),
    )


#: Attention implementations that apply an explicit additive mask, which is how knockouts block edges (flash
#: attention computes its own causal pattern and ignores one): the loader pins one of these.
MASK_HONOURING = ("eager", "sdpa")

#: Passed as ``cache`` to :meth:`SiteMap.call_layer`: the layer is called without any cache argument.
NO_CACHE = object()


@dataclass(frozen=True)
class SiteMap:
    decoder: str = "model"  # the decoder under the causal-LM head
    layers: str = "layers"  # the decoder's list of layers
    attention: str = "self_attn"  # a layer's attention block
    projections: tuple[tuple[str, str], ...] = (
        ("head_out", "o_proj"),
        ("q", "q_proj"),
        ("k", "k_proj"),
        ("v", "v_proj"),
    )  # component -> module (head_out: o_proj's input)
    rotary: str = "rotary_emb"  # on the decoder
    final_norm: str = "norm"  # on the decoder
    unembed: str = "lm_head"  # on the causal-LM model
    # the LoRA module names: a layer's MLP block and its projections (gate, up: d_model -> d_mlp; down: back)
    mlp: str = "mlp"
    mlp_projections: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    # the decoder-layer call: the keyword arguments of ``layer(hidden, ...)``
    mask_argument: str = "attention_mask"
    positions_argument: str = "position_ids"
    rotary_argument: str = "position_embeddings"  # the rotary embedding's (cos, sin), computed once per run
    # the key/value cache's name, first one the layer's signature has: ``cache`` from transformers 5.24 on
    # (``past_key_values`` still works there, with a deprecation warning), ``past_key_values`` before
    cache_arguments: tuple[str, ...] = ("cache", "past_key_values")

    # --- sites -----------------------------------------------------------------------------------------------

    def decoder_of(self, model):
        return getattr(model, self.decoder)

    def layer_list(self, model):
        return getattr(self.decoder_of(model), self.layers)

    def attention_of(self, model, layer: int):
        return getattr(self.layer_list(model)[layer], self.attention)

    def module(self, model, layer: int, component: str):
        return getattr(self.attention_of(model, layer), dict(self.projections)[component])

    def rotary_of(self, model):
        return getattr(self.decoder_of(model), self.rotary)

    def logits(self, model, hidden):
        """The unembedding of the final norm of ``hidden``."""
        return getattr(model, self.unembed)(getattr(self.decoder_of(model), self.final_norm)(hidden))

    # --- the decoder-layer call ------------------------------------------------------------------------------

    def position_embeddings(self, model, hidden, position_ids):
        """The rotary embedding of ``position_ids``, as the decoder computes it once per forward for its layers."""
        return self.rotary_of(model)(hidden, position_ids=position_ids)

    def call_layer(self, model, layer: int, hidden, attention_mask, position_ids, position_embeddings, cache=NO_CACHE):
        """Layer ``layer`` of ``model`` on ``hidden`` ([B, S, d_model]), as the decoder calls it. ``cache`` (a
        key/value cache, or None for none) is passed under the layer's own name for it, with ``use_cache``; left
        at :data:`NO_CACHE`, no cache argument is passed at all (frozen attention's one-token rows)."""
        decoder_layer = self.layer_list(model)[layer]
        kwargs = {
            self.mask_argument: attention_mask,
            self.positions_argument: position_ids,
            self.rotary_argument: position_embeddings,
        }
        if cache is not NO_CACHE:
            kwargs["use_cache"] = cache is not None
            kwargs[self.cache_argument(type(decoder_layer))] = cache
        return decoder_layer(hidden, **kwargs)

    def cache_argument(self, layer_type: type) -> str:
        """The decoder layer's name for the key/value cache. A wrong name would be swallowed by the layer's
        ``**kwargs`` and the suffix would attend to nothing before it, so it is read from the signature."""
        return _cache_argument(layer_type, self.cache_arguments)

    # --- LoRA module names -----------------------------------------------------------------------------------

    def lora_widths(self, shape: ModelShape) -> dict[str, tuple[int | None, int | None]]:
        """Each module a LoRA adapter may adapt -> (input width, output width) in a model of ``shape``."""
        proj = dict(self.projections)
        q_out, kv_out = shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim
        gate, up, down = self.mlp_projections
        return {
            proj["q"]: (shape.d_model, q_out),
            proj["k"]: (shape.d_model, kv_out),
            proj["v"]: (shape.d_model, kv_out),
            proj["head_out"]: (q_out, shape.d_model),
            gate: (shape.d_model, shape.d_mlp),
            up: (shape.d_model, shape.d_mlp),
            down: (shape.d_mlp, shape.d_model),
        }

    @property
    def lora_key(self) -> re.Pattern:
        """A LoRA weight's name in an adapter file: groups (layer, block, module, A or B)."""
        return re.compile(
            rf"{re.escape(self.layers)}\.(\d+)\.({re.escape(self.attention)}|{re.escape(self.mlp)})"
            rf"\.(\w+)\.lora_([AB])\.(?:\w+\.)?weight$"
        )


@cache
def _cache_argument(layer_type: type, names: tuple[str, ...]) -> str:
    parameters = inspect.signature(layer_type.forward).parameters
    return next((n for n in names if n in parameters), names[-1])


LLAMA_LAYOUT = SiteMap()

#: The supported families: ``config.model_type`` -> where its sites are.
FAMILIES: dict[str, SiteMap] = {
    "llama": LLAMA_LAYOUT,
    "mistral": LLAMA_LAYOUT,
    "qwen2": LLAMA_LAYOUT,
    "qwen3": LLAMA_LAYOUT,
}

#: The families whose sites the engine knows (one map each in :data:`FAMILIES`).
SUPPORTED_ARCHITECTURES = tuple(FAMILIES)


def family_of(config) -> SiteMap:
    """The site map of the family a config (a ``config.json`` dict or a transformers config) names; Llama's
    layout where it names none the map knows."""
    model_type = config.get("model_type") if isinstance(config, Mapping) else getattr(config, "model_type", None)
    return FAMILIES.get(model_type, LLAMA_LAYOUT)


def sites(model) -> SiteMap:
    """The site map of ``model``'s family (a model of another family is refused when it is loaded; a bare module
    without a known ``model_type``, say a test's, is read as Llama's layout)."""
    return family_of(getattr(model, "config", None))


def causal_lm(model_or_handle):
    """The causal-LM module under a :class:`~mechbench.models.loading.ModelHandle` or a peft ``PeftModel`` (the
    LoRA layers stay injected in it), or the module itself."""
    import torch

    model = model_or_handle if isinstance(model_or_handle, torch.nn.Module) else model_or_handle.model
    return model.get_base_model() if hasattr(model, "get_base_model") else model
