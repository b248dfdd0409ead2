"""Stored baselines: the numbers each claim is checked against, with their source and tolerance.

One JSON file per claim in the baselines directory (``baselines/<claim>.json``)::

    {"schema_version": 1, "claim": "accuracy", "description": "...", "unit": "fraction",
     "source": "default source of the records",
     "records": [{"model": "llama7b", "value": 0.66, "source": "...", "tolerance": 0.095,
                  "tolerance_rule": "...", "n": 500}, ...]}

A record's key fields (``model``, ``circuit``, ``group``, ...) are every field that is not one of
:data:`RECORD_FIELDS`; a lookup matches them exactly. Records from the paper are never overwritten;
``update`` writes records measured by mechbench (their ``source`` starts with ``"measured"``) and returns a
readable diff.

Every file is checked against one schema when loaded (:func:`parse`; ``mechbench baselines`` checks a whole
directory): an error names the file, the record and the field. The schema:

- JSON that says one thing: no key written twice in one object (JSON keeps the last silently), no ``NaN`` or
  ``Infinity`` (not JSON numbers, though Python reads them);
- the top-level fields of :data:`TOP_FIELDS` with their types; ``unit`` one of :data:`UNITS`;
- each record's ``value`` in its unit (:func:`value_problem`): a fraction in [0, 1], a percent in [0, 100], heads and
  counts non-negative integers (heads also as a list of [layer, head] pairs), never a bool where a number is meant
  (``true`` is an int in Python); a record of :data:`RECORD_UNITS` in its own unit; an object value's entries in
  theirs (:data:`VALUE_FIELD_UNITS`);
- ``tolerance`` and ``tolerance_same_sample`` finite, >= 0 and narrower than the unit allows
  (the range rule, :func:`mechbench.claims.tolerance.tolerance_limit`), with a ``tolerance_rule`` saying how it was
  derived; ``std`` finite and >= 0; ``n`` a positive integer, ``seed`` a non-negative integer; the text fields
  strings; key fields strings or integers;
- no two records with the same keys.

:func:`update` checks a new record against the same schema before it is stored.

The rules that say how far a measurement may lie from a record, and the judging of one against it, are
:mod:`mechbench.claims.tolerance`'s: this module keeps the schema, the files and their staging.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechbench.errors import BaselineError

SCHEMA_VERSION = 1
UNITS = ("fraction", "percent", "heads", "count")
TOP_FIELDS = {"schema_version": int, "claim": str, "description": str, "unit": str, "source": str, "records": list}
RECORD_FIELDS = (
    "value",
    "source",
    "tolerance",
    "tolerance_same_sample",
    "tolerance_rule",
    "n",
    "seed",
    "std",
    "dtype",
    "note",
    "fingerprint",
    "measured_at",
    "discovery",  # a stored circuit's discovery settings (an object: mechbench.models.discovery_settings)
)
TEXT_FIELDS = ("tolerance_rule", "dtype", "note", "fingerprint", "measured_at")
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "baselines"

#: Records whose value is not in their file's unit, as (claim, key field, its value): unit. Faithfulness is the
#: circuit's accuracy over the full model's, a ratio that passes 1 where the circuit beats the model (1.17); the
#: additional desiderata's patching percentages sit beside their DCM fractions.
RECORD_UNITS = {
    ("faithfulness", "metric", "faithfulness"): "ratio",
    ("dcm_additional", "measure", "patching"): "percent",  # the DCM-patching claim's unit, beside DCM's fractions
}
#: The unit of an entry of an object-valued record (DCM's mask, minimality's per-head accuracies and group
#: summaries) where it is not the file's: an entry named ``n_...`` is a count too. ``percentage`` is minimality's
#: share of candidates removed first (0.3), ``threshold`` its minimum relative drop (0.01).
VALUE_FIELD_UNITS = {
    "heads": "heads",
    "k_removed": "count",
    "seed": "count",
    "in_circuit": "flag",
    "percentage": "fraction",
    "threshold": "ratio",
}
#: Each unit's range of values.
RANGES = {"fraction": (0.0, 1.0), "percent": (0.0, 100.0), "ratio": (0.0, math.inf)}


@dataclass
class Record:
    keys: dict[str, Any]
    value: Any
    source: str
    fields: dict[str, Any] = field(default_factory=dict)  # tolerance, n, std, note, ...
    order: tuple[str, ...] = ()  # the field order of the file it came from, kept when it is written back
    unit: str = "fraction"  # its value's (its file's, or RECORD_UNITS'): the range its tolerance must be narrower than

    @property
    def measured(self) -> bool:
        return self.source.startswith("measured")

    def get(self, name: str, default=None):
        return self.fields.get(name, default)

    def unit_of(self, entry: str | None = None) -> str:
        """The unit of the record's value, or of the entry ``entry`` of an object value (:func:`entry_unit`)."""
        return self.unit if entry is None else entry_unit(entry, self.unit)

    @property
    def dtype(self) -> str:
        """The dtype the record was measured in (records written before it was stored were all float32)."""
        return self.get("dtype") or "float32"

    def to_json(self) -> dict:
        out = {**self.keys, "value": self.value, "source": self.source, **self.fields}
        return {**{k: out[k] for k in self.order if k in out}, **out}  # the file's order first, new fields after

    def summary(self) -> str:
        """The value with the sample and tolerance behind it, as a diff shows them."""
        extra = [
            f"n={self.get('n')}" if self.get("n") is not None else "",
            f"tolerance {self.get('tolerance')}" if self.get("tolerance") is not None else "",
        ]
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
        return {
            "schema_version": SCHEMA_VERSION,
            "claim": self.claim,
            "description": self.description,
            "unit": self.unit,
            "source": self.source,
            "records": [r.to_json() for r in self.records],
        }


