"""One module per claim, each defining ``CLAIM`` (a :class:`mechbench.claims.spec.Claim`) and its measurements
(functions of a :class:`mechbench.claims.run.Run`, registered with ``@CLAIM.test(...)``); the registry
(:mod:`mechbench.claims.registry`) imports every module here. A new claim is a new module here: pytest runs it from
``suites/test_registered_claims.py`` until its spec names a suite file of its own."""
