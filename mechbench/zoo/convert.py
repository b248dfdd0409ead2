"""``python -m mechbench.zoo.convert SRC OUT --family qwen2|mistral`` rewrites a Llama-architecture model
directory as a model of another family that computes exactly the same function.

The point is a "new base" mechbench has never seen whose every number has a known right answer: the source's.
Converting the toy zoo's ``toy-llama`` to Qwen2 gives a Qwen2 model (``model_type`` qwen2, ``Qwen2ForCausalLM``,
the Qwen2 code path of transformers and of mechbench's loader, tokenizer choice included) whose logits, accuracy
and circuits are toy-llama's.

What makes the functions equal:

- **Qwen2**: the same modules as Llama under the same names, except that q/k/v projections carry a bias: zero
  biases are added (a Llama with ``attention_bias`` keeps its own). No sliding window (``use_sliding_window``
  false: full attention in every layer), the same rope parameters, RMSNorm epsilon, head width and
  ``tie_word_embeddings`` as the source.
- **Mistral**: the same modules and names, no biases (a source with ``attention_bias`` is refused), and
  ``sliding_window`` None (full attention).

A Llama with ``mlp_bias`` has no counterpart in either family and is refused. A LoRA adapter directory (toy-goat)
is merged into its base first (peft's ``merge_and_unload``), so the converted model is the fine-tune as one set
of weights (equal to the unmerged one to float rounding, not bit for bit). The tokenizer files are copied as
they are; weights are saved as one ``model.safetensors``; ``conversion.json`` records the source.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from mechbench.errors import MechbenchError

FAMILIES = ("qwen2", "mistral")

#: Config fields that mean the same in Llama, Qwen2 and Mistral and are carried over as they are.
SHARED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "use_cache",
    "tie_word_embeddings",
    "rope_parameters",
    "rope_theta",  # configs saved before transformers 5 (rope_parameters then)
    "rope_scaling",
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)

#: Files copied beside the weights: the tokenizer's, and the generation defaults.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)

_CLASSES = {"qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM")}
_QKV = ("q_proj", "k_proj", "v_proj")


class ConversionError(MechbenchError):
    """A source directory that cannot be rewritten as the asked family."""


def _source_state(src: Path) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """The source's config.json dict, its tensors by name, and the directory its tokenizer comes from."""
    from safetensors.torch import load_file

    adapter_config = src / "adapter_config.json"
    if adapter_config.is_file() and not (src / "config.json").is_file():
        return _merged_adapter(src, json.loads(adapter_config.read_text()))
    if not (src / "config.json").is_file():
        raise ConversionError(f"{src} has no config.json: point at a model directory (config.json + safetensors)")
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise ConversionError(
            f"{src} holds no safetensors weights; convert pickled ones to safetensors first (mechbench loads "
            f"safetensors only by default)"
        )
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return json.loads((src / "config.json").read_text()), state, src


