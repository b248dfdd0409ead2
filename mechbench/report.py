"""Reports: the latest measurement of every claim, as the paper's tables and figures, from ``results.jsonl``.

    mechbench report                         # results/results.jsonl -> results/report.md (+ figures)
    mechbench report --results R.jsonl --out DIR

Each measurement line (mechbench.results) carries its keys, value, baseline, tolerance and verdict; the report
keeps the latest line per claim and keys (a rerun supersedes), writes one table per claim in the layout of the
paper's (accuracy per model; circuit accuracy per model and circuit; CMAP per group and donor; knockout per
layer; DCM per group and desideratum), lists every measurement outside its tolerance first, and draws its figures
beside it (mechbench.figures: every number with its 95% interval, PNG and SVG).
"""

from __future__ import annotations

import json
from pathlib import Path

from mechbench.errors import MechbenchError

DETAIL_FIELDS = (
    "value",
    "field",
    "std",
    "n",
    "seed",
    "fingerprint",
    "baseline",
    "tolerance",
    "passed",
    "updated",
    "meta",
    # comparison mode (mechbench.compare) and checks with no stored number
    "message",
    "statistic",
    "lo",
    "hi",
    "base_value",
    "fine_tune_value",
    "references",
    "note",
    "base_fingerprint",
    "reasons",
    "inconclusive",
    # what a figure draws beside a number (path patching's score grid and the stored heads)
    "scores",
    "circuit_heads",
)


#: fields a results row carries for a figure only: not in the report's tables
FIGURE_ONLY = ("scores", "circuit_heads")


def _layout(claim: str) -> tuple[list[str], str | None]:
    """(row keys, column key) of a claim's paper-style table, from its spec (mechbench.claims); a claim the registry
    does not know (a results file from another version) gets every key as a row."""
    from mechbench.claims import CLAIMS

    spec = CLAIMS.get(claim)
    return (list(spec.rows), spec.column) if spec else ([], None)


def load_results(path: Path | str) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise MechbenchError(
            f"no results file at {path}: run the claims first (pytest suites/ writes "
            f"results/results.jsonl), or pass --results"
        )
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise MechbenchError(
            f"{path} is not a results file (it is not text: a binary file?); pass the results.jsonl "
            f"that pytest suites/ writes (--results)"
        ) from None
    except OSError as e:
        raise MechbenchError(
            f"{path} cannot be read ({e.strerror}): pass a results file you can read (--results)"
        ) from None
    rows, unreadable = [], []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if _is_record(row):
            rows.append(row)
        else:  # a line cut by a crash mid-write (or edited by hand) loses that measurement only
            unreadable.append(i)
    if unreadable and not rows:
        raise MechbenchError(
            f"{path} holds no measurements ({len(unreadable)} lines, none a results record): it is "
            f"not a results file; pass the results.jsonl that pytest suites/ writes (--results)"
        )
    if unreadable:
        print(f"mechbench report: skipping {len(unreadable)} unreadable line(s) of {path}: {unreadable[:10]}")
    return rows


def results_files(sources) -> list[Path]:
    """The results files of ``sources``: a ``results.jsonl`` as given, a directory's own ``results.jsonl`` or, where
    it has none (a CI matrix's downloaded artifacts, a job array's results directories under one folder), every
    ``results.jsonl`` below it, in name order."""
    files = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = (
                [path / "results.jsonl"] if (path / "results.jsonl").is_file() else sorted(path.rglob("results.jsonl"))
            )
            if not found:
                raise MechbenchError(
                    f"no results.jsonl in {path} or below it: pass the results directories of the runs"
                )
            files += found
        else:
            files.append(path)
    return list(dict.fromkeys(files))


def load_runs(sources) -> tuple[list[dict], list[Path]]:
    """Every measurement of the runs in ``sources`` (:func:`results_files`), oldest first by the time each was
    measured, so that :func:`latest` keeps the newest per claim and keys whichever run it came from."""
    files = results_files(sources)
    rows = [row for f in files for row in load_results(f)]
    rows.sort(key=lambda r: str((r.get("meta") or {}).get("time") or ""))  # stable: one run's lines keep their order
    return rows, files


