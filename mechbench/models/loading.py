"""Loading a model into a :class:`ModelHandle`: the HF model, its tokenizer, its shape and fingerprint.

The paper's 7B models and the toy zoo go through this one path. Weights load from safetensors unless the
caller allows pickled checkpoints; ``trust_remote_code`` stays off unless asked for. A LoRA fine-tune (Goat)
is loaded through peft and kept unmerged, as in the paper; the handle's ``model`` is the underlying
``LlamaForCausalLM`` with the LoRA layers injected, so module paths (``model.layers[l].self_attn.o_proj``)
are the same as for a plain model and head-level interventions see the adapter's effect, o_proj included.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from mechbench.data.dataset import BOS_ATTRIBUTE, BOS_CHOICES, DROP_ATTRIBUTE
from mechbench.errors import ModelLoadError, UnsupportedArchitectureError
from mechbench.models.architectures import (  # ModelShape, SUPPORTED_ARCHITECTURES: also read from here
    MASK_HONOURING,
    SUPPORTED_ARCHITECTURES,
    ModelShape,
    family_of,
    geometry,
    sites,
)
from mechbench.models.devices import needs_offload_folder, read_device_map
from mechbench.models.registry import ModelSpec, resolve
from mechbench.models.run_options import PAPER_O_PROJ

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass
class ModelHandle:
    name: str
    spec: ModelSpec
    model: torch.nn.Module  # LlamaForCausalLM (LoRA layers injected in place for an adapter model)
    tokenizer: object
    shape: ModelShape
    fingerprint: dict
    peft_model: object | None = None  # the PeftModel wrapper, kept for saving/merging

    @property
    def device(self) -> torch.device:
        """Where the model's inputs go (under accelerate's device map or offload: its embedding's execution device)."""
        from mechbench.models.devices import input_device

        return input_device(self.model)

    @property
    def layers(self):
        return sites(self.model).layer_list(self.model)

    def __repr__(self) -> str:
        s = self.shape
        return (
            f"ModelHandle({self.name!r}, layers={s.n_layers}, heads={s.n_heads}, kv_heads={s.n_kv_heads}, "
            f"head_dim={s.head_dim}, device={self.device}, weights={self.fingerprint['weights_sha256'][:12]})"
        )


@functools.lru_cache(maxsize=1)
def _hub_reachable() -> bool:
    """Whether downloading can work at all; without it every from_pretrained retries for ~30 s."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


def _how_to_provide(spec: ModelSpec, ref: str) -> str:
    from mechbench.models.registry import REGISTRY

    owner = spec.name
    if spec.adapter and ref == spec.weights and spec.name in REGISTRY:  # the model under the adapter has its own name
        owner = REGISTRY[spec.name].weights
    env = "MECHBENCH_MODEL_" + owner.upper().replace("-", "_").replace("/", "_")
    if spec.kind == "toy":
        return (
            f"The toy zoo ships inside the package (mechbench/zoo/models/); if it is missing, retrain it with "
            f"`python -m mechbench.zoo train`, or point {env} at a copy."
        )
    return (
        f"Provide it by downloading it into the Hugging Face cache on a machine with access "
        f"(`hf download {ref}`; set HF_HOME to share the cache), or point mechbench at a local "
        f"copy: load_model('/path/to/dir') or, for the registered name, {env}=/path/to/dir."
    )


def _pretrained_kwargs(ref: str) -> dict:
    local = Path(ref).is_dir()
    return {"local_files_only": local or not _hub_reachable()}


def _config_hash(config) -> str:
    d = config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash"):
        d.pop(volatile, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


FULL_HASH_MAX_PARAMETERS = 50_000_000


def weights_hash(model: torch.nn.Module, sample: int = 256) -> str:
    """sha256 over every parameter's name, shape and values (adapter parameters included).

    Models up to 50M parameters (the toy zoo) hash every value, so any change shows; larger ones (7B) hash a
    strided sample of ``sample`` values per tensor, cheap on a GPU yet different for any other checkpoint.
    """
    h = hashlib.sha256()
    full = sum(p.numel() for p in model.parameters()) <= FULL_HASH_MAX_PARAMETERS
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        flat = (_offloaded_value(model, name) if p.device.type == "meta" else p).detach().reshape(-1)
        step = 1 if full else max(1, flat.numel() // sample)
        values = (flat if full else flat[::step][:sample]).to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(p.shape)}".encode())
        h.update(values.numpy().tobytes())
    return h.hexdigest()


def _offloaded_value(model: torch.nn.Module, name: str) -> torch.Tensor:
    """The value of parameter ``name`` that a device map offloaded (to the host or disk: the parameter is on
    ``meta``, and the accelerate hook of the module that owns it, or of one above, keeps it in its weights map),
    so that an offloaded model has the fingerprint of the same weights loaded whole."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        hook = getattr(model.get_submodule(".".join(parts[:cut])), "_hf_hook", None)
        for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):  # a SequentialHook, or one
            weights = getattr(h, "weights_map", None)
            if weights is not None and ".".join(parts[cut:]) in weights:
                return weights[".".join(parts[cut:])]
    raise ModelLoadError(f"parameter {name} is on the meta device and no accelerate hook holds its value")


