"""One module per claim, each defining ``CLAIM`` (a :class:`mechbench.claims.spec.Claim`); the registry
(:mod:`mechbench.claims.registry`) imports every module here. A new claim is a new module here and its suite."""
