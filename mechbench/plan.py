"""The memory and time plan: what each claim holds on the device at its peak and how long it computes, from the
model's shapes and the batch sizes the suites use, before anything is loaded.

    mechbench plan llama7b goat7b --dtype bfloat16       # per claim: peak GPU memory, host memory, GPU time
    mechbench plan goat7b --own-circuit                  # and with Goat's own circuit (DCM, path patching, minimality)

Memory (bytes, ``b`` bytes per number of the model's dtype, ``B`` prompts per batch, ``S`` tokens per prompt):

- weights: parameters (and a LoRA adapter's) x b, once per model the claim holds (CMAP and comparison hold the
  fine-tune and its base at once);
- a forward's transient peak: per token the residual, the attention and MLP inputs and outputs and the engine's
  per-head copy (6 d + 3 d_mlp numbers), the attention scores (heads x S per token, float32), the last
  logits (vocab, float32);
- the fast path's clean prefix (:func:`mechbench.intervene.capture_prefix`, one batch at a time): every layer's
  input (L + 1 hidden states, as HF returns them) and keys and values: B S ((L + 1) d + 2 L kv_heads head_dim) b;
- DCM's training step keeps every layer's activations for the backward: per layer and token, the inputs of
  the seven projections and two norms, q/k/v, the MLP's three intermediates and the attention weights
  (10 d + 4 d_mlp + 2 heads S numbers, float32 for the attention weights), plus the forward peak;
- host memory: reads are kept on the host in float32 (the ablation means read every head at every position of
  500 prompts, path patching one batch's clean run).

Time: forward FLOPs per token are 2 x parameters (the matmuls; attention's S^2 term is under 1% at S = 54), a
backward twice that. A run the engine serves from a prefix (the clean run, or the circuit's ablated run for
minimality and C \\ K) recomputes only the layers and tokens after its first intervention, which the plan counts
from the stored circuit's heads and the roles' positions: a path-patching sender is one token from its layer up
(``run_frozen_attention``), its receivers' patch a run from the lowest receiver above it at the receivers'
position; minimality's ablations start at a set's lowest head, at its group's role; a knockout at its layer, at
the query token; DCM trains and validates from its group's lowest layer at its role, the four groups of a
desideratum sharing each batch's clean run. GPU seconds = FLOPs / ``--tflops``: 50 TFLOP/s in bfloat16 and half
that in float32 (TF32) by default, a deliberately low sustained rate (an H100's dense bf16 peak is about 990
TFLOP/s; eager HF forwards of 50 x 54-token batches reach a fraction of it) that no GPU run has checked yet. The
counts of prompts per claim are the suites' (the paper's sample sizes, docs/paper.md §3).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
#: Tokens per prompt: the paper's 7-box prompt under the LLaMA tokenizer (BOS included) is 54 tokens.
PAPER_SEQ_LEN = 54
#: Headroom a claim must leave on the device: allocator fragmentation, CUDA context, the library's own buffers.
HEADROOM = 0.15


@dataclass(frozen=True)
class Shape:
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_mlp: int
    vocab: int
    n_params: int
    adapter_params: int = 0

    @classmethod
    def from_config(cls, config: dict, adapter_params: int = 0) -> Shape:
        from mechbench.models.architectures import geometry  # the one place a config's geometry is derived

        g = geometry(config)
        n_heads, head_dim, kv, d, vocab, layers = (
            g.n_heads,
            g.head_dim,
            g.n_kv_heads,
            g.d_model,
            g.vocab_size,
            g.n_layers,
        )
        d_mlp = config["intermediate_size"]  # required here: the MLP's parameters count
        per_layer = d * head_dim * (2 * n_heads + 2 * kv) + 3 * d * d_mlp + 2 * d
        embeddings = vocab * d * (1 if config.get("tie_word_embeddings") else 2)
        return cls(layers, d, n_heads, kv, head_dim, d_mlp, vocab, layers * per_layer + embeddings + d, adapter_params)


def shape_of(model: str) -> Shape:
    """The shape of a registered paper model (its config as published: its spec's ``architecture``), or of a
    local model directory / toy model from its config.json."""
    from mechbench.models.registry import REGISTRY, resolve

    if model in REGISTRY and REGISTRY[model].architecture:
        return Shape.from_config(REGISTRY[model].architecture, REGISTRY[model].adapter_parameters)
    spec = resolve(model)
    path = Path(spec.weights) / "config.json"
    if not path.is_file():
        from mechbench.errors import MechbenchError

        raise MechbenchError(
            f"no shape for {model!r}: it is not a registered paper model and {path} does not exist; "
            f"download it or name a local directory holding its config.json"
        )
    config = _model_config(path)
    adapter = 0
    if spec.adapter and (Path(spec.adapter) / "adapter_config.json").is_file():
        cfg = _json_object(Path(spec.adapter) / "adapter_config.json")
        r, targets = cfg.get("r", 0), cfg.get("target_modules") or ()
        if not isinstance(r, int) or isinstance(r, bool) or r < 0 or not isinstance(targets, (list, str)):
            from mechbench.errors import MechbenchError

            raise MechbenchError(
                f"{Path(spec.adapter) / 'adapter_config.json'}: 'r' {r!r} and 'target_modules' "
                f"{targets!r} are not a LoRA adapter's (a non-negative integer and a list of module "
                f"names): save the adapter with peft's save_pretrained"
            )
        adapter = (
            config["num_hidden_layers"]
            * (1 if isinstance(targets, str) else len(targets))
            * r
            * 2
            * config["hidden_size"]
        )
    return Shape.from_config(config, adapter)


#: The fields of a config.json the plan reads (positive integers; head_dim and num_key_value_heads are optional).
CONFIG_FIELDS = ("num_attention_heads", "hidden_size", "intermediate_size", "vocab_size", "num_hidden_layers")


def _json_object(path: Path) -> dict:
    from mechbench.errors import MechbenchError

    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MechbenchError(
            f"{path} cannot be read as JSON ({e}): it is not a config saved with save_pretrained; "
            f"save the model again or point at the directory that holds its config"
        ) from None
    if not isinstance(data, dict):
        raise MechbenchError(
            f"{path} holds a JSON {type(data).__name__}, not a config object: save the model again with save_pretrained"
        )
    return data


def _model_config(path: Path) -> dict:
    """A local model's config.json, checked before the plan reads it: JSON, a family the engine supports, and
    every field the plan needs a positive integer."""
    from mechbench.errors import MechbenchError
    from mechbench.models.loading import SUPPORTED_ARCHITECTURES

    config = _json_object(path)
    if config.get("model_type") not in SUPPORTED_ARCHITECTURES:
        raise MechbenchError(
            f"{path}: model_type {config.get('model_type')!r} is not a family mechbench runs (it "
            f"supports {', '.join(SUPPORTED_ARCHITECTURES)}), so there is nothing to plan; plan a "
            f"model of one of those families"
        )
    optional = ("head_dim", "num_key_value_heads")
    bad = [
        f
        for f in CONFIG_FIELDS + optional
        if (f in CONFIG_FIELDS or config.get(f) is not None)
        and not (isinstance(config.get(f), int) and not isinstance(config.get(f), bool) and config[f] > 0)
    ]
    if bad:
        raise MechbenchError(
            f"{path}: "
            + ", ".join(f"{f} {'is missing' if f not in config else repr(config[f])}" for f in bad)
            + f" (the plan needs {', '.join(CONFIG_FIELDS)} as positive integers): it is not a "
            f"complete transformers config; save the model with save_pretrained"
        )
    return config


def weights_bytes(shape: Shape, b: int) -> int:
    return (shape.n_params + shape.adapter_params) * b


def forward_bytes(shape: Shape, batch: int, seq: int, b: int) -> int:
    """Transient peak of one batch's forward (see the module's docstring)."""
    per_token = (6 * shape.d_model + 3 * shape.d_mlp) * b + shape.n_heads * seq * 4
    return batch * seq * per_token + batch * shape.vocab * 4


def prefix_bytes(shape: Shape, batch: int, seq: int, b: int) -> int:
    """One batch's clean prefix: L + 1 hidden states and L layers of keys and values."""
    return (
        batch
        * seq
        * ((shape.n_layers + 1) * shape.d_model + 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim)
        * b
    )