def tokenizer_hash(tokenizer) -> str:
    """sha256 of the tokenizer's vocabulary, special tokens and class: the same weights with another tokenizer
    are another model for every claim (the answer ids change)."""
    vocab = sorted(tokenizer.get_vocab().items())
    special = {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    return hashlib.sha256(json.dumps([type(tokenizer).__name__, vocab, special], default=str).encode()).hexdigest()


def fingerprint(name: str, spec: ModelSpec, model, dtype: torch.dtype) -> dict:
    return {
        "name": name,
        "weights": spec.weights,
        "adapter": spec.adapter,
        "config_sha256": _config_hash(model.config),
        "weights_sha256": weights_hash(model),
        "dtype": str(dtype).removeprefix("torch."),
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }


def check_adapter(adapter: str, config) -> None:
    """A LoRA adapter must fit its base before peft touches it: every layer it adapts must exist and every
    matrix must have the base module's width (peft would report hundreds of size mismatches, or load an adapter
    for a deeper model with its extra layers silently dropped)."""
    weights = Path(adapter) / "adapter_model.safetensors"
    if not weights.is_file():
        return  # a hub adapter or a pickled one: peft's own checks apply
    from safetensors import safe_open

    shape, family = geometry(config), family_of(config)
    dims = family.lora_widths(shape)  # the LoRA module names of the family, with their widths
    lora_key = family.lora_key
    problems, deepest = [], -1
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            m = lora_key.search(key)
            if not m:
                continue
            layer, module, which = int(m.group(1)), m.group(3), m.group(4)
            deepest = max(deepest, layer)
            got = f.get_slice(key).get_shape()
            want_in, want_out = dims.get(module, (None, None))
            if which == "A" and want_in is not None and got[1] != want_in:
                problems.append(f"{module} of layer {layer} takes width {got[1]}, the base's takes {want_in}")
            if which == "B" and want_out is not None and got[0] != want_out:
                problems.append(f"{module} of layer {layer} gives width {got[0]}, the base's gives {want_out}")
    if deepest >= shape.n_layers:
        problems.insert(
            0, f"it adapts layer {deepest}, but the base has {shape.n_layers} layers (0-{shape.n_layers - 1})"
        )
    if problems:
        raise ModelLoadError(
            f"the adapter at {adapter} does not fit its base ({shape.n_layers} layers, hidden {shape.d_model}): "
            + "; ".join(problems[:4])
            + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
            + ". Load it on the model it was trained on: 'base+adapter' or --base-model."
        )


def adapter_files(adapter: str) -> list[str] | None:
    """The files of a peft adapter (a local directory, a hub repository in the local cache, or one the hub lists),
    or None where that cannot be known without downloading."""
    if Path(adapter).is_dir():
        return sorted(p.name for p in Path(adapter).iterdir())
    try:
        from huggingface_hub import list_repo_files, snapshot_download

        try:  # a cached snapshot answers offline
            return sorted(p.name for p in Path(snapshot_download(adapter, local_files_only=True)).iterdir())
        except Exception:  # noqa: BLE001 - not cached: ask the hub if it can be reached
            return sorted(list_repo_files(adapter)) if _hub_reachable() else None
    except Exception:  # noqa: BLE001 - no answer: peft's own errors apply
        return None


def _check_adapter_weights(spec: ModelSpec, allow_pickle: bool) -> None:
    """An adapter that ships only a pickled ``adapter_model.bin`` (Goat's) is unpickled only when allowed, as for
    a model's weights."""
    files = adapter_files(spec.adapter)
    if files is None or allow_pickle or "adapter_model.safetensors" in files:
        return
    if any(f.startswith("adapter_model") and f.endswith(".bin") for f in files):
        raise ModelLoadError(
            f"the adapter of {spec.name!r} ({spec.adapter}) holds only pickled weights (adapter_model.bin), which "
            f"mechbench does not load by default (unpickling runs code from the file): if you trust the source, pass "
            f"--allow-pickle (pytest and the mechbench commands) or allow_pickle=True (load_model), or save it as "
            f"safetensors once."
        )


def _broken_weights(directory: str) -> str | None:
    """The first safetensors file under ``directory`` whose header or data does not read back."""
    from safetensors import safe_open

    for path in sorted(Path(directory).glob("*.safetensors")) if Path(directory).is_dir() else []:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    f.get_tensor(key)
        except Exception:  # noqa: BLE001 - any failure to read is what we are looking for
            return str(path)
    return None


def _check_architecture(config, ref: str) -> None:
    if getattr(config, "model_type", None) not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"{ref!r} is a {getattr(config, 'model_type', 'unknown')!r} model; mechbench's head-level "
            f"interventions support the families whose layout they know ({', '.join(SUPPORTED_ARCHITECTURES)}: "
            f"per-head outputs at the input of the attention's output projection, grouped-query attention "
            f"included; mechbench.models.architectures.FAMILIES maps each)."
        )


