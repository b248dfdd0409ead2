"""The registry of claims: every ``CLAIM`` of a module in :mod:`mechbench.claims.specs`, by name."""

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
        found[claim.name] = claim
    return found


#: Every claim, in the order of the README's table (each spec's ``order``).
CLAIMS: dict[str, Claim] = dict(sorted(_load().items(), key=lambda item: (item[1].order, item[0])))


def get(name: str) -> Claim:
    if name not in CLAIMS:
        raise KeyError(f"no claim named {name!r}; the claims: {', '.join(CLAIMS)}")
    return CLAIMS[name]
