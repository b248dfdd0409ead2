"""Stored baselines: the numbers each claim is checked against, with their source and tolerance.

One JSON file per claim in the baselines directory (``baselines/<claim>.json``)::

    {"schema_version": 1, "claim": "accuracy", "description": "...", "unit": "fraction",
     "source": "default source of the records",
     "records": [{"model": "llama7b", "value": 0.66, "source": "...", "tolerance": 0.095,
                  "tolerance_rule": "...", "n": 500}, ...]}

A record's key fields (``model``, ``circuit``, ``group``, ...) are every field that is not one of
:data:`RECORD_FIELDS`; a lookup matches them exactly. Records from the paper are never overwritten;
``update`` writes records measured by mechbench (their ``source`` starts with ``"measured"``) and returns a
readable diff. Every file is checked against the schema when loaded: a corrupt or incomplete file is an error
that names the file and the field.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechbench.errors import BaselineError
from mechbench.stats import few_clusters_factor

SCHEMA_VERSION = 1
UNITS = ("fraction", "percent", "heads", "count")
TOP_FIELDS = {"schema_version": int, "claim": str, "description": str, "unit": str, "source": str, "records": list}
RECORD_FIELDS = ("value", "source", "tolerance", "tolerance_same_sample", "tolerance_rule", "n", "seed", "std", "dtype",
                 "note", "fingerprint", "measured_at")
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "baselines"


def binomial_tolerance(p: float, n_measured: int, n_baseline: int, z: float = 3.0, rounding: float = 0.0) -> float:
    """z standard errors of the difference of two independent accuracy estimates, plus rounding slack.

    The variance uses the Agresti-Coull estimate (x + 2) / (n + 4) of p: at an observed 0 or 1 the plain
    estimate would give a tolerance of 0, which any later run on other examples fails by one example."""
    p = min(max(p, 0.0), 1.0)
    p = (p * n_baseline + 2) / (n_baseline + 4)
    se = math.sqrt(p * (1 - p) / n_measured + p * (1 - p) / n_baseline)
    return round(z * se + rounding, 4)


BINOMIAL_RULE = ("3 standard errors of the difference of two independent binomial estimates, "
                 "3*sqrt(p(1-p)/n_measured + p(1-p)/n_baseline) with p = (x+2)/(n+4){rounding}")
SAME_SAMPLE_RULE = ("on the baseline's own examples (same seed and n) sampling error cancels: 3/n allows three "
                    "examples to flip on near-ties between float builds")


@dataclass
class Record:
    keys: dict[str, Any]
    value: Any
    source: str
    fields: dict[str, Any] = field(default_factory=dict)  # tolerance, n, std, note, ...
    order: tuple[str, ...] = ()  # the field order of the file it came from, kept when it is written back

    @property
    def measured(self) -> bool:
        return self.source.startswith("measured")

    def get(self, name: str, default=None):
        return self.fields.get(name, default)

    def same_sample(self, n: int | None, seed: int | None) -> bool:
        """The measurement is on this record's own examples (same n and seed), where sampling error cancels."""
        return (n is not None and seed is not None and self.get("n") == n and self.get("seed") == seed
                and self.get("tolerance_same_sample") is not None)

    @property
    def dtype(self) -> str:
        """The dtype the record was measured in (records written before it was stored were all float32)."""
        return self.get("dtype") or "float32"

    def tolerance_for(self, n: int | None = None, seed: int | None = None, value: float | None = None,
                      std: float | None = None, dtype: str | None = None) -> float:
        """The tolerance that applies to a measurement on ``n`` examples drawn with ``seed``. ``value``: the number
        the tolerance bounds where the record's value is an object (DCM's ``test_accuracy``). ``std``: the measured
        spread of a mean over draws, which says how much wider its error is than the stored one's. ``dtype``: the
        measurement's; on the record's own examples another dtype than the record's widens the bound
        (:func:`precision_factor`)."""
        if self.same_sample(n, seed):
            return float(self.get("tolerance_same_sample")) * precision_factor(n, dtype, self.dtype)
        if self.get("tolerance") is None:
            raise BaselineError(f"baseline record {self.keys} has no tolerance to compare against")
        value = self.value if value is None else value
        mean_of_draws = isinstance(value, (int, float)) and (self.get("std") is not None or not 0 <= value <= 1)
        other_n = n is not None and self.get("n") and n != self.get("n")
        if mean_of_draws and (other_n or std is not None):
            # a mean over draws (or a percent): the bound covers the stored mean's error and the new one's, so it
            # widens by sqrt((1 + (new spread / stored spread)^2) / 2): the measured spread where there is one, else
            # each draw's spread grown as 1/sqrt(n) (measured: a percent over runs of 40 pairs spread 3-6x more than
            # over 500, past the 1/sqrt(n) guess); on more examples, or a smaller spread, it stays. On as many
            # examples too: the stored spread is an estimate from 10 draws (measured: DCM patching's 1.19 points
            # where other seeds spread 2.2-2.9 and the binomial says 2.1, so --seed 1 failed an unchanged toy-float
            # by 1.86 against 1.85)
            ratio = self.get("n") / n if n and self.get("n") else 1.0
            if std is not None and self.get("std"):
                ratio = max(ratio, (std / self.get("std")) ** 2)
            return float(self.get("tolerance")) * max(1.0, math.sqrt((1 + ratio) / 2))
        if other_n and isinstance(value, (int, float)):
            # Fewer (or more) examples than the baseline: the binomial bound widens (or narrows) with them, and
            # never allows fewer than three examples of the new sample: near 0 or 1 the count of misses is skewed
            # (Poisson-like) and 3 normal standard errors cover it too little (measured: 2 misses in 40 where the
            # record has 0.4% failed a 0.044 bound at --limit 40)
            rounding = float(self.get("tolerance")) - binomial_tolerance(value, self.get("n"), self.get("n"))
            return max(binomial_tolerance(value, n, self.get("n"), rounding=max(rounding, 0.0)), round(3 / n, 4))
        return float(self.get("tolerance"))

    def to_json(self) -> dict:
        out = {**self.keys, "value": self.value, "source": self.source, **self.fields}
        return {**{k: out[k] for k in self.order if k in out}, **out}  # the file's order first, new fields after

    def summary(self) -> str:
        """The value with the sample and tolerance behind it, as a diff shows them."""
        extra = [f"n={self.get('n')}" if self.get("n") is not None else "",
                 f"tolerance {self.get('tolerance')}" if self.get("tolerance") is not None else ""]
        return f"{self.value!r}" + (f" ({', '.join(e for e in extra if e)})" if any(extra) else "")


