"""Reports: the latest measurement of every claim, as the paper's tables and figures, from ``results.jsonl``.

    mechbench report                         # results/results.jsonl -> results/report.md (+ figures)
    mechbench report --results R.jsonl --out DIR

Each measurement line (mechbench.results) carries its keys, value, baseline, tolerance and verdict; the report
keeps the latest line per claim and keys (a rerun supersedes), writes one table per claim in the layout of the
paper's (accuracy per model; circuit accuracy per model and circuit; CMAP per group and donor; knockout per
layer; DCM per group and desideratum), lists every measurement outside its tolerance first, and draws the
knockout curves and CMAP bars as PNG files beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

from mechbench.errors import MechbenchError

DETAIL_FIELDS = ("value", "field", "std", "n", "seed", "fingerprint", "baseline", "tolerance", "passed", "updated", "meta")

#: claim -> (row keys, column key) of its paper-style table; other keys are rows too.
PIVOTS = {
    "accuracy": (["model"], None),
    "faithfulness": (["circuit", "model"], "metric"),
    "completeness": (["circuit", "model", "k_method", "group"], "metric"),
    "cmap": (["target_model", "group"], "source_model"),
    "attention_knockout": (["model", "edge"], "layer"),
    "dcm": (["circuit", "model", "group"], "desideratum"),
    "path_patching": (["circuit", "model"], "group"),
    "minimality": (["circuit", "group", "layer", "head"], "field"),
}


def load_results(path: Path | str) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise MechbenchError(f"no results file at {path}: run the claims first (pytest suites/ writes "
                             f"results/results.jsonl), or pass --results")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            # a line cut by a crash mid-write loses that measurement only
            print(f"mechbench report: skipping unreadable line {i} of {path}")
    return rows


def latest(rows: list[dict]) -> list[dict]:
    """The last line per (claim, keys, field): later runs supersede earlier ones."""
    out: dict[tuple, dict] = {}
    for row in rows:
        keys = tuple(sorted((k, json.dumps(v)) for k, v in row.items() if k not in DETAIL_FIELDS))
        out[(keys, row.get("field"))] = row
    return list(out.values())


def _frame(rows: list[dict]):
    import pandas as pd

    frame = pd.DataFrame([{k: v for k, v in r.items() if k not in ("fingerprint", "meta", "updated")} for r in rows])
    if "field" in frame and frame["field"].isna().all():
        frame = frame.drop(columns="field")
    return frame.dropna(axis=1, how="all")


def _table(claim: str, frame) -> str:
    index, column = PIVOTS.get(claim, ([], None))
    keys = [k for k in frame.columns if k not in DETAIL_FIELDS and k != "claim"] + (["field"] if "field" in frame else [])
    index = [k for k in index if k in keys] + [k for k in keys if k not in index and k != column]
    if column in frame and index:
        frame = frame.copy()
        frame[index] = frame[index].astype(object).where(frame[index].notna(), "").astype(str)  # NaN rows vanish in a pivot
        table = frame.pivot_table(index=index, columns=column, values="value", aggfunc="last")
        return table.round(3).reset_index().to_markdown(index=False)
    cols = [c for c in frame.columns if c != "claim"]
    return frame[cols].round(4).to_markdown(index=False)


def _figures(frame_by_claim: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    made = []
    ko = frame_by_claim.get("attention_knockout")
    if ko is not None and len(ko):
        models = sorted(ko["model"].unique())
        fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.2), sharey=True, squeeze=False)
        for ax, model in zip(axes[0], models):
            for edge, part in ko[ko["model"] == model].groupby("edge"):
                part = part.sort_values("layer")
                ax.plot(part["layer"], part["value"], marker="o", label=edge)
            ax.set_title(model)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_xlabel("knocked out from layer")
        axes[0][0].set_ylabel("accuracy")
        axes[0][-1].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "knockout.png", dpi=120)
        plt.close(fig)
        made.append("knockout.png")
    cmap = frame_by_claim.get("cmap")
    if cmap is not None and len(cmap):
        table = cmap.pivot_table(index="group", columns="source_model", values="value", aggfunc="last")
        ax = table.plot.bar(figsize=(6, 3.2), rot=20)
        ax.set_ylabel("base accuracy with the donor's heads")
        ax.figure.tight_layout()
        ax.figure.savefig(out / "cmap.png", dpi=120)
        plt.close(ax.figure)
        made.append("cmap.png")
    return made


def write_report(results: Path | str, out: Path | str, figures: bool = True) -> Path:
    rows = latest(load_results(results))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_claim: dict[str, list[dict]] = {}
    for row in rows:
        by_claim.setdefault(row["claim"], []).append(row)
    frames = {claim: _frame(claim_rows) for claim, claim_rows in sorted(by_claim.items())}
    failed = [r for r in rows if r.get("passed") is False]
    commits = sorted({(r.get("meta") or {}).get("git", {}).get("commit") or "unknown" for r in rows})
    lines = ["# mechbench report", "",
             f"{len(rows)} measurements (latest per claim and keys) from `{results}`; commits: "
             + ", ".join(c[:12] for c in commits) + ".", ""]
    lines += [f"## Outside tolerance: {len(failed)}", ""]
    if failed:
        lines += [_frame(failed).round(4).to_markdown(index=False), ""]
    for claim, frame in frames.items():
        lines += [f"## {claim}", "", _table(claim, frame), ""]
    if figures:
        lines += ["## Figures", ""] + [f"![{name}]({name})" for name in _figures(frames, out)] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