def backward_bytes(shape: Shape, batch: int, seq: int, b: int) -> int:
    """Activations a training step keeps for the backward through every layer."""
    per_token = (10 * shape.d_model + 4 * shape.d_mlp) * b + 2 * shape.n_heads * seq * 4
    return shape.n_layers * batch * seq * per_token


def read_bytes(shape: Shape, n: int, seq: int, layers: int | None = None) -> int:
    """Head outputs of ``n`` prompts at every position of ``layers`` layers, as the engine keeps reads (host, fp32)."""
    return n * seq * shape.n_heads * shape.head_dim * (shape.n_layers if layers is None else layers) * 4


@dataclass(frozen=True)
class Workload:
    """What one claim runs, in prompts per phase: ``forwards`` full forwards, ``fast`` fast-path runs (each
    recomputes ``fast_fraction`` of the layers x positions), ``train`` forward+backward passes."""

    claim: str
    models: int = 1  # models held at once
    forwards: float = 0
    fast: float = 0
    fast_fraction: float = 1.0
    train: float = 0
    train_batch: int = 0
    prefix: bool = False  # holds a batch's prefix
    host_reads: int = 0  # prompts whose every head output the claim keeps on the host at once (all positions);
    # -1: one batch's, kept on the device too (path patching's clean values)
    host_prefix: int = 0  # prompts whose clean prefix waits on the host between uses (DCM's validation pairs)
    note: str = ""


