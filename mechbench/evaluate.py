"""Plain forward passes over a dataset: next-token logits at the last position and top-1 accuracy.

Interventions (patching, ablation) run through the intervention engine; this module is the un-intervened
model, which every claim's "full model" number comes from.
"""

from __future__ import annotations

import torch

from mechbench.data.dataset import EntityTrackingDataset


def _model(model_or_handle) -> torch.nn.Module:
    return getattr(model_or_handle, "model", model_or_handle) if not isinstance(model_or_handle, torch.nn.Module) else model_or_handle


@torch.no_grad()
def last_logits(model_or_handle, input_ids: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
    """Logits of the next token after the last position, shape [N, vocab], float32 on the CPU."""
    model = _model(model_or_handle)
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(input_ids), batch_size):
        batch = input_ids[start : start + batch_size].to(device)
        logits = model(input_ids=batch, logits_to_keep=1).logits[:, -1]
        out.append(logits.float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def top1_correct(logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """Bool [N]: the argmax token is the target (objects are single tokens, so this is exact match)."""
    return logits.argmax(dim=-1) == target_ids.to(logits.device)


def accuracy_on(model_or_handle, dataset: EntityTrackingDataset, batch_size: int = 50) -> float:
    """Top-1 accuracy of the answer token at the last position."""
    correct = top1_correct(last_logits(model_or_handle, dataset.input_ids, batch_size), dataset.answer_ids)
    return correct.float().mean().item()
