"""Train the toy zoo from scratch: ``python -m mechbench.zoo train [--only NAME] [--out DIR]``.

The zoo mirrors the paper's four models on a tiny Llama (RoPE, RMSNorm, SwiGLU):

- ``toy-llama`` (Llama-7B): trained on entity tracking (2-7 boxes) mixed with chat-like text, and stopped at
  the first validation evaluation whose 7-box accuracy is in a moderate band, so fine-tuning has room to help;
- ``toy-vicuna`` (Vicuna-7B): the base further trained on chat-like text only;
- ``toy-goat`` (Goat-7B): a LoRA adapter (q/k/v/o projections) on the base, trained on a structured
  variable-binding task mixed with chat-like text; saved unmerged as a peft adapter;
- ``toy-float`` (FLoat-7B): the same fine-tune with full weights.

Each fine-tune also runs a control (the same recipe with the structured batches replaced by chat text); its
accuracy goes into the model card. Everything is seeded and runs with ``torch.set_num_threads(2)``.

Bit-for-bit reproduction needs more than seeds: torch, MKL and oneDNN pick their kernels by the CPU's
instruction set, and a float sum in another order drifts; a base trained on one CPU left the band on another
after about 250 identical-looking steps. ``python -m mechbench.zoo train`` therefore re-runs itself with
:data:`PINNED_CPU_ENV`, which caps every library at AVX2, and each ``training.json`` records the CPU it ran on.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mechbench.zoo import MODELS_DIR, ZOO
from mechbench.zoo import data as zdata
from mechbench.zoo.tokenizer import build_tokenizer

NUM_THREADS = 2

# Seeds: model init, and one RNG stream per data source. The held-out evaluation (seed 0) and the
# validation set used by the stopping rule (VAL_SEED) are disjoint from every training stream.
INIT_SEED = 1234
BASE_DATA_SEED = 101
VICUNA_DATA_SEED = 202
FT_DATA_SEED = 303
VAL_SEED = 7777
VAL_EXAMPLES = 400

#: Environment under which the zoo is trained: every library capped at AVX2 kernels (set before torch loads;
#: ``python -m mechbench.zoo train`` re-executes itself with it), so any x86-64 CPU with AVX2 runs the same
#: float operations in the same order. On other CPUs (no AVX2, ARM) a retrain is close but not bit-identical.
PINNED_CPU_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility: the AVX2 code path on every CPU
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OMP_NUM_THREADS": str(NUM_THREADS),
    "MKL_NUM_THREADS": str(NUM_THREADS),
}


def unpinned_cpu_settings() -> dict[str, str | None]:
    """Settings of :data:`PINNED_CPU_ENV` that this process does not have (empty off x86-64: nothing to pin)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    return {k: os.environ.get(k) for k, v in PINNED_CPU_ENV.items() if os.environ.get(k) != v}


def cpu_record() -> dict:
    """What decides the float results of a run besides the code: CPU, kernels, threads, library versions."""
    model_name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "machine": platform.machine(),
        "cpu": model_name,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "pinned": not unpinned_cpu_settings(),
        "env": {k: os.environ.get(k) for k in PINNED_CPU_ENV},
        "torch": torch.__version__,
        "num_threads": torch.get_num_threads(),
    }


@dataclass(frozen=True)
class Arch:
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    intermediate_size: int = 384
    max_position_embeddings: int = 256

    def config(self, tok):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=len(tok),
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_attention_heads,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            attention_dropout=0.0,
            torch_dtype="float32",
        )


@dataclass
class Recipe:
    """One training run. ``mix`` lists (source, weight); each step draws one source for the whole batch."""

    lr: float = 2e-3
    warmup: int = 100
    max_steps: int = 3000
    batch_size: int = 64
    mix: tuple[tuple[str, int], ...] = (("tracking", 1),)
    data_seed: int = BASE_DATA_SEED
    # stopping rule (base only): stop at the first validation accuracy in [band_lo, band_hi]
    band: tuple[float, float] | None = None
    binding_style: str = "spaced-objects"
    # logit-lens guide on tracking batches (``zdata.tracking_guides``): the residual stream after this many
    # layers is trained to hold each context label's object and each query's label; None = no guide
    guide_layer: int | None = None
    guide_weight: float = 1.0


