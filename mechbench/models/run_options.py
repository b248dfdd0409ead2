"""What the loader or a session sets on a loaded model and the engine reads each time it runs it: the batch size
(prompts per forward) and ``paper_compat_o_proj``.

The batch size is kept per model, not per process: the memory plan (:func:`mechbench.plan.resolve_batch_size`)
chooses it for a model on a device in a dtype (a 7B model in float32 on one GPU fits other batches than a toy on
the CPU, and one session may hold both, or a fine-tune and its base at once), so a process-wide number would let
the last model loaded, or the last session run in the process, decide for every other. A model nobody set one
for runs :data:`DEFAULT_BATCH_SIZE` prompts per forward; a caller's own ``batch_size=`` argument still wins.
"""

from __future__ import annotations

import weakref

from mechbench.models.architectures import causal_lm

#: Prompts per forward for a model whose loader set none (and a bare module, say a test's).
DEFAULT_BATCH_SIZE = 50

#: Attribute set on a model loaded with ``paper_compat_o_proj=True``: hooked runs use only the base o_proj
#: weight, as the paper's hooks did for Goat (they recomputed o_proj from the base weight, dropping the LoRA).
PAPER_O_PROJ = "mechbench_paper_compat_o_proj"

# keyed by the causal-LM module (what the engine runs), weakly: a model let go takes its setting with it
_BATCH_SIZES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def set_batch_size(model_or_handle, n: int) -> None:
    """Run ``model_or_handle`` (a handle, a PeftModel or the module) ``n`` prompts per forward when a caller names
    no batch size: set where a model is loaded for a session, from ``--batch-size`` or the memory plan's choice."""
    if isinstance(n, bool) or int(n) < 1:
        raise ValueError(f"batch size must be at least 1, got {n}")
    _BATCH_SIZES[causal_lm(model_or_handle)] = int(n)


def batch_size_of(model_or_handle) -> int:
    """The prompts per forward set for this model (:func:`set_batch_size`), else :data:`DEFAULT_BATCH_SIZE`."""
    return _BATCH_SIZES.get(causal_lm(model_or_handle), DEFAULT_BATCH_SIZE)


def paper_compat_o_proj(model) -> bool:
    """Whether the loader was asked for ``paper_compat_o_proj`` on this (causal-LM) module."""
    return bool(getattr(model, PAPER_O_PROJ, False))
