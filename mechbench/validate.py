"""Inputs checked when a run starts, in one place, before any model loads: each check raises a
:class:`MechbenchError` that names the input, what is wrong and the fix. The pytest plugin (mechbench/pytest_plugin.py) and the
command line both call these, so an option means the same and fails the same way everywhere.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path

from mechbench.errors import MechbenchError

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def dtype(value: str) -> str:
    from mechbench.models.loading import DTYPES

    if value not in DTYPES:
        raise MechbenchError(
            f"--dtype {value!r} is not a dtype mechbench loads; use one of {', '.join(DTYPES)} (float32 is the paper's)"
        )
    return value


def device(value: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and present on this machine."""
    if not _DEVICE.match(value):
        raise MechbenchError(
            f"--device {value!r} is not a torch device mechbench runs on; use cpu, cuda, cuda:N or mps"
        )
    import torch

    if value.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MechbenchError(
                f"--device {value}: torch sees no CUDA GPU on this machine (torch "
                f"{torch.__version__}{' is a CPU build' if torch.version.cuda is None else ''}); "
                f"use --device cpu, or install a CUDA build of torch (MECHBENCH_TORCH, see scripts/setup-venv.sh)"
            )
        index = int(value.split(":")[1]) if ":" in value else 0
        if index >= torch.cuda.device_count():
            raise MechbenchError(
                f"--device {value}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
            )
    if value == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MechbenchError("--device mps: torch sees no Apple GPU here; use --device cpu")
    return value


def device_map(value: str | None) -> str | dict | None:
    """``--device-map``: one of accelerate's placements, or a JSON file mapping modules to devices that exist here
    (mechbench.models.devices.read_device_map says what is accepted)."""
    from mechbench.models.devices import read_device_map

    read = read_device_map(value)
    if isinstance(read, dict):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        for module, where in read.items():
            index = where if isinstance(where, int) else int(where[5:]) if str(where).startswith("cuda:") else None
            if where == "cuda":
                index = 0
            if index is not None and index >= count:
                raise MechbenchError(
                    f"--device-map {value}: {module!r} -> {where!r}, but this machine has {count} CUDA device(s)"
                    + (", numbered from 0" if count else "; map modules to cpu or disk, or run on a GPU machine")
                )
    return read


def positive(name: str, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise MechbenchError(f"{name} {value}: must be at least 1 (leave it out for the paper's counts)")
    return value


def positive_number(name: str, value: float, hint: str = "") -> float:
    """A finite number above 0 (a rate, a memory size): 0 divides by zero and a negative one plans nonsense."""
    if not (math.isfinite(value) and value > 0):
        raise MechbenchError(f"{name} {value:g}: must be a positive finite number{hint}")
    return value


def seed(value: int) -> int:
    if value < 0:
        raise MechbenchError(f"--seed {value}: seeds are non-negative integers")
    return value


def writable_dir(name: str, path: Path) -> Path:
    """A directory results can be written into: created if missing; an existing file or a read-only directory is
    an error now, not after the measurement was computed."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MechbenchError(f"{name} {path} is a file, not a directory: pass a directory for the results")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".mechbench-write-test-"):
            pass
    except OSError as e:
        raise MechbenchError(
            f"{name} {path} cannot be written to ({e.strerror}): pass a directory you can write"
        ) from None
    return path


def writable_file(name: str, path: Path) -> Path:
    """A file a finished result will be written to: checked before the work, so that it cannot fail after it. Its
    directory must exist and be writable, and the path must not be a directory."""
    path = Path(path)
    if path.is_dir():
        raise MechbenchError(f"{name} {path} is a directory: pass a file name (e.g. {path / 'scores.json'})")
    if not path.parent.is_dir():
        raise MechbenchError(
            f"{name} {path}: the directory {path.parent} does not exist; create it (mkdir -p "
            f"{path.parent}) or pass a file in an existing directory"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".mechbench-write-test-"):
            pass
    except OSError as e:
        raise MechbenchError(
            f"{name} {path}: the directory {path.parent} cannot be written to ({e.strerror}); pass a "
            f"file in a directory you can write"
        ) from None
    return path


def written_or_kept(what: str, out: Path, write) -> Path:
    """``write(out)`` (a directory; it returns the path it wrote). Where that fails at the end of a run (the output
    went read-only or full since it was checked), the finished work is written to a fresh temporary directory
    instead, and the error names it: hours of work are not lost to a full disk."""
    try:
        return write(Path(out))
    except OSError as e:
        error = e
    kept = write(Path(tempfile.mkdtemp(prefix="mechbench-kept-")))
    raise MechbenchError(
        f"{what} could not be written to {out} ({error.strerror or error}); it was written to {kept} "
        f"instead: copy it from there, and pass a directory you can write next time"
    )


def writable_baselines(path: Path) -> None:
    """--update-baselines: the baselines directory and its files can be written, found before the run measures what
    it would store."""
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".mechbench-write-test-"):
            pass
    except OSError as e:
        raise MechbenchError(
            f"--update-baselines: the baselines directory {path} cannot be written to "
            f"({e.strerror or e}); the run would end with its measurements unstored. Pass a "
            f"--baselines-dir you can write (a copy: cp -r baselines/ mine/)"
        ) from None
    read_only = sorted(f.name for f in path.glob("*.json") if not os.access(f, os.W_OK))
    if read_only:
        raise MechbenchError(
            f"--update-baselines: {', '.join(read_only)} in {path} cannot be written to; make "
            f"them writable or pass a --baselines-dir you can write"
        )


def baselines_dir(path: Path, create: bool = False) -> Path:
    """The baselines directory a run reads; ``create`` (a run that stores baselines): made where it does not exist
    yet, as ``mechbench discover --store`` and ``mechbench baseline`` make it."""
    path = Path(path)
    if create and not path.exists():
        try:
            path.mkdir(parents=True)
        except OSError as e:
            raise MechbenchError(
                f"--baselines-dir {path} does not exist and cannot be made ({e.strerror or e}): pass a "
                f"directory you can write"
            ) from None
    if not path.is_dir():
        raise MechbenchError(
            f"--baselines-dir {path} is not a directory: pass the directory that holds the baseline "
            f"JSON files (the checkout's baselines/ by default)"
            + (
                ""
                if path.exists()
                else "; to start one, store into it: add --update-baselines, or run `mechbench baseline MODEL "
                f"--baselines-dir {path}` for a new base"
            )
        )
    return path


def model_directory(ref: str, tokenizer: str | None = None) -> None:
    """A path the user typed that exists must be a model (or adapter) directory: broken is not absent. With
    ``tokenizer`` (--tokenizer) the directory needs no tokenizer of its own."""
    path = Path(ref)
    if not path.exists():
        return
    if not path.is_dir():
        raise MechbenchError(
            f"--model {ref}: a file, not a model directory (a directory with config.json and the "
            f"weights, or a peft adapter directory with adapter_config.json)"
        )
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise MechbenchError(
            f"--model {ref}: the directory has neither config.json nor adapter_config.json, so it is "
            f"not a model saved with save_pretrained; point at the directory that holds them"
        )
    tokenizer_files = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
    if (
        tokenizer is None
        and (path / "config.json").is_file()
        and not any((path / f).is_file() for f in tokenizer_files)
    ):
        raise MechbenchError(
            f"--model {ref}: the directory has no tokenizer (none of {', '.join(tokenizer_files)}); "
            f"save the tokenizer beside the weights (tokenizer.save_pretrained(dir)) or name one with --tokenizer"
        )
    if os.access(path, os.R_OK) is False:
        raise MechbenchError(f"--model {ref}: the directory cannot be read")
