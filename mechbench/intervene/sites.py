"""Where a model family keeps what the engine touches: one small map per ``model_type``.

The engine reads a decoder's layers, each layer's attention and its q/k/v/o projections, the rotary embedding,
the final norm and the unembedding, and runs a decoder layer on a suffix of the prompt with a key/value cache;
nothing else of the model. A family is supported when its modules sit where its :class:`SiteMap` says and its
decoder layer takes the Llama layer's keyword arguments (``attention_mask``, ``position_ids``,
``position_embeddings`` and the cache). In transformers 5, Mistral, Qwen2 and Qwen3 share Llama's layout (Qwen3
adds q/k norms after the projections: a ``q`` or ``k`` site is the projection's output, before the norm, as it is
before RoPE in Llama); each is tested with a tiny random model on the engine's identities
(``tests/test_families.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SiteMap:
    decoder: str = "model"  # the decoder under the causal-LM head
    layers: str = "layers"  # the decoder's list of layers
    attention: str = "self_attn"  # a layer's attention block
    projections: tuple[tuple[str, str], ...] = (("head_out", "o_proj"), ("q", "q_proj"), ("k", "k_proj"),
                                                ("v", "v_proj"))  # component -> module (head_out: o_proj's input)
    rotary: str = "rotary_emb"  # on the decoder
    final_norm: str = "norm"  # on the decoder
    unembed: str = "lm_head"  # on the causal-LM model

    def decoder_of(self, model) -> torch.nn.Module:
        return getattr(model, self.decoder)

    def layer_list(self, model):
        return getattr(self.decoder_of(model), self.layers)

    def attention_of(self, model, layer: int) -> torch.nn.Module:
        return getattr(self.layer_list(model)[layer], self.attention)

    def module(self, model, layer: int, component: str) -> torch.nn.Module:
        return getattr(self.attention_of(model, layer), dict(self.projections)[component])

    def rotary_of(self, model) -> torch.nn.Module:
        return getattr(self.decoder_of(model), self.rotary)

    def logits(self, model, hidden: torch.Tensor) -> torch.Tensor:
        """The unembedding of the final norm of ``hidden``."""
        return getattr(model, self.unembed)(getattr(self.decoder_of(model), self.final_norm)(hidden))


LLAMA_LAYOUT = SiteMap()

#: The supported families: ``config.model_type`` -> where its sites are.
FAMILIES: dict[str, SiteMap] = {"llama": LLAMA_LAYOUT, "mistral": LLAMA_LAYOUT, "qwen2": LLAMA_LAYOUT,
                                "qwen3": LLAMA_LAYOUT}


def sites(model) -> SiteMap:
    """The site map of ``model``'s family (a model of another family is refused when it is loaded; a bare module
    without a known ``model_type``, say a test's, is read as Llama's layout)."""
    return FAMILIES.get(getattr(getattr(model, "config", None), "model_type", None), LLAMA_LAYOUT)