def default_circuit(model: str, baselines_dir=None) -> str:
    """The circuit ``pytest suites/ --model=MODEL`` evaluates: the one found on the model's base (the paper
    evaluates the Llama-7B circuit on all four models), else the model's own: a registered one, or the one stored
    for it in ``baselines_dir`` (:func:`mechbench.circuits.stored_circuit_name`, as pytest and compare find it)."""
    from mechbench.circuits import stored_circuit_name
    from mechbench.models.registry import BASE_OF, CIRCUITS

    owner = BASE_OF.get(model, model)
    return owner if owner in CIRCUITS else stored_circuit_name(owner, baselines_dir) or owner


#: Tokens a fast run recomputes in a 54-token prompt from a role's position to the end: the last token; the query
#: label is the third from last; the earlier occurrence of the queried label can be the first box's, about 5 tokens
#: in, so a batch of prompts starts there.
SENDER_SPAN = {"last": 1, "query_label": 3, "prev_query_label": PAPER_SEQ_LEN - 5}


def knockout_query_roles(model: str) -> list[str]:
    """The query role of each attention-knockout edge the suite runs on ``model`` (its spec's edges; a model
    registered nowhere runs every edge of mechbench.methods.knockout.EDGES): each point of an edge's curve
    recomputes from its layer on at the query token."""
    from mechbench.methods.knockout import EDGES
    from mechbench.models.registry import REGISTRY

    runs = REGISTRY[model].knockout_edges if model in REGISTRY else None
    return [query for edge, (query, _) in EDGES.items() if runs is None or edge in runs]


def _span(role: str, seq: int) -> float:
    """The share of a prompt's tokens a run patched at ``role`` recomputes (a batch starting at the role's earliest
    position)."""
    return min(SENDER_SPAN.get(role, seq), seq) / seq


#: Box labels in the paper's 7-box prompt: the earlier query-label occurrence is one of them, about 7 tokens apart
#: from 5 tokens in (the first) to 7 before the end (the last). A discovery at another --boxes K has K
#: (its settings' ``num_boxes``).
N_BOXES = 7


