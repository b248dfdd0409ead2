"""A base mechbench has never seen, end to end, as a new user meets it: toy-llama and toy-goat rewritten as Qwen2
models (mechbench.zoo.convert: the same function in another family, so every number has a known right answer,
toy-llama's stored one), and a model at chance.

- ``mechbench compare`` before the base has a circuit runs the claims that need none, reports the others as not
  run with advice, and that advice, executed as written, stores the circuit and the baselines;
- the circuit it stores is toy-llama's, found with the settings chosen from the shape (the toy chain), and every
  stored number equals toy-llama's stored one;
- a second run resumes (every claim read back, the discovery from its checkpoint);
- pytest finds the stored circuit by the model's name without --circuit, and path patching re-runs the discovery
  with the settings stored with it;
- a skip for want of another claim's stored numbers (DCM patching without DCM) gives a command that, executed as
  written, removes the skip;
- a model at chance is refused by ``baseline`` and ``discover`` before any discovery, quickly, storing nothing.
"""

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mechbench import baselines
from mechbench.circuits import Circuit
from mechbench.models.registry import zoo_dir
from mechbench.zoo.convert import convert
from tests.helpers import save_random_llama

ROOT = Path(__file__).resolve().parent.parent


def mechbench(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mechbench.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def execute(advice: str, cwd, *extra) -> subprocess.CompletedProcess:
    """A command line a message advises, run as written (``pytest``/``mechbench`` through this interpreter), with
    ``extra`` arguments after it (a subset of the claims, to keep the test short)."""
    words = shlex.split(advice)
    program = {"pytest": [sys.executable, "-m", "pytest"], "mechbench": [sys.executable, "-m", "mechbench.cli"]}
    return subprocess.run([*program[words[0]], *words[1:], *extra], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """toy-llama and toy-goat as Qwen2 models in a directory of their own, an empty baselines directory beside."""
    root = tmp_path_factory.mktemp("new-base")
    convert(zoo_dir("toy-llama"), root / "qwen-llama", "qwen2")
    convert(zoo_dir("toy-goat"), root / "qwen-goat", "qwen2")
    return root


@pytest.fixture(scope="module")
def stored(world):
    """The first thing a user runs, a comparison, then the advice it gives, executed as written."""
    compare = mechbench(
        "compare", "qwen-goat", "--base", "qwen-llama", "--baselines-dir", "mine", "--claims",
        "accuracy,faithfulness", "--quick", cwd=world,
    )  # fmt: skip
    advice = re.search(r"`(mechbench baseline [^`]+)`", compare.stderr)
    started = time.perf_counter()
    done = execute(advice.group(1), world, "--claims", "accuracy,path_patching") if advice else None
    return compare, advice, done, time.perf_counter() - started


def test_compare_without_a_circuit_runs_what_needs_none_and_advises_the_command_that_stores_one(world, stored):
    compare, advice, _, _ = stored
    assert compare.returncode == 0, compare.stderr[-3000:]
    assert "faithfulness: could not run: no circuit to evaluate: no circuit stored for the base 'qwen-llama'" in (
        compare.stderr
    )
    assert advice is not None and advice.group(1) == "mechbench baseline qwen-llama --baselines-dir mine"
    report = (world / "results" / "compare-qwen-goat.md").read_text()
    assert "## faithfulness: could not run" in report and "## accuracy" in report
    rows = [json.loads(line) for line in (world / "results" / "results.jsonl").read_text().splitlines()]
    assert any(r["claim"] == "compare:accuracy" for r in rows)  # the claim that could run was measured and kept


def test_the_advice_stores_toy_llama_s_circuit_and_numbers(world, stored):
    _, _, done, seconds = stored
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    out = done.stdout
    assert "qwen-llama does the task: accuracy 0.642 vs chance 0.143" in out
    assert "2. discovery settings: the toy chain (no position-detector step): 4 layers < 16" in out
    assert "warning: group pos_transmitter: weak evidence" in out  # kept, and said so
    assert re.search(
        r"6\. checked every claim against the stored baselines at seed 0: accuracy,path_patching: \d+ passed", out
    )
    found, known = Circuit.load("qwen-llama", world / "mine"), Circuit.load("toy-llama")
    assert {g: c.heads for g, c in found.groups.items()} == {g: c.heads for g, c in known.groups.items()}
    assert found.discovery["steps"][-1]["group"] == "struct_reader" and found.fingerprint
    for claim in ("accuracy", "path_patching"):
        mine = baselines.load(claim, world / "mine").records
        assert mine, claim
        for record in mine:
            keys = {k: "toy-llama" if k in ("model", "circuit") else v for k, v in record.keys.items()}
            assert baselines.load(claim).find(**keys).value == record.value, (claim, keys)
    print(f"baseline, accuracy and path patching: {seconds:.0f} s")


def test_a_second_run_resumes_every_finished_step(world, stored):
    again = mechbench(
        "baseline", "qwen-llama", "--baselines-dir", "mine", "--claims", "accuracy,path_patching", cwd=world
    )
    assert again.returncode == 0, again.stdout[-3000:]
    assert "5. accuracy: stored by an earlier run (resumed)" in again.stdout
    assert "5. path_patching: stored by an earlier run (resumed)" in again.stdout
    assert again.stdout.count("resumed from the checkpoint") == 3  # the discovery's three steps


def test_pytest_finds_the_stored_circuit_by_the_model_s_name(world, stored):
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "suites"), "-p", "no:cacheprovider", "-q", "--model=qwen-llama",
         "--baselines-dir=mine", "--claim=path_patching", f"--ignore={ROOT / 'suites' / 'test_compare.py'}"],
        capture_output=True, text=True, cwd=world,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    assert "1 passed" in done.stdout and "qwen-llama-circuit=qwen-llama" not in done.stdout.split("passed")[-1]


