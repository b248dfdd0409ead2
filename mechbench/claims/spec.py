"""What a claim is, as data: :class:`Claim`. One instance per claim, each in its own module of
``mechbench/claims/specs/`` (the registry finds them there); its suite under ``suites/`` reads every fact from it.

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

from dataclasses import dataclass


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
    suite: str  # its test module under suites/
    sizes: tuple[tuple[str, int], ...] = ()  # sample sizes at the paper's settings; the first is the main one
    repeats: tuple[tuple[str, int], ...] = ()  # repeated draws (not scaled by --limit)
    # sizes that are the method's settings, not a sample whose error a tolerance covers (DCM's training pairs, the
    # ablation means' prompts): --limit leaves them, since fewer would change what is measured, not its noise
    fixed: tuple[tuple[str, int], ...] = ()
    tolerance: str = ""  # its tolerance rule in words (the README's table; the numbers come from claims.tolerance)
    reads: tuple[str, ...] = ()  # other baseline files it reads (circuits, DCM heads)
    order: int = 100  # its place in the README's table and the report (a new claim goes last)

    def size(self, name: str, limit: int | None = None, default: int | None = None) -> int:
        """Sample size ``name`` under ``--limit limit``: the paper's (or ``default``, where the model's settings
        give it, e.g. minimality's prompts) without a limit; else scaled by limit / the main size's default."""
        if name in dict(self.fixed):
            return dict(self.fixed)[name] if default is None else default
        sizes = dict(self.sizes)
        if name not in sizes:
            raise KeyError(f"claim {self.name!r} has no size {name!r}; its sizes: "
                           f"{', '.join(sizes | dict(self.fixed))}")
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
        and the claim would skip for a missing baseline instead of failing."""
        unknown = set(keys) - set(self.keys)
        if unknown:
            raise ValueError(f"claim {self.name!r} records the keys {', '.join(self.keys)}; a measurement gave "
                             f"{', '.join(sorted(unknown))} besides")