def _fail(path: Path, what: str) -> BaselineError:
    return BaselineError(
        f"baseline file {path} is invalid: {what}. Restore it from git (`git checkout -- {path}`) or fix the "
        f"field; the format is described in mechbench/baselines.py."
    )


class _JsonObject(dict):
    """A JSON object as read, with the keys written in it more than once (JSON keeps the last one silently)."""

    repeated: tuple[str, ...] = ()


def _json_object(pairs) -> _JsonObject:
    obj = _JsonObject(pairs)
    if len(obj) < len(pairs):
        seen: set = set()
        obj.repeated = tuple(dict.fromkeys(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


class _NotANumber(str):
    """``NaN``, ``Infinity`` or ``-Infinity`` as read: not JSON numbers (Python's json accepts them), kept as this
    marker so that :func:`parse` names the field that holds one."""


def _unreadable(obj, where: str = "") -> list[str]:
    """Every place in ``obj`` (as :func:`load` reads JSON) holding a key written twice or a non-finite constant."""
    here = where or "the top level"
    if isinstance(obj, _NotANumber) or (isinstance(obj, float) and not math.isfinite(obj)):
        return [f"{here} is {obj}, which is not a finite number"]
    problems = []
    if isinstance(obj, dict):
        problems += [f"{here} has the key {k!r} twice (JSON keeps only the last)" for k in getattr(obj, "repeated", ())]
        for k, v in obj.items():
            problems += _unreadable(v, f"{where}.{k}" if where else k)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            problems += _unreadable(v, f"{where}[{i}]")
    return problems


def _shown(v) -> str:
    return json.dumps(v, default=str)[:80]  # as the file writes it: true, "500", null


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def value_problem(v, unit: str) -> str | None:
    """What is wrong with ``v`` as a value in ``unit`` (see :data:`RANGES`; heads and counts non-negative integers,
    heads also a list of [layer, head] pairs, a flag true or false), or None."""
    if unit == "heads" and isinstance(v, list):  # a circuit group's heads
        if all(isinstance(h, list) and len(h) == 2 and all(_is_count(x) for x in h) for h in v):
            return None
        return f"must be a list of [layer, head] pairs of non-negative integers, got {_shown(v)}"
    if unit in ("heads", "count"):
        return None if _is_count(v) else f"must be a non-negative integer ({unit}), got {_shown(v)}"
    if unit == "flag":
        return None if isinstance(v, bool) else f"must be true or false, got {_shown(v)}"
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return f"must be a number ({unit}), got {_shown(v)}"
    lo, hi = RANGES[unit]
    if not lo <= v <= hi:
        return f"is {v!r}, outside a {unit}'s range [{lo:g}, {hi:g}]"
    return None


def entry_unit(name: str, unit: str) -> str:
    """The unit of the entry ``name`` of an object value in a record of ``unit`` (:data:`VALUE_FIELD_UNITS`)."""
    return VALUE_FIELD_UNITS.get(name) or ("count" if name.startswith("n_") else unit)


def record_unit(claim: str, raw: dict, unit: str) -> str:
    """The unit of a record of ``claim`` in a file of ``unit``: the file's, except for :data:`RECORD_UNITS`."""
    return next((u for (c, k, v), u in RECORD_UNITS.items() if c == claim and raw.get(k) == v), unit)


def _record_problems(raw: dict, where: str, unit: str) -> list[str]:
    """Everything wrong with the record ``raw`` (in ``unit``) under the schema, each naming ``where`` and the field."""
    from mechbench.claims.tolerance import too_wide  # the range rule (imported here: the rules read records)

    problems = []
    for name in ("value", "source"):
        if name not in raw:
            problems.append(f"{where} is missing field {name!r}")
    if "source" in raw and (not isinstance(raw["source"], str) or not raw["source"]):
        problems.append(f"{where}.source must be a non-empty string")
    value = raw.get("value")
    if isinstance(value, dict):  # each entry in its own unit (DCM's n_heads, heads and test accuracy)
        for k, v in value.items():
            problem = value_problem(v, entry_unit(k, unit))
            problems += [f"{where}.value.{k} {problem}"] if problem else []
    elif "value" in raw:
        problem = value_problem(value, unit)
        problems += [f"{where}.value {problem}"] if problem else []
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    for name in ("tolerance", "tolerance_same_sample", "std"):
        if name not in raw:
            continue
        v = raw[name]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            problems.append(f"{where}.{name} must be a finite number >= 0, got {_shown(v)}")
        elif name != "std" and too_wide(v, unit, number):
            problems.append(f"{where}.{name}: {too_wide(v, unit, number)}, or any measurement would pass")
    for name, least in (("n", 1), ("seed", 0)):
        v = raw.get(name)
        if name in raw and not (isinstance(v, int) and not isinstance(v, bool) and v >= least):
            problems.append(f"{where}.{name} must be an integer >= {least}, got {_shown(v)}")
    if "discovery" in raw and not isinstance(raw["discovery"], dict):
        problems.append(f"{where}.discovery must be an object of discovery settings, got {_shown(raw['discovery'])}")
    for name in TEXT_FIELDS:
        if name in raw and (not isinstance(raw[name], str) or not raw[name]):
            problems.append(f"{where}.{name} must be a non-empty string, got {_shown(raw[name])}")
    if "tolerance" in raw and "tolerance_rule" not in raw:
        problems.append(f"{where} has a tolerance but no 'tolerance_rule' saying how it was derived")
    for k, v in raw.items():
        if k not in RECORD_FIELDS and (not isinstance(v, (str, int)) or isinstance(v, bool)):
            problems.append(f"{where}.{k} is a key field and must be a string or an integer, got {_shown(v)}")
    return problems


def parse(data: Any, path: Path) -> Baseline:
    """The baseline in ``data`` (a file's JSON, as :func:`load` reads it), checked against the schema (the module's
    docstring): every problem of its records is named, with the file."""
    unreadable = _unreadable(data)
    if unreadable:
        raise _fail(path, "; ".join(unreadable))
    if not isinstance(data, dict):
        raise _fail(path, "the top level must be a JSON object")
    for name, kind in TOP_FIELDS.items():
        if name not in data:
            raise _fail(path, f"missing field {name!r}")
        if not isinstance(data[name], kind) or isinstance(data[name], bool):
            raise _fail(path, f"field {name!r} must be a {kind.__name__}, got {_shown(data[name])}")
    if data["schema_version"] != SCHEMA_VERSION:
        raise _fail(path, f"schema_version {data['schema_version']} is not the supported {SCHEMA_VERSION}")
    if data["claim"] != path.stem:
        raise _fail(path, f"field 'claim' is {data['claim']!r} but the file is named {path.name!r}")
    if data["unit"] not in UNITS:
        raise _fail(path, f"field 'unit' is {data['unit']!r}; expected one of {', '.join(UNITS)}")
    records, problems, first_with = [], [], {}
    for i, raw in enumerate(data["records"]):
        where = f"records[{i}]"
        if not isinstance(raw, dict):
            problems.append(f"{where} must be an object")
            continue
        if "position" in raw and "role" not in raw:
            # files written before the key was named for what it holds (a role: last, query_label, ...)
            raw = {("role" if k == "position" else k): v for k, v in raw.items()}
        unit = record_unit(data["claim"], raw, data["unit"])
        found = _record_problems(raw, where, unit)
        problems += found
        if found:
            continue
        keys = {k: v for k, v in raw.items() if k not in RECORD_FIELDS}
        key = json.dumps(keys, sort_keys=True)
        if key in first_with:
            problems.append(
                f"{where} has the same keys as records[{first_with[key]}] ({key}): each record's keys "
                f"must be unique; remove one"
            )
            continue
        first_with[key] = i
        fields = {k: raw[k] for k in RECORD_FIELDS if k in raw and k not in ("value", "source")}
        records.append(Record(keys, raw["value"], raw["source"], fields, tuple(raw), unit))
    if problems:
        shown = problems[:12] + ([f"and {len(problems) - 12} more"] if len(problems) > 12 else [])
        raise _fail(path, "; ".join(shown))
    return Baseline(path, data["claim"], data["description"], data["unit"], data["source"], records)


def load(claim: str, baselines_dir: str | Path | None = None, new: tuple[str, str] | None = None) -> Baseline:
    """The baseline file of ``claim``, checked against the schema (:func:`parse`). ``new`` (description, unit):
    where the file does not exist yet, an empty baseline that the first update writes (a new claim has no file
    until its first ``--update-baselines``)."""
    path = Path(baselines_dir or DEFAULT_DIR) / f"{claim}.json"
    if not path.exists() and new is not None and path.parent.is_dir():
        return Baseline(path, claim, new[0], new[1], "measured by mechbench", [])
    if not path.is_file():
        raise BaselineError(
            f"no baseline file for claim {claim!r}: {path} does not exist. Check --baselines-dir, "
            f"or restore the file from git."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_NotANumber, object_pairs_hook=_json_object)
    except json.JSONDecodeError as e:
        raise _fail(
            path, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}; a truncated or hand-edited file?)"
        ) from None
    except UnicodeDecodeError:
        raise _fail(path, "not UTF-8 text (a binary file?)") from None
    except OSError as e:
        raise BaselineError(f"baseline file {path} cannot be read ({e.strerror or e}): check its permissions") from None
    return parse(data, path)