def disagreements(rows: list[dict]) -> list[str]:
    """How the runs behind ``rows`` differ where a reader would take them for one run: the commit (and a dirty
    tree), the versions of the libraries that compute the numbers, and a model measured with different weights
    (its fingerprint) in different rows. One line each; none where they agree."""
    lines = []

    def distinct(get) -> dict[str, int]:
        seen: dict[str, int] = {}
        for r in rows:
            v = get(r)
            seen[v] = seen.get(v, 0) + 1
        return seen

    def meta(r):
        return r.get("meta") or {}

    commits = distinct(lambda r: (meta(r).get("git") or {}).get("commit", "unknown") or "unknown")
    if len(commits) > 1:
        lines.append("commits: " + ", ".join(f"{c[:12]} ({n} rows)" for c, n in sorted(commits.items())))
    for lib in ("mechbench", "torch", "transformers", "peft"):
        found = distinct(lambda r, lib=lib: str((meta(r).get("versions") or {}).get(lib)))
        if len(found) > 1:
            lines.append(f"{lib} versions: " + ", ".join(f"{v} ({n} rows)" for v, n in sorted(found.items())))
    by_model: dict[str, set] = {}
    for r in rows:
        fp = r.get("fingerprint")
        if isinstance(fp, dict) and fp.get("weights_sha256") and r.get("model"):
            by_model.setdefault(r["model"], set()).add(fp["weights_sha256"][:12])
    for model, prints in sorted(by_model.items()):
        if len(prints) > 1:
            lines.append(f"{model} was measured with different weights: fingerprints {', '.join(sorted(prints))}")
    return lines


def _is_record(row) -> bool:
    """A results line the report can read: an object with a claim name, and its ``meta`` (where there is one) an
    object whose ``git`` and ``device`` are objects, the device's ``gib`` a number (mechbench.results writes these)."""
    if not (isinstance(row, dict) and isinstance(row.get("claim"), str)):
        return False
    meta = row.get("meta") or {}
    device = meta.get("device") if isinstance(meta, dict) else None
    return (
        isinstance(meta, dict)
        and all(isinstance(meta.get(k) or {}, dict) for k in ("git", "device"))
        and isinstance((device or {}).get("gib") or 0, (int, float))
    )


def latest(rows: list[dict]) -> list[dict]:
    """The last line per (claim, keys, field): later runs supersede earlier ones. A row without ``boxes`` (written
    before rows carried it) is at the paper's 7 boxes, as a row with ``boxes: 7`` is."""
    out: dict[tuple, dict] = {}
    for row in rows:
        keyed = {"boxes": 7, **row}
        keys = tuple(sorted((k, json.dumps(v)) for k, v in keyed.items() if k not in DETAIL_FIELDS))
        out[(keys, row.get("field"))] = row
    return list(out.values())


def _frame(rows: list[dict]):
    import pandas as pd

    frame = pd.DataFrame(
        [
            {
                k: v
                for k, v in r.items()
                if k not in ("fingerprint", "meta", "updated", "base_fingerprint", *FIGURE_ONLY)
            }
            for r in rows
        ]
    )
    if "field" in frame and frame["field"].isna().all():
        frame = frame.drop(columns="field")
    if "boxes" in frame and frame["boxes"].fillna(7).eq(7).all():  # all at the paper's 7 boxes: no column for it
        frame = frame.drop(columns="boxes")
    return frame.dropna(axis=1, how="all")


def _table(claim: str, frame) -> str:
    index, column = _layout(claim)
    keys = [k for k in frame.columns if k not in DETAIL_FIELDS and k != "claim"] + (
        ["field"] if "field" in frame else []
    )
    index = [k for k in index if k in keys] + [k for k in keys if k not in index and k != column]
    if column in frame and index:
        frame = frame.copy()
        frame[index] = (
            frame[index].astype(object).where(frame[index].notna(), "").astype(str)
        )  # NaN rows vanish in a pivot
        table = frame.pivot_table(index=index, columns=column, values="value", aggfunc="last")
        # columns in the order they were measured (the spec's: Q K V QK QKV, the desiderata), not sorted
        table = table[[c for c in dict.fromkeys(frame[column]) if c in table.columns]]
        return table.round(3).reset_index().to_markdown(index=False)
    cols = [c for c in frame.columns if c != "claim"]
    return frame[cols].round(4).to_markdown(index=False)


