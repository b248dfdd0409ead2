"""The intervention engine: one place that runs a model while reading or overwriting per-head outputs.

A head's output is the slice of ``self_attn.o_proj``'s input that belongs to it (shape ``head_dim``), before
W_O mixes the heads, as in the paper's code. Every method (path patching, mean ablation, DCM, CMAP) states
what it wants as :class:`HeadPatch` values and :class:`Read` requests; no method registers hooks of its own.

A :class:`HeadPatch` moves chosen heads at chosen positions of each example towards given values:

    new = current + alpha * (value - current)

``alpha = 1`` replaces (activation patching, mean ablation); a per-head ``alpha`` in [0, 1] is DCM's learned
blend (``alpha = 1 - m``), differentiable. Positions are per example (``[N, P]``), so a role that sits at
different tokens in different prompts is one patch. Values come from wherever the method took them: another
run's read (patching), another model's read (CMAP), a mean (ablation).

The hook sees the o_proj input of a LoRA-wrapped layer too, so an adapter's o_proj delta is kept (the paper's
code recomputed o_proj from the base weight and dropped it, FACTS.md section 2).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch


@dataclass
class HeadPatch:
    layer: int
    heads: torch.Tensor  # [k] head indices
    positions: torch.Tensor  # [N, P] token positions per example
    values: torch.Tensor  # [N, P, k, head_dim]
    alpha: torch.Tensor | float = 1.0  # scalar or [k]

    def __post_init__(self):
        self.heads = torch.as_tensor(self.heads, dtype=torch.long).reshape(-1)
        self.positions = torch.as_tensor(self.positions, dtype=torch.long)
        if self.positions.dim() == 1:
            self.positions = self.positions[:, None]
        n, p = self.positions.shape
        if self.values.shape[:3] != (n, p, len(self.heads)):
            raise ValueError(f"values of shape {tuple(self.values.shape)} do not match {n} examples x {p} positions "
                             f"x {len(self.heads)} heads")

    def rows(self, index: slice) -> "HeadPatch":
        return HeadPatch(self.layer, self.heads, self.positions[index], self.values[index], self.alpha)


@dataclass(frozen=True)
class Read:
    """Head outputs to record: ``layers`` (None = all) at ``positions`` ([N, P] per example; None = all)."""

    layers: Sequence[int] | None = None
    positions: torch.Tensor | None = None


@dataclass
class RunOutput:
    last_logits: torch.Tensor  # [N, vocab] float32
    reads: dict[int, torch.Tensor]  # layer -> [N, P or S, n_heads, head_dim]


def _o_projs(model) -> list[torch.nn.Module]:
    return [layer.self_attn.o_proj for layer in model.model.layers]


def _shape(model) -> tuple[int, int]:
    config = model.config
    n_heads = config.num_attention_heads
    return n_heads, getattr(config, "head_dim", None) or config.hidden_size // n_heads


def _apply(x: torch.Tensor, patches: list[HeadPatch], n_heads: int, head_dim: int) -> torch.Tensor:
    b, s, _ = x.shape
    heads_view = x.view(b, s, n_heads, head_dim).clone()
    for p in patches:
        rows = torch.arange(b, device=x.device)[:, None, None]
        pos = p.positions.to(x.device)[:, :, None]
        heads = p.heads.to(x.device)[None, None, :]
        current = heads_view[rows, pos, heads]  # [b, P, k, d]
        alpha = torch.as_tensor(p.alpha, dtype=x.dtype, device=x.device)
        alpha = alpha.reshape(1, 1, -1, 1) if alpha.dim() == 1 else alpha
        heads_view[rows, pos, heads] = current + alpha * (p.values.to(x.device, x.dtype) - current)
    return heads_view.view(b, s, n_heads * head_dim)


@contextmanager
def hooked(model, patches: Sequence[HeadPatch] = (), read: Read | None = None,
           store: dict | None = None) -> Iterator[None]:
    """Within the block, forwards of ``model`` apply ``patches`` and record ``read`` into ``store``."""
    n_heads, head_dim = _shape(model)
    by_layer: dict[int, list[HeadPatch]] = {}
    for p in patches:
        by_layer.setdefault(p.layer, []).append(p)
    read_layers = set(range(len(_o_projs(model)))) if read and read.layers is None else set(read.layers if read else ())
    handles = []

    def make_hook(layer: int):
        def hook(module, args):
            x = args[0]
            if layer in by_layer:
                x = _apply(x, by_layer[layer], n_heads, head_dim)
            if layer in read_layers:
                b, s, _ = x.shape
                heads_view = x.detach().view(b, s, n_heads, head_dim)
                if read.positions is not None:
                    rows = torch.arange(b, device=x.device)[:, None]
                    heads_view = heads_view[rows, read.positions.to(x.device)]
                store.setdefault(layer, []).append(heads_view.float().cpu())
            return (x,) + tuple(args[1:]) if layer in by_layer else None

        return hook

    try:
        for layer, o_proj in enumerate(_o_projs(model)):
            if layer in by_layer or layer in read_layers:
                handles.append(o_proj.register_forward_pre_hook(make_hook(layer)))
        yield
    finally:
        for h in handles:
            h.remove()


def _model(model_or_handle) -> torch.nn.Module:
    return model_or_handle if isinstance(model_or_handle, torch.nn.Module) else model_or_handle.model


def run(
    model_or_handle,
    input_ids: torch.Tensor,
    patches: Sequence[HeadPatch] = (),
    read: Read | None = None,
    batch_size: int = 50,
    grad: bool = False,
) -> RunOutput:
    """Forward ``input_ids`` in batches with ``patches`` applied; logits at the last position and reads.

    With ``grad=True`` (DCM) the logits keep their graph: run one batch at a time then.
    """
    model = _model(model_or_handle)
    device = next(model.parameters()).device
    logits, store = [], {}
    for start in range(0, len(input_ids), batch_size):
        rows = slice(start, start + batch_size)
        batch_patches = [p.rows(rows) for p in patches]
        batch_read = None if read is None else Read(read.layers, None if read.positions is None else read.positions[rows])
        with torch.set_grad_enabled(grad), hooked(model, batch_patches, batch_read, store):
            out = model(input_ids=input_ids[rows].to(device), logits_to_keep=1).logits[:, -1]
        logits.append(out.float() if grad else out.float().cpu())
    reads = {layer: torch.cat(chunks) for layer, chunks in store.items()}
    return RunOutput(torch.cat(logits), reads)
