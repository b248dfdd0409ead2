"""Compare side-by-side benchmark runs stored by pytest-benchmark, as a markdown table.

    python benchmarks/compare.py                          # the newest stored run, against the one before it
    python benchmarks/compare.py current.json             # a given run (say from --benchmark-json) instead
    python benchmarks/compare.py --history DIR            # runs stored somewhere else

Runs are the JSON files ``pytest benchmarks/ --benchmark-enable --benchmark-storage=file://benchmarks/history
--benchmark-autosave`` writes: ``<history>/<machine id>/NNNN_<commit>...json``. The previous run is the newest
earlier one in the same machine-id folder with the same shape, number of pairs and device (timings of other
settings or machines are not comparable). Columns:

- speedup: nnsight's time / mechbench's (above 1: mechbench is faster);
- mechbench vs previous: this run's mechbench time / the previous run's (below 1: mechbench got faster).

Only the standard library is used, so it runs anywhere the JSON files are.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

SIDES = ("mechbench", "nnsight")
DEFAULT_HISTORY = Path(__file__).resolve().parent / "history"
STORE_HINT = (
    "pytest benchmarks/ --benchmark-enable --benchmark-storage=file://benchmarks/history "
    "--benchmark-autosave -p no:cacheprovider"
)


def load_run(path: Path) -> dict:
    with open(path, encoding="utf8") as f:
        run = json.load(f)
    if not isinstance(run, dict) or not isinstance(run.get("benchmarks"), list):
        raise SystemExit(f"compare.py: {path} is not a pytest-benchmark JSON file (no 'benchmarks' list)")
    return run


def machine_id(run: dict) -> str:
    """pytest-benchmark's storage folder name without its last part (``Linux-CPython-3.11``; the bits that follow
    are not in the JSON)."""
    info = run.get("machine_info", {})
    version = ".".join(str(info.get("python_version", "")).split(".")[:2])
    return f"{info.get('system', '')}-{info.get('python_implementation', '')}-{version}"


def run_time(run: dict) -> datetime:
    """When the run was made (pytest-benchmark writes UTC); a file without it sorts first."""
    try:
        when = datetime.fromisoformat(run["datetime"])
    except (KeyError, TypeError, ValueError):
        when = datetime.min
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def setting_of(run: dict) -> tuple:
    """(shape, pairs, device) of the run's benchmarks (the first that records them)."""
    for bench in run["benchmarks"]:
        info = bench.get("extra_info") or {}
        if "shape" in info:
            return info.get("shape"), info.get("pairs"), info.get("device")
    return None, None, None


def side_by_side(run: dict) -> dict[str, dict[str, dict]]:
    """workload -> side -> benchmark, from the test names ``test_<workload>_<side>``."""
    out: dict[str, dict[str, dict]] = {}
    for bench in run["benchmarks"]:
        name = bench.get("name", "").split("[")[0].removeprefix("test_")
        for side in SIDES:
            if name.endswith("_" + side):
                out.setdefault(name[: -len(side) - 1], {})[side] = bench
    return out


def stored_runs(history: Path) -> list[Path]:
    return sorted(history.glob("*/[0-9][0-9][0-9][0-9]_*.json"))


def pick_runs(history: Path, current: Path | None) -> tuple[Path, dict, Path | None, dict | None]:
    """The current run (``current``, else the newest stored) and the previous one of the same machine and setting
    (None if there is none)."""
    stored = stored_runs(history)
    if current is None:
        if not stored:
            raise SystemExit(f"compare.py: no benchmark runs stored under {history}.\nStore one with:\n  {STORE_HINT}")
        runs = [(path, load_run(path)) for path in stored]
        current, current_run = max(runs, key=lambda pr: (run_time(pr[1]), pr[0].name))
    else:
        if not current.is_file():
            raise SystemExit(f"compare.py: {current} does not exist")
        current_run = load_run(current)
    stored_here = current.resolve().parent.parent == history.resolve()
    if stored_here:
        # a stored run: the runs before it in its own folder (the NNNN prefix orders them)
        candidates = [p for p in stored if p.parent.resolve() == current.resolve().parent and p.name < current.name]
    else:
        # a run from elsewhere: the stored runs of the same machine id made before it
        candidates = [p for p in stored if p.parent.name.startswith(machine_id(current_run) + "-")]
    for path in sorted(candidates, key=lambda p: p.name, reverse=True):
        run = load_run(path)
        if not stored_here and run_time(run) >= run_time(current_run):
            continue  # made after the given run, or the same run saved twice (--benchmark-json with autosave)
        if setting_of(run) == setting_of(current_run):
            return current, current_run, path, run
    return current, current_run, None, None


def seconds(bench: dict | None) -> float | None:
    # the fastest round; the side-by-side benchmarks run one round, so it is the only one
    return None if bench is None else bench["stats"]["min"]


def peak_mib(bench: dict | None) -> float | None:
    peak = None if bench is None else (bench.get("extra_info") or {}).get("peak_bytes")
    return None if peak is None else peak / 2**20


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def describe(path: Path, run: dict) -> str:
    shape, pairs, device = setting_of(run)
    commit = (run.get("commit_info") or {}).get("id") or "?"
    dirty = " (uncommitted changes)" if (run.get("commit_info") or {}).get("dirty") else ""
    return f"{path} ({run.get('datetime', '?')}, commit {commit[:10]}{dirty}; shape {shape}, {pairs} pairs, {device})"


def table(current: dict, previous: dict | None) -> str:
    now, before = side_by_side(current), side_by_side(previous) if previous else {}
    lines = [
        "| workload | mechbench s | nnsight s | speedup (nnsight/mechbench) | peak MiB mechbench / nnsight "
        "| mechbench vs previous run |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for workload, sides in now.items():
        mech, nn = seconds(sides.get("mechbench")), seconds(sides.get("nnsight"))
        prev = seconds(before.get(workload, {}).get("mechbench"))
        peaks = f"{_fmt(peak_mib(sides.get('mechbench')), '.1f')} / {_fmt(peak_mib(sides.get('nnsight')), '.1f')}"
        lines.append(
            f"| {workload} | {_fmt(mech, '.3f')} | {_fmt(nn, '.3f')} | {_fmt(_ratio(nn, mech), '.2f')} "
            f"| {peaks} | {_fmt(_ratio(mech, prev), '.2f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "current", nargs="?", type=Path, help="a pytest-benchmark JSON file (default: the newest stored run)"
    )
    parser.add_argument(
        "--history",
        type=Path,
        default=DEFAULT_HISTORY,
        help="where runs are stored (default: benchmarks/history next to this script)",
    )
    args = parser.parse_args(argv)
    path, run, previous_path, previous = pick_runs(args.history, args.current)
    print(f"current:  {describe(path, run)}")
    print(f"previous: {describe(previous_path, previous) if previous else '- (no earlier run of this setting)'}")
    print()
    print(table(run, previous))
    print()
    print(
        "speedup: nnsight's time / mechbench's (above 1: mechbench faster). mechbench vs previous run: this run's "
        "mechbench time / the previous run's (below 1: faster now)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
