"""The intervention engine: one place that runs a model while reading or overwriting per-head activations.

Sites are per head and per token. A head's ``component`` is one of:

- ``head_out``: its output before W_O mixes the heads, i.e. its slice of ``self_attn.o_proj``'s input (the
  paper's site for path patching, mean ablation, DCM and CMAP);
- ``q``, ``k``, ``v``: its slice of ``q_proj``/``k_proj``/``v_proj``'s output, before RoPE (the receivers of
  path patching; k and v are per key/value head under grouped-query attention).

Every method states what it wants as :class:`HeadPatch` values, :class:`Read` requests and
:class:`Knockout` edges; no method registers hooks of its own.

A :class:`HeadPatch` moves chosen heads at chosen positions of each example towards given values:

    new = current + alpha * (value - current)

``alpha = 1`` replaces (activation patching, mean ablation); a per-head ``alpha`` in [0, 1] is DCM's learned
blend (``alpha = 1 - m``), differentiable. Positions are per example (``[N, P]``), so a role that sits at
different tokens in different prompts is one patch. Values come from wherever the method took them: another
run's read (patching), another model's read (CMAP), a mean (ablation).

A :class:`Knockout` blocks attention edges (query position -> key positions) for every head of every layer
from ``from_layer`` on, by setting the pre-softmax score to the dtype's minimum, as the paper's attention
knockout does.

Hooks sit on the LoRA-wrapped projections of an adapter model too, so an adapter's deltas are kept (the
paper's code recomputed o_proj from the base weight and dropped Goat's o_proj LoRA, docs/paper.md §2).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator, Sequence

import torch

from mechbench.intervene.sites import sites

COMPONENTS = ("head_out", "q", "k", "v")


@dataclass
class HeadPatch:
    layer: int
    heads: torch.Tensor  # [k] head indices (key/value heads for k and v)
    positions: torch.Tensor  # [N, P] token positions per example
    values: torch.Tensor  # [N, P, k, head_dim] (an expanded view is fine: nothing is copied)
    alpha: torch.Tensor | float = 1.0  # scalar, [k] per head, or [N, P, k] per example, position and head
    component: str = "head_out"

    def __post_init__(self):
        if self.component not in COMPONENTS:
            raise ValueError(f"unknown component {self.component!r}; use one of {', '.join(COMPONENTS)}")
        self.heads = torch.as_tensor(self.heads, dtype=torch.long).reshape(-1)
        self.positions = torch.as_tensor(self.positions, dtype=torch.long)
        if self.positions.dim() == 1:
            self.positions = self.positions[:, None]
        n, p = self.positions.shape
        if self.values.shape[:3] != (n, p, len(self.heads)):
            raise ValueError(f"values of shape {tuple(self.values.shape)} do not match {n} examples x {p} positions "
                             f"x {len(self.heads)} heads")

        alpha = torch.as_tensor(self.alpha)
        if alpha.dim() not in (0, 1, 3) or (alpha.dim() == 1 and len(alpha) != len(self.heads)) or (
                alpha.dim() == 3 and alpha.shape != (n, p, len(self.heads))):
            raise ValueError(f"alpha of shape {tuple(alpha.shape)} is neither a scalar, [{len(self.heads)}] per head, "
                             f"nor [{n}, {p}, {len(self.heads)}]")

    def rows(self, index: slice) -> "HeadPatch":
        alpha = self.alpha[index] if isinstance(self.alpha, torch.Tensor) and self.alpha.dim() == 3 else self.alpha
        return HeadPatch(self.layer, self.heads, self.positions[index], self.values[index], alpha, self.component)

    def from_position(self, start: int) -> "HeadPatch | None":
        """The patch at positions >= ``start`` only (None if nothing is left): what a run that recomputes from
        ``start`` on must apply again. Each column of ``positions`` must lie on one side of ``start`` for every
        example (true of patches over every position, as mean ablation's)."""
        after = self.positions >= start
        keep = after.all(0)
        if not torch.equal(keep, after.any(0)):
            raise ValueError(f"a patch column straddles position {start}: it cannot be split for the fast path")
        if not keep.any():
            return None
        if keep.all():
            return self
        columns = keep.nonzero().flatten()
        if int(columns[-1] - columns[0]) + 1 == len(columns):  # a run of columns (mean ablation's): views, no copy
            columns = slice(int(columns[0]), int(columns[-1]) + 1)
        alpha = self.alpha[:, columns] if isinstance(self.alpha, torch.Tensor) and self.alpha.dim() == 3 else self.alpha
        return HeadPatch(self.layer, self.heads, self.positions[:, columns], self.values[:, columns], alpha,
                         self.component)


@dataclass(frozen=True)
class Read:
    """Activations to record: ``layers`` (None = all) at ``positions`` ([N, P] per example; None = all)."""

    layers: Sequence[int] | None = None
    positions: torch.Tensor | None = None
    component: str = "head_out"

    def rows(self, index: slice) -> "Read":
        return Read(self.layers, None if self.positions is None else self.positions[index], self.component)


@dataclass
class Knockout:
    """Block attention from ``query_positions`` ([N]) to ``key_positions`` ([N, K]) in layers >= from_layer."""

    from_layer: int
    query_positions: torch.Tensor
    key_positions: torch.Tensor

    def __post_init__(self):
        self.query_positions = torch.as_tensor(self.query_positions, dtype=torch.long).reshape(-1)
        self.key_positions = torch.as_tensor(self.key_positions, dtype=torch.long)
        if self.key_positions.dim() == 1:
            self.key_positions = self.key_positions[:, None]

    def rows(self, index: slice) -> "Knockout":
        return Knockout(self.from_layer, self.query_positions[index], self.key_positions[index])


@dataclass
class RunOutput:
    last_logits: torch.Tensor  # [N, vocab] float32 (empty where run_many kept a score instead)
    reads: dict[int, torch.Tensor]  # layer -> [N, P or S, heads, head_dim]
    scores: torch.Tensor | None = None  # run_many's ``score`` of each batch's logits, concatenated


def _attention(model, layer: int):
    return sites(model).attention_of(model, layer)


def _module(model, layer: int, component: str) -> torch.nn.Module:
    return sites(model).module(model, layer, component)


def _layers(model):
    return sites(model).layer_list(model)


def head_dim(model) -> int:
    config = model.config
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def n_units(model, component: str) -> int:
    config = model.config
    if component in ("k", "v"):
        return getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return config.num_attention_heads


def _apply(x: torch.Tensor, patches: list[HeadPatch], units: int, d: int, offset: int = 0) -> torch.Tensor:
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


#: Attention implementations that apply an explicit additive mask, which is how knockouts block edges.
MASK_HONOURING = ("eager", "sdpa")


def require_mask_honouring(model) -> None:
    """Knockouts block edges through the attention mask; an implementation that ignores an explicit mask (flash
    attention computes its own causal pattern) would run the forward with nothing blocked, silently."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl not in MASK_HONOURING:
        from mechbench.errors import MechbenchError

        raise MechbenchError(
            f"attention knockout needs an attention implementation that applies an explicit mask "
            f"({' or '.join(MASK_HONOURING)}); this model runs {impl!r}, which ignores it, so nothing would be "
            f"blocked. Load it with attn_implementation='sdpa' (mechbench's default) or 'eager'.")


def _attention_mask(knockouts: list[Knockout], batch: int, seq: int, dtype, device, q_start: int = 0) -> torch.Tensor:
    """Additive [B, 1, S - q_start, S] mask for queries q_start.. over all keys: causal, plus the knocked-out
    edges at the dtype's minimum."""
    queries = torch.arange(q_start, seq, device=device)
    blocked = (torch.arange(seq, device=device)[None, :] > queries[:, None]).expand(batch, -1, -1).clone()
    rows = torch.arange(batch, device=device)[:, None]
    for k in knockouts:
        q = k.query_positions.to(device)[:, None] - q_start
        keep = (q >= 0).expand_as(k.key_positions)
        blocked[rows.expand_as(k.key_positions)[keep], q.expand_as(k.key_positions)[keep],
                k.key_positions.to(device)[keep]] = True
    mask = torch.zeros(batch, 1, seq - q_start, seq, dtype=dtype, device=device)
    return mask.masked_fill(blocked[:, None], torch.finfo(dtype).min)


#: Attribute set on a model loaded with ``paper_compat_o_proj=True``: hooked runs use only the base o_proj
#: weight, as the paper's hooks did for Goat (they recomputed o_proj from the base weight, dropping the LoRA).
PAPER_O_PROJ = "mechbench_paper_compat_o_proj"


def _drop_o_proj_lora(model, stack: ExitStack) -> None:
    """Turn off the LoRA of every o_proj for the rest of ``stack`` (a peft layer has ``enable_adapters``)."""
    for layer in range(len(_layers(model))):
        o_proj = _module(model, layer, "head_out")
        if hasattr(o_proj, "enable_adapters") and not getattr(o_proj, "disable_adapters", True):
            o_proj.enable_adapters(False)
            stack.callback(o_proj.enable_adapters, True)


@contextmanager
def hooked(model, patches: Sequence[HeadPatch] = (), read: Read | None = None, store: dict | None = None,
           knockouts: Sequence[Knockout] = (), offset: int = 0, intervened: bool = False) -> Iterator[None]:
    """Within the block, forwards of ``model`` apply ``patches`` and ``knockouts`` and record ``read``.

    ``offset``: the forwarded tokens start at this position (the fast path recomputes a suffix only).
    ``intervened``: treat the run as hooked even without patches or reads (a fast path's prefix, whose later
    runs are patched: under ``paper_compat_o_proj`` both must drop the o_proj LoRA alike).
    """
    d = head_dim(model)
    n_layers = len(_layers(model))
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
                x = _apply(x, patch_here, units, d, offset)
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
        if getattr(model, PAPER_O_PROJ, False) and (patches or read is not None or intervened):
            _drop_o_proj_lora(model, stack)
        sites = set(by_site) | {(layer, read.component) for layer in read_layers}
        for layer, component in sorted(sites):
            hook, pre = make_hook(layer, component)
            module = _module(model, layer, component)
            handle = module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook)
            stack.callback(handle.remove)
        if knockouts:
            first = min(k.from_layer for k in knockouts)
            for layer in range(first, n_layers):
                active = [k for k in knockouts if k.from_layer <= layer]

                def mask_hook(module, args, kwargs, active=active):
                    hidden = kwargs.get("hidden_states", args[0] if args else None)
                    b, s, _ = hidden.shape
                    kwargs["attention_mask"] = _attention_mask(active, b, s, hidden.dtype, hidden.device)
                    return args, kwargs

                handle = _attention(model, layer).register_forward_pre_hook(mask_hook, with_kwargs=True)
                stack.callback(handle.remove)
        yield