def write_report(results, out: Path | str, figures: bool = True) -> Path:
    """``<out>/report.md`` and its figures (``mechbench report [RUN ...] --out OUT``): ``results`` a results file or
    directory, or several (a CI matrix's artifacts, a job array's results directories), joined newest first per
    claim and keys, with how their runs disagree (commit, versions, a model's weights) said at the top."""
    from mechbench.validate import writable_dir

    sources = [results] if isinstance(results, (str, Path)) else list(results)
    all_rows, files = load_runs(sources)
    rows = latest(all_rows)
    results = files[0] if len(files) == 1 else f"{len(files)} runs: " + ", ".join(str(f) for f in files)
    out = writable_dir("--out", Path(out))
    by_claim: dict[str, list[dict]] = {}
    for row in rows:
        by_claim.setdefault(row["claim"], []).append(row)
    from mechbench.claims import CLAIMS

    order = {name: i for i, name in enumerate(CLAIMS)}  # the registry's order, then checks and unknown claims by name
    frames = {
        claim: _frame(claim_rows)
        for claim, claim_rows in sorted(by_claim.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))
    }
    failed = [r for r in rows if r.get("passed") is False]
    commits = sorted({(r.get("meta") or {}).get("git", {}).get("commit") or "unknown" for r in rows})
    lines = [
        "# mechbench report",
        "",
        f"{len(rows)} measurements (latest per claim and keys) from `{results}`; commits: "
        + ", ".join(c[:12] for c in commits)
        + ".",
        "",
    ]
    lines += device_lines(rows)
    differ = disagreements(rows)
    if differ:  # the joined runs are not one run: said before any number is read as if they were
        lines += (
            [
                f"**The runs behind these numbers disagree** ({len(differ)}): the measurements below come from "
                "different code, libraries or weights; compare across them with care.",
                "",
            ]
            + [f"- {line}" for line in differ]
            + [""]
        )
    lines += [f"## Failed: {len(failed)} (outside tolerance, or a check that did not hold)", ""]
    if failed:
        lines += [_frame(failed).round(4).to_markdown(index=False), ""]
    # within a bound as wide as the measure: not a pass (mechbench.claims.tolerance.too_wide), the size needed in the row
    undecided = [r for r in rows if r.get("passed") is None and r.get("inconclusive")]
    if undecided:
        lines += [
            f"## Inconclusive: {len(undecided)} (too few examples for a bound that means something; not passed)",
            "",
            _frame(undecided).round(4).to_markdown(index=False),
            "",
        ]
    from mechbench.claims import CLAIMS

    for claim, frame in frames.items():
        spec = CLAIMS.get(claim)  # its title and where the paper states it, for a registered claim
        heading = (
            f"{claim}: {spec.title} (docs/paper.md §{spec.sections})"
            if spec and spec.sections != "-"
            else (f"{claim}: {spec.title}" if spec else claim)
        )
        lines += [f"## {heading}", "", _table(claim, frame), ""]
    if figures:
        from mechbench.figures import report_figures

        made = report_figures(by_claim, out)
        lines += [
            "## Figures",
            "",
            "Each as PNG, with an SVG beside it for a paper; error bars and bands are 95% intervals.",
            "",
        ]
        lines += [f"![{name}]({name})" for name in made] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


# --- comparison reports (mechbench.compare): a fine-tune beside its base ----------------------------------


def device_lines(rows: list[dict]) -> list[str]:
    """What the numbers ran on (rows' ``meta.device``), and a warning heading when any ran on the simulated GPU: its
    numbers are CPU numbers and its times are not GPU times."""
    devices = {json.dumps((r.get("meta") or {}).get("device") or {"name": "unrecorded"}, sort_keys=True) for r in rows}
    devices = [json.loads(d) for d in sorted(devices)]
    simulated = [d for d in devices if d.get("simulated")]
    lines = [
        "Device: "
        + "; ".join(
            f"{d.get('name')}" + (f" ({d['gib']:g} GiB)" if d.get("gib") and not d.get("simulated") else "")
            for d in devices
        )
        + ".",
        "",
    ]
    if simulated:
        lines = [
            "**SIMULATED GPU: these numbers ran on the CPU under mechbench's simulated CUDA device "
            "(MECHBENCH_SIMULATED_GPU_GIB); they rehearse a GPU run's code path and memory, they are not a GPU "
            "measurement.**",
            "",
        ] + lines
    return lines


def _cell(x, spec: str = ".3f") -> str:
    return "–" if x is None or (isinstance(x, float) and x != x) else format(x, spec)


