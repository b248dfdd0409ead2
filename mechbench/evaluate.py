"""The un-intervened model over a dataset: next-token logits at the last position and top-1 accuracy.

Every forward pass goes through the intervention engine (here with no interventions), so the "full model"
number of each claim and its patched counterparts are computed by the same code.
"""

from __future__ import annotations

import torch

from mechbench.data.dataset import EntityTrackingDataset
from mechbench.intervene import run


def last_logits(model_or_handle, input_ids: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Logits of the next token after the last position, shape [N, vocab], float32 on the CPU."""
    return run(model_or_handle, input_ids, batch_size=batch_size).last_logits


def top1_correct(logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """Bool [N]: the argmax token is the target (objects are single tokens, so this is exact match)."""
    return logits.argmax(dim=-1) == target_ids.to(logits.device)


def correct_on(model_or_handle, dataset: EntityTrackingDataset, batch_size: int | None = None) -> torch.Tensor:
    """Bool [N]: the model's top-1 next token is the answer, per example (what intervals resample)."""
    return top1_correct(last_logits(model_or_handle, dataset.input_ids, batch_size), dataset.answer_ids).cpu()


def accuracy_on(model_or_handle, dataset: EntityTrackingDataset, batch_size: int | None = None) -> float:
    """Top-1 accuracy of the answer token at the last position."""
    return correct_on(model_or_handle, dataset, batch_size).float().mean().item()
