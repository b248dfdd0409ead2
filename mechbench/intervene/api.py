"""The engine's entry points, what methods call: :func:`run` (one set of interventions over prompts, batch by
batch, optionally from a prefix) and :func:`run_many` (many sets over the same prompts, each batch's prefix captured
once and shared). They take a :class:`~mechbench.models.loading.ModelHandle`, a PeftModel or the causal-LM module,
and the requests of :mod:`mechbench.intervene.requests`.

A caller that names no ``batch_size`` gets the model's own (:func:`mechbench.models.run_options.batch_size_of`:
set per model where a session loads it, from ``--batch-size`` or the memory plan's choice for the device).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mechbench.intervene.hooks import ReadsDone, hooked, require_mask_honouring
from mechbench.intervene.prefix import Prefix, capture_prefix, run_from_prefix
from mechbench.intervene.requests import HeadPatch, Interventions, Knockout, Read, RunOutput
from mechbench.models.architectures import causal_lm
from mechbench.models.devices import input_device
from mechbench.models.run_options import batch_size_of


def run_many(
    model_or_handle,
    input_ids: torch.Tensor,
    runs: Sequence[Interventions],
    batch_size: int | None = None,
    fast: bool = True,
    common: Sequence[HeadPatch] = (),
    score=None,
) -> list[RunOutput]:
    """Every set of ``runs`` on the same ``input_ids``, batch by batch: each batch's clean run (or its run under
    ``common`` patches, which every set then adds to) is captured once (:func:`capture_prefix`) and serves every
    set, then is let go, so the device holds one batch's prefix at a time however many prompts and runs there
    are. The same numbers as one :func:`run` per set (with ``common`` + its patches), to float tolerance
    (``fast=False`` makes it exactly that). ``score(logits, rows)``: what to keep of each batch's logits (say
    top-1 correctness against the targets of ``rows``) instead of the logits themselves, which for thousands of
    runs (minimality's pairs of a 100-head group) of a 32k vocabulary would not fit in memory."""
    model = causal_lm(model_or_handle)
    if any(r.knockouts for r in runs):
        require_mask_honouring(model)
    batch_size = batch_size or batch_size_of(model)
    logits: list[list[torch.Tensor]] = [[] for _ in runs]
    stores: list[dict] = [{} for _ in runs]
    for start in range(0, len(input_ids), batch_size):
        rows = slice(start, start + batch_size)
        ids = input_ids[rows]
        common_rows = [p.rows(rows) for p in common]
        prefix = capture_prefix(model, ids, common_rows) if fast else None
        for i, r in enumerate(runs):
            patches = [p.rows(rows) for p in r.patches]
            out = run(
                model,
                ids,
                patches if fast else common_rows + patches,
                None if r.read is None else r.read.rows(rows),
                [k.rows(rows) for k in r.knockouts],
                batch_size=len(ids),
                prefix=prefix,
            )
            logits[i].append(out.last_logits if score is None else score(out.last_logits, rows))
            for layer, values in out.reads.items():
                stores[i].setdefault(layer, []).append(values)
        del prefix
    kept = [torch.cat(l) if l else torch.empty(0) for l in logits]
    return [
        RunOutput(k, {layer: torch.cat(v) for layer, v in s.items()})
        if score is None
        else RunOutput(torch.empty(0), {layer: torch.cat(v) for layer, v in s.items()}, k)
        for k, s in zip(kept, stores)
    ]


def run(
    model_or_handle,
    input_ids: torch.Tensor,
    patches: Sequence[HeadPatch] = (),
    read: Read | None = None,
    knockouts: Sequence[Knockout] = (),
    batch_size: int | None = None,
    grad: bool = False,
    prefix: Prefix | Sequence[Prefix] | None = None,
    logits: bool = True,
) -> RunOutput:
    """Forward ``input_ids`` in batches with ``patches`` and ``knockouts`` applied; last-position logits and
    the requested reads. With ``grad=True`` (DCM) the logits keep their graph and stay on the model's device.

    With ``prefix`` (from :func:`capture_prefix` on the same ``input_ids``, one batch; on the host or the model's
    device; with or without ``grad``) only the layers and
    positions the interventions can change are recomputed: the same numbers to float tolerance, for a
    fraction of the work when patches sit late in the prompt or deep in the model. A prefix captured under
    ``common`` patches applies them too: ``patches`` add to them.

    ``logits=False`` (a run for its ``read`` alone, from the full prompts): the forward stops once the deepest
    layer read has run, and ``last_logits`` comes back empty (a source run read at layer 0 of 32 costs 1/32 of one).
    """
    model = causal_lm(model_or_handle)
    if knockouts:
        require_mask_honouring(model)
    if prefix is not None and not isinstance(prefix, Prefix):  # one prefix per batch (capture_prefixes)
        outs, start = [], 0
        for one in prefix:
            rows = slice(start, start + len(one.input_ids))
            outs.append(
                run(
                    model,
                    input_ids[rows],
                    [p.rows(rows) for p in patches],
                    None if read is None else read.rows(rows),
                    [k.rows(rows) for k in knockouts],
                    grad=grad,
                    prefix=one,
                )
            )
            start = rows.stop
        if start != len(input_ids):
            raise ValueError("the prefixes cover other prompts than input_ids")
        return RunOutput(
            torch.cat([o.last_logits for o in outs]),
            {layer: torch.cat([o.reads[layer] for o in outs]) for layer in outs[0].reads} if outs else {},
        )
    if prefix is not None:
        if not torch.equal(prefix.input_ids.cpu(), input_ids.cpu()):
            raise ValueError("a prefix serves the exact input_ids it was captured on")
        # kept on the host between uses (DCM's validation prompts), or captured elsewhere: each layer's part goes to
        # that layer's device
        prefix = prefix.placed(model)
        return run_from_prefix(model, prefix, patches, read, knockouts, grad)
    device = input_device(model)
    batch_size = batch_size or batch_size_of(model)
    stop = not logits and read is not None
    kept, store = [], {}
    for start in range(0, len(input_ids), batch_size):
        rows = slice(start, start + batch_size)
        with (
            torch.set_grad_enabled(grad),
            hooked(
                model,
                [p.rows(rows) for p in patches],
                None if read is None else read.rows(rows),
                store,
                [k.rows(rows) for k in knockouts],
                stop_after_reads=stop,
            ),
        ):
            try:
                out = model(input_ids=input_ids[rows].to(device), logits_to_keep=1).logits[:, -1]
            except ReadsDone:
                continue
        kept.append(out.float() if grad else out.float().cpu())
    reads = {layer: torch.cat(chunks) for layer, chunks in store.items()}
    return RunOutput(torch.cat(kept) if kept else torch.empty(0), reads)
