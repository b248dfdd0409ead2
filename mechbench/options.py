"""The options of a run, each declared once: its flag, type or choices, default and help. mechbench's pytest plugin
declares every one of them (``pytest --help``, group "mechbench"); the ``mechbench`` command line declares those
its commands share with it (each option's ``commands``: --device, --dtype, --seed, --bos, --drop-multi-token, --allow-pickle,
--baselines-dir, --results-dir, --reference, --quick), so that the same flag means, accepts and defaults to the same
thing in both. Both read a value the same way: a relative directory is relative to the current directory, as for
every command-line tool (pytest's own --basetemp included); the default --results-dir is ``results`` there, and the
comparisons' discovery cache (``<results-dir>/discovery``) is shared by ``pytest`` and ``mechbench`` run from the
same directory.

The values are checked by :mod:`mechbench.validate` (the plugin: when a session uses mechbench; the command line:
before a model loads), not by the parsers (only --bos has choices), so that a wrong value is a message that names
the fix. The ``mechbench plan`` command's --dtype and --batch-size are its own: a plan names the dtypes it sizes
and defaults to 50 prompts per forward.
"""

from __future__ import annotations

from dataclasses import dataclass

from mechbench.data.dataset import BOS_CHOICES
from mechbench.models.registry import REGISTRY

#: --results-dir's default, relative to the current directory
RESULTS_DIR = "results"


