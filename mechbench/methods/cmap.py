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
    reads = run(donor, dataset.input_ids, read=Read(layers, positions), batch_size=batch_size, logits=False).reads
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


# --- input CMAP ---------------------------------------------------------------------------------------------------

#: The paper's input sets (``cmap_in``, cmap.ipynb @ adf3a17; docs/paper.md §7): which of a head's inputs come from
#: the fine-tune: its query at the head's position, its keys and values at the earlier positions.
INPUT_SETS = {"Q": ("q",), "K": ("k",), "V": ("v",), "QK": ("q", "k"), "QKV": ("q", "k", "v")}


def input_cmap_patches(
    group: HeadGroup, inputs: tuple[str, ...], positions: torch.Tensor, donor: dict, clean: dict, kv_group: int
) -> list[HeadPatch]:
    """The patches that feed ``group``'s heads the donor's ``inputs`` at their role (``positions``, [N]) in the base.

    - ``q``: the donor's query at the role position;
    - ``k``, ``v``: the donor's keys / values at every position before it (the paper's ``:heads_pos``; the key and
      value at the role position stay the base's own);
    - with keys or values moved, the heads' outputs at every other position are put back to the base's clean ones
      (the paper resets them at all positions but the last), so that only their attention at the role changes.
      Under grouped-query attention a key/value head is shared: the other query heads reading it keep the base's
      clean outputs at every position, so that only the group's heads see the donor's keys and values.

    ``donor``: component -> layer -> the donor's [N, S, units, d] values; ``clean``: layer -> the base's clean
    head outputs [N, S, heads, d]; ``kv_group``: query heads per key/value head."""
    n, s = len(positions), donor[inputs[0]][group.heads[0][0]].shape[1]
    rows, every = torch.arange(n), torch.arange(s).expand(n, s)
    before = every < positions[:, None]  # [N, S]
    patches = []
    for layer in sorted({l for l, _ in group.heads}):
        heads = sorted(h for l, h in group.heads if l == layer)
        if "q" in inputs:
            values = donor["q"][layer][rows, positions][:, None][:, :, heads]
            patches.append(HeadPatch(layer, torch.tensor(heads), positions[:, None], values, component="q"))
        kv_heads = sorted({h // kv_group for h in heads})
        for component in ("k", "v"):
            if component in inputs:
                alpha = before[:, :, None].expand(n, s, len(kv_heads)).float()
                values = donor[component][layer][:, :, kv_heads]
                patches.append(HeadPatch(layer, torch.tensor(kv_heads), every, values, alpha, component))
        if "k" in inputs or "v" in inputs:
            readers = [h for kv in kv_heads for h in range(kv * kv_group, (kv + 1) * kv_group)]
            in_group = torch.tensor([h in heads for h in readers])
            keep_clean = (every != positions[:, None])[:, :, None] | ~in_group[None, None, :]  # [N, S, readers]
            patches.append(
                HeadPatch(layer, torch.tensor(readers), every, clean[layer][:, :, readers], keep_clean.float())
            )
    return patches


def input_cmap_correct(
    base,
    donor,
    groups: list[HeadGroup],
    dataset: EntityTrackingDataset,
    input_sets: tuple[str, ...] = tuple(INPUT_SETS),
    batch_size: int | None = None,
) -> dict[tuple[str, str], torch.Tensor]:
    """(group name, input set) -> bool [N]: ``base`` with ``donor``'s inputs (:data:`INPUT_SETS`) to the group's
    heads at its role (:func:`input_cmap_patches`) answers right. One batch of prompts at a time: the donor's
    queries, keys and values and the base's clean head outputs over every position are read for that batch and
    let go, so the host holds one batch's reads however many prompts there are."""
    from mechbench.intervene import batch_size_of, n_units
    from mechbench.models.architectures import causal_lm

    module = causal_lm(base)
    batch_size = batch_size or batch_size_of(module)
    kv_group = n_units(module, "q") // n_units(module, "k")
    layers = sorted({l for g in groups for l, _ in g.heads})
    components = sorted({c for s in input_sets for c in INPUT_SETS[s]})
    out: dict[tuple[str, str], list[torch.Tensor]] = {(g.name, s): [] for g in groups for s in input_sets}
    for start in range(0, len(dataset), batch_size):
        part = dataset.subset(slice(start, start + batch_size))
        ids = part.input_ids
        donor_reads = {
            c: run(donor, ids, read=Read(layers, component=c), batch_size=len(ids), logits=False).reads
            for c in components
        }
        clean = run(base, ids, read=Read(layers), batch_size=len(ids), logits=False).reads
        for g in groups:
            positions = part.positions(g.role)
            for s in input_sets:
                patches = input_cmap_patches(g, INPUT_SETS[s], positions, donor_reads, clean, kv_group)
                logits = run(base, ids, patches, batch_size=len(ids)).last_logits
                out[(g.name, s)].append(top1_correct(logits, part.answer_ids).cpu())
    return {key: torch.cat(chunks) for key, chunks in out.items()}
