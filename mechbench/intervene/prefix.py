"""The clean-prefix fast path: capture a batch's run once (:func:`capture_prefix`), then serve patched runs of the
same prompts from it, recomputing only the layers and positions their interventions can change
(:func:`run_from_prefix`, what :func:`mechbench.intervene.run` calls when given a prefix).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mechbench.intervene.hooks import attention_mask, hooked
from mechbench.intervene.requests import HeadPatch, Knockout, Read, RunOutput
from mechbench.models.architectures import causal_lm, sites
from mechbench.models.devices import input_device, layer_devices
from mechbench.models.run_options import batch_size_of


@dataclass
class Prefix:
    """A run's state for one batch: each layer's input and each layer's keys and values (after RoPE).

    A patch at layer L and positions >= P cannot change anything below layer L or before position P (causal
    attention), so a patched run can start from the residual at layer L, recompute positions P.. only, and
    attend to the keys and values of the positions before P. The run is the clean one, or the one under
    ``common`` patches (say every head outside a circuit mean-ablated): a run served by it applies ``common`` plus
    its own patches, and only its own decide where the recomputation starts.
    """

    input_ids: torch.Tensor
    hidden: list[torch.Tensor]  # input of layer l: [B, S, d_model]
    keys: list[torch.Tensor]  # [B, kv_heads, S, head_dim]
    values: list[torch.Tensor]
    last_logits: torch.Tensor
    common: Sequence[HeadPatch] = ()
    reads: dict[int, torch.Tensor] = field(default_factory=dict)  # what the capture was asked to read (host)
    _common_from: dict[int, list[HeadPatch]] = field(default_factory=dict, repr=False)

    def to(self, device) -> Prefix:
        """The same prefix on ``device`` (a prefix reused many times can wait on the host between uses)."""
        return Prefix(
            self.input_ids.to(device),
            [h.to(device) for h in self.hidden],
            [k.to(device) for k in self.keys],
            [v.to(device) for v in self.values],
            self.last_logits,
            self.common,
            self.reads,
        )

    def placed(self, model) -> Prefix:
        """The same prefix where ``model`` computes: the input ids on its input device, each layer's input, keys and
        values on that layer's device (under a device map, layers sit on several GPUs: a layer's attention joins the
        cached keys with those it computes, so one device for all would fail at the first layer elsewhere). A prefix
        already in place is returned as it is; a tensor already on its device is not copied."""
        family = sites(model)
        devices = layer_devices(model, family.layer_list(model))
        if self.input_ids.device == input_device(model) and all(
            h.device == d and k.device == d and v.device == d
            for h, k, v, d in zip(self.hidden, self.keys, self.values, devices, strict=True)
        ):
            return self
        return Prefix(
            self.input_ids.to(input_device(model)),
            [h.to(d) for h, d in zip(self.hidden, devices, strict=True)],
            [k.to(d) for k, d in zip(self.keys, devices, strict=True)],
            [v.to(d) for v, d in zip(self.values, devices, strict=True)],
            self.last_logits,
            self.common,
            self.reads,
        )

    def common_from(self, layer: int, position: int) -> list[HeadPatch]:
        """The common patches a run recomputing layers >= ``layer`` from ``position`` on applies again: sliced once
        per position and kept (minimality serves thousands of sets from one prefix)."""
        if position not in self._common_from:
            self._common_from[position] = [
                (p.layer, q) for p in self.common for q in [p.from_position(position)] if q is not None
            ]
        return [q for l, q in self._common_from[position] if l >= layer]


@torch.no_grad()
def capture_prefix(
    model_or_handle, input_ids: torch.Tensor, common: Sequence[HeadPatch] = (), read: Read | None = None
) -> Prefix:
    """One forward of a batch (under ``common`` patches, rows as ``input_ids``), keeping what the fast path needs,
    and what ``read`` asks for in ``Prefix.reads`` (path patching's clean head outputs: no second clean run)."""
    model = causal_lm(model_or_handle)
    ids = input_ids.to(input_device(model))
    store: dict = {}
    with hooked(model, common, read, store, intervened=True):
        out = model(input_ids=ids, use_cache=True, output_hidden_states=True, logits_to_keep=1)
    n_layers = len(sites(model).layer_list(model))
    cache = out["cache"] if "cache" in out else out.past_key_values  # renamed in transformers 5.24
    return Prefix(
        ids,
        list(out.hidden_states[:n_layers]),
        [cache.layers[l].keys for l in range(n_layers)],
        [cache.layers[l].values for l in range(n_layers)],
        out.logits[:, -1].float().cpu(),
        tuple(common),
        {layer: torch.cat(chunks) for layer, chunks in store.items()},
    ).placed(model)  # a layer's input comes out on the layer below's device: moved once here, not at every run


def capture_prefixes(
    model_or_handle, input_ids: torch.Tensor, batch_size: int | None = None, on_host: bool = True
) -> list[Prefix]:
    """One prefix per batch of ``input_ids``, for prompts that many runs reuse (DCM validates a mask on the same
    pairs every few steps); ``on_host``: each waits in host memory and goes to the device for its run."""
    model = causal_lm(model_or_handle)
    batch_size = batch_size or batch_size_of(model)
    out = []
    for start in range(0, len(input_ids), batch_size):
        prefix = capture_prefix(model, input_ids[start : start + batch_size])
        out.append(prefix.to("cpu") if on_host else prefix)
    return out


def start_of(patches: Sequence[HeadPatch], knockouts: Sequence[Knockout], n_layers: int) -> tuple[int, int]:
    """The first layer and first position any intervention touches (where a run from a prefix starts)."""
    layers = [p.layer for p in patches] + [k.from_layer for k in knockouts]
    positions = [int(p.positions.min()) for p in patches] + [int(k.query_positions.min()) for k in knockouts]
    return (min(layers), min(positions)) if layers else (n_layers, 0)


def run_from_prefix(
    model,
    prefix: Prefix,
    patches: Sequence[HeadPatch],
    read: Read | None,
    knockouts: Sequence[Knockout],
    grad: bool = False,
) -> RunOutput:
    """The run of ``prefix``'s batch under ``patches``, ``read`` and ``knockouts`` (plus the prefix's common
    patches), recomputing layers and positions from :func:`start_of` on; ``prefix`` on ``model``'s device."""
    from transformers import DynamicCache

    family = sites(model)
    n_layers = len(family.layer_list(model))
    first_layer, first_pos = start_of(patches, knockouts, n_layers)
    if read is not None:
        layers = range(n_layers) if read.layers is None else read.layers
        if (
            read.positions is None
            or int(read.positions.min()) < first_pos
            or min(layers, default=n_layers) < first_layer
        ):
            raise ValueError(
                f"the fast path recomputes layers >= {first_layer} at positions >= {first_pos} only; "
                f"read those, or run without a prefix"
            )
    if first_layer >= n_layers:
        return RunOutput(prefix.last_logits, {})
    batch, seq = prefix.input_ids.shape
    hidden = prefix.hidden[first_layer][:, first_pos:]
    cache = None
    if first_pos > 0:
        cache = DynamicCache(config=model.config)
        for layer in range(n_layers):
            cache.update(prefix.keys[layer][:, :, :first_pos], prefix.values[layer][:, :, :first_pos], layer)
    position_ids = torch.arange(first_pos, seq, device=hidden.device)[None]
    position_embeddings = family.position_embeddings(model, hidden, position_ids)
    store: dict = {}
    # the prefix's own patches, where the recomputed layers and positions meet them
    common = prefix.common_from(first_layer, first_pos)
    # with grad (DCM's training step) the prefix is a constant: the gradient reaches the patches' alphas through the
    # recomputed suffix only, which is all that depends on them
    with (
        torch.set_grad_enabled(grad),
        hooked(model, common + list(patches), read, store, offset=first_pos, intervened=True),
    ):
        for layer in range(first_layer, n_layers):
            active = [k for k in knockouts if k.from_layer <= layer]
            mask = attention_mask(active, batch, seq, hidden.dtype, hidden.device, q_start=first_pos)
            hidden = family.call_layer(model, layer, hidden, mask, position_ids, position_embeddings, cache=cache)
        logits = family.logits(model, hidden[:, -1:])[:, -1]
    return RunOutput(
        logits.float() if grad else logits.float().cpu(), {layer: torch.cat(chunks) for layer, chunks in store.items()}
    )
