"""A base mechbench has never seen, end to end: ``mechbench baseline DIR --baselines-dir B [--boxes K]``.

The steps, each its own function so that ``mechbench discover`` applies the same guard, rule and warnings:

1. :func:`require_task`: the chance guard, before any discovery (a model at chance has no circuit to find: the
   discovery of SmolLM2-135M at chance ran 7 min 40 s and returned 39 heads of noise).
2. :func:`settings_for`: discovery settings from the model's shape, printed with the reason (the rule below);
   ``--config NAME`` takes a registered circuit's instead.
3. :func:`without_null_groups`: a group with no effect (no head below zero by 3 standard errors, and its best score
   under a tenth of the strongest) is dropped and reported (the paper's chain on a 4-layer model found a 9-head
   ``pos_detector`` group of scores -0.000); a group of weak evidence is kept with a warning.
4. the circuit stored in ``B/circuits.json`` with the model's weights fingerprint and its discovery settings, so
   that every claim finds it (by name or fingerprint) and re-runs its discovery as it was run;
5. every claim's baselines measured and stored, one claim at a time in the registry's order with the claims a
   claim reads first (:func:`claim_order`: DCM before DCM patching), each a ``pytest --claim NAME
   --update-baselines`` run whose finished claims are kept in ``<results-dir>/baseline-<name>.json``: an
   interrupted run resumes at the claim it was in (the discovery resumes at its step);
6. a check run of every claim against what was stored, and a summary.

The rule for the settings (:func:`settings_for`): a model of at least :data:`PAPER_SHAPED_LAYERS` layers is
paper-shaped and gets the paper's chain (D -> C -> B -> A) with the Llama-7B run's head counts scaled by its number
of heads over Llama-7B's 1024; a smaller one gets the toy chain (no position-detector step; the structure readers
feed the value fetchers: mechbench/models/discovery_settings.py) with toy-llama's head counts scaled by its heads
over toy-llama's 32. At the two reference shapes the rule gives exactly the stored runs' settings.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from mechbench.errors import MechbenchError

#: Layers from which a model gets the paper's discovery chain (Llama-7B has 32; the toy zoo 4).
PAPER_SHAPED_LAYERS = 16
#: A kept group needs a head whose score is below zero by this many cluster-robust standard errors.
NULL_Z = 3.0
#: ... and below this in logit difference: a score of -0.000 with a standard error of 0 (nothing reached the
#: receivers) is no effect either.
NULL_FLOOR = 1e-4
#: A group without a significant head is dropped only when its best score is also under this share of the strongest
#: score of any step (:func:`without_null_groups`).
NULL_RELATIVE = 0.1


def settings_for(shape):
    """(settings, why) for a model of ``shape`` (n_layers, n_heads): the rule of the module's docstring."""
    from mechbench.models.registry import CIRCUITS

    heads = shape.n_layers * shape.n_heads
    if shape.n_layers >= PAPER_SHAPED_LAYERS:
        reference, reference_heads, chain = "llama7b", 32 * 32, "the paper's chain (D -> C -> B -> A)"
    else:
        reference, reference_heads, chain = "toy-llama", 4 * 8, "the toy chain (no position-detector step)"
    stored = CIRCUITS[reference].discovery
    scale = heads / reference_heads

    def scaled(counts):
        return tuple((g, max(1, round(k * scale))) for g, k in counts)

    config = replace(stored, receiver_k=scaled(stored.receiver_k), circuit_k=scaled(stored.circuit_k))
    why = (
        f"{chain}: {shape.n_layers} layers {'>=' if reference == 'llama7b' else '<'} {PAPER_SHAPED_LAYERS}; "
        f"{reference}'s head counts x {heads}/{reference_heads} heads: receivers "
        + ", ".join(f"{g}={k}" for g, k in config.receiver_k)
        + "; kept "
        + ", ".join(f"{g}={k}" for g, k in (config.circuit_k or config.receiver_k))
        + f"; {config.n_pairs} noise pairs, seed {config.seed}, min effect {config.min_effect:g}"
    )
    return config, why