def _model(model_or_handle) -> torch.nn.Module:
    """The LlamaForCausalLM under a handle or a PeftModel (LoRA layers stay injected in it)."""
    model = model_or_handle if isinstance(model_or_handle, torch.nn.Module) else model_or_handle.model
    return model.get_base_model() if hasattr(model, "get_base_model") else model


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

    def to(self, device) -> "Prefix":
        """The same prefix on ``device`` (a prefix reused many times can wait on the host between uses)."""
        return Prefix(self.input_ids.to(device), [h.to(device) for h in self.hidden], [k.to(device) for k in self.keys],
                      [v.to(device) for v in self.values], self.last_logits, self.common, self.reads)

    def common_from(self, layer: int, position: int) -> list[HeadPatch]:
        """The common patches a run recomputing layers >= ``layer`` from ``position`` on applies again: sliced once
        per position and kept (minimality serves thousands of sets from one prefix)."""
        if position not in self._common_from:
            self._common_from[position] = [(p.layer, q) for p in self.common for q in [p.from_position(position)]
                                         if q is not None]
        return [q for l, q in self._common_from[position] if l >= layer]


@torch.no_grad()
def capture_prefix(model_or_handle, input_ids: torch.Tensor, common: Sequence[HeadPatch] = (),
                   read: Read | None = None) -> Prefix:
    """One forward of a batch (under ``common`` patches, rows as ``input_ids``), keeping what the fast path needs,
    and what ``read`` asks for in ``Prefix.reads`` (path patching's clean head outputs: no second clean run)."""
    model = _model(model_or_handle)
    ids = input_ids.to(next(model.parameters()).device)
    store: dict = {}
    with hooked(model, common, read, store, intervened=True):
        out = model(input_ids=ids, use_cache=True, output_hidden_states=True, logits_to_keep=1)
    n_layers = len(_layers(model))
    cache = out["cache"] if "cache" in out else out.past_key_values  # renamed in transformers 5.24
    return Prefix(ids, list(out.hidden_states[:n_layers]), [cache.layers[l].keys for l in range(n_layers)],
                  [cache.layers[l].values for l in range(n_layers)], out.logits[:, -1].float().cpu(), tuple(common),
                  {layer: torch.cat(chunks) for layer, chunks in store.items()})


