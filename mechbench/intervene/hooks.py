"""How the engine applies what a method stated (:mod:`mechbench.intervene.requests`) to a model: forward hooks on
the sites of its family's map (:mod:`mechbench.models.architectures`), installed for one block and removed after.

- a ``head_out`` patch or read is a pre-hook on o_proj (its input is the heads' outputs side by side);
- a ``q``/``k``/``v`` patch or read is a hook on that projection's output;
- a :class:`~mechbench.intervene.requests.Knockout` is a pre-hook on each attention block from its layer on that
  replaces the attention mask with the causal one plus the blocked edges at the dtype's minimum.

Hooks sit on the LoRA-wrapped projections of an adapter model too, so an adapter's deltas are kept (the
paper's code recomputed o_proj from the base weight and dropped Goat's o_proj LoRA, docs/paper.md §2; a model
loaded with ``paper_compat_o_proj`` does that in hooked runs).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch

from mechbench.intervene.requests import HeadPatch, Knockout, Read
from mechbench.models.architectures import MASK_HONOURING, geometry, sites
from mechbench.models.run_options import paper_compat_o_proj


class ReadsDone(Exception):
    """Raised by a hook once a reads-only run has read its deepest layer (``hooked(stop_after_reads=True)``)."""


def head_dim(model) -> int:
    """The width of one head of ``model`` (a causal-LM module)."""
    return geometry(model.config).head_dim


def n_units(model, component: str) -> int:
    """How many heads a ``component`` site of ``model`` has: key/value heads for ``k`` and ``v``, query heads
    otherwise."""
    shape = geometry(model.config)
    return shape.n_kv_heads if component in ("k", "v") else shape.n_heads


def require_mask_honouring(model) -> None:
    """Knockouts block edges through the attention mask; an implementation that ignores an explicit mask (flash
    attention computes its own causal pattern) would run the forward with nothing blocked, silently."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl not in MASK_HONOURING:
        from mechbench.errors import MechbenchError

        raise MechbenchError(
            f"attention knockout needs an attention implementation that applies an explicit mask "
            f"({' or '.join(MASK_HONOURING)}); this model runs {impl!r}, which ignores it, so nothing would be "
            f"blocked. Load it with attn_implementation='sdpa' (mechbench's default) or 'eager'."
        )


def apply_patches(x: torch.Tensor, patches: list[HeadPatch], units: int, d: int, offset: int = 0) -> torch.Tensor:
    """``x`` ([B, S, units * d], a site's activations of tokens ``offset``..) with ``patches`` applied."""
    b, s, _ = x.shape
    per_head = x.view(b, s, units, d).clone()
    rows = torch.arange(b, device=x.device)[:, None, None]
    for p in patches:
        pos = p.positions.to(x.device)[:, :, None] - offset
        heads = p.heads.to(x.device)[None, None, :]
        current = per_head[rows, pos, heads]  # [b, P, k, d]
        alpha = torch.as_tensor(p.alpha, dtype=x.dtype, device=x.device)
        alpha = alpha.reshape(1, 1, -1, 1) if alpha.dim() == 1 else alpha[..., None] if alpha.dim() == 3 else alpha
        per_head[rows, pos, heads] = current + alpha * (p.values.to(x.device, x.dtype) - current)
    return per_head.view(b, s, units * d)


def attention_mask(
    knockouts: Sequence[Knockout], batch: int, seq: int, dtype, device, q_start: int = 0
) -> torch.Tensor:
    """Additive [B, 1, S - q_start, S] mask for queries q_start.. over all keys: causal, plus the knocked-out
    edges at the dtype's minimum."""
    queries = torch.arange(q_start, seq, device=device)
    blocked = (torch.arange(seq, device=device)[None, :] > queries[:, None]).expand(batch, -1, -1).clone()
    rows = torch.arange(batch, device=device)[:, None]
    for k in knockouts:
        q = k.query_positions.to(device)[:, None] - q_start
        keep = (q >= 0).expand_as(k.key_positions)
        blocked[
            rows.expand_as(k.key_positions)[keep], q.expand_as(k.key_positions)[keep], k.key_positions.to(device)[keep]
        ] = True
    mask = torch.zeros(batch, 1, seq - q_start, seq, dtype=dtype, device=device)
    return mask.masked_fill(blocked[:, None], torch.finfo(dtype).min)


