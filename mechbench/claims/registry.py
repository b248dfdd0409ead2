"""The registry of claims: every ``CLAIM`` of a module in :mod:`mechbench.claims.specs`, of a module another package
names under the ``mechbench.claims`` entry point group, and of :func:`register` at run time, by name, each with the
modes its module states (``@CLAIM.test``, ``@CLAIM.comparison``, ``@CLAIM.workloads``).

:data:`CLAIMS` is the one table: the suites, comparison mode (``mechbench.compare.CLAIMS``), the plan, the report
and the README's table all read it, so a claim registered here shows up in every one of them. Another package
adds a claim as pytest plugins are added, in its pyproject.toml::

    [project.entry-points."mechbench.claims"]
    my_claim = "my_package.my_claim"      # a module that defines CLAIM (a mechbench.claims.spec.Claim)
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from types import ModuleType

import mechbench.claims.specs as specs
from mechbench.claims.spec import MODES, Claim

#: The entry point group of claims defined outside mechbench.
ENTRY_POINTS = "mechbench.claims"

#: Every claim, in the order of the README's table (each spec's ``order``, then its name).
CLAIMS: dict[str, Claim] = {}


def _claim_of(module: ModuleType, where: str) -> Claim:
    claim = getattr(module, "CLAIM", None)
    if not isinstance(claim, Claim):
        raise TypeError(f"{where} defines no CLAIM (a mechbench.claims.spec.Claim)")
    return claim


def _checked(claim: Claim, where: str) -> Claim:
    if not claim.tests:
        raise TypeError(
            f"{where} registers no measurement of {claim.name!r} (a function decorated with @CLAIM.test(...))"
        )
    unstated = [m for m in MODES if m not in claim.modes]
    if unstated:  # a claim that says nothing of a mode would silently drop out of it (--compare, mechbench plan)
        raise TypeError(
            f"{where}: claim {claim.name!r} states no {' and no '.join(unstated)}: register "
            + " and ".join(f"@CLAIM.{m}" for m in unstated)
            + " or state "
            + " and ".join(f"CLAIM.no_{m}('why')" for m in unstated)
        )
    return claim


def register(claim: Claim, where: str | None = None) -> Claim:
    """Add ``claim`` to :data:`CLAIMS` (in its ``order``): from then on it is a test of ``suites/`` (those without
    a suite file of their own run from suites/test_registered_claims.py), a claim of comparison mode, a row of the
    plan, a table of the report and a row of the README's table. A name taken by another claim, or a measurement
    name another claim uses, is an error."""
    where = where or f"claim {claim.name!r}"
    _checked(claim, where)
    if claim.name in CLAIMS and CLAIMS[claim.name] is not claim:
        raise ValueError(f"{where}: two claim specs are named {claim.name!r}")
    taken = {t.name: other.name for other in CLAIMS.values() if other is not claim for t in other.tests}
    twice = sorted(t.name for t in claim.tests if t.name in taken)
    if twice:  # pytest names a claim's test after its measurement: one name, one test
        raise ValueError(
            f"{where}: measurements of two claims share a name: "
            + ", ".join(f"{t} (also {taken[t]!r}'s)" for t in twice)
        )
    ordered = dict(sorted({**CLAIMS, claim.name: claim}.items(), key=lambda item: (item[1].order, item[0])))
    CLAIMS.clear()  # in place: every view of the table (comparison mode's, the plan's) sees the new claim
    CLAIMS.update(ordered)
    return claim


def _load() -> None:
    for module in sorted(m.name for m in pkgutil.iter_modules(specs.__path__)):
        where = f"mechbench/claims/specs/{module}.py"
        register(_claim_of(importlib.import_module(f"{specs.__name__}.{module}"), where), where)
    for entry in sorted(importlib.metadata.entry_points(group=ENTRY_POINTS), key=lambda e: e.name):
        where = f"the {ENTRY_POINTS} entry point {entry.name!r} ({entry.value})"
        try:
            loaded = entry.load()
        except Exception as e:  # a broken plugin names itself, not a traceback through the registry
            raise ImportError(
                f"{where} cannot be imported: {type(e).__name__}: {e}; fix or uninstall the package that declares it"
            ) from e
        register(loaded if isinstance(loaded, Claim) else _claim_of(loaded, where), where)


_load()


def get(name: str) -> Claim:
    if name not in CLAIMS:
        raise KeyError(f"no claim named {name!r}; the claims: {', '.join(CLAIMS)}")
    return CLAIMS[name]