def test_a_skip_for_another_claim_s_numbers_advises_a_command_that_removes_it(world, stored):
    def dcm_patching(*extra):
        return subprocess.run(
            [sys.executable, "-m", "pytest", str(ROOT / "suites"), "-p", "no:cacheprovider", "-q", "-rs",
             "--model=qwen-llama", "--baselines-dir=mine", "--claim=dcm_patching", "-k", "object_value", *extra],
            capture_output=True, text=True, cwd=world,
        )  # fmt: skip

    skipped = dcm_patching("--allow-skips")
    assert "1 skipped" in skipped.stdout, skipped.stdout[-2000:]
    advice = re.search(r"store one first, in the same run or before it: (pytest .+)$", skipped.stdout, re.M)
    assert advice is not None, skipped.stdout[-2000:]
    assert "--claim=dcm --model=qwen-llama --circuit=qwen-llama --baselines-dir=mine --update-baselines" in advice[1]
    stored_dcm = execute(advice[1], world, "-k", "object_value")
    assert stored_dcm.returncode == 0, stored_dcm.stdout[-2000:]
    after = dcm_patching("--update-baselines")  # the skip is gone: its numbers are stored beside DCM's
    assert "1 passed" in after.stdout, after.stdout[-2000:]


@pytest.mark.parametrize("command", ["baseline", "discover"])
def test_a_model_at_chance_is_refused_before_any_discovery(tmp_path, command):
    save_random_llama(tmp_path / "random", n_layers=2, n_heads=4)
    extra = ["--baselines-dir", "mine"] if command == "baseline" else ["--store", "--baselines-dir", "mine"]
    started = time.perf_counter()
    done = mechbench(command, "random", *extra, cwd=tmp_path)
    seconds = time.perf_counter() - started
    assert done.returncode == 2, done.stdout + done.stderr
    assert re.search(r"random does not do the task: accuracy 0\.\d+ vs chance 0\.143", done.stderr)
    assert "nothing was discovered or stored" in done.stderr and "sender runs" not in done.stderr
    assert not (tmp_path / "mine" / "circuits.json").exists()
    assert seconds < 60, seconds
