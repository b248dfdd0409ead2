"""The false-alarm audit: how often does each claim fail on a model that did not change?

    mechbench calibrate toy-vicuna --seeds 10                 # each claim under seeds 1..10 against its baselines
    mechbench calibrate toy-vicuna --seeds 10 --plant readers  # the same on a planted change: it must fail

Every claim's baseline was measured at one seed; a rerun under a fresh seed draws other prompts, pairs and
random circuits, so the independent-sample tolerance applies. The audit runs ``pytest suites/ --model=MODEL
--seed=S`` for each seed (a separate process each, results in ``<out>/seed-S/results.jsonl``) and counts, per
claim test, the seeds on which it failed: a claim whose tolerance states its uncertainty right fails an
unchanged model rarely (mechbench's aim: at most 1 time in 10), while a planted change of mechanism (some of
the circuit's heads silenced in a copy of the model, checked with ``--baseline-model MODEL``) must fail.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

#: Planted changes of mechanism: which group of the circuit evaluated on the model loses heads (their W_O columns
#: zeroed in a copy of the model), so that the plant hits the model's own circuit whatever the model.
PLANTS = {
    "readers": ("struct_reader", "the circuit's leading structure readers silenced"),
    "fetchers": ("value_fetcher", "the circuit's leading value fetchers' W_O zeroed"),
    "transmitters": ("pos_transmitter", "the circuit's leading position transmitters' W_O zeroed"),
}
#: Heads silenced per plant, at most.
PLANTED_HEADS = 4


def planted_heads(model_name: str, which: str, circuit: str | None = None, baselines_dir=None) -> tuple:
    """The heads ``which`` silences on ``model_name``: in the circuit the suites evaluate on it (by default its
    base's, else its own: the circuit its baselines were measured with), the plant's group's leading layer (the
    layer of its first, strongest head) and that layer's first four heads of the group, in the circuit's order. One
    layer's heads change the mechanism at one place, where the group acts most (on the toy zoo: the structure
    readers' L0H3, L0H1, L0H4, L0H2 and the value fetchers' L2H0, L2H5, L2H6, L2H1, the plants of the audit)."""
    from mechbench.circuits import Circuit
    from mechbench.errors import MechbenchError
    from mechbench.plan import default_circuit

    if which not in PLANTS:
        raise MechbenchError(f"no plant named {which!r}; the plants: {', '.join(PLANTS)}")
    name = circuit or default_circuit(model_name)
    try:
        found = Circuit.load(name, baselines_dir)
    except MechbenchError as e:
        raise MechbenchError(
            f"a plant silences heads of the circuit evaluated on {model_name!r}, and circuit {name!r} "
            f"cannot be read ({e}); store one (mechbench discover) or pass --circuit"
        ) from None
    group = PLANTS[which][0]
    if group not in found.groups or not found.groups[group].heads:
        raise MechbenchError(
            f"circuit {name!r} has no {group} group to plant a change in (its groups: "
            f"{', '.join(found.groups)}); choose another plant"
        )
    heads = [tuple(h) for h in found.groups[group].heads]
    layer = heads[0][0]
    return tuple(h for h in heads if h[0] == layer)[:PLANTED_HEADS]


def plant(model_name: str, which: str, out: Path, circuit: str | None = None, baselines_dir=None) -> Path:
    """Save a copy of ``model_name`` with the heads of :func:`planted_heads` silenced (their W_O columns zeroed)."""
    import torch

    from mechbench.api import get_model
    from mechbench.models.architectures import sites

    heads = planted_heads(model_name, which, circuit, baselines_dir)
    handle = get_model(model_name)
    # an adapter model's LoRA deltas merged first: zeroing the base weight alone would leave o_proj's B @ A columns
    # (and the saved copy would not load as a plain model of its architecture)
    model = _merged(copy.deepcopy(handle.model))
    d = handle.shape.head_dim
    with torch.no_grad():
        for layer, head in heads:
            sites(model).module(model, layer, "head_out").weight[:, head * d : (head + 1) * d] = 0
    path = out / f"{model_name.strip('/').replace('/', '_')}-{which}"
    model.save_pretrained(path, safe_serialization=True)
    handle.tokenizer.save_pretrained(path)
    return path


def _merged(model):
    """``model`` with every LoRA layer peft injected merged into its base layer and replaced by it."""
    if hasattr(model, "merge_and_unload"):  # a PeftModel
        return model.merge_and_unload()
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # no peft: no adapter layers either
        return model
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    return model


def describe_plant(model_name: str, which: str, circuit: str | None = None, baselines_dir=None) -> str:
    heads = planted_heads(model_name, which, circuit, baselines_dir)
    return f"{PLANTS[which][1]}: " + ", ".join(f"L{layer}H{head}" for layer, head in heads)


#: The claim suites of this checkout, wherever the audit is started from.
SUITES = Path(__file__).resolve().parent.parent / "suites"


def run_seeds(
    model: str, seeds: list[int], out: Path, extra: list[str] = (), suites: str | Path = SUITES, log=print
) -> dict[str, list[int]]:
    """Run the suites once per seed; returns, per claim test, the seeds on which it failed. A seed whose
    pytest ran no claim (no suites there, a usage error, a -k that selects nothing) is an error, not a clean row."""
    from mechbench.errors import MechbenchError

    if not Path(suites).is_dir():
        raise MechbenchError(
            f"no claim suites at {suites}: the audit runs mechbench's suites/ from a checkout of the repository"
        )
    failures: dict[str, list[int]] = defaultdict(list)
    tests: set[str] = set()
    for seed in seeds:
        seed_dir = out / f"seed-{seed}"
        report = seed_dir / "report.json"
        seed_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            str(suites),
            f"--model={model}",
            f"--seed={seed}",
            f"--results-dir={seed_dir}",
            "-q",
            "-p",
            "no:cacheprovider",
            "--junitxml",
            str(seed_dir / "junit.xml"),
            *extra,
        ]
        log(f"seed {seed}: {' '.join(cmd[3:])}")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode not in (0, 1):  # 0: all passed, 1: some failed; else nothing was judged
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
            raise MechbenchError(
                f"seed {seed}: pytest judged no claim (exit code {done.returncode}; 5 means no test "
                f"was selected: check -k and the model): {tail}"
            )
        for name, outcome in _junit_outcomes(seed_dir / "junit.xml").items():
            tests.add(name)
            if outcome == "failed":
                failures[name].append(seed)
        report.write_text(json.dumps({k: v for k, v in failures.items()}, indent=1))
    return {name: failures.get(name, []) for name in sorted(tests)}


def _junit_outcomes(path: Path) -> dict[str, str]:
    import xml.etree.ElementTree as ET

    if not path.is_file():
        return {}
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        # the test's name without the model parameter, so that seeds add up per claim test
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        if case.find("skipped") is not None:
            continue
        out[name] = "failed" if case.find("failure") is not None or case.find("error") is not None else "passed"
    return out


def table(failures: dict[str, list[int]], n_seeds: int) -> str:
    lines = ["| claim test | failed | seeds |", "|---|---|---|"]
    for name, seeds in failures.items():
        lines.append(f"| `{name}` | {len(seeds)}/{n_seeds} | {', '.join(map(str, seeds)) or '–'} |")
    return "\n".join(lines)