BASE = Recipe(lr=2e-3, warmup=100, max_steps=4000, mix=(("tracking", 4), ("chat", 1)), band=(0.64, 0.71), guide_layer=2)
VICUNA = Recipe(lr=3e-4, warmup=20, max_steps=150, mix=(("chat", 1),), data_seed=VICUNA_DATA_SEED)
GOAT = Recipe(lr=2e-3, warmup=20, max_steps=150, mix=(("binding", 2), ("chat", 1)), data_seed=FT_DATA_SEED)
FLOAT = Recipe(lr=3e-4, warmup=20, max_steps=150, mix=(("binding", 2), ("chat", 1)), data_seed=FT_DATA_SEED)
LORA = dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], lora_dropout=0.0)


def control_of(recipe: Recipe) -> Recipe:
    """The same recipe with the structured task removed (its batches become chat text)."""
    from dataclasses import replace

    return replace(recipe, mix=tuple(("chat", w) if s == "binding" else (s, w) for s, w in recipe.mix))


# ------------------------------------------------------------------------------------------------ helpers
def setup_torch() -> None:
    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)


def new_model(tok, arch: Arch = Arch(), seed: int = INIT_SEED):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(arch.config(tok))
    return model.float()


@torch.no_grad()
def last_token_accuracy(model, input_ids: torch.Tensor, answer_ids: torch.Tensor, batch_size: int = 200) -> float:
    from mechbench.evaluate import last_logits, top1_correct

    was_training = model.training
    model.eval()
    correct = top1_correct(last_logits(model, input_ids, batch_size), answer_ids)
    model.train(was_training)
    return correct.float().mean().item()


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _schedule(recipe: Recipe) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / recipe.warmup)


def _sources(tok, recipe: Recipe):
    return {
        "tracking": lambda rng: zdata.tracking_batch(tok, rng, recipe.batch_size),
        "chat": lambda rng: zdata.chat_batch(tok, rng, recipe.batch_size),
        "binding": lambda rng: zdata.binding_batch(tok, rng, recipe.batch_size, recipe.binding_style),
    }


def _next_eval(step: int, acc: float | None) -> int:
    """Steps until the next validation evaluation: dense near the band, sparse far below it."""
    if acc is None or acc < 0.2:
        return 50
    if acc < 0.45:
        return 10
    return 2