#: Checkpoint entries a model recomputes instead of loading: LLaMA conversions of 2023 store each layer's rotary
#: ``inv_freq`` buffer, which transformers now derives from the config.
_RECOMPUTED = re.compile(r"rotary_emb\.inv_freq$")


def _check_coverage(loading_info: dict, name: str, weights: str) -> None:
    """The checkpoint covers the architecture exactly: a missing tensor would be left at its random
    initialisation (transformers only prints MISSING and the half-random model scores something), an unexpected one
    is a checkpoint of another layout, a mismatched shape another size."""
    missing = sorted(loading_info.get("missing_keys") or ())
    unexpected = sorted(k for k in loading_info.get("unexpected_keys") or () if not _RECOMPUTED.search(k))
    # transformers gives (key, checkpoint shape, model shape) for each
    mismatched = sorted(
        f"{m[0]} (checkpoint {tuple(m[1])}, model {tuple(m[2])})" if isinstance(m, tuple) else str(m)
        for m in loading_info.get("mismatched_keys") or ()
    )
    problems = [
        f"{len(keys)} {what}: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
        for what, keys in (
            ("missing (they would stay randomly initialised)", missing),
            ("unexpected (not part of this architecture)", unexpected),
            ("of another shape", mismatched),
        )
        if keys
    ]
    if problems:
        raise ModelLoadError(
            f"the weights of {name!r} at {weights!r} do not cover its architecture (config.json): tensors "
            + "; ".join(problems)
            + ". The checkpoint is incomplete or belongs to another model: download or save it "
            "again, or point at the directory whose config.json matches it."
        )


