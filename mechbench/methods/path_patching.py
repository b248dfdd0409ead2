"""Path patching (docs/paper.md §4): how much each head, through a given path, carries the answer.

For every sender head, on the clean prompt:

1. every head output at every layer above the sender and every position from the sender's position on is
   frozen at its clean value, and the sender's own output at its position is set to its value on the
   corrupted prompt (MLPs are not frozen, so the sender's effect travels through the residual stream and MLPs
   only);
2. without receivers, the logits of that run are scored; with receivers, their ``q`` (or ``v``) at the
   receiver position is recorded in that run and patched into a fresh clean run, which is scored.

Score = mean over examples of (p_patched(answer) - p_clean(answer)) / p_clean(answer); the most negative
heads matter most. The paper's four steps: value fetchers (sender at the last token, no receivers), position
transmitters (receivers: top value fetchers' q at the last token), position detectors (sender at the query
label; receivers: top transmitters' v there), structure readers (sender at the earlier query-label
occurrence, on the corrupted prompt a random box label's position; receivers: top detectors' v there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechbench.circuits import Head
from mechbench.data.counterfactuals import CounterfactualDataset
from mechbench.intervene import (
    HeadPatch,
    Read,
    batch_size_of,
    capture_prefix,
    layer_devices,
    n_units,
    run,
    run_frozen_attention,
)
from mechbench.models.architectures import sites


@dataclass(frozen=True)
class Receivers:
    heads: tuple[Head, ...]
    component: str  # "q" or "v"
    role: str  # where their q/v is patched (in the clean prompt)


def _answer_prob(logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    return logits.softmax(-1)[torch.arange(len(answers)), answers]


def _receiver_patches(model, receivers: Receivers, reads: dict[int, torch.Tensor], positions, above: int):
    """Patches that put the recorded q/v of the receiver heads (those above layer ``above``) in place."""
    group = n_units(model, "head_out") // n_units(model, "k")
    by_layer: dict[int, set[int]] = {}
    for layer, head in receivers.heads:
        if layer > above:
            by_layer.setdefault(layer, set()).add(head if receivers.component == "q" else head // group)
    return [
        HeadPatch(
            layer,
            torch.tensor(sorted(units)),
            positions,
            reads[layer][:, :, sorted(units)],
            component=receivers.component,
        )
        for layer, units in by_layer.items()
    ]


#: Rows (examples x sender heads, one token each) per frozen-attention run.
ONE_TOKEN_ROWS = 4096


def _one_token_senders(
    model,
    layer: int,
    hidden: torch.Tensor,
    positions: torch.Tensor,
    clean: dict,
    corrupt: torch.Tensor,
    read: Read | None,
):
    """Every head of ``layer`` as the sender, each over the batch's ``n`` examples, through the sender's token only:
    that layer's and every later layer's head outputs are the clean ones (``clean[l]``: [n, H, D]) except the sender's,
    which takes its corrupted value (``corrupt``: [n, H, D]). Per sender head: the reads (layer -> [n, 1, units, D],
    as a run with the receivers' positions records them) and the token's logits [n, vocab]."""
    n, n_heads = corrupt.shape[:2]
    per_chunk = max(1, ONE_TOKEN_ROWS // n)
    logits, reads = [], []
    for first in range(0, n_heads, per_chunk):
        senders = torch.arange(first, min(first + per_chunk, n_heads), device=corrupt.device)
        k = len(senders)
        values = {l: clean[l].repeat(k, 1, 1) for l in range(layer, len(clean))}
        own = values[layer].view(k, n, n_heads, -1)
        own[torch.arange(k, device=own.device), :, senders] = corrupt[:, senders].transpose(0, 1)
        out = run_frozen_attention(model, hidden.repeat(k, 1), positions.repeat(k), values, read, logits=read is None)
        logits += list(out.last_logits.view(k, n, -1)) if read is None else [None] * k
        reads += [{l: r.view(k, n, *r.shape[1:])[i] for l, r in out.reads.items()} for i in range(k)]
    return reads, logits


def path_patching_scores(
    model,
    pairs: CounterfactualDataset,
    sender_role: str,
    receivers: Receivers | None = None,
    corrupt_positions: torch.Tensor | None = None,
    batch_size: int | None = None,
    fast: bool = True,
    progress=None,
    per_pair: bool = False,
) -> torch.Tensor:
    """Score of every head as a sender: [n_layers, n_heads]. ``corrupt_positions`` ([N]) says where the
    sender's corrupted value is read (default: the same role in the corrupted prompt). ``progress(done, total)``
    hears how many (batch, sender head) runs are done, after each sender layer. ``per_pair``: return every
    pair's score, [n_layers, n_heads, N], whose spread gives each head's sampling error.

    ``fast`` recomputes only the sender's layer and above, from the sender's position on (the engine's
    prefix path); the numbers equal the full forward's to float tolerance.
    """
    torch_model = model if isinstance(model, torch.nn.Module) else model.model
    # each layer's values where that layer computes (a device map spreads layers over GPUs): copied once per batch
    layer_device = layer_devices(torch_model, sites(torch_model).layer_list(torch_model))
    n_layers, n_heads = len(sites(torch_model).layer_list(torch_model)), n_units(torch_model, "head_out")
    clean, corrupt = pairs.base, pairs.source
    sender_pos = clean.positions(sender_role)
    corrupt_pos = corrupt.positions(sender_role) if corrupt_positions is None else corrupt_positions
    if receivers is not None:
        receiver_pos = clean.positions(receivers.role)[:, None]
        receiver_layers = sorted({layer for layer, _ in receivers.heads})
    answers = pairs.target_ids
    batch_size = batch_size or batch_size_of(torch_model)
    per = torch.zeros(n_layers, n_heads, len(pairs), dtype=torch.float64)
    n_batches = -(-len(pairs) // batch_size)
    # pairs go through in order of the sender's position: a batch recomputes from its earliest sender (or receiver)
    # on, so batches of like positions recompute less (the structure readers' query label sits anywhere from the
    # first box to the last); each pair's score lands in its own column, so the order changes no number
    order = torch.argsort(sender_pos, stable=True)
    for batch_index, start in enumerate(range(0, len(pairs), batch_size)):
        rows = order[start : start + batch_size]
        ids, n = clean.input_ids[rows], len(clean.input_ids[rows])
        use_prefix = fast and (receivers is None or bool((receiver_pos[rows, 0] >= sender_pos[rows]).all()))
        # the clean run: the fast path's prefix reads every head output as it is captured
        prefix = capture_prefix(torch_model, ids, read=Read()) if use_prefix else None
        clean_run = prefix if prefix is not None else run(torch_model, ids, read=Read(), batch_size=n)
        p_clean = _answer_prob(clean_run.last_logits, answers[rows])
        corrupt_vals = run(
            torch_model, corrupt.input_ids[rows], read=Read(positions=corrupt_pos[rows, None]), batch_size=n
        ).reads
        s = ids.shape[1]
        # with every head above the sender frozen from the sender's position on, only the sender's position changes:
        # when that is the last token (no receivers) or the receivers' position, its residual stream alone is
        # recomputed, every sender head of a layer at once (mechbench.intervene.run_frozen_attention)
        one_token = use_prefix and (
            bool((sender_pos[rows] == s - 1).all())
            if receivers is None
            else bool((receiver_pos[rows, 0] == sender_pos[rows]).all())
        )
        if one_token:
            token = torch.arange(n), sender_pos[rows]
            at_sender = {l: v[token].to(layer_device[l]) for l, v in clean_run.reads.items()}  # [n, H, D]
            hidden_at_sender = [h[token[0].to(h.device), token[1].to(h.device)] for h in prefix.hidden]
        else:
            # the frozen heads: every head above the sender, at every position from the sender's on. Positions before
            # the batch's first sender cannot change (causal attention), so the patches start there, and so does the
            # fast path's recomputation; the clean values go to the device once per batch, not once per sender
            first = int(sender_pos[rows].min())
            frozen = (
                (torch.arange(first, s)[None, :] >= sender_pos[rows, None])
                .float()[:, :, None]
                .expand(n, s - first, n_heads)
            )
            after_first = torch.arange(first, s).expand(n, s - first)
            clean_values = {l: v[:, first:].to(layer_device[l]) for l, v in clean_run.reads.items()}
        for layer in range(n_layers):
            above = [] if receivers is None else [l for l in receiver_layers if l > layer]
            if receivers is not None and not above:
                continue  # no receiver above the sender: nothing it sends arrives, score 0
            if one_token:
                recorded, logits = _one_token_senders(
                    torch_model,
                    layer,
                    hidden_at_sender[layer],
                    sender_pos[rows],
                    at_sender,
                    corrupt_vals[layer][:, 0].to(layer_device[layer]),
                    None if receivers is None else Read(above, None, receivers.component),
                )
            else:
                freeze = [
                    HeadPatch(l, torch.arange(n_heads), after_first, clean_values[l], frozen)
                    for l in range(layer + 1, n_layers)
                ]
            for head in range(n_heads):
                if not one_token:
                    sender = HeadPatch(
                        layer, torch.tensor([head]), sender_pos[rows, None], corrupt_vals[layer][:, :, [head]]
                    )
                if receivers is None:
                    logits_h = (
                        logits[head]
                        if one_token
                        else run(torch_model, ids, [sender] + freeze, batch_size=n, prefix=prefix).last_logits
                    )
                else:
                    recorded_h = (
                        recorded[head]
                        if one_token
                        else run(
                            torch_model,
                            ids,
                            [sender] + freeze,
                            batch_size=n,
                            prefix=prefix,
                            read=Read(above, receiver_pos[rows], receivers.component),
                        ).reads
                    )
                    patches = _receiver_patches(torch_model, receivers, recorded_h, receiver_pos[rows], above=layer)
                    logits_h = run(torch_model, ids, patches, batch_size=n, prefix=prefix).last_logits
                p = _answer_prob(logits_h, answers[rows])
                per[layer, head, rows] = ((p - p_clean) / p_clean).double()
            if progress is not None:
                progress((batch_index * n_layers + layer + 1) * n_heads, n_batches * n_layers * n_heads)
    return per.float() if per_pair else per.mean(-1).float()


def top_heads(scores: torch.Tensor, k: int) -> tuple[Head, ...]:
    """The ``k`` heads with the most negative scores, most important first."""
    flat = scores.flatten().argsort()[:k]
    n_heads = scores.shape[1]
    return tuple((int(i) // n_heads, int(i) % n_heads) for i in flat)