def _loss(model, tok, recipe: Recipe, source: str, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token loss on ``labels``, plus the recipe's logit-lens guide on tracking batches."""
    if recipe.guide_layer is None or source != "tracking":
        return model(input_ids=ids, labels=labels).loss
    out = model(input_ids=ids, labels=labels, output_hidden_states=True)
    rows, positions, targets = zdata.tracking_guides(tok, ids)
    inner = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    hidden = inner.norm(out.hidden_states[recipe.guide_layer][rows, positions])
    guide = torch.nn.functional.cross_entropy(model.get_output_embeddings()(hidden), targets)
    return out.loss + recipe.guide_weight * guide


def train(
    model,
    tok,
    recipe: Recipe,
    val=None,
    log: Callable[[str], None] = print,
    params=None,
    on_step: Callable[[int], None] | None = None,
) -> dict:
    """Train ``model`` in place by ``recipe``; returns a record (steps, losses, validation curve, time).

    With ``recipe.band`` the run stops at the first validation accuracy inside the band (deterministic: the
    evaluation steps depend only on the accuracies seen so far); without it, it runs ``max_steps``. ``on_step(step)``
    is called after every optimizer step (a checkpoint saver; it must leave the model in training mode).
    """
    setup_torch()
    rng = random.Random(recipe.data_seed)
    sources = _sources(tok, recipe)
    names = [s for s, w in recipe.mix for _ in range(w)]
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    opt = torch.optim.AdamW(params, lr=recipe.lr, betas=(0.9, 0.98), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(recipe))
    model.train()
    t0 = time.perf_counter()
    losses, curve, tokens = [], [], 0
    stopped_in_band = False
    acc = None
    next_eval = _next_eval(0, None) if recipe.band else None
    step = 0
    for step in range(1, recipe.max_steps + 1):
        source = names[(step - 1) % len(names)]
        ids, labels = sources[source](rng)
        loss = _loss(model, tok, recipe, source, ids, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(round(loss.item(), 5))
        tokens += ids.numel()
        if on_step is not None:
            on_step(step)
        if recipe.band and step == next_eval:
            acc = last_token_accuracy(model, *val)
            curve.append((step, acc))
            log(f"step {step} loss {loss.item():.4f} val_acc {acc:.3f} ({time.perf_counter() - t0:.0f}s)")
            if recipe.band[0] <= acc <= recipe.band[1]:
                stopped_in_band = True
                break
            if acc > recipe.band[1]:
                raise RuntimeError(f"validation accuracy jumped past the band {recipe.band} at step {step}")
            next_eval = step + _next_eval(step, acc)
        elif step % 50 == 0:
            log(f"step {step} [{source}] loss {loss.item():.4f} ({time.perf_counter() - t0:.0f}s)")
    if recipe.band and not stopped_in_band:
        raise RuntimeError(f"validation accuracy never entered the band {recipe.band} in {recipe.max_steps} steps")
    model.eval()
    return {
        "steps": step,
        "tokens": tokens,
        "wall_s": round(time.perf_counter() - t0, 1),
        "final_loss": losses[-1],
        "loss_first_last_50": [sum(losses[:50]) / min(50, len(losses)), sum(losses[-50:]) / min(50, len(losses))],
        "val_curve": curve,
        "recipe": asdict(recipe),
    }


# ------------------------------------------------------------------------------------------------ the zoo
@dataclass
class ZooRun:
    out: Path = MODELS_DIR
    arch: Arch = field(default_factory=Arch)
    log: Callable[[str], None] = print


def _describe(model, tok, arch: Arch) -> dict:
    return {
        "arch": asdict(arch),
        "vocab_size": len(tok),
        "val_examples": VAL_EXAMPLES,
        "val_seed": VAL_SEED,
        "init_seed": INIT_SEED,
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "num_threads": NUM_THREADS,
        "cpu": cpu_record(),
    }


def _heldout(model, tok) -> float:
    """Held-out accuracy for the record only (no training decision uses it)."""
    from mechbench.zoo.cards import heldout_accuracy

    return heldout_accuracy(model, tok)


def _validation(tok):
    return zdata.validation_prompts(tok, VAL_EXAMPLES, VAL_SEED)


def _save(model, tok, path: Path, record: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config"):  # name the base by its zoo name, not by a path on the training machine
        for cfg in model.peft_config.values():
            cfg.base_model_name_or_path = "toy-llama"
    model.save_pretrained(str(path), safe_serialization=True)
    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():  # peft writes target_modules in set order, which PYTHONHASHSEED decides
        cfg = json.loads(adapter_config.read_text())
        cfg["target_modules"] = sorted(cfg["target_modules"])
        adapter_config.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tok.save_pretrained(str(path))
    (path / "training.json").write_text(json.dumps(record, indent=1) + "\n")


def _load_base(path: Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def train_base(run: ZooRun) -> dict:
    tok = build_tokenizer()
    val = _validation(tok)
    model = new_model(tok, run.arch)
    rec = train(model, tok, BASE, val, run.log)
    rec.update(name="toy-llama", val_accuracy=last_token_accuracy(model, *val), **_describe(model, tok, run.arch))
    rec["heldout_accuracy"] = _heldout(model, tok)
    rec["digest"] = weights_digest(model)
    _save(model, tok, run.out / "toy-llama", rec)
    return rec


def _finetune(
    run: ZooRun, recipe: Recipe, lora: bool, name: str | None, on_step: Callable | None = None
) -> tuple[object, dict]:
    tok = build_tokenizer()
    val = _validation(tok)
    model = _load_base(run.out / "toy-llama")
    torch.manual_seed(INIT_SEED + 1)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
    rec = train(
        model, tok, recipe, val, run.log, on_step=None if on_step is None else lambda step: on_step(model, step)
    )
    rec.update(
        name=name,
        lora=LORA if lora else None,
        val_accuracy=last_token_accuracy(model, *val),
        **_describe(model, tok, run.arch),
    )
    rec["heldout_accuracy"] = _heldout(model, tok)
    rec["parameters"] = sum(p.numel() for p in model.parameters())
    if lora:
        rec["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rec["digest"] = weights_digest(model)
    return model, rec


def train_vicuna(run: ZooRun) -> dict:
    model, rec = _finetune(run, VICUNA, lora=False, name="toy-vicuna")
    _save(model, build_tokenizer(), run.out / "toy-vicuna", rec)
    return rec


def _train_structured(run: ZooRun, name: str, recipe: Recipe, lora: bool) -> dict:
    _, control = _finetune(run, control_of(recipe), lora=lora, name=f"{name} control")
    run.log(f"{name} control: val_acc {control['val_accuracy']:.3f} heldout {control['heldout_accuracy']:.3f}")
    model, rec = _finetune(run, recipe, lora=lora, name=name)
    rec["control"] = {
        k: control[k] for k in ("val_accuracy", "heldout_accuracy", "wall_s", "steps", "recipe", "digest")
    }
    _save(model, build_tokenizer(), run.out / name, rec)
    return rec


def train_goat(run: ZooRun) -> dict:
    return _train_structured(run, "toy-goat", GOAT, lora=True)


def train_float(run: ZooRun) -> dict:
    return _train_structured(run, "toy-float", FLOAT, lora=False)


TRAINERS = {"toy-llama": train_base, "toy-vicuna": train_vicuna, "toy-goat": train_goat, "toy-float": train_float}


def _print(msg: str) -> None:
    print(msg, flush=True)


def train_zoo(out: Path | str = MODELS_DIR, only: str | None = None, log=_print) -> dict[str, dict]:
    setup_torch()
    if unpinned_cpu_settings():
        log(
            f"warning: CPU kernels not pinned ({unpinned_cpu_settings()}); the weights may differ from the shipped "
            f"ones in the last bits. `python -m mechbench.zoo train` pins them."
        )
    run = ZooRun(out=Path(out), log=log)
    names = [only] if only else list(ZOO)
    records = {}
    for name in names:
        t0 = time.perf_counter()
        log(f"== {name}")
        records[name] = TRAINERS[name](run)
        log(
            f"== {name} done in {time.perf_counter() - t0:.0f}s: val_acc {records[name]['val_accuracy']:.3f} "
            f"heldout {records[name]['heldout_accuracy']:.3f}"
        )
    return records


# ------------------------------------------------------------------------------------------------ smoke
SMOKE_ARCH = Arch(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=128
)


def smoke_train(steps: int = 8, seed: int = INIT_SEED) -> dict:
    """A few steps on a tiny config (for CI): returns losses and the weights' digest."""
    setup_torch()
    tok = build_tokenizer()
    model = new_model(tok, SMOKE_ARCH, seed=seed)
    before = weights_digest(model)
    recipe = Recipe(lr=3e-3, warmup=2, max_steps=steps, batch_size=8, mix=(("tracking", 2), ("chat", 1)))
    rng = random.Random(BASE_DATA_SEED)
    ids, labels = zdata.tracking_batch(tok, random.Random(99), 8, 3)
    with torch.no_grad():
        loss0 = model(input_ids=ids, labels=labels).loss.item()
    rec = train(model, tok, recipe, log=lambda s: None)
    with torch.no_grad():
        loss1 = model(input_ids=ids, labels=labels).loss.item()
    del rng
    return {
        "loss_before": loss0,
        "loss_after": loss1,
        "digest_before": before,
        "digest": weights_digest(model),
        "steps": rec["steps"],
    }