def check_directory(directory: str | Path | None = None) -> tuple[list[str], BaselineError | None]:
    """Every baseline file (``*.json``) of ``directory`` checked against the schema, as ``mechbench baselines`` does:
    a line per valid file, and an error naming every invalid one (None when all are valid). A directory that is
    not one, or holds no baseline file, is an error raised."""
    directory = Path(directory or DEFAULT_DIR)
    if not directory.is_dir():
        raise BaselineError(
            f"baselines directory {directory} is not a directory: give --dir a directory of "
            f"baseline files (default: the checkout's baselines/)"
        )
    paths = sorted(p for p in directory.glob("*.json") if p.is_file())
    if not paths:
        raise BaselineError(
            f"baselines directory {directory} holds no baseline files (<claim>.json): give --dir "
            f"the directory that holds them (default: the checkout's baselines/)"
        )
    ok, bad = [], []
    for path in paths:
        try:
            ok.append(f"{path.name}: {len(load(path.stem, directory).records)} records ok")
        except BaselineError as e:
            bad.append(str(e))
    if not bad:
        return ok, None
    return ok, BaselineError(
        f"{len(bad)} of {len(paths)} baseline files in {directory} are invalid:\n" + "\n".join(bad)
    )


def _write_atomic(path: Path, data: dict) -> None:
    """Write via a temporary file and rename, so a crash never leaves a truncated baseline; the file keeps its
    permissions (mechbench.results.write_json_atomic)."""
    from mechbench.results import write_json_atomic

    write_json_atomic(path, data)


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
        raise BaselineError(
            f"not storing {baseline.claim} {keys} = {value!r} in {baseline.path}: "
            f"{'; '.join(problems)}. Rerun with the claim's full sample (no --limit), or {FORCE_HINT}."
        )
    source = fields.pop("source", "measured by mechbench")
    unit = record_unit(baseline.claim, {**keys, "value": value}, baseline.unit)
    new = Record(dict(keys), value, source, fields, old.order if old else (), unit)
    wrong = _record_problems(new.to_json(), "the new record", unit)
    if wrong:  # never forced: the loader would refuse the file, or the record would let any measurement pass
        hint = (
            " Measure on more examples (a larger --limit, or none) for a tolerance that means something."
            if any("wider than" in w for w in wrong)
            else ""
        )
        raise BaselineError(
            f"not storing {baseline.claim} {keys} = {value!r} in {baseline.path}: {'; '.join(wrong)}.{hint}"
        )
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
    ``--update-baselines`` run leaves every file as it was, never half old and half new records.

    Under pytest-xdist each worker stages its own updates and sends them, as :meth:`to_json`, to the controller,
    which :meth:`replay` s them into its staging and writes every file once when the run ends; two workers storing
    different numbers under the same keys is a conflict, and a run with one writes nothing."""

    def __init__(self):
        self._files: dict[Path, Baseline] = {}
        self._new: dict[Path, tuple[str, str] | None] = {}
        self._changed: set[Path] = set()
        self._updates: list[dict] = []  # every update as it was asked for, for the controller (to_json)
        self._by_record: dict[tuple, tuple[str, dict]] = {}  # (file, keys) -> (who, the update) for replay
        self.conflicts: list[str] = []
        self.lost: list[str] = []  # why some process's updates never arrived (a worker that crashed)
        self.diffs: list[str] = []

    def load(self, claim: str, baselines_dir=None, new: tuple[str, str] | None = None) -> Baseline:
        path = (Path(baselines_dir or DEFAULT_DIR) / f"{claim}.json").resolve()
        if path not in self._files:
            self._files[path] = load(claim, baselines_dir, new)
            self._new[path] = new
        return self._files[path]

    def update(self, baseline: Baseline, keys: dict, value: Any, **fields) -> str:
        diff = update(baseline, keys, value, write=False, **fields)
        self._changed.add(baseline.path)
        self._updates.append(
            {
                "claim": baseline.claim,
                "dir": str(baseline.path.parent),
                "new": self._new.get(baseline.path),
                "keys": dict(keys),
                "value": value,
                "fields": dict(fields),
            }
        )
        self.diffs.append(diff)
        return diff

    def to_json(self) -> list[dict]:
        """The staged updates, as a pytest-xdist worker sends them to its controller (JSON-safe)."""
        return json.loads(json.dumps(self._updates, default=str))

    def replay(self, updates: list[dict], who: str) -> None:
        """Stage ``updates`` (another process's :meth:`to_json`, ``who`` naming it) on this process's copies of the
        files. An update of a record another process staged differently is a conflict (:attr:`conflicts`):
        :meth:`commit` then refuses to write anything."""
        for u in updates:
            baseline = self.load(u["claim"], u["dir"], tuple(u["new"]) if u["new"] else None)
            record = (str(baseline.path), json.dumps(u["keys"], sort_keys=True))
            mine = {k: u[k] for k in ("value", "fields")}
            other, theirs = self._by_record.get(record, (who, mine))
            if other != who:  # (one process storing a record twice keeps its last, as it did)
                if theirs != mine:
                    self.conflicts.append(
                        f"{baseline.path.name} {u['keys']}: {other} stored {theirs['value']!r}, {who} {u['value']!r}"
                    )
                continue
            self._by_record[record] = (who, mine)
            self.update(baseline, u["keys"], u["value"], **u["fields"])

    def commit(self, into: Path | None = None) -> list[Path]:
        """Write every changed file (each atomically); returns the paths written. ``into``: a directory to write
        them to instead, under their own names (where the baselines directory refused them). Refused, writing
        nothing, where replayed updates conflict."""
        if self.conflicts or self.lost:
            why = [
                f"{len(self.conflicts)} record(s) stored with different numbers by two processes of one run "
                f"(pytest -n): " + "; ".join(self.conflicts)
            ] * bool(self.conflicts) + self.lost
            raise BaselineError(
                "baselines NOT updated: " + "; ".join(why) + ". Every file is as it was; rerun the update (without "
                "-n, or with each model's tests on one worker: --dist loadgroup, the default under -n)"
            )
        changed = [b for b in self._files.values() if b.path in self._changed]
        paths = [b.path if into is None else Path(into) / b.path.name for b in changed]
        for b, path in zip(changed, paths):
            _write_atomic(path, b.to_json())
        self._files.clear()
        self._changed.clear()
        return paths