@dataclass
class Baseline:
    path: Path
    claim: str
    description: str
    unit: str
    source: str
    records: list[Record]

    def find(self, **keys) -> Record | None:
        hits = [r for r in self.records if r.keys == keys]
        if len(hits) > 1:
            raise BaselineError(f"{self.path}: {len(hits)} records have the keys {keys}; keys must be unique")
        return hits[0] if hits else None

    def get(self, **keys) -> Record:
        record = self.find(**keys)
        if record is None:
            have = sorted({json.dumps(r.keys, sort_keys=True) for r in self.records})[:12]
            raise BaselineError(
                f"{self.path} has no {self.claim!r} record for {keys}. Records have keys: {', '.join(have)}. "
                f"Run the claim with --update-baselines to measure and store one."
            )
        return record

    def to_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "claim": self.claim, "description": self.description,
                "unit": self.unit, "source": self.source, "records": [r.to_json() for r in self.records]}


def _fail(path: Path, what: str) -> BaselineError:
    return BaselineError(
        f"baseline file {path} is invalid: {what}. Restore it from git (`git checkout -- {path}`) or fix the "
        f"field; the format is described in mechbench/baselines.py."
    )


def parse(data: Any, path: Path) -> Baseline:
    if not isinstance(data, dict):
        raise _fail(path, "the top level must be a JSON object")
    for name, kind in TOP_FIELDS.items():
        if name not in data:
            raise _fail(path, f"missing field {name!r}")
        if not isinstance(data[name], kind):
            raise _fail(path, f"field {name!r} must be a {kind.__name__}, got {type(data[name]).__name__}")
    if data["schema_version"] != SCHEMA_VERSION:
        raise _fail(path, f"schema_version {data['schema_version']} is not the supported {SCHEMA_VERSION}")
    if data["claim"] != path.stem:
        raise _fail(path, f"field 'claim' is {data['claim']!r} but the file is named {path.name!r}")
    if data["unit"] not in UNITS:
        raise _fail(path, f"field 'unit' is {data['unit']!r}; expected one of {', '.join(UNITS)}")
    records = []
    for i, raw in enumerate(data["records"]):
        where = f"records[{i}]"
        if not isinstance(raw, dict):
            raise _fail(path, f"{where} must be an object")
        for name in ("value", "source"):
            if name not in raw:
                raise _fail(path, f"{where} is missing field {name!r}")
        if not isinstance(raw["source"], str) or not raw["source"]:
            raise _fail(path, f"{where}.source must be a non-empty string")
        for name in ("tolerance", "tolerance_same_sample", "std"):
            if name in raw and not (isinstance(raw[name], (int, float)) and raw[name] >= 0):
                raise _fail(path, f"{where}.{name} must be a number >= 0, got {raw[name]!r}")
        if "tolerance" in raw and "tolerance_rule" not in raw:
            raise _fail(path, f"{where} has a tolerance but no 'tolerance_rule' saying how it was derived")
        if "position" in raw and "role" not in raw:
            # files written before the key was named for what it holds (a role: last, query_label, ...)
            raw = {("role" if k == "position" else k): v for k, v in raw.items()}
        keys = {k: v for k, v in raw.items() if k not in RECORD_FIELDS}
        for k, v in keys.items():
            if not isinstance(v, (str, int)):
                raise _fail(path, f"{where}.{k} is a key field and must be a string or an integer, got {v!r}")
        fields = {k: raw[k] for k in RECORD_FIELDS if k in raw and k not in ("value", "source")}
        records.append(Record(keys, raw["value"], raw["source"], fields, tuple(raw)))
    return Baseline(path, data["claim"], data["description"], data["unit"], data["source"], records)


