"""Side by side: each workload done by mechbench's engine and by the obvious nnsight loop, same numbers.

Every workload is a pair of plain functions ``<workload>_mechbench(setting)`` / ``<workload>_nnsight(setting)``
returning tensors (``tests/test_side_by_side.py`` calls them at the tiny shape); the benchmarks time each once
(``benchmark.pedantic``, one round: they are long) in one pytest-benchmark group per workload, record the peak
memory, and the nnsight benchmark asserts its numbers equal mechbench's. Nothing asserts a time.

The nnsight side wraps the model with plain ``nnsight.NNsight`` (token-id tensors in, no tokenizer) and reads or
writes module inputs and outputs inside ``with lm.trace(ids)`` blocks, one trace per patched run over the whole
batch. Per-head outputs are the input of ``self_attn.o_proj`` ([B, S, H * D], viewed as [B, S, H, D]; in-place
edits reach the model). Both sides compute the last position's logits only (``logits_to_keep=1``), so the
comparison is of the intervention machinery, not of the unembedding, and both handle all pairs as one batch.
"""

from __future__ import annotations

from itertools import combinations

import nnsight
import pytest
import torch

from benchmarks.conftest import BenchSetting, measure
from mechbench.intervene import HeadPatch, Read, capture_prefix, run
from mechbench.methods.ablation import circuit_minus_correct
from mechbench.methods.cmap import cmap_correct
from mechbench.methods.discovery import random_label_positions
from mechbench.methods.knockout import EDGES, knockout_curve_correct
from mechbench.methods.path_patching import Receivers, path_patching_scores

#: Seed of the struct-reader step's random box label in the corrupted prompt.
LABEL_SEED = 3
#: DCM's sparsity weight (the paper's lambda).
DCM_LAMBDA = 0.01


def _heads(x: torch.Tensor, n_units: int) -> torch.Tensor:
    """[B, S, units * D] -> a [B, S, units, D] view (writes to it reach ``x``)."""
    b, s, _ = x.shape
    return x.view(b, s, n_units, -1)


