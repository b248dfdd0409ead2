"""A training run as a trajectory: every checkpoint of a fine-tune compared with its base (comparison mode,
mechbench.compare), the base measured once, and the verdict claims' measures by step.

``mechbench compare CKPT1 CKPT2 ... --base B`` (or one directory of checkpoints) asks the paper's question over time:
from which step on does the circuit carry the gain, and did the knockout routes ever move?

- The checkpoints are ordered by step: ``trainer_state.json``'s ``global_step`` (what transformers' Trainer
  writes), else a ``checkpoint-N`` or ``step-N`` name; where some checkpoint has neither, the order given.
- Each checkpoint's comparison is kept in ``<results-dir>/trajectory-<name>/<checkpoint>.json``, written after
  every claim: a finished checkpoint is read back, not re-run, and a crashed one resumes at its first unfinished
  claim (a claim that could not run, out of memory say, counts as unfinished). A record is reused only for the
  same base, circuit, lane, seed, boxes, dtype, loading options, baselines and references, claims and mechbench
  version, and the same weight files (names, sizes, modification times): anything else re-measures it.
- ``--shard K/N`` measures the checkpoints K, K+N, K+2N, ... only, so that N processes (a job array's tasks, or
  one per GPU of a node: ``CUDA_VISIBLE_DEVICES=K mechbench compare ... --shard K/N``) share a run; each shard
  measures the base itself (in-memory, as every comparison process does). The run without ``--shard``, or the
  last shard to finish, writes ``results/trajectory-<name>.md`` with its figure.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from mechbench.compare import VERDICT_CLAIMS, Check, ClaimComparison, Row, Verdict, carried_rows, largest_move
from mechbench.errors import MechbenchError
from mechbench.results import file_stem, write_json_atomic
from mechbench.stats import Estimate

#: the files of a checkpoint directory that make its weights (their names, sizes and times key a stored record)
WEIGHT_FILES = ("*.safetensors", "*.bin", "config.json", "adapter_config.json")
_STEP_NAME = re.compile(r"(?:checkpoint|step|ckpt)[-_]?(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Checkpoint:
    ref: str  # what the loader takes: a directory (or a registered name, a hub id)
    step: int | None  # the training step, where it is known
    label: str  # the file name its record is kept under

    def describe(self) -> str:
        return f"step {self.step}" if self.step is not None else self.label


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def _step_of(ref: str) -> int | None:
    path = Path(ref)
    state = path / "trainer_state.json"
    if state.is_file():
        try:
            step = json.loads(state.read_text()).get("global_step")
        except (OSError, ValueError):
            step = None
        if isinstance(step, int):
            return step
    m = _STEP_NAME.search(path.name)
    return int(m.group(1)) if m else None


def _label(ref: str) -> str:
    return file_stem(ref)


def is_trajectory(refs: list[str]) -> bool:
    """Whether ``refs`` (``mechbench compare``'s models) are a training run: several checkpoints, or one directory
    that is not itself a model and stands for the model directories inside it (a Trainer's ``output_dir``)."""
    return len(refs) > 1 or _is_run_dir(refs[0])


def _is_run_dir(ref: str) -> bool:
    return Path(ref).is_dir() and not _is_model_dir(Path(ref))


def checkpoints(refs: list[str]) -> list[Checkpoint]:
    """The checkpoints of ``refs`` in step order (a run's directory: the model directories inside it)."""
    if len(refs) == 1 and _is_run_dir(refs[0]):
        inside = sorted(p for p in Path(refs[0]).iterdir() if p.is_dir() and _is_model_dir(p))
        if not inside:
            raise MechbenchError(
                f"{refs[0]} is neither a model directory nor one holding checkpoints (directories with a config.json "
                f"or adapter_config.json, such as a Trainer's checkpoint-N): pass the checkpoints themselves"
            )
        refs = [str(p) for p in inside]
    if len(set(refs)) != len(refs):
        raise MechbenchError(f"a checkpoint is named twice: {', '.join(r for r in refs if refs.count(r) > 1)}")
    found = [Checkpoint(ref, _step_of(ref), _label(Path(ref).name or ref)) for ref in refs]
    if all(c.step is not None for c in found):
        steps = [c.step for c in found]
        if len(set(steps)) != len(steps):
            raise MechbenchError(f"two checkpoints are at one step ({', '.join(map(str, steps))}): pass one of each")
        found.sort(key=lambda c: c.step)
    if len({c.label for c in found}) != len(found):  # two runs' checkpoint-N: the whole paths tell them apart
        found = [Checkpoint(c.ref, c.step, f"{i:03d}-{_label(c.ref)}") for i, c in enumerate(found)]
    return found


def files_key(ref: str) -> list | str:
    """What a stored record of ``ref`` is checked against before it is reused: the names, sizes and modification
    times of its weight files (a registered name's: its directories'), or the reference itself (a hub id)."""
    from mechbench.models.registry import resolve

    dirs = [Path(ref)] if Path(ref).is_dir() else []
    if not dirs:
        try:
            spec = resolve(ref)
            dirs = [Path(d) for d in (spec.weights, spec.adapter) if d and Path(d).is_dir()]
        except MechbenchError:
            pass
    out = []
    for d in dirs:
        for pattern in WEIGHT_FILES:
            for f in sorted(d.glob(pattern)):
                st = f.stat()
                out.append([f.name, st.st_size, st.st_mtime_ns])
    return out or ref


# --- a checkpoint's record ---------------------------------------------------------------------------------------


def _estimate(e: Estimate) -> dict:
    return {"value": e.value, "lo": e.lo, "hi": e.hi}


def claim_to_json(c: ClaimComparison) -> dict:
    return {
        "claim": c.claim,
        "rows": [{**asdict(r), "estimate": _estimate(r.estimate)} for r in c.rows],
        "checks": [asdict(k) for k in c.checks],
        "seconds": c.seconds,
        "error": c.error,
    }


def claim_from_json(d: dict) -> ClaimComparison:
    rows = [Row(**{**r, "estimate": Estimate(**r["estimate"])}) for r in d["rows"]]
    return ClaimComparison(d["claim"], rows, [Check(**k) for k in d["checks"]], d["seconds"], d["error"])


@dataclass
class StepRecord:
    checkpoint: Checkpoint
    key: dict  # what the record was measured under (base, circuit, lane, seed, boxes, claims, weight files)
    claims: dict[str, ClaimComparison]
    verdict: Verdict | None = None
    fine_tune: str | None = None  # the fine-tune's name as the comparison knew it
    fingerprint: dict | None = None

    @property
    def done(self) -> dict[str, ClaimComparison]:
        """The claims measured: those that ran. One that could not (out of memory, a missing circuit) is measured
        again by the next run, which may have what it lacked (a smaller --batch-size, the circuit stored)."""
        return {name: c for name, c in self.claims.items() if c.error is None}

    @property
    def finished(self) -> bool:
        return all(c in self.done for c in self.key["claims"]) and (
            self.verdict is not None or not set(VERDICT_CLAIMS) <= set(self.key["claims"])
        )

    def to_json(self) -> dict:
        return {
            "checkpoint": asdict(self.checkpoint),
            "key": self.key,
            "fine_tune": self.fine_tune,
            "fingerprint": self.fingerprint,
            "claims": {name: claim_to_json(c) for name, c in self.claims.items()},
            "verdict": None if self.verdict is None else asdict(self.verdict),
        }

    @classmethod
    def from_json(cls, d: dict) -> StepRecord:
        v = d.get("verdict")
        return cls(
            Checkpoint(**d["checkpoint"]),
            d["key"],
            {name: claim_from_json(c) for name, c in d["claims"].items()},
            None if v is None else Verdict(v["label"], tuple(v["reasons"])),
            d.get("fine_tune"),
            d.get("fingerprint"),
        )


def _save(path: Path, record: StepRecord) -> None:
    """A checkpoint's record, written atomically (a crash mid-write leaves the previous one)."""
    write_json_atomic(path, json.loads(json.dumps(record.to_json(), default=str)))


def read_record(path: Path, key: dict) -> StepRecord | None:
    """The stored record at ``path`` where it was measured under ``key``; None where there is none, or another."""
    if not path.is_file():
        return None
    try:
        record = StepRecord.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable (a crash while writing cannot leave one: writes are atomic): measured again
    return record if record.key == key else None


# --- the run -----------------------------------------------------------------------------------------------------


@dataclass
class Trajectory:
    name: str
    base: str
    steps: list[StepRecord]
    missing: list[Checkpoint]  # not measured yet (another shard's, or this run's shard skipped them)
    directory: Path


def shard_of(text: str | None) -> tuple[int, int] | None:
    """``--shard K/N`` as (K, N), checked."""
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not (0 <= int(m.group(1)) < int(m.group(2))):
        raise MechbenchError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. --shard 0/4 for the first of four")
    return int(m.group(1)), int(m.group(2))


def trajectory_name(refs: list[str], given: str | None) -> str:
    """``--name``, else the directory the checkpoints share, else the first checkpoint's name."""
    if given:
        return _label(given)
    parents = {str(Path(r).parent) for r in refs}
    if len(refs) == 1 and _is_run_dir(refs[0]):
        return _label(Path(refs[0]).name)
    if len(parents) == 1 and Path(next(iter(parents))).name not in ("", "."):
        return _label(Path(next(iter(parents))).name)
    return _label(Path(refs[0]).name)


def run_trajectory(
    refs: list[str],
    base_name: str,
    make_comparison: Callable[[str], object],
    claims: list[str],
    key: dict,
    results_dir: Path,
    name: str | None = None,
    shard: tuple[int, int] | None = None,
    results=None,
    log: Callable[[str], None] = print,
    release: Callable[[str], None] | None = None,
) -> Trajectory:
    """Compare every checkpoint of ``refs`` with the base (``make_comparison(ref)``: a
    :class:`mechbench.compare.Comparison` of that checkpoint; the base's side is shared in this process), reusing
    the records stored under ``key`` (the settings; each checkpoint's weight files are added to it). ``results``:
    a ResultsWriter the rows also go to. ``release(ref)``: let a checkpoint's model go once it is measured."""
    from mechbench.compare import record, record_verdict

    ordered = checkpoints(refs)
    name = trajectory_name(refs, name)
    directory = Path(results_dir) / f"trajectory-{name}"
    directory.mkdir(parents=True, exist_ok=True)
    steps, missing = [], []
    for index, cp in enumerate(ordered):
        path = directory / f"{cp.label}.json"
        step_key = {**key, "claims": list(claims), "files": files_key(cp.ref)}
        stored = read_record(path, step_key)
        if stored is not None and stored.finished:
            log(f"{cp.describe()} ({cp.ref}): read back from {path}")
            steps.append(stored)
            continue
        if shard is not None and index % shard[1] != shard[0]:
            missing.append(cp)
            continue
        comparison = make_comparison(cp.ref)
        current = stored or StepRecord(cp, step_key, {})
        current.fine_tune, current.fingerprint = comparison.fine_tune.name, comparison.fine_tune.fingerprint
        for result in current.done.values():  # a resumed checkpoint: the claims that ran are not run again
            comparison.restore(result)
        for claim in claims:
            if claim in current.done:
                continue
            result = comparison.claim(claim)
            record(results, comparison, result)
            current.claims[claim] = result
            _save(path, current)
        if comparison.verdict_ready():
            current.verdict = comparison.verdict()
            record_verdict(results, comparison, current.verdict)
            _save(path, current)
        log(f"{cp.describe()} ({cp.ref}): {current.verdict.label if current.verdict else 'measured'}")
        steps.append(current)
        del comparison  # the last reference to the checkpoint's model here: released before the next one loads
        if release is not None:
            release(cp.ref)
    return Trajectory(name, base_name, steps, missing, directory)


# --- what the report shows ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    """A line of the trajectory's figure, or a column of its table: one row of a claim's comparison per step."""

    claim: str
    label: str  # what it is
    pick: Callable[[list[Row]], Row | None]  # the row it follows, from the claim's rows at a step


def _finite(r: Row | None) -> bool:
    return r is not None and r.estimate.value is not None and math.isfinite(r.estimate.value)


def _by_measure(text: str) -> Callable[[list[Row]], Row | None]:
    return lambda rows: next((r for r in rows if r.measure.split(" (")[0] == text), None)


def _largest_fall(rows: list[Row]) -> Row | None:
    return min((r for r in carried_rows(rows) if _finite(r)), key=lambda r: r.estimate.value, default=None)


#: the table's columns: one number per verdict claim and step
COLUMNS = (
    Measure("accuracy", "accuracy, fine-tune - base", _by_measure("accuracy")),
    Measure("faithfulness", "faithfulness, fine-tune - base", _by_measure("faithfulness")),
    Measure("cmap", "share of the gain, full circuit", _by_measure("share of the gain carried: full_circuit")),
    Measure("attention_knockout", "largest knockout move", largest_move),
    Measure("dcm_patching", "largest DCM patching fall (points)", _largest_fall),
)


def figure_lines(steps: list[StepRecord]) -> list[Measure]:
    """The figure's lines: the table's, but CMAP's share per group and DCM patching per group and desideratum it
    carries in the base; those of claims the run measured."""
    out = [m for m in COLUMNS if m.claim not in ("cmap", "dcm_patching")]
    for claim in ("cmap", "dcm_patching"):
        names = {}
        for s in steps:
            rows = s.claims.get(claim, ClaimComparison(claim, [], [])).rows
            for r in carried_rows(rows) if claim == "dcm_patching" else rows:
                names.setdefault(r.measure.split(" (")[0], None)
        for name in names:
            label = name.removeprefix("share of the gain carried: ") if claim == "cmap" else name
            out.append(Measure(claim, label, _by_measure(name)))
    return [m for m in out if any(m.claim in s.claims for s in steps)]


def _x(steps: list[StepRecord]) -> list[int]:
    """Each step's place on the x axis: its training step where every checkpoint has one, else its position in the
    order given (a step where only some have one would put the others out of order)."""
    if all(s.checkpoint.step is not None for s in steps):
        return [s.checkpoint.step for s in steps]
    return list(range(len(steps)))


def write_trajectory_report(trajectory: Trajectory, out: Path, figures: bool = True) -> Path:
    """``<out>/trajectory-<name>.md``: per step, the verdict and the measures with their 95% intervals, and the
    figure of the measures by step (PNG beside an SVG for a paper)."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = trajectory.steps
    columns = [m for m in COLUMNS if any(m.claim in s.claims for s in steps)]
    text = [
        f"# Trajectory: {trajectory.name} against {trajectory.base}",
        "",
        f"{len(steps)} checkpoint(s), each compared with {trajectory.base} on the same prompts (comparison mode; "
        "95% intervals, resampling whole contexts). Each checkpoint's record is in "
        f"`{trajectory.directory.name}/`; its every row is in the results file.",
        "",
    ]
    if trajectory.missing:
        text += [
            f"**Not measured yet** (another shard's, or not run): {', '.join(c.describe() for c in trajectory.missing)}.",
            "",
        ]
    if figures and steps:
        figure = trajectory_figure(trajectory, figure_lines(steps), out)
        text += [f"![the verdict claims' measures by step]({figure})", ""]
    header = ["step", "checkpoint", "verdict", *(m.label for m in columns), "failed checks"]
    text += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for x, s in zip(_x(steps), steps, strict=True):
        cells = []
        for m in columns:
            row = m.pick(s.claims[m.claim].rows) if m.claim in s.claims else None
            if not _finite(row):
                cells.append("n/a" if m.claim in s.claims else "")
                continue
            where = f" ({row.measure.split(' (')[0]})" if m.claim in ("attention_knockout", "dcm_patching") else ""
            cells.append(f"{row.estimate:+.3f}{where}")
        failed = [f"{k.claim}: {k.name}" for c in s.claims.values() for k in c.checks if k.passed is False]
        errors = [f"{c.claim} could not run" for c in s.claims.values() if c.error]
        verdict = (
            s.verdict.label if s.verdict else "no verdict (" + ("; ".join(errors) or "not every verdict claim") + ")"
        )
        step = str(x) if all(t.checkpoint.step is not None for t in steps) else f"#{x + 1}"
        row_cells = [step, f"`{Path(s.checkpoint.ref).name or s.checkpoint.ref}`", verdict, *cells]
        text.append("| " + " | ".join([*row_cells, "; ".join(failed) or "none"]) + " |")
    judged = [s for s in steps if s.verdict]
    if judged:
        same = [s for s in judged if s.verdict.same_mechanism]
        text += [
            "",
            (
                f"The first step with a same-mechanism verdict: {same[0].checkpoint.describe()}."
                if same
                else "No step has a same-mechanism verdict."
            )
            + " Each step's verdict, with its reasons:",
            "",
        ]
        text += [f"- {s.checkpoint.describe()}: **{s.verdict.label}**: {'; '.join(s.verdict.reasons)}" for s in judged]
    path = out / f"trajectory-{trajectory.name}.md"
    path.write_text("\n".join(text) + "\n")
    return path


def trajectory_figure(trajectory: Trajectory, follow: list[Measure], out: Path) -> str:
    """One panel per claim: its measures by step with their 95% intervals, the no-change line (0; for a share of
    the gain, 0 and the circuit's "largely" threshold), and the verdict of each step above the first panel."""
    from mechbench import figures
    from mechbench.compare import SHARE_LARGELY

    steps = trajectory.steps
    x = _x(steps)
    panels: dict[str, list[Measure]] = {}
    for m in follow:
        panels.setdefault(m.claim, []).append(m)
    series = {}
    for claim, ms in panels.items():
        lines = []
        for m in ms:
            points = []
            for xi, s in zip(x, steps, strict=True):
                row = m.pick(s.claims[claim].rows) if claim in s.claims else None
                points.append((xi, row.estimate.value, row.estimate.lo, row.estimate.hi) if _finite(row) else None)
            lines.append((m.label, points))
        refs = [(0.0, "no change")] if claim != "cmap" else [(0.0, "none of the gain"), (SHARE_LARGELY, "largely")]
        series[claim] = (lines, refs)
    verdicts = [(xi, s.verdict.label if s.verdict else "") for xi, s in zip(x, steps, strict=True)]
    xlabel = "training step" if all(s.checkpoint.step is not None for s in steps) else "checkpoint (order given)"
    return figures.trajectory(series, verdicts, xlabel, out, f"trajectory-{trajectory.name}")