def check_adapter_base(spec: ModelSpec) -> None:
    """An adapter goes on the model it was trained on: the base its ``adapter_config.json`` records
    (``base_model_name_or_path``) must be the model it is put on, by registered name, location, a name it was loaded
    by (:data:`mechbench.models.registry.ALIASES`) or directory name. Where both are registered models and differ,
    the adapter is refused; where either is unknown to mechbench (a directory, a path on the machine it was
    trained on) it is a warning that says what was checked: only the shapes (:func:`check_adapter`)."""
    import warnings

    from mechbench.models.registry import REGISTRY, names_of

    config = Path(spec.adapter) / "adapter_config.json"
    if not config.is_file():
        return  # a hub adapter not downloaded yet: peft reads its config
    try:
        recorded = json.loads(config.read_text()).get("base_model_name_or_path")
    except (json.JSONDecodeError, AttributeError):
        raise ModelLoadError(f"the adapter config {config} is not a JSON object: save the adapter again") from None
    if not recorded:
        return
    put_on, trained_on = names_of(spec.weights), names_of(recorded)
    if put_on & trained_on:
        return
    put_on_names, trained_names = sorted(put_on & set(REGISTRY)), sorted(trained_on & set(REGISTRY))
    if put_on_names and trained_names:
        raise ModelLoadError(
            f"the adapter at {spec.adapter} was trained on {recorded!r} (base_model_name_or_path in its "
            f"adapter_config.json), but {spec.name!r} puts it on {put_on_names[0]!r}: a LoRA adapter's deltas mean "
            f"nothing on another model. Put it on its own base ('{trained_names[0]}+{spec.adapter}'), or, if the "
            f"model is that base under another name, write that name into the adapter's config."
        )
    warnings.warn(
        f"the adapter at {spec.adapter} records its base as {recorded!r}, which mechbench cannot match with "
        f"{(put_on_names or [spec.weights])[0]!r}, the model it is put on; only the shapes were checked (every adapted "
        f"layer and width fits).",
        stacklevel=3,
    )