@dataclass(frozen=True)
class Option:
    flag: str
    help: str
    default: object = None
    type: type | None = None
    choices: tuple | None = None
    action: str | None = None  # "store_true" or "append"
    metavar: str | None = None
    commands: tuple[str, ...] = ()  # the ``mechbench`` commands that take it too (pytest takes every option)

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def kwargs(self) -> dict:
        """What ``parser.addoption`` (pytest) and ``parser.add_argument`` (argparse) both take."""
        out = {"help": self.help}
        if self.action == "store_true":
            return {"action": "store_true", **out}
        if self.action is not None:
            out["action"] = self.action
        out["default"] = self.default
        for name in ("type", "choices", "metavar"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


_LOADING = ("accuracy", "discover", "compare", "baseline")  # the commands that load a model with the loader's opt-ins
_MEASURING = (*_LOADING, "calibrate")

OPTIONS: tuple[Option, ...] = (
    Option(
        "--model",
        "model(s) to check: a registered name (" + ", ".join(REGISTRY) + "), a hub id, a local "
        "directory or base+adapter; repeat or comma-separate. Default: the toy zoo.",
        action="append",
        metavar="NAME",
    ),
    Option("--base-model", "the model a fine-tune is compared with (default: its registered base)", metavar="NAME"),
    Option(
        "--baseline-model",
        "check the measured model against the baselines of this one (e.g. a new checkpoint of "
        "Goat against goat7b's published numbers); the independent-sample tolerances apply",
        metavar="NAME",
    ),
    Option(
        "--circuit",
        "circuit(s) the circuit claims evaluate (from baselines/circuits.json or a JSON file). "
        "Default: the circuit found on the model's base (llama7b for the paper's models, toy-llama "
        "for the zoo)",
        action="append",
        metavar="NAME",
    ),
    Option("--device", "torch device (cpu, cuda, cuda:1); default cpu", default="cpu", commands=_MEASURING),
    Option(
        "--dtype", "float32 (the paper's, the default), bfloat16 or float16", default="float32", commands=_MEASURING
    ),
    Option(
        "--device-map",
        "spread each model over several devices through accelerate, for one wider than a GPU: auto (fill the "
        "GPUs in order), balanced, sequential, or a JSON file mapping module names to a GPU index, cpu or disk "
        "(mechbench plan --gpu-gib says when a model needs it). Pass --device cuda beside it; under pytest -n, "
        "give each worker its own GPUs (CUDA_VISIBLE_DEVICES) or run one worker",
        metavar="auto|FILE",
        commands=_MEASURING,
    ),
    Option(
        "--limit",
        "each claim's main sample (the prompts or pairs it is measured on) is N, its tolerances widen "
        "to match; repeats and the method's own settings (DCM's training pairs) stay (default: the "
        "paper's sizes, e.g. 500 prompts)",
        type=int,
        metavar="N",
    ),
    Option(
        "--seed", "seed of every dataset and sampler (default 0)", default=0, type=int, commands=("accuracy", "compare")
    ),
    Option(
        "--batch-size",
        "prompts per forward (results do not depend on it). auto (default): 50 on the CPU; on a "
        "GPU the largest batch (up to 100) at which every claim's memory plan fits the free memory "
        "(mechbench plan MODEL shows it)",
        default="auto",
        metavar="N|auto",
    ),
    Option(
        "--baselines-dir",
        "directory of the baseline JSON files and circuits.json (default: the checkout's "
        "baselines/; mechbench discover --store creates it if missing)",
        commands=("discover", "compare", "baseline", "plan", "calibrate"),
    ),
    Option(
        "--update-baselines",
        "store the measured numbers as baselines (measured models only; paper numbers are "
        "kept). The updates are written together when the run ends: an interrupted run "
        "changes nothing",
        action="store_true",
    ),
    Option(
        "--bos",
        "whether prompts start with the tokenizer's BOS token: auto (default) when it is a document start "
        "such as LLaMA's <s>, not when it is a chat turn marker; always; never",
        default="auto",
        choices=BOS_CHOICES,
        commands=_LOADING,
    ),
    Option(
        "--boxes",
        "boxes per context in every prompt the run builds (the paper's task: 7; a smaller model may track "
        "fewer). Chance is 1/K; baselines and circuits measured at K boxes are keyed by it",
        default=7,
        type=int,
        metavar="K",
        commands=_MEASURING,
    ),
    Option(
        "--tokenizer",
        "the tokenizer to load instead of the model's own (a directory or hub id), e.g. where the "
        "family's tokenizer class would replace the one the directory holds",
        metavar="DIR|ID",
        commands=_MEASURING,
    ),
    Option(
        "--drop-multi-token",
        "leave out the task words (objects, labels) that the model's tokenizer splits into "
        "several tokens, instead of refusing the model",
        action="store_true",
        commands=_LOADING,
    ),
    Option(
        "--force-baselines",
        "with --update-baselines: store even a baseline with tolerance 0, or on fewer "
        "examples than the claim's default (--limit) or the record it replaces",
        action="store_true",
    ),
    Option(
        "--results-dir",
        f"where results.jsonl is appended as claims finish, and the comparison reports and the "
        f"discovery cache go (made when first written to). A relative path is relative to the current "
        f"directory (default: {RESULTS_DIR})",
        default=RESULTS_DIR,
        commands=("compare", "baseline"),
    ),
    Option(
        "--claim",
        "run only these claims' tests (registered names, e.g. dcm,dcm_patching; repeat or comma-separate); "
        "the others are deselected",
        action="append",
        metavar="NAME",
    ),
    Option("--require-models", "fail, instead of skip, when a model cannot be loaded", action="store_true"),
    Option(
        "--allow-skips",
        "let a run pass in which a model that loaded had every claim test skipped or deselected "
        "(no baseline to compare with, say); by default such a run fails, since it checked "
        "nothing",
        action="store_true",
    ),
    Option(
        "--allow-pickle",
        "load pickled (.bin) weights where a model has no safetensors (unpickling runs code "
        "from the file: only for sources you trust)",
        action="store_true",
        commands=_LOADING,
    ),
    Option(
        "--paper-compat-o-proj",
        "Goat: drop the o_proj LoRA in runs with interventions, as the paper's hooks did, "
        "to compare like for like with its published numbers from hooked runs (default: "
        "the real Goat)",
        action="store_true",
    ),
    Option(
        "--compare",
        "comparison mode for every model with a known base, even one with baselines of its own: each "
        "claim measured on the model and its base side by side, and a mechanism verdict (a model with "
        "no baselines of its own and a known base is compared without this flag)",
        action="store_true",
    ),
    Option(
        "--quick",
        "comparison mode's quick lane: fewer prompts and draws (intervals widen to match)",
        action="store_true",
        commands=("compare",),
    ),
    Option(
        "--reference",
        "stored fine-tunes shown beside a comparison (default: toy-goat, toy-float for toy-llama; "
        "goat7b, float7b for llama7b)",
        action="append",
        metavar="NAME",
        commands=("compare",),
    ),
)

BY_FLAG = {o.flag: o for o in OPTIONS}


def add_pytest_options(group) -> None:
    """Every option, on pytest's "mechbench" group (``parser.getgroup("mechbench")``)."""
    for option in OPTIONS:
        group.addoption(option.flag, **option.kwargs())


def add_command_options(parser, command: str) -> None:
    """The options ``command`` (a ``mechbench`` subcommand) shares with the plugin, on its argparse parser."""
    for option in OPTIONS:
        if command in option.commands:
            parser.add_argument(option.flag, **option.kwargs())


def given(config) -> list[str]:
    """The options of this table set to something other than their default in a pytest session (on its command
    line, or in addopts): such a session uses mechbench."""
    return [o.flag for o in OPTIONS if config.getoption(o.flag) != (False if o.action == "store_true" else o.default)]
