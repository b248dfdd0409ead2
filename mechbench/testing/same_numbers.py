"""Two runs of the claims, the same numbers? Every measurement of one results file beside its twin in the other.

    python -m mechbench.testing.same_numbers results/cpu/results.jsonl results/simulated/results.jsonl

A rehearsal on the simulated GPU (mechbench.testing.device) must give the CPU run's numbers: the same kernels run on
the same data. Rows are matched by claim and keys (the latest of each, as the report takes them); values compare
to ``--rtol`` (default 1e-6: logits may differ in the last float bits where a GPU code path lays a tensor out
otherwise, see docs/performance.md) and verdicts must agree. Exits 1 listing every difference, 0 when there is none.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from mechbench.report import DETAIL_FIELDS, latest, load_results

#: Row fields that describe the run, not the measurement: they differ between two runs by design.
RUN_FIELDS = {
    "meta",
    "updated",
    "fingerprint",
    "base_fingerprint",
    "message",
    "references",
    "note",
    "baseline",
    "tolerance",
    "reasons",
}


def _key(row: dict) -> tuple:
    row = {"boxes": 7, **row}  # a row written before rows carried their boxes is at the paper's 7
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in row.items() if k not in DETAIL_FIELDS)) + (
        ("field", row.get("field")),
    )


def _close(a, b, rtol: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return len(a) == len(b) and all(_close(x, y, rtol) for x, y in zip(a, b))
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(_close(a[k], b[k], rtol) for k in a)
        return a == b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=rtol, abs_tol=rtol)


def differences(first: str, second: str, rtol: float = 1e-6, subset: bool = False) -> tuple[int, list[str]]:
    """(rows compared, one line per difference) between two results files; ``subset``: the second ran part of what
    the first ran (some models or claims), and only its rows are looked for in the first."""
    a = {_key(r): r for r in latest(load_results(first)) if not r["claim"].startswith("memory:")}
    b = {_key(r): r for r in latest(load_results(second)) if not r["claim"].startswith("memory:")}
    out = [] if subset else [f"only in {first}: {dict(k)}" for k in a.keys() - b.keys()]
    out += [f"only in {second}: {dict(k)}" for k in b.keys() - a.keys()]
    for k in a.keys() & b.keys():
        for field in sorted((set(a[k]) | set(b[k])) - RUN_FIELDS):
            if not _close(a[k].get(field), b[k].get(field), rtol):
                out.append(f"{dict(k)}: {field} {a[k].get(field)!r} vs {b[k].get(field)!r}")
    return len(a.keys() & b.keys()), out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mechbench.testing.same_numbers", description=__doc__.splitlines()[0]
    )
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--subset", action="store_true", help="the second run ran part of the first's claims or models")
    args = parser.parse_args(argv)
    try:
        n, diffs = differences(args.first, args.second, args.rtol, args.subset)
    except Exception as e:  # a missing or unreadable file: the message, not a traceback
        print(f"same_numbers: {e}", file=sys.stderr)
        return 2
    for line in diffs:
        print(line)
    print(f"{n} measurements compared: {'the same numbers' if not diffs else f'{len(diffs)} difference(s)'}")
    return 1 if diffs or n == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