def _check_tokenizer(tokenizer, model, name: str, ref: str, bos: str, chosen: bool = False) -> None:
    """The tokenizer fits the model: every id it can produce has an embedding row (a tokenizer of a larger
    vocabulary would index past the embedding in the first forward), and ``bos='always'`` has a BOS to add."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        fix = (
            f"--tokenizer {ref} is another model's tokenizer: point --tokenizer at one of this model's vocabulary."
            if chosen
            else "It is another model's tokenizer, or tokens were added without model.resize_token_embeddings: "
            "save the model's own tokenizer beside its weights."
        )
        raise ModelLoadError(
            f"the tokenizer of {name!r} ({ref}) has {len(tokenizer)} tokens but the model's embedding has {rows} rows: "
            f"ids past {rows - 1} have no embedding. {fix}"
        )
    if bos == "always" and getattr(tokenizer, "bos_token_id", None) is None:
        raise ModelLoadError(
            f"--bos always, but the tokenizer of {name!r} has no BOS token: there is nothing to start prompts with. "
            f"Use --bos auto or never for this model."
        )


#: Files that make a directory a saved tokenizer (any one of them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
CHOSEN_TOKENIZER_FIX = (
    "Point --tokenizer (load_model(tokenizer=...)) at a directory that holds a saved tokenizer (tokenizer.json and "
    "tokenizer_config.json, as tokenizer.save_pretrained(DIR) writes them) or at a hub id (from the local cache "
    "when offline), or leave it out to load the model's own."
)
#: Tokenizer classes that load ``tokenizer.json`` as it is, without a family's own pipeline (aliases in transformers 5).
_GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast", "PythonBackend")


def _chosen_tokenizer(ref: str) -> str:
    """Where ``--tokenizer`` points: a directory that exists (looked at first), else a hub id. A path that is not
    there, or a directory without a tokenizer, is an error naming the option."""
    ref = str(ref).strip()
    path = Path(ref).expanduser()
    if path.is_dir():
        if not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise ModelLoadError(
                f"--tokenizer {ref}: the directory holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}). "
                f"{CHOSEN_TOKENIZER_FIX}"
            )
        return str(path)
    if path.exists():
        raise ModelLoadError(f"--tokenizer {ref}: a file, not a tokenizer directory. {CHOSEN_TOKENIZER_FIX}")
    if path.is_absolute() or ref.startswith((".", "~")) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", ref):
        raise ModelLoadError(f"--tokenizer {ref}: the directory does not exist. {CHOSEN_TOKENIZER_FIX}")
    return ref


def _saved_file(ref: str, name: str, kwargs: dict) -> str | None:
    """The path of ``name`` in the tokenizer at ``ref`` (a directory, or a hub repository as the cache or hub has
    it), or None where it has none."""
    if Path(ref).is_dir():
        return str(Path(ref, name)) if Path(ref, name).is_file() else None
    try:
        from transformers.utils import cached_file

        return cached_file(ref, name, _raise_exceptions_for_missing_entries=False, **kwargs)
    except Exception:  # noqa: BLE001 - no answer: the tokenizer is taken as transformers loaded it
        return None


def _probe_texts() -> list[str]:
    """Texts that show whether two tokenizers split the task alike: the template, the objects, the labels."""
    from mechbench.data.prompts import LETTERS, paper_objects

    return [
        "The book is in Box A, the car is in Box B. Box A contains the",
        *(f"the {o}" for o in paper_objects()),
        *(f"Box {x}" for x in LETTERS),
    ]


def _base_name(name: str | None) -> str | None:
    if name is None:
        return None
    return "TokenizersBackend" if name in _GENERIC_TOKENIZERS else name.removesuffix("Fast")


def load_tokenizer(ref: str, trust_remote_code: bool = False):
    """The tokenizer saved at ``ref`` (a directory or a hub id), as it was saved.

    ``AutoTokenizer`` in transformers 5 picks the class from the *model's* config, not only from the tokenizer's
    own ``tokenizer_config.json``: for a ``model_type`` listed in ``MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS``
    (``qwen2`` among them) it replaces the declared class with the family's registered one (``Qwen2Tokenizer``),
    and such a class's ``__init__`` rebuilds the backend from the vocabulary alone (BPE, byte-level
    pre-tokenizer, Qwen's split regex), discarding ``tokenizer.json``'s model, normalizer and pre-tokenizer. A
    Qwen2 directory holding another tokenizer (a word-level one, a SentencePiece one) then splits every word into
    characters. So where the class transformers loaded is not the one the directory declares and it tokenizes the
    task's text differently from ``tokenizer.json`` itself, the declared class is loaded instead (or
    ``TokenizersBackend``, which reads ``tokenizer.json`` as it is). Real Qwen and Llama tokenizers, which their
    family's class reproduces, load exactly as before; custom tokenizer code (``auto_map``) is left alone."""
    from transformers import AutoTokenizer

    kwargs = _pretrained_kwargs(ref)
    tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code, **kwargs)
    saved_json, saved_config = (
        _saved_file(ref, "tokenizer.json", kwargs),
        _saved_file(ref, "tokenizer_config.json", kwargs),
    )
    if saved_json is None:
        return tokenizer
    declared = None
    if saved_config is not None:
        try:
            tokenizer_config = json.loads(Path(saved_config).read_text())
        except (OSError, json.JSONDecodeError):
            tokenizer_config = {}
        if tokenizer_config.get("auto_map"):
            return tokenizer
        declared = tokenizer_config.get("tokenizer_class")
    if _base_name(type(tokenizer).__name__) == _base_name(declared or "TokenizersBackend"):
        return tokenizer
    return _as_saved(tokenizer, ref, saved_json, declared, kwargs)


def _as_saved(tokenizer, ref: str, saved_json: str, declared: str | None, kwargs: dict):
    """``tokenizer`` if it splits the probe texts as ``tokenizer.json`` does, else the tokenizer loaded through the
    declared class or ``TokenizersBackend`` (the first of them that does)."""
    from tokenizers import Tokenizer
    from transformers import TokenizersBackend
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    texts = _probe_texts()
    try:
        want = [e.ids for e in Tokenizer.from_file(saved_json).encode_batch(texts, add_special_tokens=False)]
    except Exception:  # noqa: BLE001 - a tokenizer.json the installed tokenizers cannot read: nothing to compare
        return tokenizer

    def same(candidate) -> bool:
        return [list(ids) for ids in candidate(texts, add_special_tokens=False)["input_ids"]] == want

    if same(tokenizer):
        return tokenizer
    candidates = []
    if declared and _base_name(declared) != "TokenizersBackend":
        declared_class = tokenizer_class_from_name(declared) or tokenizer_class_from_name(declared + "Fast")
        if declared_class is not None:
            candidates.append(declared_class)
    candidates.append(TokenizersBackend)
    for candidate_class in candidates:
        try:
            candidate = candidate_class.from_pretrained(ref, **kwargs)
        except (OSError, ValueError, TypeError):
            continue
        if same(candidate):
            return candidate
    return tokenizer  # nothing splits it as saved: the dataset's single-token check names the class and the split