def comparison_markdown(comparison, results_path: str | None = None) -> str:
    """The side-by-side report of one :class:`mechbench.compare.Comparison` (its claims must be computed)."""
    from mechbench.compare import VERDICT_CLAIMS, VERDICT_RULES
    from mechbench.results import git_state, versions
    from mechbench.testing.device import device_metadata

    c = comparison
    base, ft, lane = c.base.name, c.fine_tune.name, c.lane
    verdict = c.verdict() if c.verdict_ready() else None
    commit = (git_state().get("commit") or "unknown")[:12]
    n_contexts = len(set(c.clusters().tolist()))
    lines = (
        [
            f"# mechbench comparison: `{ft}` against its base `{base}`",
            "",
            (f"Circuit `{c.circuit_name}` (the base's)." if c.circuit_name else f"No circuit: {c.no_circuit}.")
            + f" Lane **{lane.name}**: {lane.n_examples} prompts ({n_contexts} "
            f"contexts) per claim ({lane.verdict_examples} for accuracy and CMAP), {lane.n_random} random circuits, {lane.completeness_draws} draws of K, DCM "
            f"{'/'.join(map(str, lane.dcm_split))} pairs, DCM heads patched {lane.patching_runs} x {lane.patching_pairs} pairs, "
            f"path patching {lane.discovery_pairs} pairs, minimality {lane.minimality_examples} examples. Intervals are 95% "
            f"percentile intervals from {lane.n_boot} resamples of whole contexts (prompts of one context are not "
            f"independent), with both models resampled together"
            + (
                " ; this is the quick lane, so they are wider than the full lane's (500 prompts): store verdicts from the "
                "full lane."
                if lane.name == "quick"
                else "."
            ),
            f"Commit {commit}; torch {versions().get('torch')}, transformers {versions().get('transformers')}; seed {c.seed}; "
            f"fine-tune weights {c.fine_tune.fingerprint.get('weights_sha256', '')[:12]}, base "
            f"{c.base.fingerprint.get('weights_sha256', '')[:12]}."
            + (f" Every number is also in `{results_path}`." if results_path else ""),
            "",
            *device_lines([{"meta": {"device": device_metadata()}}]),
            f"## Verdict: **{verdict.label if verdict else 'not reached'}**",
            "",
        ]
        + (
            [f"- {r}" for r in verdict.reasons]
            if verdict
            else [
                f"- the verdict needs the claims {', '.join(VERDICT_CLAIMS)}; this run computed "
                f"{', '.join(n for n in c._claims if n not in c.not_run()) or 'none'}"
            ]
        )
        + [f"- **{name} could not run**: {why}" for name, why in c.not_run().items()]
        + ["", "| verdict | rule (first that applies) |", "|---|---|"]
    )
    lines += [
        f"| {'**' + label + '**' if verdict and label == verdict.label else label} | {rule} |"
        for label, rule in VERDICT_RULES
    ]
    checks = [ch for result in c._claims.values() for ch in result.checks if not ch.name.endswith("does the task")]
    checks = c.claim("accuracy").checks + checks
    lines += ["", "## Checks", "", "| claim | check | result | detail |", "|---|---|---|---|"]
    lines += [
        f"| {ch.claim} | {ch.name} | {'pass' if ch.passed else 'FAIL' if ch.passed is False else 'n/a'} | "
        f"{ch.message} |"
        for ch in checks
    ]
    refs = list(c.references)
    for name, result in c._claims.items():
        if result.error is not None:
            lines += ["", f"## {name}: could not run", "", result.error]
            continue
        stat = result.rows[0].statistic if result.rows else "difference"
        lines += [
            "",
            f"## {name} ({result.seconds:.0f} s)",
            "",
            f"| measure | {base} (base) | {ft} | {stat} [95% interval] | "
            + " | ".join(f"{r} (stored)" for r in refs)
            + " | note |",
            "|---" * (5 + len(refs)) + "|",
        ]
        for row in result.rows:
            spec = ".1f" if row.claim == "dcm_patching" else ".3f"
            est = row.estimate
            est_text = format(est, "+" + spec) if row.statistic == "difference" else format(est, spec)
            lines.append(
                f"| {row.measure} | {_cell(row.base, spec)} | {_cell(row.fine_tune, spec)} | {est_text} | "
                + " | ".join(_cell(row.references.get(r), spec) for r in refs)
                + f" | {row.note} |"
            )
    return "\n".join(lines) + "\n"


def _safe(name: str) -> str:
    from mechbench.results import file_stem

    return file_stem(name)


def write_comparison_report(comparison, out: Path | str, figures: bool = True, results_path: str | None = None) -> Path:
    """``<out>/compare-<fine-tune>.md`` with its figures beside it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = comparison_markdown(comparison, results_path)
    if figures:
        from mechbench.figures import comparison_figures

        made = comparison_figures(comparison, out, f"compare-{_safe(comparison.fine_tune.name)}")
        text += "\n## Figures\n\n" + "".join(f"![{n}]({n})\n\n" for n in made)
    path = out / f"compare-{_safe(comparison.fine_tune.name)}.md"
    path.write_text(text)
    return path
