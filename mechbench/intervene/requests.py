"""What a method states to the intervention engine: which heads to patch, what to read, which attention edges to
block (what comes back is a :class:`RunOutput`). Nothing here runs a model; :mod:`mechbench.intervene.api` does.

Sites are per head and per token. A head's ``component`` is one of:

- ``head_out``: its output before W_O mixes the heads, i.e. its slice of ``self_attn.o_proj``'s input (the
  paper's site for path patching, mean ablation, DCM and CMAP);
- ``q``, ``k``, ``v``: its slice of ``q_proj``/``k_proj``/``v_proj``'s output, before RoPE (the receivers of
  path patching; k and v are per key/value head under grouped-query attention).

Every method states what it wants as :class:`HeadPatch` values, :class:`Read` requests and
:class:`Knockout` edges (one run's set of them: :class:`Interventions`); no method registers hooks of its own.

A :class:`HeadPatch` moves chosen heads at chosen positions of each example towards given values:

    new = current + alpha * (value - current)

``alpha = 1`` replaces (activation patching, mean ablation); a per-head ``alpha`` in [0, 1] is DCM's learned
blend (``alpha = 1 - m``), differentiable. Positions are per example (``[N, P]``), so a role that sits at
different tokens in different prompts is one patch. Values come from wherever the method took them: another
run's read (patching), another model's read (CMAP), a mean (ablation).

A :class:`Knockout` blocks attention edges (query position -> key positions) for every head of every layer
from ``from_layer`` on, by setting the pre-softmax score to the dtype's minimum, as the paper's attention
knockout does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

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
            raise ValueError(
                f"values of shape {tuple(self.values.shape)} do not match {n} examples x {p} positions "
                f"x {len(self.heads)} heads"
            )

        alpha = torch.as_tensor(self.alpha)
        if (
            alpha.dim() not in (0, 1, 3)
            or (alpha.dim() == 1 and len(alpha) != len(self.heads))
            or (alpha.dim() == 3 and alpha.shape != (n, p, len(self.heads)))
        ):
            raise ValueError(
                f"alpha of shape {tuple(alpha.shape)} is neither a scalar, [{len(self.heads)}] per head, "
                f"nor [{n}, {p}, {len(self.heads)}]"
            )

    def rows(self, index: slice) -> HeadPatch:
        alpha = self.alpha[index] if isinstance(self.alpha, torch.Tensor) and self.alpha.dim() == 3 else self.alpha
        return HeadPatch(self.layer, self.heads, self.positions[index], self.values[index], alpha, self.component)

    def from_position(self, start: int) -> HeadPatch | None:
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
        return HeadPatch(
            self.layer, self.heads, self.positions[:, columns], self.values[:, columns], alpha, self.component
        )


@dataclass(frozen=True)
class Read:
    """Activations to record: ``layers`` (None = all) at ``positions`` ([N, P] per example; None = all)."""

    layers: Sequence[int] | None = None
    positions: torch.Tensor | None = None
    component: str = "head_out"

    def rows(self, index: slice) -> Read:
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

    def rows(self, index: slice) -> Knockout:
        return Knockout(self.from_layer, self.query_positions[index], self.key_positions[index])


@dataclass
class Interventions:
    """One patched run's requests: what :func:`run_many` applies to the same prompts, one set per run."""

    patches: Sequence[HeadPatch] = ()
    read: Read | None = None
    knockouts: Sequence[Knockout] = ()


@dataclass
class RunOutput:
    last_logits: torch.Tensor  # [N, vocab] float32 (empty where run_many kept a score instead)
    reads: dict[int, torch.Tensor]  # layer -> [N, P or S, heads, head_dim]
    scores: torch.Tensor | None = None  # run_many's ``score`` of each batch's logits, concatenated