def _sorted_span(role: str, seq: int, n: int, batch: int, boxes: int = N_BOXES) -> float:
    """:func:`_span` when the pairs go through in order of the role's position (path patching sorts them): a batch
    recomputes from its own earliest position, the quantile it starts at, with the queried box uniform over the
    ``boxes`` (the paper's seven). Roles at a fixed distance from the end gain nothing."""
    if role != "prev_query_label":
        return _span(role, seq)
    first, last = 5, seq - 7
    labels = [first + (last - first) * i / max(boxes - 1, 1) for i in range(boxes)]
    starts = range(0, n, batch)
    return sum((seq - labels[min(boxes - 1, int(boxes * s / n))]) / seq for s in starts) / len(starts)


def _stored_circuit(name: str, baselines_dir=None):
    from mechbench.circuits import Circuit
    from mechbench.errors import MechbenchError

    try:
        return Circuit.load(name, baselines_dir)
    except MechbenchError:
        return None


def _above(layer: int, n_layers: int) -> float:
    """The share of the layers a run patched at ``layer`` recomputes."""
    return (n_layers - layer) / n_layers


def path_patching_fast(shape: Shape, config, circuit, seq: int, batch: int = 50) -> float:
    """Prompt-equivalents of path patching's sender runs (all steps, ``config.n_pairs`` pairs): every sender's
    frozen-attention run is one token from its layer up; a step with receivers then patches them into a run
    from the lowest receiver above the sender, from the receivers' position on. Receivers are the stored
    circuit's (the claim fixes them); without one, half the layers. Pairs go through sorted by the sender's
    position, ``batch`` at a time."""
    heads, layers = shape.n_heads, shape.n_layers
    receiver_k = dict(config.receiver_k)
    total = 0.0
    for step in config.steps:
        total += config.n_pairs * heads * sum(_above(l, layers) for l in range(layers)) / seq  # one token each
        if step.receiver_group is None:
            continue
        group = circuit.groups.get(step.receiver_group) if circuit else None
        receiver_layers = sorted({l for l, _ in group.heads[: receiver_k[step.receiver_group]]}) if group else None
        for sender in range(layers):
            above = [l for l in receiver_layers if l > sender] if receiver_layers else [sender + 1]
            if above and above[0] < layers:
                total += (
                    config.n_pairs
                    * heads
                    * _above(above[0], layers)
                    * _sorted_span(step.receiver_role, seq, config.n_pairs, batch, config.num_boxes)
                )
    return total


def random_k_share(circuit, n_layers: int, seq: int, draws: int = 1000) -> float:
    """The mean share of a forward a completeness run with K drawn as the suite draws it (each circuit head with
    probability 1/2) recomputes: from K's lowest layer, from its earliest role on (seeded draws; the whole forward
    without a stored circuit)."""
    import random

    if circuit is None:
        return 1.0
    rng = random.Random(0)
    heads = [(layer, g.role) for g in circuit.groups.values() for layer, _ in g.heads]
    total = 0.0
    for _ in range(draws):
        k = [(layer, role) for layer, role in heads if rng.random() < 0.5]
        if k:
            total += _above(min(l for l, _ in k), n_layers) * max(_span(role, seq) for _, role in k)
    return total / draws


def minimality_fast(shape: Shape, config, circuit, examples: int, seq: int) -> float:
    """Prompt-equivalents of minimality's ablations on the circuit's run: every single and pair of a group's heads,
    then K and K + v for each head, and at most two new sets per head and resample; each recomputes from its
    lowest head's layer on, at the group's role only."""
    total = 0.0
    for _name, g in circuit.groups.items() if circuit else ():
        layers = [l for l, _ in g.heads]
        pairs = [min(a, b) for i, a in enumerate(layers) for b in layers[i + 1 :]]
        mean_pair = (
            sum(_above(l, shape.n_layers) for l in pairs) / len(pairs) if pairs else _above(min(layers), shape.n_layers)
        )
        runs = sum(_above(l, shape.n_layers) for l in layers) + mean_pair * (
            len(pairs) + 2 * len(layers) + 2 * config.minimality_boot * len(layers)
        )
        total += examples * runs * _span(g.role, seq)
    return total


