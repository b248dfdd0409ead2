"""Where a model computes: the device its inputs go to, also under accelerate's device maps and offload (the
models layer's, since a handle says its device; the engine moves inputs there)."""

from __future__ import annotations

import torch


def input_device(model) -> torch.device:
    """Where ``model``'s input ids go: its embedding's device. Under accelerate (``device_map``, CPU or disk offload)
    a module's weights can sit on another device, or on ``meta`` until its hook brings them in at run time; the hook
    names the device it computes on (``execution_device``), and that is where the inputs must be."""
    embed = model.get_input_embeddings()
    hook = getattr(embed, "_hf_hook", None)
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    weight = embed.weight
    if weight.device.type != "meta":
        return weight.device
    hook = getattr(model, "_hf_hook", None)  # cpu_offload / dispatch_model on the whole model
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    raise RuntimeError("the model's embedding is on the meta device with no accelerate hook to bring it in")
