"""One run of one claim's measurement on one model: :class:`Run`, what a ``measure(run)`` of a claim spec
(mechbench/claims/specs) is handed. It gives the model and circuit under test, the claim's sample sizes and seeds
under ``--limit``/``--seed``, the shared inputs (prompts, the circuit, the ablation means, stored baselines), and the
one way to judge a number (:meth:`Run.check`: against its stored baseline, recorded in the results file).

A run ends by returning (every check passed), or by raising :class:`ClaimSkipped` or :class:`ClaimFailed` with the
reason; a runner turns those into its own outcomes (the pytest plugin into a skip or a failure without a traceback).
Nothing here imports pytest, so a claim can run under any runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mechbench.claims.check import ClaimOutcome, check_claim, with_boxes
from mechbench.claims.registry import CLAIMS
from mechbench.claims.settings import Settings
from mechbench.claims.spec import Claim
from mechbench.data.dataset import tokenizer_key
from mechbench.errors import MechbenchError, ModelLoadError


class ClaimSkipped(Exception):
    """The claim cannot be judged here (no weights, no stored baseline, not applicable to this model): the reason."""


class ClaimFailed(Exception):
    """The claim does not hold, or its input is wrong: the reason, with the numbers."""


#: Results computed once per process and shared by the tests that need them (a measurement several tests of a
#: claim check, the ablation means several claims share, the chance guard of a model), for a :class:`Run` made
#: without a cache of its own; the pytest plugin gives each run its session's (``MechbenchSession.cache``).
_SESSION: dict[tuple, object] = {}


def once(key: tuple, compute, cache: dict | None = None):
    """``compute()`` once per session (``cache``; default: this process's) for ``key``, then the stored result."""
    cache = _SESSION if cache is None else cache
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def load_model(name: str, settings: Settings, keep=()):
    """The model's handle; a model whose weights are not here skips (:class:`ClaimSkipped`) with the reason, one
    that exists but cannot be used fails. On a GPU the other models loaded there are let go first, except ``keep``."""
    from mechbench.api import get_model
    from mechbench.models.loading import chosen_options
    from mechbench.models.run_options import set_batch_size

    try:
        handle = get_model(
            name,
            device=settings.device,
            dtype=settings.dtype,
            keep=keep,
            **chosen_options(
                allow_pickle=settings.allow_pickle,
                paper_compat_o_proj=settings.paper_compat_o_proj,
                bos=settings.bos,
                drop_multi_token=settings.drop_multi_token,
                tokenizer=settings.tokenizer,
                device_map=settings.device_map,
            ),
        )
        # the session's batch size (--batch-size, or the memory plan's choice for this device and dtype) is the
        # model's: kept per model, not per process, since the plan chooses it per model and device
        set_batch_size(handle, settings.batch_size)
        return handle
    except ModelLoadError as e:  # weights not here: a skip that says why
        if any(Path(ref).exists() for ref in _locations(name)):  # they are here, and broken: the run must not pass
            raise ClaimFailed(f"model {name!r} is at a path that exists but cannot be loaded: {e}") from None
        if settings.require_models:
            raise ClaimFailed(f"--require-models: {e}") from None
        raise ClaimSkipped(f"model {name!r} cannot be loaded here: {e}") from None
    except MechbenchError as e:  # loadable but unusable (e.g. not a Llama): the user must change --model
        raise ClaimFailed(str(e)) from None


def _locations(name: str) -> list[str]:
    """Where the weights (and adapter) of ``name`` would be: the paths it names, or its registered locations
    (a toy's directory in the package, an override's)."""
    from mechbench.models.registry import resolve

    refs = [r for r in name.partition("+")[::2] if r]
    try:
        spec = resolve(name)
        refs += [r for r in (spec.weights, spec.adapter) if r]
    except MechbenchError:
        pass
    return refs


def store_command(
    claim: str,
    model: str,
    circuit: str | None,
    baselines_dir,
    boxes: int = 7,
    tokenizer: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> str:
    """The pytest command that measures ``claim`` on ``model`` and stores its baselines in ``baselines_dir``, as a
    shell line (the suites' path relative to the current directory): the advice of every skip or error that
    lacks a claim's stored numbers, executed as written by tests/test_new_base.py."""
    import os
    import shlex

    suites = Path(__file__).resolve().parent.parent.parent / "suites"
    try:
        suites_arg = os.path.relpath(suites)
    except ValueError:  # another drive (Windows)
        suites_arg = str(suites)
    parts = ["pytest", suites_arg, f"--claim={claim}", f"--model={model}"]
    parts += [f"--circuit={circuit}"] if circuit else []
    from mechbench.baselines import DEFAULT_DIR

    parts += [f"--baselines-dir={os.path.relpath(baselines_dir or DEFAULT_DIR)}", "--update-baselines"]
    parts += [f"--boxes={boxes}"] if boxes != 7 else []
    parts += [f"--tokenizer={tokenizer}"] if tokenizer else []
    parts += [f"--device={device}"] if device != "cpu" else []
    parts += [f"--dtype={dtype}"] if dtype != "float32" else []
    return " ".join(shlex.quote(str(p)) for p in parts)


def settle(outcomes: list[ClaimOutcome], what: str = "numbers") -> None:
    """End a measurement that checked many numbers softly: fail listing every one out of tolerance; else skip
    listing every one inconclusive (a tolerance too wide for the sample, with the size it needs: the measurement
    is not a pass), or (with how to store them) when none had a baseline."""
    failed = [o.message() for o in outcomes if o.passed is False]
    if failed:
        raise ClaimFailed(f"{len(failed)} of {len(outcomes)} {what} out of tolerance:\n" + "\n".join(failed))
    inconclusive = [o.message() for o in outcomes if o.inconclusive]
    if inconclusive:
        raise ClaimSkipped(f"{len(inconclusive)} of {len(outcomes)} {what} inconclusive:\n" + "\n".join(inconclusive))
    if outcomes and all(o.missing for o in outcomes):
        raise ClaimSkipped(outcomes[0].message())


@dataclass
class Run:
    """One measurement of ``claim`` on ``model`` (its handle), evaluating ``circuit_name`` where the claim's test
    runs per circuit, with ``params`` (the test's own parameters, e.g. a desideratum). ``lines``: one line per check,
    for the runner's summary."""

    claim: Claim
    settings: Settings
    model: object = None
    circuit_name: str | None = None
    params: dict = field(default_factory=dict)
    results: object = None  # a mechbench.results.ResultsWriter: every check is appended to it
    lines: list[str] = field(default_factory=list)
    cache: dict | None = None  # the session's results computed once (:meth:`once`); None: this process's

    # --- outcomes -------------------------------------------------------------------------------------------

    @staticmethod
    def skip(reason: str):
        raise ClaimSkipped(reason)

    @staticmethod
    def fail(reason: str):
        raise ClaimFailed(reason)

    settle = staticmethod(settle)

    # --- the claim's samples under --limit and --seed ---------------------------------------------------------

    @property
    def seed(self) -> int:
        return self.settings.seed

    def size(self, name: str, default: int | None = None) -> int:
        return self.claim.size(name, self.settings.limit, default)

    def repeat(self, name: str) -> int:
        return self.claim.repeat(name)

    def derived_seed(self, offset: int = 0, draw: int | None = None) -> int:
        return self.settings.derived_seed(offset, draw)

    def with_boxes(self, keys: dict) -> dict:
        """``keys`` of a record measured at the run's --boxes: with ``boxes`` besides at other than the paper's 7
        (:func:`mechbench.claims.check.with_boxes`); what a claim looks its own stored records up by."""
        return with_boxes(keys, self.settings.boxes)

    def prompts(self, name: str = "prompts", tokenizer=None):
        """The claim's sample ``name`` of task prompts (its size under --limit, the run's seed) for the model's
        tokenizer (or ``tokenizer``): every claim measured on prompts draws them this one way, once per session."""
        from mechbench.data.dataset import build_dataset

        tokenizer, n, boxes = tokenizer or self.model.tokenizer, self.size(name), self.settings.boxes
        return self.once(
            ("prompts", tokenizer_key(tokenizer), n, self.seed, boxes),
            lambda: build_dataset(tokenizer, n_examples=n, num_boxes=boxes, seed=self.seed),
        )

    def prompt_length(self) -> int:
        """Tokens per task prompt under the model's tokenizer at the run's boxes (7 boxes: 54 with LLaMA's), what
        the memory plan counts by."""
        from mechbench.data.dataset import build_dataset

        tokenizer, boxes = self.model.tokenizer, self.settings.boxes
        return self.once(
            ("prompt length", tokenizer_key(tokenizer), boxes),
            lambda: build_dataset(tokenizer, n_examples=boxes, num_boxes=boxes).seq_len,
        )

    def correct(self, model=None, tokenizer=None):
        """Which of the claim's prompts (:meth:`prompts`, for ``tokenizer``) the whole ``model`` (default: the
        run's) answers correctly, once per session: the accuracy claim, the chance guard, faithfulness's full
        accuracy and CMAP's gain read the same forward pass."""
        from mechbench.evaluate import correct_on

        model = model or self.model
        tokenizer = tokenizer or model.tokenizer
        dataset = self.prompts(tokenizer=tokenizer)
        return self.once(
            ("correct", model.name, tokenizer_key(tokenizer), len(dataset), self.seed, dataset.num_boxes),
            lambda: correct_on(model, dataset),
        )

    def effect_above_zero(self, check: str, keys: dict, estimate, describe) -> None:
        """A check with no stored number that an effect is above 0 (the circuit beats random circuits, the gain is
        carried): it holds when the lower end of ``estimate``'s 95% interval is above 0. ``describe(passed)``: the
        message. Recorded, then failed when it does not hold, except that an interval that includes 0 on a sample
        that --limit made smaller than the claim's skips as inconclusive: too few prompts to tell, not evidence of
        a change (at --limit 40, about 6 contexts, such intervals span +-0.2); only an interval wholly at or below
        0 then fails. At the claim's own size an interval that includes 0 fails."""
        passed = estimate.lo is not None and estimate.lo > 0
        message = describe(passed)
        _, default = self.claim.sizes[0]
        limit = self.settings.limit
        underpowered = limit is not None and limit < default and estimate.hi is not None and estimate.hi > 0
        if not passed and underpowered:
            self.record(check, keys, round(estimate.value, 6), None, message)
            raise ClaimSkipped(f"inconclusive at --limit {limit}: {message}")
        self.record(check, keys, round(estimate.value, 6), passed, message)
        if not passed:
            raise ClaimFailed(message)

    # --- shared inputs ----------------------------------------------------------------------------------------

    def once(self, key: tuple, compute):
        """``compute()`` once per session for ``key``, then the stored result (:func:`once`, in this run's cache)."""
        return once(key, compute, self.cache)

    def load(self, name: str, keep=()):
        """Another model's handle (a fine-tune's base), skipping when its weights are not here."""
        return load_model(name, self.settings, keep)

    def circuit(self, name: str | None = None, model=None):
        """Circuit ``name`` (default: the run's) from the baselines or the --circuit file that holds it, checked
        to fit ``model`` (default: the run's)."""
        from mechbench.circuits import Circuit

        name, model = name or self.circuit_name, model or self.model
        try:
            circuit = Circuit.load((self.settings.circuit_files or {}).get(name, name), self.settings.baselines_dir)
            circuit.check_fits(model.shape.n_layers, model.shape.n_heads)
        except MechbenchError as e:
            raise ClaimFailed(str(e)) from None
        return circuit

    def discovery_settings(self, circuit, why: str):
        """The settings ``circuit`` was found with, where the run's model is the one it was found on (by name, or
        by the weights fingerprint stored with it) and the settings are known (its model's spec's, or stored with
        it by ``mechbench discover --store`` / ``mechbench baseline``); else a skip saying which is missing."""
        if not circuit.found_on(self.model):
            self.skip(
                f"{why}: circuit {circuit.name!r} was found on another model than {self.model.name!r} (neither "
                f"its name nor its stored weights fingerprint is this model's)"
            )
        settings = circuit.discovery_settings()
        if settings is None:
            self.skip(
                f"{why} with the settings it was found with, and circuit {circuit.name!r} carries none (a "
                f"hand-written circuit?): store it with `mechbench discover {self.model.name} --store --name "
                f"{circuit.name}` or `mechbench baseline {self.model.name}`, which keep them"
            )
        return settings

    def stored(self, claim: str | None = None):
        """The baseline file of ``claim`` (default: this run's), or a failure naming what is wrong with it."""
        from mechbench import baselines

        name = claim or self.claim.name
        spec = CLAIMS.get(name, self.claim if name == self.claim.name else None)
        # under --update-baselines, the run's staged records: a claim that reads another's stored numbers (DCM
        # patching reads DCM's heads) sees what this run measured, so one run stores both
        load = self.settings.staging.load if self.settings.staging is not None else baselines.load
        try:  # a registered claim whose file does not exist yet has no records (--update-baselines writes it)
            return load(name, self.settings.baselines_dir, None if spec is None else (spec.description, spec.unit))
        except MechbenchError as e:
            raise ClaimFailed(str(e)) from None

    def ablation_means(self):
        """Mean head output per (layer, position, head) over the claim's ablation prompts (its spec's
        ``ablation_prompts``, the paper's 500), once per model, size and seed: the claims share them."""
        from mechbench.data.counterfactuals import ablation_prompts
        from mechbench.methods.ablation import position_means

        n, model, boxes = self.size("ablation_prompts"), self.model, self.settings.boxes
        return self.once(
            ("ablation means", model.name, n, self.seed, boxes),
            lambda: position_means(model, ablation_prompts(model.tokenizer, n, num_boxes=boxes, seed=self.seed)),
        )

    def store_command(self, claim: str, model: str | None = None) -> str:
        """The command that stores ``claim``'s baselines for ``model`` (default: the run's) with this run's circuit,
        baselines directory and task: what a skip for want of another claim's stored numbers advises."""
        settings = self.settings
        return store_command(
            claim,
            model or self.model.name,
            (settings.circuit_files or {}).get(self.circuit_name, self.circuit_name),
            settings.baselines_dir,
            boxes=settings.boxes,
            tokenizer=settings.tokenizer,
            device=settings.device,
            dtype=settings.dtype,
        )

    # --- judging ----------------------------------------------------------------------------------------------

    def check(
        self,
        keys: dict,
        measured: float,
        *,
        n: int | None = None,
        model=None,
        soft: bool = False,
        correct=None,
        clusters=None,
        baseline_keys: dict | None = None,
        **tolerances,
    ) -> ClaimOutcome:
        """Compare ``measured`` with the stored baseline record ``keys`` of the claim (or store it under
        --update-baselines), within ``tolerance`` (a rule of :mod:`mechbench.claims.tolerance`), and record it.
        Out of tolerance fails; no record, or a tolerance too wide for the sample to mean anything (inconclusive:
        the message names the sample size and --limit it needs), skips.
        ``soft``: return the outcome instead of failing or skipping (a measurement checking many points reports
        every point out of tolerance at once, :meth:`settle`). ``correct`` and ``clusters`` (per example): the
        accuracy's examples and their contexts, whose design effect widens a binomial tolerance (prompts of one
        context are not independent). ``model``: the model measured (default: the run's). Under --baseline-model
        the record looked up is that model's: the keys with the measured model's name replaced by its, and
        ``baseline_keys`` (the key fields whose value differs in that model's record beyond its name: CMAP's
        checkpoint). ``expected`` (with ``derived_from``, ``expected_source`` and ``bound_at``): a stored number no
        record holds, derived from stored records (minimality's group drop), judged the same way
        (:func:`mechbench.claims.check.check_claim`); no record is looked up for it. At other than the paper's 7
        boxes (--boxes K) the keys gain ``boxes: K`` (:func:`mechbench.claims.check.with_boxes`): the record looked
        up, stored and written to the results file is the one measured at K boxes."""
        from mechbench.stats import design_effect

        settings, model = self.settings, model or self.model
        keys = with_boxes(keys, settings.boxes)
        if clusters is not None:
            per_context = np.unique(np.asarray(clusters), return_counts=True)[1]
            # a context is queried once per box, up to --boxes times: the contexts a larger sample would hold
            # (a sample of one context may have cut it short)
            tolerances.update(n_clusters=len(per_context), per_context=max(int(per_context.max()), settings.boxes))
        if correct is not None:
            tolerances["design_effect"] = design_effect(np.asarray(correct, dtype=float), np.asarray(clusters))
        seed, lookup = settings.seed, None
        if settings.baseline_model and model is not None and tolerances.get("expected") is None:
            # the record of the model this one is checked against; another model's numbers on the same examples
            # are not the same-sample case, so the seed is withheld from the tolerance rule. The measurement keeps
            # the measured model's name (the baseline's name goes with it as its own field).
            lookup = {k: (settings.baseline_model if v == model.name else v) for k, v in keys.items()}
            lookup |= {k: v for k, v in (baseline_keys or {}).items() if k in lookup}
            seed = None
        paper_model = model is not None and model.spec.kind == "paper"
        try:
            outcome = check_claim(
                self.claim,
                keys,
                measured,
                n=n,
                seed=seed,
                baselines_dir=settings.baselines_dir,
                lookup_keys=lookup,
                baseline_model=settings.baseline_model if lookup else None,
                update=settings.update_baselines and not paper_model,
                fingerprint=getattr(model, "fingerprint", None),
                results=self.results,
                staging=settings.staging,
                force=settings.force_baselines,
                limit=settings.limit,
                **tolerances,
            )
        except MechbenchError as e:
            raise ClaimFailed(str(e)) from None
        if settings.update_baselines and paper_model and not outcome.note:
            outcome.note = " (a paper model: --update-baselines left its published records unchanged)"
        self.lines.append(outcome.message())
        if soft:
            return outcome
        if outcome.missing or outcome.inconclusive:  # nothing judged: a skip that says why, never a pass
            raise ClaimSkipped(outcome.message())
        if outcome.passed is False:
            raise ClaimFailed(outcome.message())
        return outcome

    def record(self, check: str, keys: dict, value, passed: bool | None, message: str, claim: str | None = None):
        """A check with no stored number (circuit beats random, the fine-tune's gain carried, the chance guard):
        written to the results file like every measurement (its keys with ``boxes`` at other than 7 boxes)."""
        claim = claim or self.claim.name
        if self.results is not None:
            self.results.write(
                f"check:{claim}",
                {**with_boxes(keys, self.settings.boxes), "check": check},
                value,
                passed=passed,
                message=message,
                seed=self.seed,
                n=None,
            )
        self.lines.append(f"check:{claim} [{check}] {message}")

    def require_working_model(self) -> None:
        """The chance guard: a model whose accuracy is not above chance (1/boxes) by 3 cluster-robust standard
        errors does not do the task, and a circuit claim about it would assert nothing: the run fails saying so
        (on the accuracy claim's prompts, once per model; the check is written to the results file)."""
        from mechbench.stats import chance_check

        model, accuracy = self.model, Run(CLAIMS["accuracy"], self.settings, self.model, cache=self.cache)
        n = accuracy.size("prompts")

        def check():  # recorded once per model, not once per test
            dataset = accuracy.prompts()
            task = chance_check(accuracy.correct().numpy(), dataset.clusters().numpy(), dataset.num_boxes)
            self.record(
                "does the task",
                {"model": model.name},
                round(task.accuracy, 6),
                task.passed,
                task.message(model.name),
                claim="accuracy",
            )
            return task

        task = self.once(("does the task", model.name, n, self.seed, self.settings.boxes), check)
        if not task.passed:
            raise ClaimFailed(
                task.message(model.name) + ": no circuit claim applies to it. If it should do the task, check what "
                f"was loaded: the weights (`mechbench accuracy {model.name}`, and the fingerprint in results.jsonl), "
                "the tokenizer and the BOS choice (--bos; a chat turn marker as BOS puts a working model near chance), "
                "the dtype; a model that really lost the task is compared with its base instead (--compare) to see "
                "where it lost it"
            )
