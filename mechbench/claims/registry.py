"""The registry of claims: every ``CLAIM`` of a module in :mod:`mechbench.claims.specs`, by name, each with the
measurements its module registers (``@CLAIM.test``)."""

from __future__ import annotations

import importlib
import pkgutil

import mechbench.claims.specs as specs
from mechbench.claims.spec import Claim


def _load() -> dict[str, Claim]:
    found: dict[str, Claim] = {}
    for module in sorted(m.name for m in pkgutil.iter_modules(specs.__path__)):
        claim = getattr(importlib.import_module(f"{specs.__name__}.{module}"), "CLAIM", None)
        if not isinstance(claim, Claim):
            raise TypeError(f"mechbench/claims/specs/{module}.py defines no CLAIM (a mechbench.claims.spec.Claim)")
        if claim.name in found:
            raise ValueError(f"two claim specs are named {claim.name!r}")
        if not claim.tests:
            raise TypeError(f"mechbench/claims/specs/{module}.py registers no measurement of {claim.name!r} "
                            f"(a function decorated with @CLAIM.test(...))")
        found[claim.name] = claim
    tests = [t.name for claim in found.values() for t in claim.tests]
    twice = sorted({t for t in tests if tests.count(t) > 1})
    if twice:  # pytest names a claim's test after its measurement: one name, one test
        raise ValueError(f"measurements of two claims share a name: {', '.join(twice)}")
    return found


#: Every claim, in the order of the README's table (each spec's ``order``).
CLAIMS: dict[str, Claim] = dict(sorted(_load().items(), key=lambda item: (item[1].order, item[0])))


def get(name: str) -> Claim:
    if name not in CLAIMS:
        raise KeyError(f"no claim named {name!r}; the claims: {', '.join(CLAIMS)}")
    return CLAIMS[name]