@dataclass(frozen=True)
class PlanInputs:
    """What a claim's workloads (``@CLAIM.workloads`` in its spec) are computed from: the model and its shape, the
    circuit evaluated and whether it is the model's own, its stored heads (None where none is stored: half the
    layers are assumed), the circuit's discovery settings, the prompt length and batch."""

    model: str
    shape: Shape
    circuit: str
    stored: object  # the stored Circuit, or None
    config: object  # the circuit's DiscoveryConfig
    seq: int = PAPER_SEQ_LEN
    batch_size: int = 50

    @property
    def own(self) -> bool:
        """The circuit is the model's own (DCM, path patching and minimality run there only)."""
        return self.circuit == self.model

    @property
    def base(self) -> str | None:
        """The model's registered base, where it is a fine-tune (CMAP runs there)."""
        from mechbench.models.registry import BASE_OF

        return BASE_OF.get(self.model)

    @property
    def roles(self) -> dict[str, str]:
        """Each group's role: the stored circuit's, or the paper's four groups' where none is stored."""
        from mechbench.circuits import GROUP_ROLES

        return {g.name: g.role for g in self.stored.groups.values()} if self.stored else dict(GROUP_ROLES)

    def above(self, layer: int) -> float:
        """The share of the layers a run patched at ``layer`` recomputes."""
        return _above(layer, self.shape.n_layers)

    def span(self, role: str) -> float:
        """The share of a prompt's tokens a run patched at ``role`` recomputes."""
        return _span(role, self.seq)

    @property
    def group_sizes(self) -> dict[str, int]:
        """Heads per group, as the circuit's discovery settings cut them (``circuit_k``, else ``receiver_k``)."""
        return dict(self.config.circuit_k or self.config.receiver_k)

    def group_share(self, name: str) -> float:
        """The share of a forward a run patching a whole group recomputes: from its lowest layer, at its role."""
        lowest = {g.name: min(l for l, _ in g.heads) for g in self.stored.groups.values()} if self.stored else {}
        return self.above(lowest.get(name, self.shape.n_layers // 2)) * self.span(self.roles.get(name, "last"))

    def all_groups_share(self) -> float:
        return sum(self.group_share(g) for g in self.roles)


def plan_inputs(
    model: str,
    shape: Shape,
    circuit: str | None = None,
    seq: int = PAPER_SEQ_LEN,
    batch_size: int = 50,
    baselines_dir=None,
) -> PlanInputs:
    from mechbench.models.registry import discovery_settings

    circuit = circuit or default_circuit(model, baselines_dir)
    stored = _stored_circuit(circuit, baselines_dir)
    # the settings it was found with (its model's spec's, or stored with it); the paper's for an unknown circuit
    settings = (stored.discovery_settings() if stored is not None else None) or discovery_settings(circuit)
    return PlanInputs(model, shape, circuit, stored, settings, seq, batch_size)


def planned_claims() -> dict:
    """The claims the plan models: every registered claim whose spec registers its workloads (a view of the
    registry, read when called: a claim registered at run time is planned too)."""
    from mechbench.claims import CLAIMS

    return {name: claim for name, claim in CLAIMS.items() if claim.mode("workloads") is not None}


def workloads(
    model: str,
    shape: Shape,
    circuit: str | None = None,
    seq: int = PAPER_SEQ_LEN,
    batch_size: int = 50,
    baselines_dir=None,
) -> list[Workload]:
    """The suites' work for ``model`` evaluated with ``circuit``: each claim's own workloads (its spec's
    ``@CLAIM.workloads``, at the paper's sample sizes), in the registry's order.

    ``forwards`` counts full forwards (a fast path's clean or ablated prefix is one), ``fast`` the prompt-equivalents
    of the runs served by a prefix, from where each intervention starts (layers and tokens, from the stored
    circuit's heads; half the layers where there is none)."""
    inputs = plan_inputs(model, shape, circuit, seq, batch_size, baselines_dir)
    return [w for claim in planned_claims().values() for w in claim.mode("workloads")(inputs)]


@dataclass(frozen=True)
class ClaimPlan:
    claim: str
    device_bytes: int
    host_bytes: int
    gpu_seconds: float
    note: str

    def fits(self, gpu_bytes: float, headroom: float = HEADROOM) -> bool:
        return self.device_bytes <= (1 - headroom) * gpu_bytes


def plan(
    model: str,
    dtype: str = "float32",
    batch_size: int = 50,
    seq: int = PAPER_SEQ_LEN,
    tflops: float = 50.0,
    shape: Shape | None = None,
    circuit: str | None = None,
    baselines_dir=None,
) -> list[ClaimPlan]:
    """Peak device memory, host memory and GPU time of every claim ``pytest suites/ --model=MODEL
    [--circuit=CIRCUIT] [--baselines-dir=DIR]`` runs."""
    from mechbench.validate import positive_number

    positive_number("--tflops", tflops)
    shape = shape or shape_of(model)
    b = DTYPE_BYTES[dtype]
    rate = tflops * 1e12 * (0.5 if b == 4 else 1.0)
    flops_per_prompt = 2 * (shape.n_params + shape.adapter_params) * seq
    out = []
    for w in workloads(model, shape, circuit, seq, batch_size, baselines_dir):
        device = (
            w.models * weights_bytes(shape, b)
            + forward_bytes(shape, batch_size, seq, b)
            + batch_size * seq * shape.d_model * b
        )
        if w.prefix:
            device += prefix_bytes(shape, batch_size, seq, b)
        if w.host_reads < 0:
            device += read_bytes(shape, batch_size, seq)
        if w.train:
            device = max(
                device,
                weights_bytes(shape, b)
                + backward_bytes(shape, w.train_batch, seq, b)
                + forward_bytes(shape, w.train_batch, seq, b),
            )
        host = read_bytes(shape, batch_size if w.host_reads < 0 else w.host_reads, seq) + prefix_bytes(
            shape, w.host_prefix, seq, b
        )
        flops = flops_per_prompt * (w.forwards + w.fast * w.fast_fraction + 3 * w.train)
        out.append(ClaimPlan(w.claim, int(device), int(host), flops / rate, w.note))
    return out


def _plans_for(model: str, dtype: str, batch: int, seq: int, shape: Shape) -> list[ClaimPlan]:
    """Every claim of ``model`` under its default circuit and its own (the suites run both where it has one)."""
    return [p for c in {default_circuit(model), model} for p in plan(model, dtype, batch, seq, shape=shape, circuit=c)]


def never_fit(model: str, dtype: str, free_bytes: float, seq: int = PAPER_SEQ_LEN) -> list[ClaimPlan]:
    """The claims of ``model`` that do not fit ``free_bytes`` (with the headroom) at their smallest batch (one
    prompt; DCM trains on its fixed 32-pair batches)."""
    return [p for p in _plans_for(model, dtype, 1, seq, shape_of(model)) if not p.fits(free_bytes)]


def choose_batch_size(
    model: str,
    dtype: str,
    free_bytes: float,
    seq: int = PAPER_SEQ_LEN,
    largest: int = 100,
    never: list[ClaimPlan] | None = None,
) -> int:
    """The largest batch (up to ``largest``) at which every claim (its own circuit's included) that fits at all fits
    ``free_bytes`` with the headroom; the claims that never fit are :func:`never_fit`'s. A model whose weights and
    one forward do not fit is an error that says what would."""
    from mechbench.errors import MechbenchError

    shape = shape_of(model)
    never = {p.claim for p in (never_fit(model, dtype, free_bytes, seq) if never is None else never)}
    if "accuracy" in never:
        need = {p.claim: p for p in _plans_for(model, dtype, 1, seq, shape)}["accuracy"].device_bytes
        smaller = [d for d in ("bfloat16",) if d != dtype and DTYPE_BYTES[d] < DTYPE_BYTES[dtype]]
        raise MechbenchError(
            f"{model} in {dtype} needs {need / GIB:.1f} GiB on the GPU for its weights and one prompt's forward, and "
            f"{(1 - HEADROOM) * free_bytes / GIB:.1f} GiB of this GPU's {free_bytes / GIB:.1f} GiB free can be used "
            f"({HEADROOM:.0%} headroom): "
            + (
                f"use --dtype {smaller[0]} (half the bytes; see docs/performance.md, 'bfloat16: which bounds hold'), "
                if smaller
                else ""
            )
            + "a larger GPU, or spread the model over several (device_map)"
        )
    for batch in range(largest, 0, -1):
        if all(p.fits(free_bytes) for p in _plans_for(model, dtype, batch, seq, shape) if p.claim not in never):
            return batch
    return 1


def gpus_needed(model: str, dtype: str, gpu_bytes: float, seq: int = PAPER_SEQ_LEN) -> tuple[int, ClaimPlan]:
    """How many GPUs of ``gpu_bytes`` a device map must spread ``model`` over for its largest claim to fit at its
    smallest batch (1: it fits one), and that claim's plan. A device map splits the weights and each layer's
    activations by layer, so the need divides about evenly; it is a floor, since accelerate places whole layers."""
    largest = max(_plans_for(model, dtype, 1, seq, shape_of(model)), key=lambda p: p.device_bytes)
    return max(1, math.ceil(largest.device_bytes / ((1 - HEADROOM) * gpu_bytes))), largest


def resolve_batch_size(
    value: str | int, device: str, dtype: str, models, notes: list | None = None, device_map=None
) -> int:
    """``--batch-size``: a positive integer as given; ``auto``: 50 on the CPU, and on a GPU the largest batch at
    which every claim of every model that fits at all fits the device's free memory (under ``device_map``, the free
    memory of every GPU it can use, summed: the layers split it) (50 where a model's shape is unknown). ``notes``
    collects a line per claim that cannot fit even at its smallest batch."""
    from mechbench.errors import MechbenchError

    if str(value) != "auto":
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise MechbenchError(f"--batch-size {value!r}: give a positive number of prompts per forward, or auto")
        return n
    if not str(device).startswith("cuda"):
        return 50
    import torch

    if device_map is not None:  # the GPUs the map uses (a placement by name: every visible one), their free memory
        from mechbench.models.devices import gpus_of

        used = gpus_of(device_map)
        free = sum(torch.cuda.mem_get_info(i)[0] for i in (range(torch.cuda.device_count()) if used is None else used))
    else:
        free = torch.cuda.mem_get_info(torch.device(device))[0]
    sizes = []
    for model in models:
        try:
            shape_of(model)
        except MechbenchError:  # a model whose shape cannot be read before loading: the CPU default
            sizes.append(50)
            continue
        never = never_fit(model, dtype, free)
        sizes.append(choose_batch_size(model, dtype, free, never=never))
        worst: dict[str, ClaimPlan] = {}
        for p in never if notes is not None else ():
            worst[p.claim] = max(worst.get(p.claim, p), p, key=lambda q: q.device_bytes)
        for p in worst.values():
            notes.append(
                f"{model}: {p.claim} needs {p.device_bytes / GIB:.1f} GiB at its smallest batch (mechbench "
                f"plan), more than this GPU's {free / GIB:.1f} GiB free allows with {HEADROOM:.0%} headroom: "
                f"it will run out of memory; deselect it (-k 'not {p.claim}') or use a larger GPU"
            )
    return min(sizes, default=50)


#: How far a claim's measured peak device memory may sit from the plan's: above by at most 1.25x (the plan's 15%
#: headroom is what a claim may exceed it by before a GPU that the plan says fits runs out), below by at most 2.5x
#: (the plan counts every term at its worst: DCM's saved activations through every layer where the fast path starts
#: at the group's lowest one). Measured on the toy zoo and paper-shaped stand-ins under the simulated GPU
#: (tests/test_plan_memory.py and docs/performance.md, 'Memory against the plan'): 0.53-1.17 of the plan.
MEASURED_OVER_PLAN = (0.4, 1.25)


def measured_against_plan(rows: list[dict], shapes: dict[str, Shape] | None = None) -> list[tuple[dict, int, float]]:
    """(the ``memory:<claim>`` row, the plan's device bytes for it, measured / plan) for every claim test a run
    measured on a GPU or the simulated one, the largest per (claim, model, circuit); the plan at the row's dtype,
    batch size and prompt length, for the model's shape (``shapes`` where the registry's is not the model's: a
    stand-in). Claims the plan does not run on that model (they skipped) are left out."""
    peaks: dict[tuple, dict] = {}
    for row in rows:
        if row["claim"].startswith("memory:") and row.get("seq_len"):
            key = (row["claim"], row["model"], row.get("circuit"))
            if key not in peaks or row["value"] > peaks[key]["value"]:
                peaks[key] = row
    out = []
    for (claim, model, circuit), row in sorted(peaks.items()):
        shape = (shapes or {}).get(model) or shape_of(model)
        plans: dict[str, ClaimPlan] = {}  # a claim of several workloads: its peak is the largest one's
        for p in plan(model, row["dtype"], row["batch_size"], row["seq_len"], shape=shape, circuit=circuit):
            if p.claim not in plans or p.device_bytes > plans[p.claim].device_bytes:
                plans[p.claim] = p
        planned = plans.get(claim.removeprefix("memory:"))
        if planned is not None:
            out.append((row, planned.device_bytes, row["value"] / planned.device_bytes))
    return out


def wall_hours(
    job_hours: dict[str, float], gpus: int, widths: dict[str, int] | None = None
) -> tuple[float, list[list[str]]]:
    """The wall time of jobs (a model's claims, hours each) on ``gpus`` GPUs as ``pytest -n <gpus>`` runs them:
    a model's tests are one group on one worker (one GPU each, mechbench.pytest_plugin.worker_device), and a
    worker that is free takes the next model in the order given (list scheduling, as pytest-xdist's loadgroup
    hands out groups). A model spread over several GPUs by a device map (``widths``: model -> GPUs) starts when
    that many are free and holds them all. Returns the hours and the models each GPU ran. The longest model's job
    is the floor."""
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, got {gpus}")
    busy, ran = [0.0] * gpus, [[] for _ in range(gpus)]
    for model, hours in job_hours.items():
        width = (widths or {}).get(model, 1)
        if width > gpus:
            raise ValueError(f"{model} needs {width} GPUs under a device map; {gpus} given")
        free = sorted(range(gpus), key=lambda g: (busy[g], g))[:width]
        end = max(busy[g] for g in free) + hours
        for g in free:
            busy[g] = end
            ran[g].append(model)
    return max(busy), ran


def format_plan(
    model: str, plans: list[ClaimPlan], dtype: str, batch_size: int, gpu_gib: float, circuit: str | None = None
) -> str:
    lines = [
        f"{model}, circuit {circuit or default_circuit(model)} ({dtype}, batch {batch_size}): peak GPU memory per "
        f"claim against {gpu_gib:g} GiB with "
        f"{HEADROOM:.0%} headroom",
        "| claim | GPU peak GiB | fits | host GiB | GPU hours | what |",
        "|---|---|---|---|---|---|",
    ]
    for p in plans:
        lines.append(
            f"| {p.claim} | {p.device_bytes / GIB:.1f} | {'yes' if p.fits(gpu_gib * GIB) else 'NO'} | "
            f"{p.host_bytes / GIB:.1f} | {p.gpu_seconds / 3600:.2f} | {p.note} |"
        )
    total = sum(p.gpu_seconds for p in plans) / 3600
    lines.append(f"| all claims | {max(p.device_bytes for p in plans) / GIB:.1f} | | | {total:.2f} | |")
    return "\n".join(lines)