def require_task(handle, boxes: int = 7, n_examples: int = 500, seed: int = 0):
    """The chance guard on ``n_examples`` prompts of ``boxes`` boxes: the :class:`mechbench.stats.ChanceCheck`, or
    an error that names the accuracy, chance and what to try."""
    from mechbench.api import accuracy_check

    task = accuracy_check(handle, n_examples, seed, num_boxes=boxes)
    if not task.passed:
        fewer = f"fewer boxes (--boxes {max(2, boxes // 2)}), " if boxes > 2 else ""
        raise MechbenchError(
            f"{task.message(handle.name)} on {n_examples} prompts of {boxes} boxes: a circuit found on a model at "
            f"chance is noise, so nothing was discovered or stored. Try {fewer}the tokenizer and BOS choice "
            f"(--tokenizer, --bos), or check the weights (`mechbench accuracy {handle.name}`)"
        )
    return task


def without_null_groups(found, min_effect: float = 0.0) -> tuple[object, dict[str, str], dict[str, str]]:
    """``found.circuit`` (a :class:`mechbench.methods.discovery.Discovery`'s) without the groups that have no effect,
    with why per dropped group, and a warning per kept group whose evidence is weak.

    A group has no effect when none of its heads scores below zero by NULL_Z standard errors (or below
    ``-min_effect``, or NULL_FLOOR) *and* its best score is under NULL_RELATIVE of the strongest score of any step:
    indistinguishable from zero and negligible beside the other groups (the paper's chain on a 4-layer model: a
    position-detector step of scores -0.000). Significance alone would drop real groups: at 300 noise pairs one
    head's standard error is about half its score (toy-llama's two position transmitters: -0.044 +- 0.029 and
    -0.030 +- 0.017, 60% of the strongest score); such a group is kept, with a warning."""
    circuit, dropped, weak = found.circuit, {}, {}
    strongest = max((-float(found.scores[g].min()) for g in circuit.groups), default=0.0)
    for name, group in circuit.groups.items():
        scores = found.scores[name]
        se = found.se[name] if found.se else scores * 0
        best = min(group.heads, key=lambda h: float(scores[h]))
        significant = any(float(scores[h]) < -max(NULL_Z * float(se[h]), min_effect, NULL_FLOOR) for h in group.heads)
        if significant:
            continue
        what = (
            f"none of its {len(group.heads)} heads scores below -{NULL_Z:g} standard errors (best "
            f"L{best[0]}H{best[1]} {float(scores[best]):+.4f}, SE {float(se[best]):.4f}"
        )
        if -float(scores[best]) < NULL_RELATIVE * strongest:
            dropped[name] = f"no effect: {what}, under {NULL_RELATIVE:.0%} of the strongest score {-strongest:+.4f})"
        else:
            weak[name] = f"weak evidence: {what}; kept: {-float(scores[best]) / strongest:.0%} of the strongest score)"
    return replace(circuit, groups={n: g for n, g in circuit.groups.items() if n not in dropped}), dropped, weak


def circuit_lines(found, circuit, dropped: dict, weak: dict) -> list[str]:
    """What a discovery found, as ``discover`` and ``baseline`` print it: the dropped groups and why, the warnings,
    then each kept group's heads with their scores."""
    return (
        [f"dropped group {group}: {reason}" for group, reason in dropped.items()]
        + [f"warning: group {group}: {reason}" for group, reason in weak.items()]
        + [
            f"{group} ({g.role}): " + ", ".join(f"L{l}H{h} {found.scores[group][l, h]:+.3f}" for l, h in g.heads)
            for group, g in circuit.groups.items()
        ]
    )


