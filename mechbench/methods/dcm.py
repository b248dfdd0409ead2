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
from mechbench.intervene import (
    HeadPatch,
    Interventions,
    Prefix,
    Read,
    capture_prefix,
    capture_prefixes,
    input_device,
    run,
    run_many,
)


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
    reads = run(model, pairs.source.input_ids, read=Read(layers, positions), batch_size=batch_size, logits=False).reads
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


def masked_accuracy(
    model,
    group: HeadGroup,
    pairs: CounterfactualDataset,
    mask: torch.Tensor,
    batch_size: int | None = None,
    reads: dict | None = None,
    prefixes: list[Prefix] | None = None,
) -> float:
    """Share of pairs predicting the desideratum's target with the (rounded) mask applied (see
    :func:`masked_correct`)."""
    return masked_correct(model, group, pairs, mask, batch_size, reads, prefixes).float().mean().item()


def masked_correct(
    model,
    group: HeadGroup,
    pairs: CounterfactualDataset,
    mask: torch.Tensor,
    batch_size: int | None = None,
    reads: dict | None = None,
    prefixes: list[Prefix] | None = None,
) -> torch.Tensor:
    """Bool [N]: each pair predicts the desideratum's target with the (rounded) mask applied. ``reads``: the
    source's head outputs at the group's role (reused across groups); ``prefixes``: the base prompts' clean runs
    (:func:`capture_prefixes`), when the same pairs are scored again and again."""
    reads = reads or source_values(model, pairs, group.role, sorted({l for l, _ in group.heads}), batch_size)
    logits = run(
        model, pairs.base.input_ids, masked_patches(group, pairs, mask, reads), batch_size=batch_size, prefix=prefixes
    ).last_logits
    return top1_correct(logits, pairs.target_ids).cpu()


def patched_correct(
    model,
    groups: list[HeadGroup],
    pairs: CounterfactualDataset,
    reads: dict[str, dict] | None = None,
    batch_size: int | None = None,
) -> list[torch.Tensor]:
    """Per group, bool [N]: each pair predicts the target with every head of the group patched from the source
    (DCM's selected heads, mask 0): :func:`patched_correct_cases` of the groups on one set of pairs. ``reads``:
    role -> the source's head outputs there (:func:`source_values_at`)."""
    layers = sorted({l for g in groups for l, _ in g.heads})
    reads = reads or source_values_at(model, pairs, tuple(dict.fromkeys(g.role for g in groups)), layers, batch_size)
    return patched_correct_cases(model, [(g, pairs, reads[g.role]) for g in groups], batch_size)


def patched_correct_cases(model, cases, batch_size: int | None = None) -> list[torch.Tensor]:
    """Per case ``(group, pairs, reads)`` (``reads``: the source's head outputs at the group's role), bool [N]: each
    pair predicts its target with every head of the group patched from its source. The cases' pairs share their
    base prompts (groups on one set of pairs, or desiderata drawn with one seed whose sources differ only in form):
    each batch's clean run serves them all (the engine's fast path recomputes only the patched layers and
    positions), one batch on the device at a time."""
    base_ids = _shared_base(pair for _, pair, _ in cases)
    runs = [Interventions(masked_patches(g, pair, torch.zeros(len(g.heads)), reads)) for g, pair, reads in cases]
    return [
        top1_correct(out.last_logits, pair.target_ids).cpu()
        for out, (_, pair, _) in zip(run_many(model, base_ids, runs, batch_size), cases)
    ]


def _shared_base(pairs) -> torch.Tensor:
    """The base prompts every one of ``pairs`` shares (an error where they differ: such cases run apart)."""
    pairs = list(pairs)
    ids = pairs[0].base.input_ids
    for other in pairs[1:]:
        if other is not pairs[0] and not torch.equal(other.base.input_ids, ids):
            raise ValueError(f"pairs {pairs[0].name!r} and {other.name!r} have other base prompts: run them apart")
    return ids


def train_dcm(
    model,
    group: HeadGroup,
    train: CounterfactualDataset,
    val: CounterfactualDataset,
    test: CounterfactualDataset,
    reads: dict[str, dict] | None = None,
    **options,
) -> DCMResult:
    """Learn the group's mask on ``train``, keep the best rounded mask on ``val``, score it on ``test``: one group
    of :func:`train_dcm_groups` (``options``: its lam, lr, epochs, batch_size, validate_every, seed). ``reads``:
    ``{"train"|"val"|"test": {layer: source head outputs at the group's role}}``."""
    return train_dcm_groups(
        model, [group], train, val, test, reads=None if reads is None else {group.role: reads}, **options
    )[0]


def train_dcm_groups(
    model,
    groups: list[HeadGroup],
    train: CounterfactualDataset,
    val: CounterfactualDataset,
    test: CounterfactualDataset,
    reads: dict[str, dict[str, dict]] | None = None,
    **options,
) -> list[DCMResult]:
    """One mask per group on one desideratum's pairs: :func:`train_dcm_cases` (``options``: its lam, lr, epochs,
    batch_size, validate_every, seed). ``reads``: ``{role: {"train"|"val"|"test": {layer: source head outputs at
    the role}}}``, when the caller has them."""
    return train_dcm_cases(
        model,
        [(g, train, val, test) for g in groups],
        reads=None if reads is None else [reads[g.role] for g in groups],
        **options,
    )


