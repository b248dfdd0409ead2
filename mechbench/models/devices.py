"""Where a model computes: the device its inputs go to, and each layer's, also under accelerate's device maps and
offload (the models layer's, since a handle says its device; the engine moves inputs there and each cached value
to its layer's device). And ``--device-map``: accelerate's placements by name, or a JSON file of one."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mechbench.errors import MechbenchError

#: accelerate's placements by name (``from_pretrained(device_map=...)``)
ACCELERATE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
DEVICE_MAP_FIX = (
    "--device-map takes auto (accelerate fills the GPUs in order, then the host), balanced, balanced_low_0, "
    'sequential, or a JSON file mapping module names to a device, e.g. {"model.embed_tokens": 0, "model.layers.0": '
    '0, ..., "model.layers.31": 1, "model.norm": 1, "lm_head": 1} (a GPU index, "cuda:1", "cpu" or "disk")'
)


def _hook_device(module) -> torch.device | None:
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    return None if device is None else torch.device(f"cuda:{device}" if isinstance(device, int) else device)


def input_device(model) -> torch.device:
    """Where ``model``'s input ids go: its embedding's device. Under accelerate (``device_map``, CPU or disk offload)
    a module's weights can sit on another device, or on ``meta`` until its hook brings them in at run time; the hook
    names the device it computes on (``execution_device``), and that is where the inputs must be."""
    embed = model.get_input_embeddings()
    device = _hook_device(embed)
    if device is not None:
        return device
    weight = embed.weight
    if weight.device.type != "meta":
        return weight.device
    device = _hook_device(model)  # cpu_offload / dispatch_model on the whole model
    if device is not None:
        return device
    raise RuntimeError("the model's embedding is on the meta device with no accelerate hook to bring it in")


def module_device(module, default: torch.device) -> torch.device:
    """Where ``module`` computes: its accelerate hook's execution device, else its first parameter's (``default``
    where it has none on a real device, as under a whole-model offload hook)."""
    device = _hook_device(module)
    if device is not None:
        return device
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return default


def layer_devices(model, layers) -> list[torch.device]:
    """The device each of ``layers`` (a model's decoder layers) computes on: a layer's cached keys and values must
    be there, since its attention concatenates them with the keys it computes (a device map puts layers on several
    GPUs; one device for all would fail at the first layer on another)."""
    first = input_device(model)
    return [module_device(layer, first) for layer in layers]


def read_device_map(value: str | dict | None) -> str | dict | None:
    """``--device-map``'s value as ``from_pretrained`` takes it: an accelerate placement by name, a map (as given),
    or the map a JSON file holds, checked; a wrong value is an error that says what is accepted."""
    if value is None or isinstance(value, dict):
        return _checked_map(value, "the device map") if isinstance(value, dict) else None
    if value in ACCELERATE_MAPS:
        return value
    path = Path(value)
    if not path.is_file():
        raise MechbenchError(
            f"--device-map {value}: neither one of accelerate's placements nor a file. {DEVICE_MAP_FIX}"
        )
    try:
        loaded = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MechbenchError(f"--device-map {value}: not a JSON file ({e}). {DEVICE_MAP_FIX}") from None
    if not isinstance(loaded, dict) or not loaded:
        raise MechbenchError(f"--device-map {value}: expected a non-empty JSON object. {DEVICE_MAP_FIX}")
    return _checked_map(loaded, f"--device-map {value}")


def _checked_map(mapping: dict, what: str) -> dict:
    for module, device in mapping.items():
        ok = isinstance(module, str) and (
            (isinstance(device, int) and not isinstance(device, bool) and device >= 0)
            or device in ("cpu", "disk", "cuda")
            or (isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit())
        )
        if not ok:
            raise MechbenchError(f"{what}: {module!r} -> {device!r} is not a device. {DEVICE_MAP_FIX}")
    return mapping


def needs_offload_folder(device_map) -> bool:
    """Whether accelerate may write weights to disk under ``device_map``: a map that says so, or a placement by
    name (``auto`` spills to disk what neither the GPUs nor the host hold)."""
    return isinstance(device_map, str) or (isinstance(device_map, dict) and "disk" in device_map.values())


def gpus_of(device_map) -> list[int] | None:
    """The GPU indices ``device_map`` (``--device-map``'s value) places modules on; None for a placement by name,
    which may use every visible GPU."""
    read = read_device_map(device_map)
    if not isinstance(read, dict):
        return None
    out = set()
    for where in read.values():
        if isinstance(where, int):
            out.add(where)
        elif where == "cuda":
            out.add(0)
        elif isinstance(where, str) and where.startswith("cuda:"):
            out.add(int(where[5:]))
    return sorted(out)