def claim_order(claims=None) -> list[str]:
    """The registered claims in the registry's order, each after the claims it reads (its spec's ``reads``)."""
    from mechbench.claims import CLAIMS

    names = list(claims or CLAIMS)
    out: list[str] = []

    def visit(name, seen=()):
        if name in out or name not in CLAIMS:
            return
        if name in seen:
            raise MechbenchError(f"claims read each other in a circle: {' -> '.join((*seen, name))}")
        for need in CLAIMS[name].reads:
            if need in names:
                visit(need, (*seen, name))
        out.append(name)

    for name in names:
        visit(name)
    return out


@dataclass
class ClaimRun:
    """What one pytest run of a claim did: its counts (passed, failed, skipped, ...) and exit code."""

    claim: str
    exit_code: int
    counts: dict
    seconds: float

    def line(self) -> str:
        counts = ", ".join(f"{v} {k}" for k, v in self.counts.items()) or "no test"
        return f"{self.claim}: {counts} ({self.seconds:.0f} s)"


def _counts(output: str) -> dict:
    """pytest's last summary line as {outcome: count}."""
    lines = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected|error)", line)]
    if not lines:
        return {}
    return {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed)", lines[-1])}


def pytest_claims(claims: list[str], options: list[str], log, check: bool = False) -> ClaimRun:
    """One ``pytest <suites> --claim ...`` in a subprocess (a fresh process per claim: a crash in one keeps the
    others' stored numbers), its output passed through ``log``."""
    from mechbench.pytest_plugin import SUITES

    if not SUITES.is_dir():
        raise MechbenchError(
            f"mechbench's suites are not at {SUITES}: install mechbench from its checkout (pip install -e .)"
        )
    # a base has no base of its own to be compared with: the comparison suite has nothing to run
    command = [sys.executable, "-m", "pytest", str(SUITES), f"--ignore={SUITES / 'test_compare.py'}"]
    command += ["-p", "no:cacheprovider", "-q", "-rs", "--allow-skips"]
    command += [f"--claim={','.join(claims)}", *options] + ([] if check else ["--update-baselines"])
    log("$ " + " ".join(command[1:]))
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    output = done.stdout + done.stderr
    for line in output.splitlines():
        if (
            line.startswith(("SKIPPED", "FAILED", "ERROR"))
            or "baseline" in line.lower()
            and line.startswith(("+", "~", "-"))
        ):
            log("  " + line)
    return ClaimRun(",".join(claims), done.returncode, _counts(output), time.perf_counter() - start)


def circuit_name_for(model: str) -> str:
    """A new base's circuit name: the directory's (or hub id's) last part, which is a name the model is known by
    (:func:`mechbench.models.registry.names_of`), so pytest, compare and plan find the circuit without --circuit."""
    return Path(model.rstrip("/")).name or model


class Progress:
    """``<results-dir>/baseline-<circuit>.json``: the claims a ``mechbench baseline`` run has stored, with what it
    was asked (a resumed run with other settings starts over rather than mixing them)."""

    def __init__(self, path: Path, asked: dict):
        self.path, self.asked, self.done = path, asked, {}
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                data = None
            if isinstance(data, dict) and data.get("asked") == asked and isinstance(data.get("done"), dict):
                self.done = data["done"]

    def finish(self, run: ClaimRun) -> None:
        self.done[run.claim] = {"exit_code": run.exit_code, "counts": run.counts, "seconds": round(run.seconds, 1)}
        from mechbench.results import write_json_atomic

        write_json_atomic(self.path, {"asked": self.asked, "done": self.done}, indent=None)