def load(claim: str, baselines_dir: str | Path | None = None, new: tuple[str, str] | None = None) -> Baseline:
    """The baseline file of ``claim``. ``new`` (description, unit): where the file does not exist yet, an empty
    baseline that the first update writes (a new claim has no file until its first ``--update-baselines``)."""
    path = Path(baselines_dir or DEFAULT_DIR) / f"{claim}.json"
    if not path.exists() and new is not None and path.parent.is_dir():
        return Baseline(path, claim, new[0], new[1], "measured by mechbench", [])
    if not path.is_file():
        raise BaselineError(f"no baseline file for claim {claim!r}: {path} does not exist. Check --baselines-dir, "
                            f"or restore the file from git.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise _fail(path, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}; a truncated or "
                          f"hand-edited file?)") from None
    return parse(data, path)


def _write_atomic(path: Path, data: dict) -> None:
    """Write via a temporary file and rename, so a crash never leaves a truncated baseline; the file keeps its
    permissions."""
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, ensure_ascii=False)
            f.write("\n")
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


FORCE_HINT = "pass --force-baselines to store it anyway"


def degradations(old: Record | None, fields: dict) -> list[str]:
    """What would make a new record worse than a baseline should be: a tolerance of zero (every later run on
    other examples fails it) or fewer examples than the record it replaces."""
    problems = []
    if fields.get("tolerance") is not None and fields["tolerance"] <= 0:
        problems.append("its tolerance is 0, so any later run on other examples would fail it")
    n_old, n_new = (old.get("n") if old else None), fields.get("n")
    if n_old and n_new and n_new < n_old:
        problems.append(f"it rests on n={n_new} examples where the stored record has n={n_old}")
    return problems


def update(baseline: Baseline, keys: dict, value: Any, *, write: bool = True, force: bool = False, **fields) -> str:
    """Insert or replace the measured record with ``keys``; returns a one-line diff that shows n and tolerance.
    Paper records are kept. A record worse than the one it replaces (see :func:`degradations`) is refused
    unless ``force``. ``write=False`` changes ``baseline`` in memory only (a :class:`Staging` writes it)."""
    old = baseline.find(**keys)
    if old is not None and not old.measured:
        raise BaselineError(
            f"{baseline.path}: the record {keys} comes from {old.source!r}, not from a measurement; "
            f"mechbench does not overwrite published numbers."
        )
    fields = {k: v for k, v in fields.items() if v is not None}
    problems = degradations(old, fields)
    if problems and not force:
        raise BaselineError(f"not storing {baseline.claim} {keys} = {value!r} in {baseline.path}: "
                            f"{'; '.join(problems)}. Rerun with the claim's full sample (no --limit), or {FORCE_HINT}.")
    source = fields.pop("source", "measured by mechbench")
    new = Record(dict(keys), value, source, fields, old.order if old else ())
    if old is None:
        baseline.records.append(new)
        diff = f"+ {baseline.claim} {keys}: {new.summary()}"
    else:
        baseline.records[baseline.records.index(old)] = new
        diff = f"~ {baseline.claim} {keys}: {old.summary()} -> {new.summary()}"
    if write:
        _write_atomic(baseline.path, baseline.to_json())
    return diff


class Staging:
    """The baseline updates of one run, held in memory and written together when the run ends: an interrupted
    ``--update-baselines`` run leaves every file as it was, never half old and half new records."""

    def __init__(self):
        self._files: dict[Path, Baseline] = {}
        self._changed: set[Path] = set()
        self.diffs: list[str] = []

    def load(self, claim: str, baselines_dir=None, new: tuple[str, str] | None = None) -> Baseline:
        path = (Path(baselines_dir or DEFAULT_DIR) / f"{claim}.json").resolve()
        if path not in self._files:
            self._files[path] = load(claim, baselines_dir, new)
        return self._files[path]

    def update(self, baseline: Baseline, keys: dict, value: Any, **fields) -> str:
        diff = update(baseline, keys, value, write=False, **fields)
        self._changed.add(baseline.path)
        self.diffs.append(diff)
        return diff

    def commit(self) -> list[Path]:
        """Write every changed file (each atomically); returns their paths."""
        changed = [b for b in self._files.values() if b.path in self._changed]
        for b in changed:
            _write_atomic(b.path, b.to_json())
        self._files.clear()
        self._changed.clear()
        return [b.path for b in changed]