def capture_prefixes(model_or_handle, input_ids: torch.Tensor, batch_size: int | None = None,
                     on_host: bool = True) -> list[Prefix]:
    """One prefix per batch of ``input_ids``, for prompts that many runs reuse (DCM validates a mask on the same
    pairs every few steps); ``on_host``: each waits in host memory and goes to the device for its run."""
    model = _model(model_or_handle)
    batch_size = batch_size or _DEFAULT_BATCH_SIZE
    out = []
    for start in range(0, len(input_ids), batch_size):
        prefix = capture_prefix(model, input_ids[start:start + batch_size])
        out.append(prefix.to("cpu") if on_host else prefix)
    return out


def _start(patches: Sequence[HeadPatch], knockouts: Sequence[Knockout], n_layers: int) -> tuple[int, int]:
    """The first layer and first position any intervention touches."""
    layers = [p.layer for p in patches] + [k.from_layer for k in knockouts]
    positions = [int(p.positions.min()) for p in patches] + [int(k.query_positions.min()) for k in knockouts]
    return (min(layers), min(positions)) if layers else (n_layers, 0)


def _cache_keyword(layer: torch.nn.Module) -> str:
    return _cache_keyword_of(type(layer))


@lru_cache(maxsize=None)
def _cache_keyword_of(layer_type: type) -> str:
    """The decoder layer's name for the key/value cache: ``cache`` from transformers 5.24 on (``past_key_values``
    still works there, with a deprecation warning), ``past_key_values`` before. A wrong name would be swallowed by
    the layer's ``**kwargs`` and the suffix would attend to nothing before it, so it is read from the signature."""
    import inspect

    return "cache" if "cache" in inspect.signature(layer_type.forward).parameters else "past_key_values"


