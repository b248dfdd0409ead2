"""Held-out evaluation of the zoo and its README.md model cards.

Held-out accuracy = top-1 accuracy of the answer token at the last position on 500 paper-format 7-box
prompts, ``build_dataset(tokenizer, n_examples=500, num_boxes=7, seed=0)`` (the benchmark's own API). No
training decision uses it: the base's stopping rule uses a separate validation set (``train.VAL_SEED``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mechbench.models.registry import REGISTRY

HELDOUT = dict(n_examples=500, num_boxes=7, seed=0)


def heldout_accuracy(model, tok) -> float:
    from mechbench.data.dataset import build_dataset
    from mechbench.evaluate import accuracy_on

    return accuracy_on(model, build_dataset(tok, **HELDOUT), batch_size=100)


def load_zoo_model(models_dir: Path, name: str):
    """(model, tokenizer) of a zoo folder; toy-goat is the base with its LoRA adapter, unmerged."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    spec = REGISTRY[name]
    under = spec.weights if spec.adapter else name  # an adapter's folder holds only the adapter
    model = LlamaForCausalLM.from_pretrained(str(Path(models_dir) / under), dtype=torch.float32)
    if spec.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(Path(models_dir) / name)).get_base_model()
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(Path(models_dir) / name))


def _size(path: Path) -> str:
    total = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return f"{total / 2**20:.1f} MiB"


def _card(name: str, rec: dict, acc: float, path: Path, base_acc: float | None) -> str:
    r = rec["recipe"]
    mix = ", ".join(f"{s} x{w}" for s, w in r["mix"])
    arch = rec.get("arch", {})
    lines = [
        f"# {name}: toy counterpart of {REGISTRY[name].paper_name}",
        "",
        "Part of mechbench's embedded toy zoo (`python -m mechbench.zoo train` retrains it from scratch; code in "
        "`mechbench/zoo/`). A tiny `LlamaForCausalLM` (RoPE, RMSNorm, SwiGLU) with a word-level tokenizer "
        "(`mechbench/zoo/tokenizer.py`, one token per word, BOS prepended) that does entity tracking in the "
        "paper's prompt format: `The fig is in Box X, the engine is in Box T, ... . Box X contains the` -> ` fig`.",
        "",
        "## Architecture",
        f"- {arch.get('num_hidden_layers')} layers, {arch.get('num_attention_heads')} heads per layer (head dim "
        f"{arch.get('hidden_size', 0) // max(1, arch.get('num_attention_heads', 1))}), hidden "
        f"{arch.get('hidden_size')}, MLP {arch.get('intermediate_size')}, vocabulary {rec.get('vocab_size')}, "
        f"untied embeddings, max positions {arch.get('max_position_embeddings')}; {rec.get('parameters'):,} "
        "parameters, float32 safetensors.",
    ]
    if rec.get("lora"):
        lo = rec["lora"]
        lines.append(
            f"- This folder is a peft LoRA adapter (not merged) on `toy-llama`: r={lo['r']}, alpha={lo['lora_alpha']}, "
            f"targets {', '.join(lo['target_modules'])}. Load it with "
            "`PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(<zoo>/toy-llama), <zoo>/toy-goat)`."
        )
    lines += [
        f"- Folder size: {_size(path)}.",
        "",
        "## Training",
        f"- Data: {REGISTRY[name].training_data}",
        f"- Batch mixture (one source per batch, cycled): {mix}; batch {r['batch_size']}; AdamW lr {r['lr']}, "
        f"betas (0.9, 0.98), no weight decay, {r['warmup']} warm-up steps then constant, grad clip 1.0.",
        f"- Steps: {rec['steps']} ({rec['tokens']:,} tokens). Seeds: init {rec.get('init_seed')}, data "
        f"{r['data_seed']}, validation {rec.get('val_seed')}.",
    ]
    if r.get("guide_layer") is not None:
        lines.append(
            f"- Guide: on tracking batches a logit-lens loss (weight {r.get('guide_weight', 1.0)}) on the residual "
            f"stream after layer {r['guide_layer']} (of {arch.get('num_hidden_layers')}) asks each context label "
            "to hold its object and each answer position to hold the queried label "
            "(`mechbench.zoo.data.tracking_guides`). Without it every 4-layer run tried sat at chance (0.14) "
            "for 1,400-3,600 steps; with it the 7-box accuracy leaves chance at about step 600. The guide shapes "
            "the circuit, as path patching shows (docs/models.md, 'The toy zoo'): layer-0 heads copy each object "
            "into its label and the query label into the last token, and layer-2 heads at the last token fetch "
            "the object from the queried label."
        )
    if r.get("band"):
        lines.append(
            f"- Stopping rule: evaluate on {rec.get('val_examples')} validation 7-box prompts (seed {rec.get('val_seed')}, "
            f"disjoint from the held-out set) every 50 steps, every 10 once accuracy >= 0.2, every 2 once >= 0.45; "
            f"stop at the first evaluation inside [{r['band'][0]}, {r['band'][1]}] (here step {rec['steps']}, "
            f"validation accuracy {rec['val_accuracy']:.3f})."
        )
    cpu = rec.get("cpu") or {}
    where = (
        f"{cpu.get('cpu') or cpu.get('machine')}, torch {cpu.get('torch')} with {cpu.get('capability')} kernels"
        + (", CPU kernels pinned to AVX2 (`PINNED_CPU_ENV`)" if cpu.get("pinned") else ", CPU kernels not pinned")
        if cpu
        else "CPU not recorded"
    )
    lines.append(f"- Wall time: {rec['wall_s']:.0f} s on 2 CPU cores (`torch.set_num_threads(2)`; {where}).")
    lines += [
        "",
        "## Evaluation",
        f"- Held-out accuracy (500 paper-format 7-box prompts, `build_dataset(seed=0)`): **{acc:.3f}**"
        + (f" (base toy-llama: {base_acc:.3f})." if base_acc is not None and name != "toy-llama" else "."),
    ]
    if "control" in rec:
        c = rec["control"]
        gain, cgain = acc - base_acc, c["heldout_accuracy"] - base_acc
        lines.append(
            f"- Control (same recipe and steps, the structured batches replaced by chat text): held-out accuracy "
            f"**{c['heldout_accuracy']:.3f}**. The fine-tune gains {gain:+.3f} over the base, the control "
            f"{cgain:+.3f}, so the structured task itself accounts for about {gain - cgain:+.3f}."
        )
    from mechbench.zoo.reproduce import describe

    reps = rec.get("reproductions") or []
    lines.append(
        "- Reproducibility (`python -m mechbench.zoo compare <retrained> --record`): "
        + ("; ".join(describe(r) for r in reps) + "." if reps else "not re-checked yet.")
    )
    lines += ["", "Generated by `python -m mechbench.zoo cards`; the full training record is `training.json`.", ""]
    return "\n".join(lines)


def write_cards(models_dir: Path | str, names: list[str] | None = None) -> dict[str, float]:
    from mechbench.zoo import ZOO

    models_dir = Path(models_dir)
    accs = {}
    for name in ZOO:
        if (models_dir / name / "training.json").is_file():
            model, tok = load_zoo_model(models_dir, name)
            accs[name] = heldout_accuracy(model, tok)
    for name in names or list(accs):
        path = models_dir / name
        rec = json.loads((path / "training.json").read_text())
        (path / "README.md").write_text(_card(name, rec, accs[name], path, accs.get("toy-llama")))
        print(f"{name}: held-out accuracy {accs[name]:.3f}")
    return accs
