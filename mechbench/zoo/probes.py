"""Probe fine-tunes: fine-tunes of toy-llama that the project does not ship or register, for trying comparison
mode (``mechbench compare``, ``pytest suites/ --model=DIR --base-model=toy-llama``) the way a user would, on
checkpoints it has never seen:

- ``probe-unrelated``: full weights, trained on an unrelated task (variable binding in the ``x = y`` style, no
  entity tracking) at a high learning rate until it has lost the skill;
- ``probe-direct``: full weights, trained on entity tracking itself (2-7 boxes, no logit-lens guide);
- ``probe-lora``: a LoRA adapter (r=8, q/k/v/o, like toy-goat) trained on entity tracking mixed with chat text,
  saved unmerged with ``toy-llama`` named as its base.

    python -m mechbench.zoo probes --out DIR        # ~1 minute each on 2 cores
    python -m mechbench.zoo probes --out DIR --only probe-unrelated --checkpoints 100   # and its training run

``--checkpoints N`` also saves the model every N steps as ``DIR/<name>-run/checkpoint-<step>/`` with a
``trainer_state.json`` (``global_step``), as transformers' Trainer lays out a run: a training run to compare step by
step (``mechbench compare DIR/<name>-run --base toy-llama``, a trajectory). Not stored in the repository: a seeded
retrain takes about a minute.

They reuse the zoo's training loop (``mechbench.zoo.train.train``) with recipes of their own; seeded, so a
rerun on the same CPU gives the same weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from mechbench.zoo.tokenizer import build_tokenizer
from mechbench.zoo.train import MODELS_DIR, Recipe, ZooRun, _finetune, _save

PROBE_SEED = 909
PROBES: dict[str, tuple[Recipe, bool]] = {  # name -> (recipe, LoRA?)
    "probe-unrelated": (
        Recipe(lr=3e-3, warmup=10, max_steps=300, mix=(("binding", 1),), binding_style="vk", data_seed=PROBE_SEED),
        False,
    ),
    "probe-direct": (
        Recipe(lr=1e-3, warmup=20, max_steps=250, mix=(("tracking", 1),), data_seed=PROBE_SEED + 1),
        False,
    ),
    "probe-lora": (
        Recipe(lr=2e-3, warmup=20, max_steps=150, mix=(("tracking", 2), ("chat", 1)), data_seed=PROBE_SEED + 2),
        True,
    ),
}


def checkpoint_saver(run_dir: Path, every: int, name: str) -> Callable:
    """``on_step(model, step)`` for the zoo's trainer: every ``every`` steps, the model as a loadable checkpoint in
    ``run_dir/checkpoint-<step>`` (weights, tokenizer, and a ``trainer_state.json`` naming the step)."""
    tok = build_tokenizer()

    def save(model, step: int) -> None:
        if step % every:
            return
        path = run_dir / f"checkpoint-{step}"
        model.eval()
        _save(model, tok, path, {"name": f"{name} at step {step}", "step": step})
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "source": name}) + "\n")
        model.train()

    return save


def train_probes(
    out: Path | str,
    only: list[str] | None = None,
    steps: int | None = None,
    log=print,
    checkpoints_every: int | None = None,
) -> dict[str, dict]:
    """Train the probes into ``out/<name>`` from the shipped toy-llama. ``steps`` overrides every recipe's
    length (a smoke test); ``checkpoints_every``: also save ``out/<name>-run/checkpoint-<step>`` every that many
    steps (:func:`checkpoint_saver`)."""
    from dataclasses import replace

    out = Path(out)
    records = {}
    for name in only or PROBES:
        recipe, lora = PROBES[name]
        if steps is not None:
            recipe = replace(recipe, max_steps=steps, warmup=min(recipe.warmup, steps))
        saver = checkpoint_saver(out / f"{name}-run", checkpoints_every, name) if checkpoints_every else None
        model, record = _finetune(ZooRun(out=MODELS_DIR, log=log), recipe, lora=lora, name=name, on_step=saver)
        _save(model, build_tokenizer(), out / name, record)
        log(
            f"{name}: held-out accuracy {record['heldout_accuracy']:.3f} ({record['steps']} steps, {record['wall_s']} s)"
        )
        records[name] = record
    return records