def _run_from_prefix(model, prefix: Prefix, patches, read: Read | None, knockouts, grad: bool = False) -> RunOutput:
    from transformers import DynamicCache

    n_layers = len(_layers(model))
    first_layer, first_pos = _start(patches, knockouts, n_layers)
    if read is not None:
        layers = range(n_layers) if read.layers is None else read.layers
        if read.positions is None or int(read.positions.min()) < first_pos or min(layers, default=n_layers) < first_layer:
            raise ValueError(f"the fast path recomputes layers >= {first_layer} at positions >= {first_pos} only; "
                             f"read those, or run without a prefix")
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
    position_embeddings = sites(model).rotary_of(model)(hidden, position_ids=position_ids)
    store: dict = {}
    # the prefix's own patches, where the recomputed layers and positions meet them
    common = prefix.common_from(first_layer, first_pos)
    # with grad (DCM's training step) the prefix is a constant: the gradient reaches the patches' alphas through the
    # recomputed suffix only, which is all that depends on them
    with torch.set_grad_enabled(grad), hooked(model, common + list(patches), read, store, offset=first_pos,
                                              intervened=True):
        for layer in range(first_layer, n_layers):
            active = [k for k in knockouts if k.from_layer <= layer]
            mask = _attention_mask(active, batch, seq, hidden.dtype, hidden.device, q_start=first_pos)
            decoder_layer = _layers(model)[layer]
            hidden = decoder_layer(hidden, attention_mask=mask, position_ids=position_ids, use_cache=cache is not None,
                                   position_embeddings=position_embeddings, **{_cache_keyword(decoder_layer): cache})
        logits = sites(model).logits(model, hidden[:, -1:])[:, -1]
    return RunOutput(logits.float() if grad else logits.float().cpu(),
                     {layer: torch.cat(chunks) for layer, chunks in store.items()})