def tokenizer_difference(tokenizer, base_tokenizer) -> str | None:
    """How ``tokenizer`` (a fine-tune's) differs from its base's where a comparison would notice, or None: a
    comparison measures both models on one set of token ids (the base's), so every token of the base's vocabulary
    must have the same id in the fine-tune's (tokens it only adds are fine) and the task's prompts must tokenize
    the same (objects, box labels, BOS)."""
    from mechbench.data.dataset import build_dataset

    vocab, base_vocab = tokenizer.get_vocab(), base_tokenizer.get_vocab()
    moved = [t for t, i in base_vocab.items() if vocab.get(t) != i]
    if moved:
        shown = ", ".join(f"{t!r} {base_vocab[t]} -> {vocab.get(t, 'absent')}" for t in sorted(moved)[:4])
        return (
            f"{len(moved)} of the base's {len(base_vocab)} tokens have another id or none in the fine-tune's "
            f"tokenizer ({shown}{', ...' if len(moved) > 4 else ''})"
        )
    try:
        mine, theirs = build_dataset(tokenizer, n_examples=7), build_dataset(base_tokenizer, n_examples=7)
    except Exception as e:  # noqa: BLE001 - a word one of them splits: the dataset's own error says which
        return f"the task's prompts cannot be built with both ({str(e).splitlines()[0][:200]})"
    if not (torch.equal(mine.input_ids, theirs.input_ids) and torch.equal(mine.answer_ids, theirs.answer_ids)):
        return "the task's prompts tokenize differently (the same text gives other ids, or one starts with BOS)"
    return None


def _check_placement(model: torch.nn.Module, name: str, device) -> None:
    """Every parameter and buffer (a LoRA adapter's included) on ``device``: one left on the host would make the
    first forward fail on a GPU, forty minutes into a run, or copy it over on every call."""
    want = torch.device(device)
    left = [
        n
        for n, t in [*model.named_parameters(), *model.named_buffers()]
        if t.device.type != want.type or (want.type == "cuda" and (t.device.index or 0) != (want.index or 0))
    ]
    if left:
        raise ModelLoadError(
            f"loading {name!r} onto {device} left {len(left)} tensor(s) elsewhere ({', '.join(left[:3])}"
            f"{', ...' if len(left) > 3 else ''}): a module keeps them out of .to(); load it with "
            f"device_map, or report the model's layout"
        )


_OFFLOAD: list[str] = []


def _offload_folder() -> str:
    """Where weights a device map sends to ``"disk"`` wait between uses: one temporary folder per process, removed
    when it exits (accelerate writes them there as it loads)."""
    if not _OFFLOAD:
        import atexit
        import shutil
        import tempfile

        _OFFLOAD.append(tempfile.mkdtemp(prefix="mechbench-offload-"))
        atexit.register(shutil.rmtree, _OFFLOAD[0], True)
    return _OFFLOAD[0]


def chosen_options(**options) -> dict:
    """The loader options that differ from :func:`load_model`'s defaults: a handle is cached per (name, options),
    so an option left at its default must not make a second key for the same model."""
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(load_model).parameters.items()}
    return {k: v for k, v in options.items() if v != defaults[k]}


