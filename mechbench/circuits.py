"""Circuits: named groups of heads, each acting at one token role.

The paper's entity-tracking circuit has four groups (docs/paper.md §3): value fetchers and position
transmitters at the last token, position detectors at the query label, structure readers at the earlier
occurrence of the query label. A :class:`Circuit` is plain data; the published circuits load from
``baselines/circuits.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from mechbench import baselines
from mechbench.errors import MechbenchError

GROUPS = ("value_fetcher", "pos_transmitter", "pos_detector", "struct_reader")
GROUP_ROLES = {
    "value_fetcher": "last",
    "pos_transmitter": "last",
    "pos_detector": "query_label",
    "struct_reader": "prev_query_label",
}
PAPER_LETTERS = {"value_fetcher": "A", "pos_transmitter": "B", "pos_detector": "C", "struct_reader": "D"}

Head = tuple[int, int]  # (layer, head)


def checked_heads(heads, group: str) -> tuple[Head, ...]:
    """A group's heads as read from JSON: a non-empty list of distinct [layer, head] pairs of non-negative integers
    (``true`` is not an integer here, though Python's bool is one). ValueError names ``group`` and the head."""
    if not isinstance(heads, (list, tuple)) or not heads:
        raise ValueError(
            f"{group}: 'heads' must be a non-empty list of [layer, head] pairs, got {json.dumps(heads)}"
            f"{' (drop the group instead: a group with no head ablates nothing)' if heads == [] else ''}"
        )
    for h in heads:
        if not (
            isinstance(h, (list, tuple))
            and len(h) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in h)
        ):
            raise ValueError(
                f"{group}: 'heads' must be [layer, head] pairs of non-negative integers, and {json.dumps(h)} is not one"
            )
    pairs = tuple((layer, head) for layer, head in heads)
    repeated = sorted({h for h in pairs if pairs.count(h) > 1})
    if repeated:
        raise ValueError(
            f"{group}: head(s) {', '.join(f'[{l}, {h}]' for l, h in repeated)} are listed more than "
            f"once (each head once per group)"
        )
    return pairs


@dataclass(frozen=True)
class HeadGroup:
    name: str
    role: str
    heads: tuple[Head, ...]

    def __len__(self) -> int:
        return len(self.heads)


