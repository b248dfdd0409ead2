"""What a claim is: :class:`Claim`, its facts as data, and its measurements (:class:`ClaimTest`, each a function of
a :class:`mechbench.claims.run.Run` registered with ``@CLAIM.test(...)``). One claim per module of
``mechbench/claims/specs/``, data and measurement together (the registry finds them there); the pytest plugin turns
each measurement into a test (``suites/``), the report and the README read the data.

How ``--limit`` and ``--seed`` act is written here once, for every claim:

- ``--limit N`` sets a claim's main sample (its first size: the prompts or pairs it is measured on) to N and scales
  its other samples by the same factor. Repeats (random circuits, draws of K, runs of pairs) stay: their count sets
  how a mean over them is judged. So do the sizes that are the method's settings (``fixed``: DCM's training and
  validation pairs, the ablation means' prompts): fewer of those change what is measured, not only its noise, and
  no tolerance covers that (measured: DCM's masks trained on 80 pairs instead of 1000 reached 0.03 test accuracy
  where the stored mask reaches 0.26, a false alarm at --limit 40).
- ``--seed S``: every sampler's seed is :func:`derived_seed` of S.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


def derived_seed(seed: int, offset: int = 0, draw: int | None = None) -> int:
    """The seed of one sampler under ``--seed seed``. ``offset``: the sampler's fixed offset (a discovery run's
    stored seed, minimality's prompts), so that two samplers of one run do not draw the same prompts. ``draw``: the
    index of a repeated draw (DCM patching's runs of pairs): draws of one ``seed`` take ``1000 * (seed + 1) + draw``,
    which no draw of another seed (nor any undrawn sampler below 1000) takes while draws stay below 1000."""
    if draw is None:
        return offset + seed
    if not 0 <= draw < 1000:
        raise ValueError(f"draw {draw} out of range: derived seeds keep draws of one seed apart below 1000")
    return offset + 1000 * (seed + 1) + draw


#: The modes a claim's module states besides its tests, each a function or None with the reason: its comparison of
#: a fine-tune with its base (``mechbench compare``, ``pytest --compare``) and its workloads (``mechbench plan``).
MODES = ("comparison", "workloads")


@dataclass(frozen=True)
class ClaimTest:
    """One test of a claim: ``measure(run)`` computes the claim's numbers on ``run.model`` and checks them
    (``run.check``), or skips or fails saying why (``run.skip``, ``run.fail``). It runs once per model under test
    (``per="model"``) or per model and circuit evaluated on it (``per="circuit"``), and once per value of each of
    ``params`` (``run.params[name]``; ``ids`` names a value in the test's id)."""

    name: str  # the test's name in pytest (test_<name>)
    measure: Callable
    per: str = "model"
    params: tuple[tuple[str, tuple], ...] = ()
    ids: tuple[tuple[str, Callable], ...] = ()


@dataclass(frozen=True)
class Claim:
    """One claim of the paper as mechbench checks it."""

    name: str  # the claim's name in baselines/<name>.json and in the results
    title: str  # its name in the README's claims table
    sections: str  # where docs/paper.md states it ("8.1, 8.2")
    measures: str  # what is measured, one line (the README's table)
    description: str  # a new baseline file's description
    unit: str  # fraction, percent, heads or count
    keys: tuple[str, ...]  # the key fields of the records it measures
    rows: tuple[str, ...]  # the report table's rows (other keys are rows too, after these)
    column: str | None  # the report table's column key
    # its own test module under suites/ (a thin file: the call that makes pytest tests of the spec); a claim
    # without one runs from suites/test_registered_claims.py
    suite: str | None = None
    sizes: tuple[tuple[str, int], ...] = ()  # sample sizes at the paper's settings; the first is the main one
    repeats: tuple[tuple[str, int], ...] = ()  # repeated draws (not scaled by --limit)
    # sizes that are the method's settings, not a sample whose error a tolerance covers (DCM's training pairs, the
    # ablation means' prompts): --limit leaves them, since fewer would change what is measured, not its noise
    fixed: tuple[tuple[str, int], ...] = ()
    tolerance: str = ""  # its tolerance rule in words (the README's table; the numbers come from claims.tolerance)
    reads: tuple[str, ...] = ()  # other baseline files it reads (circuits, DCM heads)
    order: int = 100  # its place in the README's table and the report (a new claim goes last)
    # whether its tests first check that the model does the task (the chance guard): a circuit claim about a model
    # at chance asserts nothing; the accuracy claim is where such a model shows as such
    needs_working_model: bool = True
    # its measurements, registered by ``@CLAIM.test(...)`` in its module (not data: left out of ==, hash and repr)
    tests: list = field(default_factory=list, compare=False, hash=False, repr=False)
    # its other modes, each stated in its module: mode -> (function, None) or (None, why it has none); see MODES
    modes: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    # --- the modes: one module says how the claim is tested, compared and planned ---------------------------

    def comparison(self, fn: Callable) -> Callable:
        """Register the decorated ``fn(c)`` as the claim's comparison mode: ``c`` a
        :class:`mechbench.compare.Comparison` (a fine-tune beside its base on the same prompts); it returns the
        claim's rows and checks, ``(list[Row], list[Check])``."""
        return self._state("comparison", fn)

    def no_comparison(self, why: str) -> None:
        """State that the claim has no comparison mode, and why (``mechbench compare`` lists it so)."""
        self._state("comparison", None, why)

    def workloads(self, fn: Callable) -> Callable:
        """Register the decorated ``fn(p)`` as the claim's cost for the memory and time plan: ``p`` a
        :class:`mechbench.plan.PlanInputs` (the model's shape, the circuit, the sample sizes); it returns the
        :class:`mechbench.plan.Workload` list the claim runs on that model (empty where it does not run there)."""
        return self._state("workloads", fn)

    def no_workloads(self, why: str) -> None:
        """State that the claim has no cost the plan models, and why."""
        self._state("workloads", None, why)

    def _state(self, mode: str, fn: Callable | None, why: str | None = None):
        if mode in self.modes:
            raise ValueError(f"claim {self.name!r} states its {mode} twice")
        if fn is None and not (why and why.strip()):
            raise ValueError(f"claim {self.name!r}: no {mode} needs the reason (no_{mode}('why'))")
        self.modes[mode] = (fn, why)
        return fn

    def mode(self, mode: str) -> Callable | None:
        """The function of ``mode`` (one of :data:`MODES`), or None where the claim has none (or states none yet)."""
        return self.modes.get(mode, (None, None))[0]

    def without(self, mode: str) -> str | None:
        """Why the claim has no ``mode``: its stated reason, or that its module states nothing."""
        fn, why = self.modes.get(mode, (None, None))
        if fn is not None:
            return None
        return why or f"mechbench/claims/specs/{self.name}.py states no {mode} (@CLAIM.{mode} or CLAIM.no_{mode})"

    def test(self, per: str = "model", params: dict | None = None, ids: dict | None = None):
        """Register the decorated ``measure(run)`` as a test of this claim, named after the function."""
        if per not in ("model", "circuit"):
            raise ValueError(f"per={per!r}: a claim's test runs per 'model' or per 'circuit'")

        def register(measure):
            if any(t.name == measure.__name__ for t in self.tests):
                raise ValueError(f"claim {self.name!r} has two tests named {measure.__name__!r}")
            self.tests.append(
                ClaimTest(
                    measure.__name__,
                    measure,
                    per,
                    tuple((k, tuple(v)) for k, v in (params or {}).items()),
                    tuple((ids or {}).items()),
                )
            )
            return measure

        return register

    def size(self, name: str, limit: int | None = None, default: int | None = None) -> int:
        """Sample size ``name`` under ``--limit limit``: the paper's (or ``default``, where the model's settings
        give it, e.g. minimality's prompts) without a limit; else scaled by limit / the main size's default."""
        if name in dict(self.fixed):
            return dict(self.fixed)[name] if default is None else default
        sizes = dict(self.sizes)
        if name not in sizes:
            raise KeyError(
                f"claim {self.name!r} has no size {name!r}; its sizes: {', '.join(sizes | dict(self.fixed))}"
            )
        value = sizes[name] if default is None else default
        if limit is None:
            return value
        main_name, main = self.sizes[0]
        if name == main_name:
            return limit
        return max(1, round(value * limit / main))

    def repeat(self, name: str) -> int:
        repeats = dict(self.repeats)
        if name not in repeats:
            raise KeyError(f"claim {self.name!r} has no repeat {name!r}; its repeats: {', '.join(repeats)}")
        return repeats[name]

    def check_keys(self, keys: dict) -> None:
        """A measurement's keys are among the claim's key fields: a misspelt key would never match a stored record,
        and the claim would skip for a missing baseline instead of failing. ``boxes`` is a key of every claim: a
        measurement at other than the paper's 7 boxes has it (mechbench.claims.check.with_boxes)."""
        unknown = set(keys) - set(self.keys) - {"boxes"}
        if unknown:
            raise ValueError(
                f"claim {self.name!r} records the keys {', '.join(self.keys)}; a measurement gave "
                f"{', '.join(sorted(unknown))} besides"
            )