#: The share of examples whose top-1 answer flips between float32 and bfloat16 weights and activations, rounded up
#: from the 0.53% measured on the toy zoo (116 sets of 500 prompts: accuracy and every knockout curve point of the
#: four models, at most 6 flips and a net change of 4 in one set), doubled for wider models and other kernels.
PRECISION_FLIP_RATE = 0.01
PRECISION_RULE = ("in another dtype than the baseline's, on its own examples: the same-sample bound x (1 + "
                  "sqrt(0.01 n)), for the predictions that flip on near-ties when the weights are rounded (0.53% of "
                  "examples measured float32 -> bfloat16 on the toy zoo, doubled)")


def precision_factor(n: int | None, dtype: str | None, baseline_dtype: str) -> float:
    """How much a same-sample bound widens when the measurement ran in ``dtype`` and the baseline in
    ``baseline_dtype``: the examples are the same, the model is not quite (every weight rounded), so each example
    near a tie may flip either way; their net count has a standard deviation of about sqrt(rate n), and the bound
    allows 3 of them on top of the 3 of the same-sample rule: 3/n x (1 + sqrt(rate n)). 1 in the same dtype."""
    from mechbench.models.loading import DTYPES

    if not dtype or not n or DTYPES.get(dtype, dtype) == DTYPES.get(baseline_dtype, baseline_dtype):
        return 1.0
    return 1.0 + math.sqrt(PRECISION_FLIP_RATE * n)


@dataclass
class Comparison:
    measured: float
    expected: float
    tolerance: float
    record: Record
    widened: float = 1.0  # the factor a binomial tolerance was widened by for prompts that share a context
    precision: float = 1.0  # the factor a same-sample bound was widened by for another dtype than the baseline's

    @property
    def difference(self) -> float:
        return self.measured - self.expected

    @property
    def passed(self) -> bool:
        return abs(self.difference) <= self.tolerance + 1e-12

    def __str__(self) -> str:
        verdict = "within" if self.passed else "OUTSIDE"
        widened = (f" (the binomial bound x {self.widened:.2f}: prompts that share a context miss together, and "
                   f"the contexts behind that estimate are counted)" if self.widened > 1 else "")
        if self.precision > 1:
            widened += (f" (the same-sample bound x {self.precision:.2f}: the baseline ran in {self.record.dtype}, "
                        f"and rounding to another dtype flips predictions near ties)")
        return (f"measured {self.measured:.4f} vs baseline {self.expected:.4f} ({self.record.source}): "
                f"difference {self.difference:+.4f}, {verdict} tolerance {self.tolerance:.4f}{widened}")


def compare(measured: float, record: Record, n: int | None = None, seed: int | None = None,
            field: str | None = None, design_effect: float = 1.0, n_clusters: int | None = None,
            std: float | None = None, dtype: str | None = None) -> Comparison:
    """``field``: compare with that entry of a record whose value is an object (DCM: ``test_accuracy``).
    ``design_effect``: the measured variance of the accuracy over its binomial variance when prompts come in
    blocks that share a context (:func:`mechbench.stats.design_effect`); a binomial tolerance is widened by its
    square root where it is larger than 1, except on the record's own examples. ``n_clusters``: the contexts that
    estimate rests on; few of them make it uncertain, and the bound takes Student's t for z
    (:func:`mechbench.stats.few_clusters_factor`)."""
    expected = record.value
    if field is not None:
        if not isinstance(expected, dict) or field not in expected:
            raise BaselineError(f"baseline record {record.keys} has no field {field!r} in its value")
        expected = expected[field]
    if not isinstance(expected, (int, float)):
        raise BaselineError(f"baseline record {record.keys} holds {type(expected).__name__}, not a number")
    widen, precision = 1.0, 1.0
    if not record.same_sample(n, seed):
        widen = max(1.0, float(design_effect)) ** 0.5 * (few_clusters_factor(n_clusters) if n_clusters else 1.0)
    else:
        precision = precision_factor(n, dtype, record.dtype)
    return Comparison(float(measured), float(expected),
                      record.tolerance_for(n, seed, float(expected), std, dtype) * widen, record, widen, precision)