def _answer_prob(logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    return logits.float().softmax(-1)[torch.arange(len(answers), device=logits.device), answers.to(logits.device)]


# --- path patching ------------------------------------------------------------------------------------------


def path_patching_value_fetcher_mechbench(setting: BenchSetting) -> torch.Tensor:
    """Path patching's value-fetcher step: every head as the sender at the last token, no receivers. Score
    [L, H] = mean over pairs of (p_patched - p_clean) / p_clean of the base answer (mechbench.methods.path_patching
    is the definition)."""
    return path_patching_scores(setting.model, setting.pairs, "last", batch_size=setting.n_pairs)


def path_patching_value_fetcher_nnsight(setting: BenchSetting) -> torch.Tensor:
    """The same scores with one nnsight trace per sender head: the sender's output at its position set to its
    corrupted value, every head output of every later layer at every position from the sender's on set to its
    clean value, the last-token logits scored."""
    return _path_patching_nnsight(setting, "last")


def _struct_reader_receivers(setting: BenchSetting) -> Receivers:
    return Receivers(setting.shape.struct_receivers, "v", "prev_query_label")


def path_patching_struct_reader_mechbench(setting: BenchSetting) -> torch.Tensor:
    """Path patching's structure-reader step: the sender at the earlier query-label occurrence, its corrupted value
    read at a random box label of the corrupted prompt; receivers: fixed heads of the upper half, their ``v`` at the
    same position. Heads with no receiver in a later layer score 0."""
    return path_patching_scores(
        setting.model,
        setting.pairs,
        "prev_query_label",
        _struct_reader_receivers(setting),
        corrupt_positions=random_label_positions(setting.pairs, LABEL_SEED),
        batch_size=setting.n_pairs,
    )


def path_patching_struct_reader_nnsight(setting: BenchSetting) -> torch.Tensor:
    """The same scores with two nnsight traces per sender head: (1) sender patched and later heads frozen as in
    the value-fetcher step, recording the receivers' ``v`` (``self_attn.v_proj``'s output, per key/value head) at
    their position in every receiver layer above the sender; (2) a clean run with those ``v`` patched in, scored."""
    return _path_patching_nnsight(
        setting,
        "prev_query_label",
        _struct_reader_receivers(setting),
        random_label_positions(setting.pairs, LABEL_SEED),
    )


def _path_patching_nnsight(
    setting: BenchSetting,
    sender_role: str,
    receivers: Receivers | None = None,
    corrupt_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    lm, pairs, device = setting.lm, setting.pairs, setting.device
    config = setting.model.config
    n_layers, n_heads, n_kv = config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads
    clean_ids, corrupt_ids = pairs.base.input_ids.to(device), pairs.source.input_ids.to(device)
    n, s = clean_ids.shape
    rows = torch.arange(n, device=device)
    sender_pos = pairs.base.positions(sender_role).to(device)
    corrupt_pos = (pairs.source.positions(sender_role) if corrupt_positions is None else corrupt_positions).to(device)
    answers = pairs.target_ids.to(device)
    # the receivers' units per layer: q per head, v per key/value head (grouped-query attention shares them)
    units: dict[int, list[int]] = {}
    if receivers is not None:
        per_unit = 1 if receivers.component == "q" else n_heads // n_kv
        for layer, head in receivers.heads:
            units.setdefault(layer, []).append(head // per_unit)
        units = {layer: sorted(set(us)) for layer, us in sorted(units.items())}
        receiver_pos = pairs.base.positions(receivers.role).to(device)
        n_receiver_units = n_heads if receivers.component == "q" else n_kv
    scores = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    with torch.no_grad():
        with lm.trace(clean_ids, logits_to_keep=1):
            clean_heads = nnsight.save([lm.model.layers[l].self_attn.o_proj.input.clone() for l in range(n_layers)])
            clean_logits = lm.output.logits[:, -1].save()
        p_clean = _answer_prob(clean_logits, answers)
        with lm.trace(corrupt_ids, logits_to_keep=1) as tracer:
            corrupt_heads = nnsight.save(
                [
                    _heads(lm.model.layers[l].self_attn.o_proj.input, n_heads)[rows, corrupt_pos].clone()
                    for l in range(n_layers)
                ]
            )  # [n, H, D] per layer
            tracer.stop()  # nothing after the last layer's head outputs is needed
        clean_heads = [_heads(x, n_heads) for x in clean_heads]
        frozen = torch.arange(s, device=device)[None, :] >= sender_pos[:, None]  # [n, s]: from the sender on
        for layer in range(n_layers):
            receiver_layers = [l for l in units if l > layer]
            if receivers is not None and not receiver_layers:
                continue  # nothing the sender sends reaches a receiver: score 0
            for head in range(n_heads):
                with lm.trace(clean_ids, logits_to_keep=1) as tracer:
                    sender = _heads(lm.model.layers[layer].self_attn.o_proj.input, n_heads)
                    sender[rows, sender_pos, head] = corrupt_heads[layer][:, head]
                    recorded = {}
                    for later in range(layer + 1, n_layers):
                        attn = lm.model.layers[later].self_attn
                        if later in receiver_layers:  # q/v run before o_proj within the layer
                            projection = attn.q_proj if receivers.component == "q" else attn.v_proj
                            at_receiver = _heads(projection.output, n_receiver_units)[rows, receiver_pos]
                            recorded[later] = at_receiver[:, units[later]].clone()  # [n, units, D]
                            if later == receiver_layers[-1]:
                                break  # every receiver is recorded; later layers cannot change what was read
                        frozen_heads = _heads(attn.o_proj.input, n_heads)
                        frozen_heads[frozen] = clean_heads[later][frozen]
                    if receivers is None:
                        logits = lm.output.logits[:, -1].save()
                    else:
                        recorded = nnsight.save(recorded)
                        tracer.stop()
                if receivers is not None:
                    with lm.trace(clean_ids, logits_to_keep=1):
                        for later in receiver_layers:
                            projection = getattr(lm.model.layers[later].self_attn, f"{receivers.component}_proj")
                            patched = _heads(projection.output, n_receiver_units)
                            unit_index = torch.tensor(units[later], device=device)
                            patched[rows[:, None], receiver_pos[:, None], unit_index[None, :]] = recorded[later]
                        logits = lm.output.logits[:, -1].save()
                p = _answer_prob(logits, answers)
                scores[layer, head] = ((p - p_clean) / p_clean).double().mean().item()
    return scores.float()


# --- minimality: the circuit minus one or two heads, mean-ablated ------------------------------------------


def minimality_removals(setting: BenchSetting) -> list[dict[str, set]]:
    """Minimality's removals for the value-fetcher group: every head alone, then every pair (role -> heads)."""
    group = setting.shape.circuit.groups["value_fetcher"]
    return [{group.role: {u}} for u in group.heads] + [{group.role: {u, v}} for u, v in combinations(group.heads, 2)]


def minimality_ablations_mechbench(setting: BenchSetting) -> torch.Tensor:
    """Bool [removals, N]: the answer is right with everything outside the circuit mean-ablated (every head at
    every position, except the circuit's heads at their roles' positions) and the removal's heads too (at their
    role's position)."""
    out = circuit_minus_correct(
        setting.model,
        setting.shape.circuit,
        setting.dataset,
        setting.means,
        minimality_removals(setting),
        batch_size=setting.n_pairs,
    )
    return torch.stack(out).cpu()


def minimality_ablations_nnsight(setting: BenchSetting) -> torch.Tensor:
    """The same bools with one nnsight trace per removal, setting every ablated head output to its position mean."""
    lm, dataset, device = setting.lm, setting.dataset, setting.device
    n_layers, seq, n_heads, _ = setting.means.shape
    ids = dataset.input_ids.to(device)
    n = len(ids)
    rows = torch.arange(n)
    means = setting.means.to(device)
    keep = torch.zeros(n_layers, n, seq, n_heads, dtype=torch.bool)  # circuit heads at their roles' positions
    for group in setting.shape.circuit.groups.values():
        for layer, head in group.heads:
            keep[layer, rows, dataset.positions(group.role), head] = True
    correct = []
    for removal in minimality_removals(setting):
        ablate = keep.clone()
        for role, heads in removal.items():
            for layer, head in heads:
                ablate[layer, rows, dataset.positions(role), head] = False
        ablate = (~ablate).to(device)
        with torch.no_grad(), lm.trace(ids, logits_to_keep=1):
            for layer in range(n_layers):
                head_out = _heads(lm.model.layers[layer].self_attn.o_proj.input, n_heads)
                head_out[ablate[layer]] = means[layer].expand(n, -1, -1, -1)[ablate[layer]]
            logits = lm.output.logits[:, -1].save()
        correct.append(logits.argmax(-1).cpu() == dataset.answer_ids)
    return torch.stack(correct)


# --- attention knockout ------------------------------------------------------------------------------------


def knockout_curve_mechbench(setting: BenchSetting) -> torch.Tensor:
    """Bool [L, N]: row L says the answer is still right with attention from the last token to the correct
    object's position (the toy shape: the earlier query label's) blocked in every head of every layer from L on."""
    curve = knockout_curve_correct(
        setting.model,
        setting.dataset,
        setting.shape.knockout_edge,
        range(setting.shape.n_layers),
        batch_size=setting.n_pairs,
    )
    return torch.stack([curve[layer] for layer in range(setting.shape.n_layers)]).cpu()


def knockout_curve_nnsight(setting: BenchSetting) -> torch.Tensor:
    """The same bools with one nnsight trace per first layer L, which replaces the ``attention_mask`` keyword input
    of ``self_attn`` in layers >= L (``.inputs`` is the (args, kwargs) pair and can be written) with an explicit
    additive [B, 1, S, S] mask: causal, plus the blocked edge, at the dtype's minimum."""
    lm, dataset, device = setting.lm, setting.dataset, setting.device
    ids = dataset.input_ids.to(device)
    n, s = ids.shape
    dtype = setting.model.dtype
    blocked = torch.ones(s, s, dtype=torch.bool, device=device).triu(1).expand(n, s, s).clone()
    query_role, key_role = EDGES[setting.shape.knockout_edge]
    blocked[
        torch.arange(n, device=device), dataset.positions(query_role).to(device), dataset.positions(key_role).to(device)
    ] = True
    mask = torch.zeros(n, 1, s, s, dtype=dtype, device=device).masked_fill(blocked[:, None], torch.finfo(dtype).min)
    correct = []
    for first in range(setting.shape.n_layers):
        with torch.no_grad(), lm.trace(ids, logits_to_keep=1):
            for layer in range(first, setting.shape.n_layers):
                attention = lm.model.layers[layer].self_attn
                args, kwargs = attention.inputs
                attention.inputs = (args, {**kwargs, "attention_mask": mask})
            logits = lm.output.logits[:, -1].save()
        correct.append(logits.argmax(-1).cpu() == dataset.answer_ids)
    return torch.stack(correct)


# --- DCM ---------------------------------------------------------------------------------------------------


def _dcm_start_mask(k: int) -> torch.Tensor:
    """A mask part-way through training (at 1, DCM's start, every blend would be the base value)."""
    return torch.linspace(0.9, 0.4, k)


def dcm_step_mechbench(setting: BenchSetting) -> torch.Tensor:
    """One DCM training step for the value-fetcher group at the last token, on the object_value pairs: the source
    prompts' head outputs there are read, then the base run with each head at m * base + (1 - m) * source
    (``HeadPatch`` with alpha = 1 - m; as DCM's trainer, from the batch's clean prefix), loss =
    -mean target logit + lambda * sum(1 - m), backward. Returns [loss, dloss/dm per head]."""
    model, pairs, device = setting.model, setting.dcm_pairs, setting.device
    group = setting.shape.circuit.groups["value_fetcher"]
    layers = sorted({layer for layer, _ in group.heads})
    n = len(pairs)
    with torch.no_grad():
        source = run(
            model, pairs.source.input_ids, read=Read(layers, pairs.source.positions(group.role)[:, None]), batch_size=n
        ).reads
    ids = pairs.base.input_ids
    prefix = capture_prefix(model, ids)
    mask = _dcm_start_mask(len(group.heads)).to(device).requires_grad_(True)
    positions = pairs.base.positions(group.role)[:, None]
    patches = []
    for layer in layers:
        index = [i for i, (l, _) in enumerate(group.heads) if l == layer]
        heads = torch.tensor([group.heads[i][1] for i in index])
        patches.append(HeadPatch(layer, heads, positions, source[layer][:, :, heads], 1 - mask[index]))
    logits = run(model, ids, patches, grad=True, prefix=prefix).last_logits
    rows = torch.arange(n, device=logits.device)
    loss = -logits[rows, pairs.target_ids.to(logits.device)].mean() + DCM_LAMBDA * (1 - mask).sum()
    loss.backward()
    return torch.cat([loss.detach().reshape(1), mask.grad]).cpu()


def dcm_step_nnsight(setting: BenchSetting) -> torch.Tensor:
    """The same step with nnsight: one trace reading the source's head outputs, one trace with gradients that
    replaces the group's heads' ``o_proj`` input at the position by the blend; the loss and its backward run on
    the saved logits after the trace."""
    lm, pairs, device = setting.lm, setting.dcm_pairs, setting.device
    group = setting.shape.circuit.groups["value_fetcher"]
    n_heads = setting.shape.n_heads
    layers = sorted({layer for layer, _ in group.heads})
    base_ids, source_ids = pairs.base.input_ids.to(device), pairs.source.input_ids.to(device)
    n = len(base_ids)
    rows = torch.arange(n, device=device)
    with torch.no_grad(), lm.trace(source_ids, logits_to_keep=1) as tracer:
        source_pos = pairs.source.positions(group.role).to(device)
        source = nnsight.save(
            {
                layer: _heads(lm.model.layers[layer].self_attn.o_proj.input, n_heads)[rows, source_pos].clone()
                for layer in layers
            }
        )  # [n, H, D]
        tracer.stop()
    mask = _dcm_start_mask(len(group.heads)).to(device).requires_grad_(True)
    base_pos = pairs.base.positions(group.role).to(device)
    with lm.trace(base_ids, logits_to_keep=1):
        for layer in layers:
            index = [i for i, (l, _) in enumerate(group.heads) if l == layer]
            heads = torch.tensor([group.heads[i][1] for i in index], device=device)
            m = mask[index][None, :, None]  # [1, k, 1]
            o_proj = lm.model.layers[layer].self_attn.o_proj
            blended = o_proj.input.clone()
            per_head = _heads(blended, n_heads)
            current = per_head[rows[:, None], base_pos[:, None], heads[None, :]]  # [n, k, D]
            per_head[rows[:, None], base_pos[:, None], heads[None, :]] = m * current + (1 - m) * source[layer][:, heads]
            o_proj.input = blended
        logits = lm.output.logits[:, -1].save()
    loss = -logits[rows, pairs.target_ids.to(device)].mean() + DCM_LAMBDA * (1 - mask).sum()
    loss.backward()
    return torch.cat([loss.detach().reshape(1), mask.grad]).cpu()


# --- CMAP --------------------------------------------------------------------------------------------------


def cmap_mechbench(setting: BenchSetting) -> torch.Tensor:
    """Bool [N]: the base model (seed 0) is still right with the donor's (seed 1) outputs of every circuit head at
    its role's position patched in."""
    return cmap_correct(
        setting.model, setting.donor, setting.shape.circuit, setting.dataset, batch_size=setting.n_pairs
    ).cpu()


def cmap_nnsight(setting: BenchSetting) -> torch.Tensor:
    """The same bools with two nnsight traces: the donor's head outputs read, then patched into the base."""
    dataset, device, n_heads = setting.dataset, setting.device, setting.shape.n_heads
    ids = dataset.input_ids.to(device)
    rows = torch.arange(len(ids), device=device)[:, None]
    sites: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # layer -> (positions [N, 1], heads [1, k])
    for group in setting.shape.circuit.groups.values():
        by_layer: dict[int, list[int]] = {}
        for layer, head in group.heads:
            by_layer.setdefault(layer, []).append(head)
        for layer, heads in by_layer.items():
            sites.setdefault(layer, []).append(
                (dataset.positions(group.role).to(device)[:, None], torch.tensor(heads, device=device)[None, :])
            )
    sites = dict(sorted(sites.items()))  # in forward order
    with torch.no_grad():
        with setting.lm_donor.trace(ids, logits_to_keep=1) as tracer:
            donor_values = nnsight.save(
                {
                    layer: [
                        _heads(setting.lm_donor.model.layers[layer].self_attn.o_proj.input, n_heads)[
                            rows, pos, heads
                        ].clone()
                        for pos, heads in at
                    ]
                    for layer, at in sites.items()
                }
            )
            tracer.stop()
        with setting.lm.trace(ids, logits_to_keep=1):
            for layer, at in sites.items():
                head_out = _heads(setting.lm.model.layers[layer].self_attn.o_proj.input, n_heads)
                for (pos, heads), value in zip(at, donor_values[layer]):
                    head_out[rows, pos, heads] = value
            logits = setting.lm.output.logits[:, -1].save()
    return logits.argmax(-1).cpu() == dataset.answer_ids


# --- the benchmarks ----------------------------------------------------------------------------------------


WORKLOADS = {
    "path_patching_value_fetcher": (path_patching_value_fetcher_mechbench, path_patching_value_fetcher_nnsight),
    "path_patching_struct_reader": (path_patching_struct_reader_mechbench, path_patching_struct_reader_nnsight),
    "minimality_ablations": (minimality_ablations_mechbench, minimality_ablations_nnsight),
    "knockout_curve": (knockout_curve_mechbench, knockout_curve_nnsight),
    "dcm_step": (dcm_step_mechbench, dcm_step_nnsight),
    "cmap": (cmap_mechbench, cmap_nnsight),
}


def seq_len_of(setting: BenchSetting, workload: str) -> int:
    data = {
        "path_patching_value_fetcher": setting.pairs.base,
        "path_patching_struct_reader": setting.pairs.base,
        "dcm_step": setting.dcm_pairs.base,
    }.get(workload, setting.dataset)
    return data.seq_len


#: mechbench's numbers per (setting, workload), computed once: the nnsight benchmark compares with them whichever
#: of the two runs first.
_MECHBENCH_NUMBERS: dict[tuple, torch.Tensor] = {}


def mechbench_numbers(setting: BenchSetting, workload: str) -> torch.Tensor:
    key = (setting.key, workload)
    if key not in _MECHBENCH_NUMBERS:
        _MECHBENCH_NUMBERS[key] = WORKLOADS[workload][0](setting)
    return _MECHBENCH_NUMBERS[key]


def assert_same_numbers(nnsight_numbers: torch.Tensor, mechbench: torch.Tensor) -> None:
    torch.testing.assert_close(nnsight_numbers, mechbench, rtol=1e-4, atol=1e-5)


def _bench_mechbench(benchmark, setting: BenchSetting, workload: str) -> None:
    _MECHBENCH_NUMBERS[(setting.key, workload)] = measure(
        benchmark, setting, WORKLOADS[workload][0], seq_len_of(setting, workload)
    )


def _bench_nnsight(benchmark, setting: BenchSetting, workload: str) -> None:
    numbers = measure(benchmark, setting, WORKLOADS[workload][1], seq_len_of(setting, workload))
    assert_same_numbers(numbers, mechbench_numbers(setting, workload))


@pytest.mark.benchmark(group="path_patching_value_fetcher")
def test_path_patching_value_fetcher_mechbench(benchmark, bench_setting):
    _bench_mechbench(benchmark, bench_setting, "path_patching_value_fetcher")


@pytest.mark.benchmark(group="path_patching_value_fetcher")
def test_path_patching_value_fetcher_nnsight(benchmark, bench_setting):
    _bench_nnsight(benchmark, bench_setting, "path_patching_value_fetcher")


@pytest.mark.benchmark(group="path_patching_struct_reader")
def test_path_patching_struct_reader_mechbench(benchmark, bench_setting):
    _bench_mechbench(benchmark, bench_setting, "path_patching_struct_reader")


@pytest.mark.benchmark(group="path_patching_struct_reader")
def test_path_patching_struct_reader_nnsight(benchmark, bench_setting):
    _bench_nnsight(benchmark, bench_setting, "path_patching_struct_reader")


@pytest.mark.benchmark(group="minimality_ablations")
def test_minimality_ablations_mechbench(benchmark, bench_setting):
    _bench_mechbench(benchmark, bench_setting, "minimality_ablations")


@pytest.mark.benchmark(group="minimality_ablations")
def test_minimality_ablations_nnsight(benchmark, bench_setting):
    _bench_nnsight(benchmark, bench_setting, "minimality_ablations")


@pytest.mark.benchmark(group="knockout_curve")
def test_knockout_curve_mechbench(benchmark, bench_setting):
    _bench_mechbench(benchmark, bench_setting, "knockout_curve")


@pytest.mark.benchmark(group="knockout_curve")
def test_knockout_curve_nnsight(benchmark, bench_setting):
    _bench_nnsight(benchmark, bench_setting, "knockout_curve")


@pytest.mark.benchmark(group="dcm_step")
def test_dcm_step_mechbench(benchmark, bench_setting):
    _bench_mechbench(benchmark, bench_setting, "dcm_step")


@pytest.mark.benchmark(group="dcm_step")
def test_dcm_step_nnsight(benchmark, bench_setting):
    _bench_nnsight(benchmark, bench_setting, "dcm_step")


@pytest.mark.benchmark(group="cmap")
def test_cmap_mechbench(benchmark, bench_setting):
    _bench_mechbench(benchmark, bench_setting, "cmap")


@pytest.mark.benchmark(group="cmap")
def test_cmap_nnsight(benchmark, bench_setting):
    _bench_nnsight(benchmark, bench_setting, "cmap")