def _drop_o_proj_lora(model, stack: ExitStack) -> None:
    """Turn off the LoRA of every o_proj for the rest of ``stack`` (a peft layer has ``enable_adapters``)."""
    family = sites(model)
    for layer in range(len(family.layer_list(model))):
        o_proj = family.module(model, layer, "head_out")
        if hasattr(o_proj, "enable_adapters") and not getattr(o_proj, "disable_adapters", True):
            o_proj.enable_adapters(False)
            stack.callback(o_proj.enable_adapters, True)


@contextmanager
def hooked(
    model,
    patches: Sequence[HeadPatch] = (),
    read: Read | None = None,
    store: dict | None = None,
    knockouts: Sequence[Knockout] = (),
    offset: int = 0,
    intervened: bool = False,
    stop_after_reads: bool = False,
) -> Iterator[None]:
    """Within the block, forwards of ``model`` apply ``patches`` and ``knockouts`` and record ``read``.

    ``offset``: the forwarded tokens start at this position (the fast path recomputes a suffix only).
    ``intervened``: treat the run as hooked even without patches or reads (a fast path's prefix, whose later
    runs are patched: under ``paper_compat_o_proj`` both must drop the o_proj LoRA alike).
    ``stop_after_reads``: end the forward (raising :class:`ReadsDone`) once the deepest layer read has run: a run
    for its reads alone need not compute the layers above them.
    """
    family = sites(model)
    d = head_dim(model)
    n_layers = len(family.layer_list(model))
    by_site: dict[tuple[int, str], list[HeadPatch]] = {}
    for p in patches:
        by_site.setdefault((p.layer, p.component), []).append(p)
    read_layers = set() if read is None else set(range(n_layers) if read.layers is None else read.layers)

    def make_hook(layer: int, component: str):
        units = n_units(model, component)
        patch_here = by_site.get((layer, component), [])
        read_here = read is not None and read.component == component and layer in read_layers

        def edit(x):
            if patch_here:
                x = apply_patches(x, patch_here, units, d, offset)
            if read_here:
                b, s, _ = x.shape
                per_head = x.detach().view(b, s, units, d)
                if read.positions is not None:
                    per_head = per_head[torch.arange(b, device=x.device)[:, None], read.positions.to(x.device) - offset]
                store.setdefault(layer, []).append(per_head.float().cpu())
            return x

        if component == "head_out":  # the o_proj input: a pre-hook

            def pre_hook(module, args):
                x = edit(args[0])
                return (x,) + tuple(args[1:]) if patch_here else None

            return pre_hook, True

        def post_hook(module, args, output):  # q/k/v projection outputs
            x = edit(output)
            return x if patch_here else None

        return post_hook, False

    with ExitStack() as stack:
        if paper_compat_o_proj(model) and (patches or read is not None or intervened):
            _drop_o_proj_lora(model, stack)
        hooked_sites = set(by_site) | {(layer, read.component) for layer in read_layers}
        for layer, component in sorted(hooked_sites):
            hook, pre = make_hook(layer, component)
            module = family.module(model, layer, component)
            handle = module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook)
            stack.callback(handle.remove)
        if knockouts:
            first = min(k.from_layer for k in knockouts)
            for layer in range(first, n_layers):
                active = [k for k in knockouts if k.from_layer <= layer]

                def mask_hook(module, args, kwargs, active=active):
                    hidden = kwargs.get("hidden_states", args[0] if args else None)
                    b, s, _ = hidden.shape
                    kwargs[family.mask_argument] = attention_mask(active, b, s, hidden.dtype, hidden.device)
                    return args, kwargs

                handle = family.attention_of(model, layer).register_forward_pre_hook(mask_hook, with_kwargs=True)
                stack.callback(handle.remove)
        if stop_after_reads and read_layers:

            def stop(module, args, output):
                raise ReadsDone

            handle = family.layer_list(model)[max(read_layers)].register_forward_hook(stop)
            stack.callback(handle.remove)
        yield