@dataclass(frozen=True)
class Circuit:
    name: str
    groups: dict[str, HeadGroup] = field(default_factory=dict)
    # where it came from, when it was stored by mechbench discover or baseline: the weights fingerprint of the
    # model it was found on and the discovery settings it was found with (DiscoveryConfig as JSON), so that any
    # claim can tell whether it runs on that model and re-run the discovery as it was run
    fingerprint: str | None = None
    discovery: dict | None = None

    def found_on(self, model) -> bool:
        """Whether the circuit was found on ``model`` (a handle): its name is one the model is known by (a
        registered name, its location, a directory's name), or it was stored with the model's weights'
        fingerprint."""
        from mechbench.models.registry import names_of

        weights = (getattr(model, "fingerprint", None) or {}).get("weights_sha256")
        return self.name in names_of(model.name) or (self.fingerprint is not None and self.fingerprint == weights)

    def discovery_settings(self):
        """The settings the circuit was found with (a :class:`DiscoveryConfig`): its model's spec's for a
        registered circuit, else the ones stored with it; None when neither says (a hand-written circuit)."""
        from mechbench.models.discovery_settings import config_from_json
        from mechbench.models.registry import CIRCUITS

        if self.name in CIRCUITS:
            return CIRCUITS[self.name].discovery
        return config_from_json(self.discovery) if self.discovery else None

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(g.role for g in self.groups.values()))

    def heads_at(self, role: str) -> set[Head]:
        return {h for g in self.groups.values() if g.role == role for h in g.heads}

    def size(self) -> int:
        return sum(len(g) for g in self.groups.values())

    def check_fits(self, n_layers: int, n_heads: int) -> None:
        for g in self.groups.values():
            bad = [h for h in g.heads if not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads)]
            if bad:
                raise MechbenchError(
                    f"circuit {self.name!r} group {g.name!r} has heads {bad[:5]} outside a model "
                    f"of {n_layers} layers x {n_heads} heads (layers 0-{n_layers - 1}, heads "
                    f"0-{n_heads - 1}): is it the circuit of another model? Use the circuit found "
                    f"on this model or its base (--circuit)"
                )

    def without(self, removed: dict[str, set[Head]]) -> Circuit:
        return replace(
            self,
            groups={
                n: HeadGroup(n, g.role, tuple(h for h in g.heads if h not in removed.get(n, set())))
                for n, g in self.groups.items()
            },
        )

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "groups": {n: {"role": g.role, "heads": [list(h) for h in g.heads]} for n, g in self.groups.items()},
            **({"fingerprint": self.fingerprint} if self.fingerprint else {}),
            **({"discovery": self.discovery} if self.discovery else {}),
        }

    @classmethod
    def from_json(cls, data: dict, where: str = "circuit JSON") -> Circuit:
        """A circuit from ``{"name": ..., "groups": {group: {"role": ..., "heads": [[layer, head], ...]}}}``, or
        the file ``mechbench discover --scores`` writes (the circuit under ``"circuit"``)."""
        from mechbench.data.dataset import ROLES

        def bad(what: str) -> MechbenchError:
            return MechbenchError(
                f'{where}: {what}. Expected {{"name": NAME, "groups": {{GROUP: {{"role": ROLE, "heads": '
                f"[[LAYER, HEAD], ...]}}}}}} (roles: {', '.join(ROLES)}), or the file `mechbench discover --scores` writes."
            )

        if isinstance(data, dict) and isinstance(data.get("circuit"), dict):
            data = data["circuit"]
        if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
            raise bad("no circuit name (a non-empty string under 'name')")
        if not isinstance(data.get("groups"), dict) or not data["groups"]:
            raise bad("no groups (an object under 'groups')")
        groups = {}
        for n, g in data["groups"].items():
            if not isinstance(g, dict) or g.get("role") not in ROLES:
                raise bad(f"group {n!r} has role {g.get('role') if isinstance(g, dict) else g!r}, not one of the roles")
            try:
                heads = checked_heads(g.get("heads"), f"circuit {data['name']!r} group {n!r}")
            except ValueError as e:
                raise bad(str(e)) from None
            groups[n] = HeadGroup(n, g["role"], heads)
        fingerprint, discovery = data.get("fingerprint"), data.get("discovery")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise bad(f"'fingerprint' is {fingerprint!r}, not the weights' sha256 as a string")
        if discovery is not None:
            _check_discovery(discovery, bad)
        return cls(data["name"], groups, fingerprint, discovery)

    @classmethod
    def load(cls, name_or_path: str, baselines_dir=None) -> Circuit:
        """A circuit by name from ``baselines/circuits.json`` (``llama7b``, ``goat7b``, ...) or a JSON file
        (its own ``name`` names it)."""
        if Path(name_or_path).is_file():
            try:
                data = json.loads(Path(name_or_path).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise MechbenchError(f"circuit file {name_or_path} is not valid JSON ({e})") from None
            return cls.from_json(data, where=f"circuit file {name_or_path}")
        table = baselines.load("circuits", baselines_dir)
        groups, fingerprint, discovery = {}, None, None
        for r in table.records:
            if r.keys.get("circuit") == name_or_path:
                fingerprint = fingerprint or r.get("fingerprint")
                discovery = discovery or r.get("discovery")
                try:
                    heads = checked_heads(r.value, f"circuit {name_or_path!r} group {r.keys.get('group')!r}")
                except ValueError as e:
                    raise MechbenchError(
                        f"{table.path}: {e}; fix the record or store the circuit again with mechbench discover --store"
                    ) from None
                groups[r.keys["group"]] = HeadGroup(r.keys["group"], r.keys["role"], heads)
        if not groups:
            names = sorted({r.keys.get("circuit") for r in table.records})
            raise MechbenchError(f"no circuit {name_or_path!r} in {table.path}; known: {', '.join(names)}")
        if discovery is not None:
            _check_discovery(discovery, lambda what: MechbenchError(f"{table.path}: circuit {name_or_path!r}: {what}"))
        return cls(name_or_path, {g: groups[g] for g in GROUPS if g in groups} | groups, fingerprint, discovery)


def _check_discovery(discovery, bad) -> None:
    """A circuit's stored discovery settings read back into a DiscoveryConfig, or ``bad(what)`` raised."""
    from mechbench.models.discovery_settings import config_from_json

    try:
        config_from_json(discovery)
    except (TypeError, ValueError, KeyError) as e:
        raise bad(f"its 'discovery' settings do not read as discovery settings ({e})") from None


def stored_circuit_name(model: str, baselines_dir=None, fingerprint: str | None = None) -> str | None:
    """The circuit stored in ``<baselines_dir>/circuits.json`` for ``model`` (a name, directory or hub id): one
    named as the model is known (:func:`mechbench.models.registry.names_of`: a registered name, its location, a
    directory's own name), else one stored with the model's weights fingerprint (once it is loaded); None if
    there is none. Every mode finds a model's circuit this way (pytest, compare, plan, calibrate)."""
    from mechbench.models.registry import names_of

    try:
        records = baselines.load("circuits", baselines_dir).records
    except MechbenchError:
        return None
    stored = list(dict.fromkeys(r.keys.get("circuit") for r in records if r.keys.get("circuit")))
    for name in [model.strip(), *sorted(names_of(model) - {model.strip()})]:
        if name in stored:
            return name
    if fingerprint:
        for r in records:
            if r.get("fingerprint") == fingerprint and r.keys.get("circuit"):
                return r.keys["circuit"]
    return None


def check_storable(name: str, baselines_dir=None) -> None:
    """That a circuit named ``name`` can be stored in ``<baselines_dir>/circuits.json``: the file, where there is
    one, loads, and ``name`` is not a published circuit's. Checked before a discovery, so it cannot fail after it."""
    path = Path(baselines_dir or baselines.DEFAULT_DIR) / "circuits.json"
    if path.is_file() and any(
        not r.measured for r in baselines.load("circuits", baselines_dir).records if r.keys.get("circuit") == name
    ):
        raise MechbenchError(f"{path}: circuit {name!r} is published; store under another --name")


def store_circuit(
    circuit: Circuit, how: str, baselines_dir=None, fingerprint: str | None = None, discovery: dict | None = None
) -> str:
    """Write ``circuit`` into ``baselines/circuits.json`` as measured records, one per group, replacing the
    groups it had before (a published circuit is never overwritten). Returns the diff, a line per group."""
    from mechbench.results import git_state

    if not circuit.groups:
        raise MechbenchError(
            f"circuit {circuit.name!r} has no group: there is nothing to store (storing it would "
            f"delete the circuit's records)"
        )
    check_storable(circuit.name, baselines_dir)
    path = Path(baselines_dir or baselines.DEFAULT_DIR) / "circuits.json"
    if not path.is_file():  # a fresh baselines directory: start a valid, empty circuits file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "schema_version": baselines.SCHEMA_VERSION,
                    "claim": "circuits",
                    "description": "circuits: heads per group at their roles",
                    "unit": "heads",
                    "source": "mechbench discover",
                    "records": [],
                },
                indent=1,
            )
            + "\n"
        )
    table = baselines.load("circuits", baselines_dir)
    commit = (git_state().get("commit") or "unknown")[:12]
    old = {r.keys["group"]: r for r in table.records if r.keys.get("circuit") == circuit.name}
    table.records = [r for r in table.records if r.keys.get("circuit") != circuit.name]
    diffs = [f"- circuits {r.keys}: {r.value}" for g, r in old.items() if g not in circuit.groups]
    for name, g in circuit.groups.items():
        if name in old and old[name].keys.get("role") == g.role:  # replaced: the diff shows old -> new
            table.records.append(old[name])
        diffs.append(
            baselines.update(
                table,
                {"circuit": circuit.name, "group": name, "role": g.role},
                [list(h) for h in g.heads],
                source=f"measured by mechbench at commit {commit}: {how}",
                fingerprint=fingerprint,
                **({"discovery": discovery} if discovery else {}),
            )
        )
    return "\n".join(diffs)
