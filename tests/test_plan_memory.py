"""The memory plan (mechbench plan) against what the claims hold: each claim test's peak device memory under the
simulated GPU (the storages alive on it, mechbench.testing.device), recorded as a ``memory:<claim>`` results row,
must lie within ``plan.MEASURED_OVER_PLAN`` of the plan's prediction for the same shapes, dtype, batch and prompt
length: on the toy zoo, and on paper-shaped stand-ins (32 layers x 32 heads, the 32,000-token vocabulary, a small
width). This is also the CI lane of the simulated GPU: the claims themselves run under it (--device cuda) and must
pass on the toy zoo."""

import json
import os
import subprocess
import sys
from pathlib import Path

from mechbench import plan
from tests.test_paper_route import STANDIN, hub_cache  # noqa: F401 - the stand-ins' fixture

ROOT = Path(__file__).resolve().parent.parent
GUARD_OFF = '''"""Test-only: the stand-ins do not do the task; their claims run past the chance guard so that their memory shows."""
from mechbench.claims.run import Run

Run.require_working_model = lambda self: None
'''


def _suites(results: Path, *options: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(ROOT / "suites"),
        "--device=cuda",
        f"--results-dir={results}",
        "-q",
        "-p",
        "no:cacheprovider",
        *options,
    ]
    environment = {**os.environ, "MECHBENCH_SIMULATED_GPU_GIB": "80", **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=1200)


#: Claims whose plan is another claim's upper bound, checked for the upper end only (the plan must not promise a
#: GPU less than the claim holds): the additional desiderata's DCM is the DCM claim's workload, written for four
#: groups trained together; it trains the one group of position transmitters, which on toy-llama holds 0.20 of
#: that plan (23.1 MiB of 116.2; the DCM claim's four groups 62.1 MiB, 0.53).
UPPER_END_ONLY = {"dcm_additional"}


def _checked(results: Path, shapes=None) -> dict[str, float]:
    rows = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    compared = plan.measured_against_plan(rows, shapes)
    low, high = plan.MEASURED_OVER_PLAN
    outside = [
        f"{row['claim']} on {row['model']} ({row['test']}): {row['value'] / 2**20:.1f} MiB measured, "
        f"{planned / 2**20:.1f} MiB planned, x{ratio:.2f}"
        for row, planned, ratio in compared
        if not (0 if row["claim"].removeprefix("memory:") in UPPER_END_ONLY else low) <= ratio <= high
    ]
    assert not outside, "\n".join(outside)
    for row, _planned, ratio in compared:  # shown with -s: docs/performance.md's table
        print(f"{row['claim']} {row['model']} {row['test']}: x{ratio:.2f}")
    return {row["claim"].removeprefix("memory:"): ratio for row, _, ratio in compared}


def test_the_toy_zoo_claims_pass_on_the_simulated_gpu_within_the_plan(tmp_path):
    # for time: one of DCM's three desiderata (each is 40 s of CPU at the paper's DCM sizes, which --limit does not
    # scale), no minimality, and of toy-goat only CMAP (toy-llama's runs the same code); the full suite under the
    # simulation is in docs/performance.md
    done = _suites(
        tmp_path,
        "--model=toy-llama,toy-goat",
        "--limit=40",
        "--batch-size=20",
        "-k",
        "not minimality and not (test_dcm and positional) and not (test_dcm and box_label) "
        "and not (toy-goat and not cmap)",
        "--allow-skips",
    )
    # --allow-skips: at --limit 40 most bounds are too wide to judge (inconclusive skips); what is checked here is
    # that every claim runs on the device, passes or skips, and holds the memory its plan says
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert done.stdout.splitlines()[0].startswith("mechbench: SIMULATED GPU")
    ratios = _checked(tmp_path)
    assert set(ratios) >= {
        "accuracy",
        "faithfulness",
        "completeness",
        "attention_knockout",
        "dcm_patching",
        "cmap",
        "dcm",
        "path_patching",
        "dcm_additional",
        "input_cmap",
    }


def test_paper_shaped_stand_ins_hold_what_the_plan_says(hub_cache, tmp_path):  # noqa: F811
    plugin = tmp_path / "plugins"
    plugin.mkdir()
    (plugin / "standin_no_guard.py").write_text(GUARD_OFF)
    snapshot = {
        repo: next((hub_cache / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir())
        for repo in ("huggyllama/llama-7b", "tiedong/goat-lora-7b")
    }
    env = {
        "PYTHONPATH": str(plugin),
        "MECHBENCH_MODEL_LLAMA7B": str(snapshot["huggyllama/llama-7b"]),
        "MECHBENCH_MODEL_GOAT7B": str(snapshot["tiedong/goat-lora-7b"]),
    }
    done = _suites(
        tmp_path / "results",
        "-p",
        "standin_no_guard",
        "--model=goat7b",
        "--allow-pickle",
        "--limit=14",
        # one claim per term of the plan (weights and a forward; two models; a prefix), for time:
        # completeness's and faithfulness's ablation means (the paper's 500 prompts through 32 layers) are
        # half a minute here; docs/performance.md's table has them
        "--batch-size=7",
        "-k",
        "test_accuracy or cmap or last-to-correct_object",
        env=env,
    )
    assert (tmp_path / "results" / "results.jsonl").is_file(), done.stdout[-4000:] + done.stderr[-2000:]
    lora = STANDIN["num_hidden_layers"] * 4 * 64 * 2 * STANDIN["hidden_size"]  # the stand-in adapter: r 64, q/k/v/o
    ratios = _checked(
        tmp_path / "results",
        {"goat7b": plan.Shape.from_config(STANDIN, lora), "llama7b": plan.Shape.from_config(STANDIN)},
    )
    assert set(ratios) >= {"accuracy", "attention_knockout", "cmap"}
