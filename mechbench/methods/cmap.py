"""Cross-model activation patching (CMAP, docs/paper.md §7): run the fine-tuned model on the same prompt,
take its head outputs (o_proj inputs) at a group's role position, and put them into the base model, which
passes them through its own W_O. If accuracy rises to the fine-tune's, those heads carry the improvement.
"""

from __future__ import annotations

import torch

from mechbench.circuits import Circuit, HeadGroup
from mechbench.data.dataset import EntityTrackingDataset
from mechbench.evaluate import top1_correct
from mechbench.intervene import HeadPatch, Read, run


def cmap_patches(
    donor, groups: list[HeadGroup], dataset: EntityTrackingDataset, batch_size: int | None = None
) -> list[HeadPatch]:
    """Patches carrying ``donor``'s head outputs for the heads of ``groups`` at their roles (one donor forward reads
    every role)."""
    roles = list(dict.fromkeys(g.role for g in groups))
    heads_by_site: dict[tuple[str, int], set[int]] = {}
    for g in groups:
        for layer, head in g.heads:
            heads_by_site.setdefault((g.role, layer), set()).add(head)
    positions = torch.stack([dataset.positions(role) for role in roles], 1)  # [N, roles]
    layers = sorted({layer for _, layer in heads_by_site})
    reads = run(donor, dataset.input_ids, read=Read(layers, positions), batch_size=batch_size).reads
    patches = []
    for (role, layer), heads in sorted(heads_by_site.items(), key=lambda kv: (roles.index(kv[0][0]), kv[0][1])):
        i, idx = roles.index(role), torch.tensor(sorted(heads))
        patches.append(HeadPatch(layer, idx, positions[:, [i]], reads[layer][:, [i]][:, :, idx]))
    return patches


def cmap_correct(
    base, donor, groups: list[HeadGroup] | Circuit, dataset: EntityTrackingDataset, batch_size: int | None = None
) -> torch.Tensor:
    """Bool [N]: ``base`` with ``donor``'s outputs of the given heads patched in (donor -> base) answers right."""
    groups = list(groups.groups.values()) if isinstance(groups, Circuit) else list(groups)
    logits = run(
        base, dataset.input_ids, cmap_patches(donor, groups, dataset, batch_size), batch_size=batch_size
    ).last_logits
    return top1_correct(logits, dataset.answer_ids)


def cmap_accuracy(
    base, donor, groups: list[HeadGroup] | Circuit, dataset: EntityTrackingDataset, batch_size: int | None = None
) -> float:
    """Accuracy of ``base`` with ``donor``'s outputs of the given heads patched in (donor -> base)."""
    return cmap_correct(base, donor, groups, dataset, batch_size).float().mean().item()


#: The paper's CMAP head sets (docs/paper.md §7): per group, the fine-tuned circuit's DCM heads for the
#: desideratum the group is named for; the structure readers whole.
PAPER_CMAP_DESIDERATUM = {
    "value_fetcher": "object_value",
    "pos_transmitter": "positional",
    "pos_detector": "positional",
    "struct_reader": None,
}


def cmap_head_sets(circuit: Circuit, baselines_dir=None) -> dict[str, HeadGroup]:
    """The head set patched per group: the paper's DCM-selected heads where ``baselines/dcm.json`` holds a DCM
    run of this circuit (Goat's and FLoat's), else the circuit's whole groups (the toy zoo, a new circuit)."""
    from mechbench import baselines

    dcm = baselines.load("dcm", baselines_dir)
    sets = {}
    for name, group in circuit.groups.items():
        desideratum = PAPER_CMAP_DESIDERATUM.get(name)
        record = (
            dcm.find(circuit=circuit.name, model=circuit.name, group=name, role=group.role, desideratum=desideratum)
            if desideratum
            else None
        )
        heads = tuple(tuple(h) for h in record.value["heads"]) if record is not None else group.heads
        sets[name] = HeadGroup(name, group.role, heads)
    return sets
