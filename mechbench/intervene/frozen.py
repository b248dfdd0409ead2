"""Frozen attention: one token's residual stream run up the model with every head's output given
(:func:`run_frozen_attention`), path patching's exact shortcut."""

from __future__ import annotations

import torch

from mechbench.intervene.hooks import hooked, n_units
from mechbench.intervene.requests import HeadPatch, Read, RunOutput
from mechbench.models.architectures import causal_lm, sites


@torch.no_grad()
def run_frozen_attention(
    model_or_handle,
    hidden: torch.Tensor,
    position_ids: torch.Tensor,
    head_values: dict[int, torch.Tensor],
    read: Read | None = None,
    logits: bool = True,
) -> RunOutput:
    """One token per row, from layer ``L = min(head_values)`` up, with every head's output given: ``hidden``
    ([R, d_model]) is the row's input of layer L, ``head_values[l]`` ([R, heads, head_dim], for every layer l >= L)
    replaces all of that layer's head outputs at the token (attention frozen), so only the norms, projections and
    MLPs of this one token are recomputed. ``last_logits`` are the token's logits (empty with ``logits=False``, for
    a run that only reads); ``read`` (positions None) records the token's q/k/v or head outputs.

    Exact for path patching: when every head above the sender is frozen at its clean value from the sender's
    position on, nothing at any other position changes (positions talk only through attention), so the run of the
    whole prompt reduces to this one token's residual stream (tested against the full forward).
    """
    model = causal_lm(model_or_handle)
    family = sites(model)
    n_layers = len(family.layer_list(model))
    first = min(head_values)
    if sorted(head_values) != list(range(first, n_layers)):
        raise ValueError(f"head_values must give every layer from {first} to {n_layers - 1}: attention is frozen")
    if read is not None and read.positions is not None:
        raise ValueError("a frozen-attention run has one token per row: read with positions=None")
    rows = len(hidden)
    x = hidden[:, None]
    position_ids = torch.as_tensor(position_ids, device=x.device).reshape(rows, 1)
    n_heads = n_units(model, "head_out")
    zero = torch.zeros(rows, 1, dtype=torch.long)
    patches = [HeadPatch(layer, torch.arange(n_heads), zero, values[:, None]) for layer, values in head_values.items()]
    position_embeddings = family.position_embeddings(model, x, position_ids)
    store: dict = {}
    last = max(read.layers) if read is not None and read.layers is not None and not logits else n_layers - 1
    with hooked(model, patches, read, store):
        for layer in range(first, last + 1):
            # one token attends to itself only, and its heads' outputs are replaced: no mask and no cache
            x = family.call_layer(model, layer, x, None, position_ids, position_embeddings)
        out = family.logits(model, x)[:, -1].float().cpu() if logits else torch.empty(0)
    return RunOutput(out, {layer: torch.cat(chunks) for layer, chunks in store.items()})
