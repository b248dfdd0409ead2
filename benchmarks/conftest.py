"""Options, fixtures and helpers of the side-by-side benchmarks (mechbench's engine against the obvious nnsight
loop doing the same work).

    pytest benchmarks/ --benchmark-enable --bench-shape tiny        # smoke run, seconds
    pytest benchmarks/ --benchmark-enable --bench-shape toy         # the trained toy zoo, seconds
    pytest benchmarks/ --benchmark-enable                           # 12 layers x 12 heads (long)
    pytest benchmarks/ --benchmark-enable --device cuda             # on a GPU (--device is the suites' option)

The setting (models, prompts, means, circuit) is built once per session and is not timed. Helpers here are
plain functions so that ``tests/test_side_by_side.py`` can build the small settings without pytest-benchmark.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace

import pytest
import torch

from mechbench.circuits import Circuit, Head, HeadGroup


@dataclass(frozen=True)
class Shape:
    """A Llama's size (random, or the toy zoo's trained models), the default number of prompt pairs, and the heads
    the workloads name."""

    n_layers: int
    n_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int | None  # None: the toy tokenizer's size
    default_pairs: int
    struct_receivers: tuple[Head, ...]  # the struct-reader step's receivers: fixed heads in the upper half
    circuit: Circuit  # the circuit of minimality, CMAP and DCM (its value fetchers are DCM's group)
    zoo: tuple[str, str] | None = None  # trained (base, donor) from the toy zoo instead of random models
    knockout_edge: str = "last->correct_object"  # the knockout curve's edge (mechbench.methods.knockout.EDGES)


def _circuit(value_fetchers, pos_transmitters, struct_readers) -> Circuit:
    groups = (
        HeadGroup("value_fetcher", "last", value_fetchers),
        HeadGroup("pos_transmitter", "last", pos_transmitters),
        HeadGroup("struct_reader", "prev_query_label", struct_readers),
    )
    return Circuit("bench", {g.name: g for g in groups})


SHAPES = {
    "tiny": Shape(
        n_layers=2,
        n_heads=4,
        head_dim=8,
        intermediate_size=64,
        vocab_size=None,
        default_pairs=4,
        struct_receivers=((1, 0), (1, 2)),
        circuit=_circuit(((1, 1), (1, 3), (0, 2)), ((0, 0),), ((0, 1),)),
    ),
    # the toy zoo's trained models (base toy-llama, donor toy-float) and a part of toy-llama's stored circuit: they do
    # the task, so ablation, knockout and CMAP flip some answers and not others, which random models never do
    "toy": Shape(
        n_layers=4,
        n_heads=8,
        head_dim=16,
        intermediate_size=384,
        vocab_size=None,
        default_pairs=14,
        struct_receivers=((2, 0), (3, 6)),
        circuit=_circuit(
            ((2, 0), (2, 5), (2, 6), (2, 1), (1, 6), (1, 5)), ((0, 0), (0, 7)), ((0, 3), (0, 1), (0, 4), (1, 7))
        ),
        zoo=("toy-llama", "toy-float"),
        knockout_edge="last->prev_query_label",  # the edge its value fetchers read
    ),
    "12x12": Shape(
        n_layers=12,
        n_heads=12,
        head_dim=64,
        intermediate_size=3072,
        vocab_size=32000,
        default_pairs=25,
        struct_receivers=((8, 1), (9, 4), (10, 2), (11, 7)),
        circuit=_circuit(
            ((6, 3), (7, 0), (8, 5), (9, 9), (10, 1), (11, 4)), ((4, 6), (5, 10)), ((2, 7), (3, 1), (4, 11), (5, 5))
        ),
    ),
}


def load_zoo_llama(name: str, device: str = "cpu"):
    """A trained toy-zoo model (eval mode, no parameter gradients)."""
    from transformers import LlamaForCausalLM

    from mechbench.models.registry import zoo_dir

    model = LlamaForCausalLM.from_pretrained(zoo_dir(name), attn_implementation="sdpa")
    return model.eval().requires_grad_(False).to(device)


def build_llama(shape: Shape, vocab_size: int, seed: int, device: str = "cpu"):
    """A random Llama of ``shape`` (seeded, eval mode, no parameter gradients: no workload trains weights, and
    DCM's step must not spend its backward on them)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.n_heads * shape.head_dim,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval().requires_grad_(False).to(device)


@dataclass
class BenchSetting:
    """Everything the workloads share. ``model``/``donor`` run mechbench; ``lm``/``lm_donor`` are nnsight
    wrappers of deep copies (nnsight installs a controller on every module it wraps, so mechbench's own runs
    stay on untouched modules)."""

    shape_name: str
    shape: Shape
    device: str
    model: torch.nn.Module  # the base (random: seed 0)
    donor: torch.nn.Module  # CMAP's donor, same shape (random: seed 1)
    lm: object  # nnsight.NNsight of a copy of ``model``
    lm_donor: object
    tokenizer: object
    pairs: object  # CounterfactualDataset: path patching's noise pairs
    dcm_pairs: object  # CounterfactualDataset: DCM's object_value pairs
    dataset: object  # EntityTrackingDataset: ablation, knockout and CMAP prompts
    means: torch.Tensor  # [L, S, H, D]: position means of the head outputs over ``dataset``

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    @property
    def key(self) -> tuple:
        return self.shape_name, self.n_pairs, self.device

    def info(self, seq_len: int) -> dict:
        """The run's description for ``benchmark.extra_info``."""
        return {
            "device": self.device,
            "shape": self.shape_name,
            "pairs": self.n_pairs,
            "seq_len": seq_len,
            "threads": torch.get_num_threads(),
        }


def build_setting(shape_name: str = "tiny", n_pairs: int | None = None, device: str = "cpu") -> BenchSetting:
    """The models and data of ``shape_name``: ``n_pairs`` prompt pairs (default: the shape's), seed 0 throughout.

    Random models do not do the task, so against the real answers every "still right?" bool of ablation, knockout
    and CMAP would be False and comparing them would check nothing: ``dataset.answer_ids`` is the base model's own
    clean top-1 token instead (for the toy zoo's models too, alike), and the bools say whether an intervention kept
    that prediction.
    """
    from nnsight import NNsight

    from mechbench.data.counterfactuals import desiderata_pairs, noise_pairs
    from mechbench.data.dataset import build_dataset
    from mechbench.methods.ablation import position_means
    from mechbench.zoo.tokenizer import build_tokenizer

    if shape_name not in SHAPES:
        raise ValueError(f"unknown shape {shape_name!r}; known: {', '.join(SHAPES)}")
    shape = SHAPES[shape_name]
    n_pairs = n_pairs or shape.default_pairs
    tokenizer = build_tokenizer()
    vocab_size = shape.vocab_size or len(tokenizer)
    if shape.zoo:
        model, donor = (load_zoo_llama(name, device) for name in shape.zoo)
    else:
        model = build_llama(shape, vocab_size, seed=0, device=device)
        donor = build_llama(shape, vocab_size, seed=1, device=device)
    dataset = build_dataset(tokenizer, n_examples=n_pairs, seed=0)
    with torch.no_grad():
        own_answers = model(input_ids=dataset.input_ids.to(device), logits_to_keep=1).logits[:, -1].argmax(-1).cpu()
    dataset = replace(dataset, answer_ids=own_answers)
    return BenchSetting(
        shape_name=shape_name,
        shape=shape,
        device=device,
        model=model,
        donor=donor,
        lm=NNsight(copy.deepcopy(model)),
        lm_donor=NNsight(copy.deepcopy(donor)),
        tokenizer=tokenizer,
        pairs=noise_pairs(tokenizer, n_pairs, seed=0),
        dcm_pairs=desiderata_pairs(tokenizer, "object_value", n_pairs, seed=0),
        dataset=dataset,
        means=position_means(model, dataset, batch_size=n_pairs),
    )


# --- peak memory --------------------------------------------------------------------------------------------


class PeakMemory:
    """What :func:`peak_memory` measured: ``peak_bytes`` above the level at the start of the block (None where it
    cannot be measured: a CPU run without /proc)."""

    peak_bytes: int | None = None


def release_freed_memory() -> None:
    """Give freed memory back before a CPU measurement: RSS counts what the allocator still holds from earlier
    work, which would hide the block's own peak."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


STATM = "/proc/self/statm"  # Linux: sizes in pages, the second the resident set


def _rss_bytes() -> int:
    with open(STATM) as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory(device: str, interval_s: float = 0.002):
    """Peak memory of the block above its start, in bytes (``.peak_bytes`` of what it yields, set on exit). On
    CUDA the allocator's own peak (``max_memory_allocated``); on the CPU the process RSS, sampled every
    ``interval_s`` by a background thread (a spike shorter than the interval can be missed; call
    :func:`release_freed_memory` first, outside anything timed, so that memory the allocator kept from earlier work
    does not hide the block's peak)."""
    result = PeakMemory()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result.peak_bytes = torch.cuda.max_memory_allocated(device) - start
        return
    if not os.path.exists(STATM):
        yield result
        return
    start = _rss_bytes()
    peak = [start]
    done = threading.Event()

    def sample():
        while not done.wait(interval_s):
            peak[0] = max(peak[0], _rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        result.peak_bytes = max(peak[0], _rss_bytes()) - start


def measure(benchmark, setting: BenchSetting, fn, seq_len: int):
    """Run ``fn(setting)`` once under pytest-benchmark (the workloads are long: one round, one iteration) and
    record the peak memory and the setting in ``benchmark.extra_info``. Returns what ``fn`` returned."""
    peak = {}

    def timed():
        with peak_memory(setting.device) as memory:
            out = fn(setting)
        peak["bytes"] = memory.peak_bytes
        return out

    release_freed_memory()  # untimed: a full garbage collection takes ~0.1 s
    out = benchmark.pedantic(timed, rounds=1, iterations=1)
    benchmark.extra_info.update(setting.info(seq_len), peak_bytes=peak["bytes"])
    return out


# --- pytest ------------------------------------------------------------------------------------------------


def pytest_addoption(parser):
    group = parser.getgroup("mechbench benchmarks")
    group.addoption(
        "--bench-shape",
        default="12x12",
        choices=tuple(SHAPES),
        help="model of the side-by-side benchmarks: tiny (random, 2 layers x 4 heads x 8, 4 pairs; a smoke "
        "run), toy (the trained toy zoo, 4 x 8 x 16, 14 pairs) or 12x12 (random, 12 layers x 12 "
        "heads x 64, 25 pairs; default)",
    )
    group.addoption(
        "--bench-pairs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="prompt pairs (and prompts) per workload (default: the shape's)",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


@pytest.fixture(scope="session")
def bench_setting(request) -> BenchSetting:
    config = request.config
    return build_setting(
        config.getoption("--bench-shape"), config.getoption("--bench-pairs"), config.getoption("--device")
    )
