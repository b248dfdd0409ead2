"""Desiderata-based component masking (DCM, docs/paper.md §6): which heads of a group carry a given kind of
information (the object's value, its position, the box label's value).

One real mask value m per head of the group, initialised to 1 and clamped to [0, 1] before every step. At the
group's role position the head output becomes ``m * base + (1 - m) * source`` (the source prompt's value at
its own role position). Loss: ``-mean logit[target] + lambda * sum(1 - m)`` on raw logits. Adam, lr 0.1, two
epochs, batch 32; every 4 batches the rounded mask is scored on the validation pairs and the best is kept
(ties go to more heads). A head is selected (patched) when its rounded mask is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechbench.circuits import Head, HeadGroup
from mechbench.data.counterfactuals import CounterfactualDataset
from mechbench.evaluate import top1_correct
from mechbench.intervene import HeadPatch, Interventions, Read, run, run_many


@dataclass
class DCMResult:
    group: str
    desideratum: str
    heads: tuple[Head, ...]  # selected: the heads whose patch moves the prediction to the target
    mask: torch.Tensor  # final (unrounded, clamped) mask per group head
    val_accuracy: float
    test_accuracy: float
    test_correct: torch.Tensor | None = None  # bool [n_test]: per pair, for intervals


def source_values(model, pairs: CounterfactualDataset, role: str, layers: list[int], batch_size: int | None = None):
    """The source prompts' head outputs at ``role`` (what a DCM patch moves into the base run)."""
    return source_values_at(model, pairs, (role,), layers, batch_size)[role]


def source_values_at(model, pairs: CounterfactualDataset, roles, layers: list[int], batch_size: int | None = None):
    """``{role: source_values(...)}`` for several roles from one forward pass."""
    positions = torch.stack([pairs.source.positions(role) for role in roles], 1)
    reads = run(model, pairs.source.input_ids, read=Read(layers, positions), batch_size=batch_size).reads
    return {role: {layer: values[:, [i]] for layer, values in reads.items()} for i, role in enumerate(roles)}


def _patches(group: HeadGroup, alpha: torch.Tensor, positions: torch.Tensor, reads: dict, rows) -> list[HeadPatch]:
    patches = []
    for layer in sorted({l for l, _ in group.heads}):
        idx = [i for i, (l, _) in enumerate(group.heads) if l == layer]
        heads = torch.tensor([group.heads[i][1] for i in idx])
        patches.append(HeadPatch(layer, heads, positions[rows, None], reads[layer][rows][:, :, heads], alpha[idx]))
    return patches


def masked_patches(group: HeadGroup, pairs: CounterfactualDataset, mask: torch.Tensor, reads: dict) -> list[HeadPatch]:
    """The patches of the (rounded) ``mask``: each head of ``group`` at its role in the base prompt moves to the
    source's value by 1 - round(m)."""
    return _patches(group, 1.0 - mask.round(), pairs.base.positions(group.role), reads, slice(None))


def masked_accuracy(model, group: HeadGroup, pairs: CounterfactualDataset, mask: torch.Tensor,
                    batch_size: int | None = None, reads: dict | None = None) -> float:
    """Share of pairs predicting the desideratum's target with the (rounded) mask applied (see
    :func:`masked_correct`)."""
    return masked_correct(model, group, pairs, mask, batch_size, reads).float().mean().item()


def masked_correct(model, group: HeadGroup, pairs: CounterfactualDataset, mask: torch.Tensor,
                   batch_size: int | None = None, reads: dict | None = None) -> torch.Tensor:
    """Bool [N]: each pair predicts the desideratum's target with the (rounded) mask applied. ``reads``: the
    source's head outputs at the group's role (reused across groups)."""
    reads = reads or source_values(model, pairs, group.role, sorted({l for l, _ in group.heads}), batch_size)
    logits = run(model, pairs.base.input_ids, masked_patches(group, pairs, mask, reads), batch_size=batch_size).last_logits
    return top1_correct(logits, pairs.target_ids).cpu()


def patched_correct(model, groups: list[HeadGroup], pairs: CounterfactualDataset, reads: dict[str, dict] | None = None,
                    batch_size: int | None = None) -> list[torch.Tensor]:
    """Per group, bool [N]: each pair predicts the target with every head of the group patched from the source
    (DCM's selected heads, mask 0). The groups share each batch's clean run (the engine's fast path recomputes
    only the patched layers and positions), one batch on the device at a time. ``reads``: role -> the source's
    head outputs there (:func:`source_values_at`)."""
    layers = sorted({l for g in groups for l, _ in g.heads})
    reads = reads or source_values_at(model, pairs, tuple(dict.fromkeys(g.role for g in groups)), layers, batch_size)
    runs = [Interventions(masked_patches(g, pairs, torch.zeros(len(g.heads)), reads[g.role])) for g in groups]
    return [top1_correct(out.last_logits, pairs.target_ids).cpu()
            for out in run_many(model, pairs.base.input_ids, runs, batch_size)]


def train_dcm(
    model,
    group: HeadGroup,
    train: CounterfactualDataset,
    val: CounterfactualDataset,
    test: CounterfactualDataset,
    lam: float = 0.01,
    lr: float = 0.1,
    epochs: int = 2,
    batch_size: int = 32,
    validate_every: int = 4,
    seed: int = 0,
) -> DCMResult:
    torch_model = model if isinstance(model, torch.nn.Module) else model.model
    layers = sorted({l for l, _ in group.heads})
    reads = {name: source_values(torch_model, ds, group.role, layers)
             for name, ds in (("train", train), ("val", val), ("test", test))}
    device = next(torch_model.parameters()).device
    mask = torch.ones(len(group.heads), device=device, requires_grad=True)
    optimizer = torch.optim.Adam([mask], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    frozen = [p for p in torch_model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    best = (-1.0, -1, mask.detach().clone())
    base_pos = train.base.positions(group.role)
    try:
        step = 0
        for _ in range(epochs):
            order = torch.randperm(len(train), generator=generator)
            for start in range(0, len(train), batch_size):
                rows = order[start : start + batch_size]
                with torch.no_grad():
                    mask.clamp_(0, 1)
                patches = _patches(group, 1 - mask, base_pos, reads["train"], rows)
                logits = run(torch_model, train.base.input_ids[rows], patches, batch_size=len(rows), grad=True).last_logits
                target_logit = logits[torch.arange(len(rows)), train.target_ids[rows].to(logits.device)]
                loss = -target_logit.mean() + lam * (1 - mask).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                if step % validate_every == 0:
                    with torch.no_grad():
                        m = mask.detach().clamp(0, 1)
                        acc = masked_accuracy(torch_model, group, val, m, reads=reads["val"])
                    n_selected = int((m.round() == 0).sum())
                    if (acc, n_selected) > best[:2]:
                        best = (acc, n_selected, m.clone())
    finally:
        for p in frozen:
            p.requires_grad_(True)
    final = best[2] if best[0] >= 0 else mask.detach().clamp(0, 1)
    test_correct = masked_correct(torch_model, group, test, final, reads=reads["test"])
    heads = tuple(h for h, m in zip(group.heads, final.round().tolist()) if m == 0)
    return DCMResult(group.name, train.name, heads, final.cpu(), max(best[0], 0.0),
                     test_correct.float().mean().item(), test_correct)