@torch.no_grad()
def run_frozen_attention(model_or_handle, hidden: torch.Tensor, position_ids: torch.Tensor,
                         head_values: dict[int, torch.Tensor], read: Read | None = None,
                         logits: bool = True) -> RunOutput:
    """One token per row, from layer ``L = min(head_values)`` up, with every head's output given: ``hidden``
    ([R, d_model]) is the row's input of layer L, ``head_values[l]`` ([R, heads, head_dim], for every layer l >= L)
    replaces all of that layer's head outputs at the token (attention frozen), so only the norms, projections and
    MLPs of this one token are recomputed. ``last_logits`` are the token's logits (empty with ``logits=False``, for
    a run that only reads); ``read`` (positions None) records the token's q/k/v or head outputs.

    Exact for path patching: when every head above the sender is frozen at its clean value from the sender's
    position on, nothing at any other position changes (positions talk only through attention), so the run of the
    whole prompt reduces to this one token's residual stream (tested against the full forward).
    """
    model = _model(model_or_handle)
    n_layers = len(_layers(model))
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
    position_embeddings = sites(model).rotary_of(model)(x, position_ids=position_ids)
    store: dict = {}
    last = max(read.layers) if read is not None and read.layers is not None and not logits else n_layers - 1
    with hooked(model, patches, read, store):
        for layer in range(first, last + 1):
            x = _layers(model)[layer](x, attention_mask=None, position_ids=position_ids,
                                      position_embeddings=position_embeddings)
        out = sites(model).logits(model, x)[:, -1].float().cpu() if logits else torch.empty(0)
    return RunOutput(out, {layer: torch.cat(chunks) for layer, chunks in store.items()})


#: Prompts per forward when a caller names no batch size: set once per session from ``--batch-size`` (or the
#: memory plan's choice for the device, :func:`mechbench.plan.choose_batch_size`).
_DEFAULT_BATCH_SIZE = 50


def set_default_batch_size(n: int) -> None:
    global _DEFAULT_BATCH_SIZE
    if int(n) < 1:
        raise ValueError(f"batch size must be at least 1, got {n}")
    _DEFAULT_BATCH_SIZE = int(n)


def default_batch_size() -> int:
    return _DEFAULT_BATCH_SIZE


@dataclass
class Interventions:
    """One patched run's requests: what :func:`run_many` applies to the same prompts, one set per run."""

    patches: Sequence[HeadPatch] = ()
    read: Read | None = None
    knockouts: Sequence[Knockout] = ()