def load_model(
    name_or_path: str,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    attn_implementation: str = "sdpa",
    paper_compat_o_proj: bool = False,
    bos: str = "auto",
    drop_multi_token: bool = False,
    tokenizer: str | None = None,
) -> ModelHandle:
    """Load a registered name, a hub id, a local directory or ``base+adapter`` into a :class:`ModelHandle`.

    ``dtype`` defaults to float32, as in the paper. ``device_map`` spreads a model over several GPUs (and the
    host or disk) through accelerate and replaces ``device``: one of accelerate's placements (``"auto"``), a map
    of module names to devices, or a JSON file of one (``--device-map``; weights mapped to ``"disk"`` wait in a
    temporary folder this process removes at exit). Every intervention moves its values to the device of the
    module it patches, and the prefix fast path keeps each layer's cache on that layer's device. ``allow_pickle`` permits ``.bin`` checkpoints
    where a repository has no safetensors. ``attn_implementation`` is pinned (``sdpa`` by default, or
    ``eager``): attention knockout blocks edges through an explicit mask, which flash attention ignores.
    ``paper_compat_o_proj``: for an adapter model (Goat), runs with interventions use only the base o_proj
    weight, as the paper's hooks did (they dropped Goat's o_proj LoRA in every hooked run); only for comparing
    with a published number from such a run. Runs without interventions (accuracy) keep the adapter.
    ``bos``: whether prompts start with the tokenizer's BOS token (``auto``, ``always``, ``never``; see
    :func:`mechbench.data.dataset.starts_with_bos`). ``drop_multi_token``: datasets for this model leave out the
    task words its tokenizer splits into several tokens, instead of refusing them. ``tokenizer``: a directory or
    hub id whose tokenizer is loaded instead of the model's own (``--tokenizer``; a directory that exists is read
    as one, else it is a hub id); the fingerprint's ``tokenizer_sha256`` is then that tokenizer's.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if attn_implementation not in MASK_HONOURING:
        raise ModelLoadError(
            f"attn_implementation={attn_implementation!r}: mechbench loads models with {' or '.join(MASK_HONOURING)}, "
            f"whose attention applies an explicit mask; attention knockout blocks edges through that mask, and "
            f"{attn_implementation} would ignore it and block nothing."
        )
    if bos not in BOS_CHOICES:
        raise ModelLoadError(f"bos={bos!r}: expected one of {', '.join(BOS_CHOICES)} (--bos)")
    spec = resolve(name_or_path) if isinstance(name_or_path, str) else name_or_path
    device_map = read_device_map(device_map)  # a name, a map or a JSON file's map: checked before any load
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    weights = spec.weights
    chosen = bool(tokenizer)  # --tokenizer: checked before the weights load, so a typo costs no load
    chosen_ref = _chosen_tokenizer(tokenizer) if chosen else None
    for ref in (weights, spec.adapter):
        if ref and (Path(ref).is_absolute() or ref.startswith(".")) and not Path(ref).is_dir():
            raise ModelLoadError(
                f"cannot load model {spec.name!r}: the directory {ref} does not exist. {_how_to_provide(spec, ref)}"
            )
    try:
        config = AutoConfig.from_pretrained(weights, trust_remote_code=trust_remote_code, **_pretrained_kwargs(weights))
    except (OSError, ValueError) as e:
        if "trust_remote_code" in str(e):
            raise ModelLoadError(
                f"{weights!r} needs custom code from its repository to load; mechbench runs none unless asked: "
                f"pass trust_remote_code=True if you trust it (head interventions still need a Llama-family model)."
            ) from None
        raise ModelLoadError(
            f"cannot load model {spec.name!r}: the weights at {weights!r} are not available here "
            f"({str(e).splitlines()[0][:200]}). {_how_to_provide(spec, weights)}"
        ) from None
    _check_architecture(config, weights)
    try:
        model, loading_info = AutoModelForCausalLM.from_pretrained(
            weights,
            dtype=torch_dtype,
            device_map=device_map,
            **({"offload_folder": _offload_folder()} if needs_offload_folder(device_map) else {}),
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
            attn_implementation=attn_implementation,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            **_pretrained_kwargs(weights),
        )
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0][:300]
        hint = (
            " The repository may hold only pickled (.bin) weights, which mechbench does not load by default "
            "(unpickling runs code from the file): if you trust the source, pass --allow-pickle (pytest and the "
            "mechbench commands) or allow_pickle=True (load_model), or convert them to safetensors once."
            if not allow_pickle
            else ""
        )
        raise ModelLoadError(
            f"cannot load the weights of {spec.name!r} from {weights!r}: {msg}.{hint} {_how_to_provide(spec, weights)}"
        ) from None
    except torch.OutOfMemoryError:
        raise ModelLoadError(
            f"out of memory loading {spec.name!r} in {torch_dtype}: a 7B model needs about 28 GB in float32. "
            f"Use a larger GPU, device_map='auto' across several, or dtype='bfloat16' (not the paper's setting)."
        ) from None
    except Exception as e:  # a truncated or corrupt safetensors file: name it instead of the decoder's error
        if "safetensor" not in type(e).__name__.lower() and "safetensor" not in str(e).lower():
            raise
        raise ModelLoadError(
            f"cannot load the weights of {spec.name!r}: {_broken_weights(weights) or weights} "
            f"is truncated or corrupt ({str(e).splitlines()[0][:160]}). Download or save it again."
        ) from None
    _check_coverage(loading_info, spec.name, weights)
    peft_model = None
    if spec.adapter and any(p.device.type == "meta" for p in model.parameters()):
        raise ModelLoadError(
            f"cannot load the adapter of {spec.name!r} over a device map that offloads part of its base to the host "
            f"or disk (peft writes an adapter into weights in place, and offloaded ones are loaded only at run "
            f"time): map every layer to a GPU (a JSON --device-map, or more GPUs for auto), or merge the adapter "
            f"into a full checkpoint once (peft's merge_and_unload) and load that"
        )
    if spec.adapter:
        from peft import PeftModel

        check_adapter(spec.adapter, config)
        check_adapter_base(spec)
        _check_adapter_weights(spec, allow_pickle)
        try:
            peft_model = PeftModel.from_pretrained(model, spec.adapter, **_pretrained_kwargs(spec.adapter))
        except (OSError, ValueError) as e:
            raise ModelLoadError(
                f"cannot load the adapter of {spec.name!r} from {spec.adapter!r}: {str(e).splitlines()[0][:200]}. "
                f"{_how_to_provide(spec, spec.adapter)}"
            ) from None
        model = peft_model.get_base_model()
    if device_map is None:
        model.to(device)
        _check_placement(model, spec.name, device)
    model.eval()
    if paper_compat_o_proj:
        setattr(model, PAPER_O_PROJ, True)
    if chosen:
        tokenizer_ref = chosen_ref
    else:
        has_own = spec.adapter and Path(spec.adapter, "tokenizer_config.json").is_file()
        tokenizer_ref = spec.adapter if has_own else weights
    try:
        tokenizer = load_tokenizer(tokenizer_ref, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as e:
        if chosen:
            raise ModelLoadError(
                f"--tokenizer {tokenizer_ref}: cannot load a tokenizer from it ({str(e).splitlines()[0][:200]}). "
                f"{CHOSEN_TOKENIZER_FIX}"
            ) from None
        raise ModelLoadError(
            f"cannot load the tokenizer of {spec.name!r} from {tokenizer_ref!r}: "
            f"{str(e).splitlines()[0][:200]}. {_how_to_provide(spec, tokenizer_ref)}"
        ) from None
    _check_tokenizer(tokenizer, model, spec.name, tokenizer_ref, bos, chosen=chosen)
    if tokenizer.pad_token_id is None:  # the paper sets pad = eos; prompts of a dataset never need padding
        tokenizer.pad_token = tokenizer.eos_token
    setattr(tokenizer, BOS_ATTRIBUTE, bos)
    setattr(tokenizer, DROP_ATTRIBUTE, drop_multi_token)  # read by mechbench.data.dataset.Vocabulary
    # the hash of the tokenizer the handle holds: the chosen one (--tokenizer) where one was chosen, recorded too
    prints = fingerprint(spec.name, spec, model, torch_dtype) | {"tokenizer_sha256": tokenizer_hash(tokenizer)}
    if chosen:
        prints["tokenizer"] = tokenizer_ref
    return ModelHandle(spec.name, spec, model, tokenizer, geometry(config), prints, peft_model)
