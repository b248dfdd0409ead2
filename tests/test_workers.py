"""The suites under pytest-xdist (``pytest suites/ -n N``): the numbers and verdicts of ``-n 2`` are those of one
process; the workers' baseline updates are merged by the controller and written once (refused, writing nothing,
where two workers stored one record differently or a worker's updates were lost); each worker on a machine of
several GPUs takes its own; two processes racing on one discovery checkpoint compute it once."""

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from mechbench import baselines
from mechbench.errors import BaselineError

ROOT = Path(__file__).resolve().parent.parent


def _suites(tmp_path: Path, name: str, *options: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    results = tmp_path / name
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "suites"), f"--results-dir={results}", "-p", "no:cacheprovider"]
    done = subprocess.run([*cmd, *options], cwd=ROOT, capture_output=True, text=True, timeout=900)
    path = results / "results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return done, rows


def _numbers(rows: list[dict]) -> dict:
    """Each measurement by its claim and keys (its time and process left out): what must not depend on -n."""
    drop = {"meta", "seed", "message", "time", "test"}
    return {
        json.dumps({k: v for k, v in r.items() if k not in drop | {"value", "passed"}}, sort_keys=True): (
            r["value"],
            r.get("passed"),
        )
        for r in rows
        if not r["claim"].startswith("memory:")
    }


def test_two_workers_give_the_numbers_of_one_process_and_store_their_updates_once(tmp_path):
    """Two models, so each worker gets one (grouped by model); the same numbers and verdicts as -n 0, and under
    --update-baselines both workers' records in the baseline files, written by the controller."""
    options = ("--model=toy-llama,toy-vicuna", "-k", "test_accuracy or knockout", "--limit=70", "-q")
    serial, serial_rows = _suites(tmp_path, "serial", *options, "-n", "0")
    assert serial.returncode == 0, serial.stdout[-3000:] + serial.stderr[-2000:]
    parallel, parallel_rows = _suites(tmp_path, "parallel", *options, "-n", "2")
    assert parallel.returncode == 0, parallel.stdout[-3000:] + parallel.stderr[-2000:]
    assert _numbers(parallel_rows) == _numbers(serial_rows) and len(_numbers(serial_rows)) >= 2 * 8
    summary = parallel.stdout[parallel.stdout.index("mechbench workers") :].splitlines()[1:3]
    ran = dict(line.split(": ", 1) for line in summary)  # worker -> "device, its models"
    # grouped by model: each worker loaded one model, and says on which device (pytest 9.2 breaks this: pyproject)
    assert sorted(ran) == ["gw0", "gw1"] and sorted(ran.values()) == ["cpu, toy-llama", "cpu, toy-vicuna"], summary

    stored = tmp_path / "baselines"
    shutil.copytree(ROOT / "baselines", stored)
    before = json.loads((stored / "accuracy.json").read_text())
    update, _ = _suites(
        tmp_path,
        "update",
        *options,
        "-n",
        "2",
        f"--baselines-dir={stored}",
        "--update-baselines",
        "--force-baselines",
    )
    assert update.returncode == 0, update.stdout[-3000:] + update.stderr[-2000:]
    assert "baselines updated" in update.stdout
    after = json.loads((stored / "accuracy.json").read_text())
    changed = {r["model"]: r["n"] for r in after["records"] if r not in before["records"]}
    assert changed == {"toy-llama": 70, "toy-vicuna": 70}  # one record from each worker, in one file


def _tolerance(value):
    from mechbench.claims.tolerance import binomial

    t = binomial(value, 500)
    return {"tolerance": t.value, "tolerance_same_sample": t.same_sample, "tolerance_rule": t.rule}


def _stage(path, model, value):
    staging = baselines.Staging()
    b = staging.load("accuracy", path)
    staging.update(
        b, {"model": model}, value, n=500, source="measured by mechbench at commit test", **_tolerance(value)
    )
    return staging.to_json()


def test_the_controller_merges_workers_updates_and_refuses_conflicts(tmp_path):
    shutil.copy(ROOT / "baselines" / "accuracy.json", tmp_path)
    original = (tmp_path / "accuracy.json").read_text()
    controller = baselines.Staging()
    controller.replay(_stage(tmp_path, "toy-llama", 0.6), "worker gw0")
    controller.replay(_stage(tmp_path, "toy-vicuna", 0.65), "worker gw1")
    assert (tmp_path / "accuracy.json").read_text() == original  # nothing written before the end
    controller.commit()
    values = {r.keys["model"]: r.value for r in baselines.load("accuracy", tmp_path).records if r.measured}
    assert values["toy-llama"] == 0.6 and values["toy-vicuna"] == 0.65

    shutil.copy(ROOT / "baselines" / "accuracy.json", tmp_path)
    controller = baselines.Staging()
    controller.replay(_stage(tmp_path, "toy-llama", 0.6), "worker gw0")
    controller.replay(_stage(tmp_path, "toy-llama", 0.6), "worker gw2")  # the same number twice: no conflict
    controller.replay(_stage(tmp_path, "toy-vicuna", 0.65), "worker gw1")
    controller.replay(_stage(tmp_path, "toy-vicuna", 0.61), "worker gw3")
    with pytest.raises(BaselineError, match=r"NOT updated.*accuracy.json \{'model': 'toy-vicuna'\}.*gw1.*gw3"):
        controller.commit()
    assert (tmp_path / "accuracy.json").read_text() == original  # a conflict writes nothing, not half

    controller = baselines.Staging()
    controller.replay(_stage(tmp_path, "toy-llama", 0.6), "worker gw0")
    controller.lost.append("worker gw1 went down (killed), its updates lost")
    with pytest.raises(BaselineError, match="gw1 went down"):
        controller.commit()
    assert (tmp_path / "accuracy.json").read_text() == original


def test_each_worker_takes_its_own_gpu():
    from mechbench.pytest_plugin import worker_device

    def config(device, worker=None):
        c = SimpleNamespace(getoption=lambda name: device)
        if worker is not None:
            c.workerinput = {"workerid": worker, "workercount": 8}
        return c

    assert worker_device(config("cuda", "gw5"), gpus=4) == "cuda:1"
    assert worker_device(config("cuda", "gw0"), gpus=4) == "cuda:0"
    assert worker_device(config("cuda", "gw3"), gpus=1) == "cuda"  # one GPU: every worker shares it
    assert worker_device(config("cuda:2", "gw3"), gpus=4) == "cuda:2"  # the user's index stands
    assert worker_device(config("cpu", "gw1"), gpus=4) == "cpu"
    assert worker_device(config("cuda"), gpus=4) == "cuda"  # not a worker


def test_a_second_process_waits_for_a_running_discovery_and_reads_it_back(tmp_path):
    """The checkpoint's lock (an advisory flock on its own open file, so threads contend as processes do): the
    second caller says it waits and enters only once the first has left."""
    from mechbench.methods.discovery import _locked

    lock, order, said = tmp_path / "x.json.lock", [], []

    def first():
        with _locked(lock):
            order.append("first in")
            time.sleep(0.5)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    while not order:
        time.sleep(0.01)
    with _locked(lock, said.append):
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]
    assert said and "waiting" in said[0]
