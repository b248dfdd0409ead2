"""Does a retrained zoo reproduce the shipped one? Compare the weight digests two training runs recorded.

    python -m mechbench.zoo train --out zoo-retrain --no-cards   # retrain (CPU kernels pinned)
    python -m mechbench.zoo compare zoo-retrain                  # bit-identical per model?
    python -m mechbench.zoo compare zoo-retrain --record         # and note the check in the shipped records

Each ``training.json`` holds the sha256 of every weight (``digest``) and the CPU it ran on (``cpu``), so the
comparison needs no model loading. With ``--record`` the outcome is appended to the shipped model's
``reproductions`` list, which its model card shows.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path


def _record(folder: Path) -> dict | None:
    path = folder / "training.json"
    return json.loads(path.read_text()) if path.is_file() else None


def compare_zoos(shipped_dir: Path | str, retrained_dir: Path | str, names=None) -> list[dict]:
    """One row per model found in both folders: identical digests or not, with steps and accuracies of each."""
    from mechbench.zoo import ZOO

    rows = []
    for name in names or ZOO:
        shipped, retrained = _record(Path(shipped_dir) / name), _record(Path(retrained_dir) / name)
        if shipped is None or retrained is None:
            continue
        cpu = retrained.get("cpu") or {}
        rows.append(
            {
                "model": name,
                "identical": shipped["digest"] == retrained["digest"],
                "digest": retrained["digest"],
                "steps": [shipped["steps"], retrained["steps"]],
                "heldout_accuracy": [shipped["heldout_accuracy"], retrained["heldout_accuracy"]],
                "cpu": cpu.get("cpu") or cpu.get("machine"),
                "capability": cpu.get("capability"),
                "pinned": cpu.get("pinned"),
                "torch": cpu.get("torch"),
                "date": datetime.date.today().isoformat(),
            }
        )
    return rows


def record_reproductions(shipped_dir: Path | str, rows: list[dict]) -> None:
    """Append each comparison to the shipped model's ``training.json`` (``reproductions``)."""
    for row in rows:
        path = Path(shipped_dir) / row["model"] / "training.json"
        rec = json.loads(path.read_text())
        rec.setdefault("reproductions", []).append({k: v for k, v in row.items() if k != "model"})
        path.write_text(json.dumps(rec, indent=1) + "\n")


def describe(row: dict) -> str:
    where = (
        f"{row['cpu']} ({row['capability']} kernels, {'pinned' if row['pinned'] else 'not pinned'}), "
        f"torch {row['torch']}, {row['date']}"
    )
    if row["identical"]:
        return f"retrained on {where}: bit-identical weights (sha256 {row['digest'][:16]}...)"
    return (
        f"retrained on {where}: weights differ (steps {row['steps'][0]} vs {row['steps'][1]}, held-out "
        f"accuracy {row['heldout_accuracy'][0]:.3f} vs {row['heldout_accuracy'][1]:.3f})"
    )