def _merged_adapter(src: Path, adapter_config: dict) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """A peft LoRA adapter directory merged into the base its config names (a registered name or a directory)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mechbench.models.registry import resolve

    base_ref = adapter_config.get("base_model_name_or_path")
    if not base_ref:
        raise ConversionError(f"the adapter {src} does not name its base (base_model_name_or_path)")
    base_dir = Path(resolve(base_ref).weights)
    if not (base_dir / "config.json").is_file():
        raise ConversionError(f"the base of the adapter {src}, {base_ref!r}, is not a local directory ({base_dir})")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, use_safetensors=True)
    merged = PeftModel.from_pretrained(base, str(src)).merge_and_unload().eval()
    state = {k: v.detach().clone() for k, v in merged.state_dict().items()}
    if merged.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    tokenizer_dir = src if (src / "tokenizer_config.json").is_file() else base_dir
    return json.loads((base_dir / "config.json").read_text()), state, tokenizer_dir


def target_config(source: dict, family: str) -> dict:
    """The config.json fields of the ``family`` model that computes what the Llama ``source`` config does."""
    if source.get("model_type") != "llama":
        raise ConversionError(
            f"the source is a {source.get('model_type')!r} model; convert a Llama-architecture directory "
            f"(model_type llama)"
        )
    if source.get("mlp_bias"):
        raise ConversionError(f"the source's MLP has biases (mlp_bias), which {family} models do not have")
    if family == "mistral" and source.get("attention_bias"):
        raise ConversionError("the source's attention has biases (attention_bias), which Mistral models do not have")
    if source.get("pretraining_tp", 1) not in (1, None):
        raise ConversionError("the source sets pretraining_tp > 1; save it with pretraining_tp 1 first")
    fields = {k: source[k] for k in SHARED_FIELDS if k in source}
    if family == "qwen2":
        fields |= {
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": source["num_hidden_layers"],
        }
    else:
        fields |= {"sliding_window": None}
    return fields


def target_state(state: dict[str, torch.Tensor], config: dict, family: str) -> dict[str, torch.Tensor]:
    """The source's tensors under the family's names (the same ones), with Qwen2's q/k/v biases (zero where the
    source has none); recomputed rotary buffers left out."""
    out = {k: v.contiguous() for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if family == "qwen2":
        for layer in range(config["num_hidden_layers"]):
            for proj in _QKV:
                weight = out[f"model.layers.{layer}.self_attn.{proj}.weight"]
                out.setdefault(
                    f"model.layers.{layer}.self_attn.{proj}.bias",
                    torch.zeros(weight.shape[0], dtype=weight.dtype),
                )
    return out


def _check_covers(model_class, config, state: dict[str, torch.Tensor]) -> None:
    """The converted tensors are exactly the target architecture's, by name and shape (checked on a model
    built without memory, on the meta device)."""
    with torch.device("meta"):
        model = model_class(config)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        want.pop("lm_head.weight", None)
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    shapes = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or extra or shapes:
        raise ConversionError(
            f"the converted weights do not fit {model_class.__name__}: missing {missing[:4]}, unexpected "
            f"{extra[:4]}, of another shape {shapes[:4]}"
        )


def convert(src_dir: str | Path, out_dir: str | Path, family: str) -> Path:
    """Write the Llama model at ``src_dir`` to ``out_dir`` as a ``family`` (qwen2 or mistral) model with the same
    function; returns ``out_dir``."""
    import transformers
    from safetensors.torch import save_file

    if family not in FAMILIES:
        raise ConversionError(f"family {family!r}: expected one of {', '.join(FAMILIES)}")
    src, out = Path(src_dir), Path(out_dir)
    if not src.is_dir():
        raise ConversionError(f"{src} is not a directory")
    if out.resolve() == src.resolve():
        raise ConversionError("the output directory is the source: write the conversion elsewhere")
    source, state, tokenizer_dir = _source_state(src)
    config_class, model_class = (getattr(transformers, name) for name in _CLASSES[family])
    fields = target_config(source, family)
    config = config_class(**fields)
    config.architectures = [model_class.__name__]
    if "dtype" in source:
        config.dtype = source["dtype"]
    tensors = target_state(state, fields, family)
    _check_covers(model_class, config, tensors)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        for where in (tokenizer_dir, src):
            if (where / name).is_file():
                shutil.copyfile(where / name, out / name)
                break
    (out / "conversion.json").write_text(
        json.dumps({"source": str(src), "from": "llama", "to": family, "tool": "mechbench.zoo.convert"}, indent=2)
        + "\n"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mechbench.zoo.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="a Llama model directory (config.json + safetensors) or a LoRA adapter's")
    p.add_argument("out", type=Path, help="where the converted model goes")
    p.add_argument("--family", choices=FAMILIES, required=True)
    args = p.parse_args(argv)
    try:
        out = convert(args.src, args.out, args.family)
    except MechbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote a {args.family} model with the function of {args.src} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