def run_many(model_or_handle, input_ids: torch.Tensor, runs: Sequence[Interventions], batch_size: int | None = None,
             fast: bool = True, common: Sequence[HeadPatch] = (), score=None) -> list[RunOutput]:
    """Every set of ``runs`` on the same ``input_ids``, batch by batch: each batch's clean run (or its run under
    ``common`` patches, which every set then adds to) is captured once (:func:`capture_prefix`) and serves every
    set, then is let go, so the device holds one batch's prefix at a time however many prompts and runs there
    are. The same numbers as one :func:`run` per set (with ``common`` + its patches), to float tolerance
    (``fast=False`` makes it exactly that). ``score(logits, rows)``: what to keep of each batch's logits (say
    top-1 correctness against the targets of ``rows``) instead of the logits themselves, which for thousands of
    runs (minimality's pairs of a 100-head group) of a 32k vocabulary would not fit in memory."""
    model = _model(model_or_handle)
    if any(r.knockouts for r in runs):
        require_mask_honouring(model)
    batch_size = batch_size or _DEFAULT_BATCH_SIZE
    logits: list[list[torch.Tensor]] = [[] for _ in runs]
    stores: list[dict] = [{} for _ in runs]
    for start in range(0, len(input_ids), batch_size):
        rows = slice(start, start + batch_size)
        ids = input_ids[rows]
        common_rows = [p.rows(rows) for p in common]
        prefix = capture_prefix(model, ids, common_rows) if fast else None
        for i, r in enumerate(runs):
            patches = [p.rows(rows) for p in r.patches]
            out = run(model, ids, patches if fast else common_rows + patches,
                      None if r.read is None else r.read.rows(rows), [k.rows(rows) for k in r.knockouts],
                      batch_size=len(ids), prefix=prefix)
            logits[i].append(out.last_logits if score is None else score(out.last_logits, rows))
            for layer, values in out.reads.items():
                stores[i].setdefault(layer, []).append(values)
        del prefix
    kept = [torch.cat(l) if l else torch.empty(0) for l in logits]
    return [RunOutput(k, {layer: torch.cat(v) for layer, v in s.items()}) if score is None else
            RunOutput(torch.empty(0), {layer: torch.cat(v) for layer, v in s.items()}, k) for k, s in zip(kept, stores)]


def run(
    model_or_handle,
    input_ids: torch.Tensor,
    patches: Sequence[HeadPatch] = (),
    read: Read | None = None,
    knockouts: Sequence[Knockout] = (),
    batch_size: int | None = None,
    grad: bool = False,
    prefix: Prefix | Sequence[Prefix] | None = None,
) -> RunOutput:
    """Forward ``input_ids`` in batches with ``patches`` and ``knockouts`` applied; last-position logits and
    the requested reads. With ``grad=True`` (DCM) the logits keep their graph and stay on the model's device.

    With ``prefix`` (from :func:`capture_prefix` on the same ``input_ids``, one batch; on the host or the model's
    device; with or without ``grad``) only the layers and
    positions the interventions can change are recomputed: the same numbers to float tolerance, for a
    fraction of the work when patches sit late in the prompt or deep in the model. A prefix captured under
    ``common`` patches applies them too: ``patches`` add to them.
    """
    model = _model(model_or_handle)
    if knockouts:
        require_mask_honouring(model)
    if prefix is not None and not isinstance(prefix, Prefix):  # one prefix per batch (capture_prefixes)
        outs, start = [], 0
        for one in prefix:
            rows = slice(start, start + len(one.input_ids))
            outs.append(run(model, input_ids[rows], [p.rows(rows) for p in patches],
                            None if read is None else read.rows(rows), [k.rows(rows) for k in knockouts],
                            grad=grad, prefix=one))
            start = rows.stop
        if start != len(input_ids):
            raise ValueError("the prefixes cover other prompts than input_ids")
        return RunOutput(torch.cat([o.last_logits for o in outs]),
                         {layer: torch.cat([o.reads[layer] for o in outs]) for layer in outs[0].reads} if outs else {})
    if prefix is not None:
        if not torch.equal(prefix.input_ids.cpu(), input_ids.cpu()):
            raise ValueError("a prefix serves the exact input_ids it was captured on")
        device = next(model.parameters()).device
        if prefix.input_ids.device != device:  # kept on the host between uses (DCM's validation prompts)
            prefix = prefix.to(device)
        return _run_from_prefix(model, prefix, patches, read, knockouts, grad)
    device = next(model.parameters()).device
    batch_size = batch_size or _DEFAULT_BATCH_SIZE
    logits, store = [], {}
    for start in range(0, len(input_ids), batch_size):
        rows = slice(start, start + batch_size)
        with torch.set_grad_enabled(grad), hooked(
            model, [p.rows(rows) for p in patches], None if read is None else read.rows(rows), store,
            [k.rows(rows) for k in knockouts],
        ):
            out = model(input_ids=input_ids[rows].to(device), logits_to_keep=1).logits[:, -1]
        logits.append(out.float() if grad else out.float().cpu())
    reads = {layer: torch.cat(chunks) for layer, chunks in store.items()}
    return RunOutput(torch.cat(logits) if logits else torch.empty(0), reads)
