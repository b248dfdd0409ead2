"""Results as they go: one JSON line per measurement, with what is needed to reproduce it.

Each line carries the git commit (and whether the tree was dirty), library versions, the model's fingerprint
and the run's settings, in the spirit of lm-evaluation-harness's results files. Lines are appended and
flushed one by one, so a crash keeps every measurement that finished.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one writer at a time there
    fcntl = None

REPO_ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def git_state() -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        return {
            "commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


@functools.lru_cache(maxsize=1)
def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("mechbench", "torch", "transformers", "nnsight", "peft", "tokenizers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def run_metadata() -> dict:
    from mechbench.testing.device import device_metadata

    return {
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git": git_state(),
        "versions": versions(),
        "platform": platform.platform(),
        "device": device_metadata(),  # a simulated GPU says so in every row: never mistaken for a GPU measurement
    }


def check_results_dir(path: str | Path, name: str = "--results-dir") -> Path:
    """``path`` as a results directory, checked without making it (it is made on the first write): not a file, and
    in a directory that can be written (the directory itself where it exists, else its nearest existing parent)."""
    import tempfile

    from mechbench.errors import MechbenchError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MechbenchError(f"{name} {path} is a file, not a directory: pass a directory for the results")
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise MechbenchError(f"{name} {path}: {existing} is a file, not a directory: pass a directory for the results")
    try:  # a file made and removed at once: nothing stays behind
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".mechbench-write-test-"):
            pass
    except OSError as e:
        raise MechbenchError(
            f"{name} {path} cannot be written to ({e.strerror} in {existing}): pass a directory you can write"
        ) from None
    return path


class ResultsWriter:
    """Appends measurements to ``<results_dir>/results.jsonl``; the directory is made on the first write (a
    session that writes nothing leaves none behind). Every row carries the ``boxes`` per context of the prompts it
    was measured on: the row's keys' (a measurement at other than the paper's 7 boxes has it among its keys,
    mechbench.claims.check.with_boxes), else the writer's ``boxes`` (the run's --boxes)."""

    def __init__(self, results_dir: str | Path, boxes: int = 7):
        self.path = Path(results_dir) / "results.jsonl"
        self.boxes = boxes
        self._meta = run_metadata()

    def write(self, claim: str, keys: dict, value, **details) -> dict:
        keys = {**keys, "boxes": keys.get("boxes", self.boxes)}
        record = {"claim": claim, **keys, "value": value, **details, "meta": self._meta}
        line = (json.dumps(record, default=str) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # one write() of the whole line on a descriptor opened for appending, under an exclusive lock: the pytest
        # workers of one run (pytest -n) append to one file, and a line is never interleaved with another's
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock
        return record

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


class DevicePeak:
    """``with DevicePeak(device) as peak:`` the peak of the device's allocated memory within the block
    (``peak.bytes``; None off a CUDA device), read from torch's allocator statistics: on a GPU the real peak, on the
    simulated GPU (mechbench.testing.device) the peak of the storages alive on it. The plugin records each claim
    test's peak as a ``memory:<claim>`` row, beside the plan's prediction (``mechbench plan``)."""

    def __init__(self, device):
        self.device, self.bytes = str(device), None

    def __enter__(self) -> DevicePeak:
        import torch

        if self.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda = True
        else:
            self._cuda = False
        return self

    def restart(self) -> None:
        """Count from here (after a model is loaded and the models it replaces are let go)."""
        if self._cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)

    def __exit__(self, *exc) -> None:
        if self._cuda:
            import torch

            torch.cuda.synchronize(self.device)
            self.bytes = int(torch.cuda.max_memory_allocated(self.device))


def file_stem(name: str, keep: int = 80) -> str:
    """``name`` (a model's path or hub id, a checkpoint, a key) as a file name: letters, digits and ``-_.`` kept,
    path separators and the rest as ``_``, its last ``keep`` characters (the end of a path tells checkpoints apart)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name.strip("/").replace("/", "_"))[-keep:]


def write_json_atomic(path: str | Path, data, indent: int | None = 1) -> None:
    """``data`` as JSON at ``path`` through a temporary file renamed over it, so that a crash never leaves a
    truncated file; the file keeps its permissions (new: 0644)."""
    import stat
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=indent, ensure_ascii=False)
            f.write("\n")
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