def train_dcm_cases(
    model,
    cases: list[tuple[HeadGroup, CounterfactualDataset, CounterfactualDataset, CounterfactualDataset]],
    lam: float = 0.01,
    lr: float = 0.1,
    epochs: int = 2,
    batch_size: int = 32,
    validate_every: int = 4,
    seed: int = 0,
    reads: list[dict[str, dict]] | None = None,
) -> list[DCMResult]:
    """One mask per case ``(group, train, val, test)``, each learnt on its train pairs on its own (its own
    optimizer; the same seeded batch order for every case, so each result is what training that case alone gives),
    the best rounded mask kept on its validation pairs, scored on its test pairs. The cases' pairs share their base
    prompts split by split (groups on one desideratum's pairs; or desiderata drawn with one seed whose sources
    differ only in form, the additional desiderata). ``reads``: per case ``{"train"|"val"|"test": {layer: source
    head outputs at the group's role}}``, when the caller has them.

    The cases share the work that does not depend on their masks: each training batch's clean run (the engine's
    prefix; every case then runs only its patched layers and positions forward and backward), the validation
    pairs' clean runs (captured once, reused at every validation) and the test pairs' clean runs."""
    torch_model = model if isinstance(model, torch.nn.Module) else model.model
    groups = [g for g, _, _, _ in cases]
    train, val, test = (_shared_base_of(cases, split) for split in (1, 2, 3))
    if reads is None:  # one read of each set of pairs, at the roles and layers of the groups trained on it
        reads = [None] * len(cases)
        by_pairs: dict[int, list[int]] = {}
        for i, (_, tr, _, _) in enumerate(cases):
            by_pairs.setdefault(id(tr), []).append(i)
        for chosen in by_pairs.values():
            _, tr, va, te = cases[chosen[0]]
            layers = sorted({l for i in chosen for l, _ in groups[i].heads})
            roles = tuple(dict.fromkeys(groups[i].role for i in chosen))
            by_split = {
                name: source_values_at(torch_model, ds, roles, layers)
                for name, ds in (("train", tr), ("val", va), ("test", te))
            }
            for i in chosen:
                reads[i] = {name: by_split[name][groups[i].role] for name in by_split}
    device = input_device(torch_model)
    on_host = device.type != "cpu"
    val_prefixes = capture_prefixes(torch_model, val.base.input_ids, on_host=on_host)
    masks = [torch.ones(len(g.heads), device=device, requires_grad=True) for g in groups]
    optimizers = [torch.optim.Adam([m], lr=lr) for m in masks]
    generator = torch.Generator().manual_seed(seed)
    frozen = [p for p in torch_model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    best = [(-1.0, -1, m.detach().clone()) for m in masks]
    base_positions = [case[1].base.positions(g.role) for g, case in zip(groups, cases)]
    try:
        step = 0
        for _ in range(epochs):
            order = torch.randperm(len(train), generator=generator)
            for start in range(0, len(train), batch_size):
                rows = order[start : start + batch_size]
                ids = train.base.input_ids[rows]
                prefix = capture_prefix(torch_model, ids)
                for i, (group, mask, optimizer, positions) in enumerate(zip(groups, masks, optimizers, base_positions)):
                    targets = cases[i][1].target_ids[rows]
                    with torch.no_grad():
                        mask.clamp_(0, 1)
                    patches = _patches(group, 1 - mask, positions, reads[i]["train"], rows)
                    logits = run(torch_model, ids, patches, grad=True, prefix=prefix).last_logits
                    target_logit = logits[torch.arange(len(rows), device=logits.device), targets.to(logits.device)]
                    loss = -target_logit.mean() + lam * (1 - mask).sum()
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                del prefix
                step += 1
                if step % validate_every == 0:
                    for i, (group, mask) in enumerate(zip(groups, masks)):
                        with torch.no_grad():
                            m = mask.detach().clamp(0, 1)
                            acc = masked_accuracy(
                                torch_model, group, cases[i][2], m, reads=reads[i]["val"], prefixes=val_prefixes
                            )
                        n_selected = int((m.round() == 0).sum())
                        if (acc, n_selected) > best[i][:2]:
                            best[i] = (acc, n_selected, m.clone())
    finally:
        for p in frozen:
            p.requires_grad_(True)
    del val_prefixes
    test_prefixes = capture_prefixes(torch_model, test.base.input_ids, on_host=on_host) if len(cases) > 1 else None
    out = []
    for i, (group, mask, (acc, _, kept)) in enumerate(zip(groups, masks, best)):
        final = (kept if acc >= 0 else mask.detach().clamp(0, 1)).cpu()
        test_correct = masked_correct(
            torch_model, group, cases[i][3], final, reads=reads[i]["test"], prefixes=test_prefixes
        )
        heads = tuple(h for h, m in zip(group.heads, final.round().tolist()) if m == 0)
        out.append(
            DCMResult(
                group.name,
                cases[i][1].name,
                heads,
                final,
                max(acc, 0.0),
                test_correct.float().mean().item(),
                test_correct,
            )
        )
    return out


def _shared_base_of(cases, split: int) -> CounterfactualDataset:
    """The pairs of ``split`` (1 train, 2 validation, 3 test) whose base prompts every case shares."""
    _shared_base(case[split] for case in cases)
    return cases[0][split]