def baseline(
    model: str,
    baselines_dir: Path,
    results_dir: Path,
    load_options: dict,
    boxes: int = 7,
    device: str = "cpu",
    dtype: str = "float32",
    config_name: str | None = None,
    name: str | None = None,
    claims: list[str] | None = None,
    check_seed: int = 0,
    log=print,
) -> dict:
    """Steps 1-6 of the module's docstring for ``model``; returns the summary (also printed through ``log``)."""
    from mechbench import validate
    from mechbench.api import get_model
    from mechbench.circuits import check_storable, store_circuit
    from mechbench.methods.discovery import checkpoint_path, discover
    from mechbench.models.discovery_settings import config_to_json
    from mechbench.models.registry import CIRCUITS

    name = name or circuit_name_for(model)
    validate.baselines_dir(baselines_dir, create=True)
    validate.writable_baselines(baselines_dir)
    work = validate.writable_dir("--results-dir", Path(results_dir))
    check_storable(name, baselines_dir)
    if config_name is not None and config_name not in CIRCUITS:
        raise MechbenchError(
            f"--config {config_name}: no discovery settings of that name; known: {', '.join(CIRCUITS)}"
        )

    handle = get_model(model, device=device, dtype=dtype, **load_options)
    task = require_task(handle, boxes)
    log(f"1. {task.message(handle.name)} ({boxes} boxes)")
    if config_name is not None:
        config, why = CIRCUITS[config_name].discovery, f"--config {config_name}: that circuit's stored settings"
    else:
        config, why = settings_for(handle.shape)
    config = replace(config, num_boxes=boxes)
    log(f"2. discovery settings: {why}")
    found = discover(handle, name, config, log=lambda m: log("   " + m), cache_dir=work / "discovery")
    circuit, dropped, weak = without_null_groups(found, config.min_effect)
    for line in circuit_lines(found, circuit, dropped, weak):
        log(f"3. {line}")
    if not circuit.groups:
        saved = checkpoint_path(handle, name, config, work / "discovery")[1]
        raise MechbenchError(
            f"the discovery on {model} found no group with an effect (its scores are in {saved}): the model does the "
            f"task ({task.accuracy:.3f} vs chance {task.chance:.3f}) but not through heads path patching finds "
            f"with these settings; try --config with other settings"
        )
    how = f"mechbench baseline {model} ({why.split(':')[0]})"
    diff = store_circuit(
        circuit, how, baselines_dir, handle.fingerprint.get("weights_sha256"), discovery=config_to_json(config)
    )
    log(f"4. circuit {name!r} stored in {Path(baselines_dir) / 'circuits.json'}:\n" + diff)

    options = [f"--model={model}", f"--circuit={name}", f"--baselines-dir={baselines_dir}"]
    options += [f"--results-dir={results_dir}", f"--device={device}", f"--dtype={dtype}", f"--boxes={boxes}"]
    for flag, key in (("--tokenizer", "tokenizer"), ("--bos", "bos")):
        if key in load_options:
            options.append(f"{flag}={load_options[key]}")
    for flag, key in (("--allow-pickle", "allow_pickle"), ("--drop-multi-token", "drop_multi_token")):
        if load_options.get(key):
            options.append(flag)
    order = claim_order(claims)
    progress = Progress(
        work / f"baseline-{name}.json",
        {"model": model, "circuit": circuit.to_json(), "baselines_dir": str(baselines_dir), "boxes": boxes},
    )
    stored = []
    for claim in order:
        if claim in progress.done:
            log(f"5. {claim}: stored by an earlier run (resumed)")
            continue
        run = pytest_claims([claim], options, lambda m: log("   " + m))
        progress.finish(run)
        stored.append(run)
        log(f"5. stored {run.line()}")
    check = pytest_claims(order, [*options, f"--seed={check_seed}"], lambda m: log("   " + m), check=True)
    summary = {
        "model": model,
        "circuit": name,
        "accuracy": task.accuracy,
        "chance": task.chance,
        "dropped": dropped,
        "weak": weak,
        "stored": {c: progress.done[c] for c in order if c in progress.done},
        "check": {"exit_code": check.exit_code, "counts": check.counts, "seed": check_seed},
    }
    log(
        f"6. checked every claim against the stored baselines at seed {check_seed}: {check.line()}"
        + ("" if check.exit_code == 0 else " -- see the failures above")
    )
    return summary
