"""mechbench's pytest plugin: the options, parametrisation, fixtures and helpers of the claim suites (suites/), also
used by the library tests (tests/). The checkout's root conftest.py only loads it; suites import their helpers
(``load_circuit``, ``settle``, ``ablation_means``, ``load_or_skip``, ``stored_baseline``, ``once``) from here; their
sizes, seeds, keys and tolerances come from the claims' specs (mechbench.claims).

    pytest suites/                      # every claim on the embedded toy zoo (CPU)
    pytest suites/ --model=goat7b       # on a paper model (needs its weights; skips with the reason if absent)
    pytest suites/ --model=toy-llama --update-baselines   # store what was measured as the new baseline
    pytest -p mechbench.pytest_plugin /path/to/mechbench/suites --model=/ckpt/mine   # from another repository
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from mechbench.errors import MechbenchError, ModelLoadError, UnknownModelError
from mechbench.models.registry import PAPER_MODELS, REGISTRY, TOY_MODELS, resolve

#: The checkout mechbench lives in (its baselines/ and the default results/ sit there).
ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    g = parser.getgroup("mechbench")
    g.addoption("--model", action="append", default=None, metavar="NAME",
                help="model(s) to check: a registered name (" + ", ".join(REGISTRY) + "), a hub id, a local "
                     "directory or base+adapter; repeat or comma-separate. Default: the toy zoo.")
    g.addoption("--base-model", default=None, metavar="NAME",
                help="the model a fine-tune is compared with (default: its registered base)")
    g.addoption("--baseline-model", default=None, metavar="NAME",
                help="check the measured model against the baselines of this one (e.g. a new checkpoint of Goat "
                     "against goat7b's published numbers); the independent-sample tolerances apply")
    g.addoption("--circuit", action="append", default=None, metavar="NAME",
                help="circuit(s) the circuit claims evaluate (from baselines/circuits.json or a JSON file). Default: "
                     "the circuit found on the model's base (llama7b for the paper's models, toy-llama for the zoo)")
    g.addoption("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    g.addoption("--dtype", default="float32", help="float32 (the paper's), bfloat16 or float16")
    g.addoption("--limit", type=int, default=None, metavar="N",
                help="each claim's main sample (the prompts or pairs it is measured on) is N, its tolerances widen to "
                     "match; repeats and the method's own settings (DCM's training pairs) stay (default: the paper's "
                     "sizes, e.g. 500 prompts)")
    g.addoption("--seed", type=int, default=0, help="seed of every dataset and sampler (default 0)")
    g.addoption("--batch-size", default="auto", metavar="N|auto",
                help="prompts per forward (results do not depend on it). auto (default): 50 on the CPU; on a GPU the "
                     "largest batch (up to 100) at which every claim's memory plan fits the free memory "
                     "(mechbench plan MODEL shows it)")
    g.addoption("--baselines-dir", default=str(ROOT / "baselines"), help="directory of the baseline JSON files")
    g.addoption("--update-baselines", action="store_true",
                help="store the measured numbers as baselines (measured models only; paper numbers are kept). "
                     "The updates are written together when the run ends: an interrupted run changes nothing")
    g.addoption("--bos", default="auto", choices=("auto", "always", "never"),
                help="whether prompts start with the tokenizer's BOS token: auto (default) when it is a document start "
                     "such as LLaMA's <s>, not when it is a chat turn marker; always; never")
    g.addoption("--drop-multi-token", action="store_true",
                help="leave out the task words (objects, labels) that the model's tokenizer splits into several tokens, "
                     "instead of refusing the model")
    g.addoption("--force-baselines", action="store_true",
                help="with --update-baselines: store even a baseline with tolerance 0, or on fewer examples than "
                     "the claim's default (--limit) or the record it replaces")
    g.addoption("--results-dir", default=str(ROOT / "results"), help="where results.jsonl is appended")
    g.addoption("--require-models", action="store_true",
                help="fail, instead of skip, when a model cannot be loaded")
    g.addoption("--allow-pickle", action="store_true",
                help="load pickled (.bin) weights where a model has no safetensors (unpickling runs code from the "
                     "file: only for sources you trust)")
    g.addoption("--paper-compat-o-proj", action="store_true",
                help="Goat: drop the o_proj LoRA in runs with interventions, as the paper's hooks did, to compare "
                     "like for like with its published numbers from hooked runs (default: the real Goat)")
    g.addoption("--compare", action="store_true",
                help="comparison mode for every model with a known base, even one with baselines of its own: each "
                     "claim measured on the model and its base side by side, and a mechanism verdict (a model with "
                     "no baselines of its own and a known base is compared without this flag)")
    g.addoption("--quick", action="store_true",
                help="comparison mode's quick lane: fewer prompts and draws (intervals widen to match)")
    g.addoption("--reference", action="append", default=None, metavar="NAME",
                help="stored fine-tunes shown beside a comparison (default: toy-goat, toy-float / goat7b, float7b)")


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...]
    base_model: str | None
    baseline_model: str | None
    circuits: tuple[str, ...] | None
    device: str
    dtype: str
    limit: int | None
    seed: int
    baselines_dir: Path
    update_baselines: bool
    results_dir: Path
    require_models: bool
    compared: tuple[str, ...] = ()  # models in comparison mode (mechbench.compare)
    quick: bool = False
    references: tuple[str, ...] | None = None
    circuit_files: dict = None  # circuit name -> the JSON file it was loaded from (--circuit FILE)
    allow_pickle: bool = False
    paper_compat_o_proj: bool = False
    force_baselines: bool = False
    bos: str = "auto"
    drop_multi_token: bool = False
    staging: object = None  # mechbench.baselines.Staging of an --update-baselines run
    batch_size: int = 50

    def size(self, claim, name: str, default: int | None = None) -> int:
        """Sample size ``name`` of ``claim`` (a :class:`mechbench.claims.Claim`) under --limit: the claim's spec
        says how (its main size becomes the limit, the others scale with it)."""
        return claim.size(name, self.limit, default)

    def derived_seed(self, offset: int = 0, draw: int | None = None) -> int:
        """A sampler's seed under --seed (:func:`mechbench.claims.derived_seed`, the one rule)."""
        from mechbench.claims import derived_seed

        return derived_seed(self.seed, offset, draw)

    def base_of(self, model: str) -> str | None:
        if self.base_model:
            return self.base_model
        from mechbench.compare import base_name_of

        try:
            return base_name_of(model)
        except MechbenchError:
            return None

    def circuits_for(self, model: str) -> tuple[str, ...]:
        """The circuits evaluated on ``model``: --circuit, else the one discovered on its base (the paper
        evaluates the Llama-7B circuit on all four models)."""
        if self.circuits:
            return self.circuits
        base = REGISTRY.get(self.base_of(model) or model)
        return (base.circuit,) if base is not None and base.circuit else ()


def _models(config) -> tuple[str, ...]:
    raw = config.getoption("--model") or [",".join(TOY_MODELS)]
    names = tuple(dict.fromkeys(n.strip() for item in raw for n in item.split(",") if n.strip()))
    for name in names:
        try:
            resolve(name)
        except UnknownModelError as e:
            raise pytest.UsageError(str(e)) from None
    return names


def _circuits(config) -> tuple[tuple[str, ...] | None, dict]:
    """--circuit values as circuit names; a JSON file is named by the circuit it holds (baselines key on that)."""
    from mechbench.circuits import Circuit

    names, files = [], {}
    for item in config.getoption("--circuit") or []:
        for ref in (n.strip() for n in item.split(",") if n.strip()):
            if Path(ref).is_file():
                try:
                    name = Circuit.load(ref).name
                except (MechbenchError, ValueError, KeyError, TypeError) as e:
                    raise pytest.UsageError(f"--circuit {ref}: {e}") from None
                files[name] = ref
                names.append(name)
            else:
                names.append(ref)
    return tuple(names) or None, files


def _has_own_baselines(model: str, baselines_dir: Path) -> bool:
    from mechbench import baselines

    try:
        return baselines.load("accuracy", baselines_dir).find(model=model) is not None
    except MechbenchError:
        return False


def pytest_configure(config):
    if config.getoption("--baseline-model") and config.getoption("--update-baselines"):
        raise pytest.UsageError("--baseline-model compares with another model's baselines; it cannot be combined "
                                "with --update-baselines, which would store this model's numbers under that name")
    if config.getoption("--update-baselines") and config.getoption("--limit") and not config.getoption("--force-baselines"):
        raise pytest.UsageError(f"--update-baselines with --limit {config.getoption('--limit')} would store baselines "
                                f"measured on fewer examples than each claim's default (and wider or zero "
                                f"tolerances): drop --limit, or add --force-baselines to store them anyway")
    from mechbench import validate
    from mechbench.baselines import Staging
    from mechbench.intervene.engine import set_default_batch_size
    from mechbench.plan import resolve_batch_size

    try:  # every option a user can type, checked before any model loads
        validate.positive("--limit", config.getoption("--limit"))
        validate.seed(config.getoption("--seed"))
        validate.dtype(config.getoption("--dtype"))
        validate.device(config.getoption("--device"))
        batch_size = resolve_batch_size(config.getoption("--batch-size"), config.getoption("--device"),
                                        config.getoption("--dtype"), _models(config))
        validate.baselines_dir(Path(config.getoption("--baselines-dir")))
        validate.writable_dir("--results-dir", Path(config.getoption("--results-dir")))
        for name in _models(config):
            validate.model_directory(name)
    except MechbenchError as e:
        raise pytest.UsageError(str(e)) from None
    circuits, circuit_files = _circuits(config)
    set_default_batch_size(batch_size)
    config._mechbench = Settings(
        models=_models(config),
        base_model=config.getoption("--base-model"),
        baseline_model=config.getoption("--baseline-model"),
        circuits=circuits,
        device=config.getoption("--device"),
        dtype=config.getoption("--dtype"),
        limit=config.getoption("--limit"),
        seed=config.getoption("--seed"),
        baselines_dir=Path(config.getoption("--baselines-dir")),
        update_baselines=config.getoption("--update-baselines"),
        results_dir=Path(config.getoption("--results-dir")),
        require_models=config.getoption("--require-models"),
        quick=config.getoption("--quick"),
        references=tuple(config.getoption("--reference")) if config.getoption("--reference") else None,
        circuit_files=circuit_files,
        allow_pickle=config.getoption("--allow-pickle"),
        paper_compat_o_proj=config.getoption("--paper-compat-o-proj"),
        force_baselines=config.getoption("--force-baselines"),
        bos=config.getoption("--bos"),
        drop_multi_token=config.getoption("--drop-multi-token"),
        staging=Staging() if config.getoption("--update-baselines") else None,
        batch_size=batch_size,
    )
    s = config._mechbench
    if not s.baseline_model and not s.update_baselines:
        # comparison mode: a fine-tune with a known base and no baselines of its own (or --compare) is measured
        # beside its base instead of skipping every claim for want of a stored number
        compared = tuple(m for m in s.models if s.base_of(m) and s.base_of(m) != m
                         and (config.getoption("--compare") or not _has_own_baselines(m, s.baselines_dir)))
        config._mechbench = replace(s, compared=compared)


def pytest_generate_tests(metafunc):
    """Tests that take ``model_name`` run once per model under test; paper models carry the paper mark."""
    settings = metafunc.config._mechbench
    if "model_name" in metafunc.fixturenames and "circuit_name" in metafunc.fixturenames:
        params = [pytest.param(n, c, id=f"{n}-circuit={c}", marks=[pytest.mark.paper] if n in PAPER_MODELS else [])
                  for n in settings.models for c in settings.circuits_for(n)]
        params += [pytest.param(n, None, id=f"{n}-no-circuit", marks=pytest.mark.skip(
            reason=f"no circuit known for {n!r}: pass --circuit NAME (e.g. llama7b) or --base-model"))
            for n in settings.models if not settings.circuits_for(n)]
        metafunc.parametrize(("model_name", "circuit_name"), params)
    elif "model_name" in metafunc.fixturenames:
        params = [pytest.param(n, id=n, marks=[pytest.mark.paper] if n in PAPER_MODELS else []) for n in settings.models]
        metafunc.parametrize("model_name", params)
    if "compared_model" in metafunc.fixturenames:  # suites/test_compare.py: only the models in comparison mode
        metafunc.parametrize("compared_model", [
            pytest.param(n, id=n, marks=[pytest.mark.paper] if n in PAPER_MODELS else []) for n in settings.compared])


def pytest_collection_modifyitems(config, items):
    """A model in comparison mode is measured beside its base (suites/test_compare.py) instead of against
    baselines it does not have: its absolute-claim items are deselected rather than skipped one by one. The
    items of one model run together (in the order models were given), so that on a GPU each model is loaded
    once and let go before the next (mechbench.api.get_model)."""
    settings = config._mechbench
    compared = set(settings.compared)
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        (drop if params.get("model_name") in compared else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    order = {name: i for i, name in enumerate(settings.models)}

    def model_of(item):
        params = getattr(getattr(item, "callspec", None), "params", {})
        name = params.get("model_name", params.get("compared_model"))
        return order.get(name, -1)  # items of no model first

    items[:] = sorted(keep, key=model_of)  # stable: each model's items keep their order


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU; none is visible to torch here")


@pytest.fixture(scope="session")
def settings(request) -> Settings:
    return request.config._mechbench


def load_or_skip(name: str, settings: Settings, keep=()):
    """The model's handle; a model that cannot be loaded skips the test with the reason. On a GPU the other
    models loaded there are let go first, except those in ``keep``."""
    from mechbench.api import get_model
    from mechbench.models.loading import chosen_options

    try:
        return get_model(name, device=settings.device, dtype=settings.dtype, keep=keep, **chosen_options(
            allow_pickle=settings.allow_pickle, paper_compat_o_proj=settings.paper_compat_o_proj, bos=settings.bos,
            drop_multi_token=settings.drop_multi_token))
    except ModelLoadError as e:  # weights not here: a skip that says why
        if Path(name.partition("+")[0]).exists() or Path(name.partition("+")[2] or "-/-").exists():
            pytest.fail(f"model {name!r} is a path that exists but cannot be loaded: {e}", pytrace=False)
        if settings.require_models:
            pytest.fail(f"--require-models: {e}", pytrace=False)
        pytest.skip(f"model {name!r} cannot be loaded here: {e}")
    except MechbenchError as e:  # loadable but unusable (e.g. not a Llama): the user must change --model
        pytest.fail(str(e), pytrace=False)




@pytest.fixture(scope="session")
def results(settings):
    from mechbench.results import ResultsWriter

    return ResultsWriter(settings.results_dir)


@pytest.fixture
def claim_check(settings, results, request):
    """``claim_check(claim, keys, measured, n=..., model=handle, tolerance=Tolerance)``: compare with the stored
    baseline (fail outside tolerance), or store it with --update-baselines. Always records the result. ``claim``:
    its spec (mechbench.claims) or name; the tolerance comes from a rule of mechbench.claims.tolerance."""
    from mechbench.claims import check_claim

    def check(claim, keys, measured, *, n=None, model=None, soft=False, correct=None, clusters=None, **tolerances):
        claim = getattr(claim, "name", claim)  # a Claim spec or its name
        """``soft``: return the outcome instead of failing or skipping (a test checking many points reports
        every point out of tolerance at once). ``correct`` and ``clusters`` (per example): the accuracy's
        examples and their contexts, whose design effect widens a binomial tolerance (prompts of one context
        are not independent)."""
        from mechbench.stats import design_effect

        if clusters is not None:
            tolerances["n_clusters"] = len(np.unique(np.asarray(clusters)))
        if correct is not None:
            tolerances["design_effect"] = design_effect(np.asarray(correct, dtype=float), np.asarray(clusters))
        seed, lookup = settings.seed, None
        if settings.baseline_model and model is not None:
            # the record of the model this one is checked against; another model's numbers on the same
            # examples are not the same-sample case, so the seed is withheld from the tolerance rule. The
            # measurement keeps the measured model's name (the baseline's name goes with it as its own field).
            lookup = {k: (settings.baseline_model if v == model.name else v) for k, v in keys.items()}
            lookup = {k: ("release" if k == "checkpoint" and v == "local" else v) for k, v in lookup.items()}
            seed = None
        try:
            outcome = check_claim(
                claim, keys, measured, n=n, seed=seed, baselines_dir=settings.baselines_dir, lookup_keys=lookup,
                baseline_model=settings.baseline_model if lookup else None,
                update=settings.update_baselines and (model is None or model.spec.kind != "paper"),
                fingerprint=getattr(model, "fingerprint", None), results=results, staging=settings.staging,
                force=settings.force_baselines, **tolerances,
            )
        except MechbenchError as e:
            pytest.fail(str(e), pytrace=False)
        if settings.update_baselines and model is not None and model.spec.kind == "paper" and not outcome.note:
            outcome.note = " (a paper model: --update-baselines left its published records unchanged)"
        request.node.user_properties.append(("claim", outcome.message()))
        if soft:
            return outcome
        if outcome.missing:
            pytest.skip(outcome.message())
        if outcome.passed is False:
            pytest.fail(outcome.message(), pytrace=False)
        return outcome

    return check


@pytest.fixture
def record_check(settings, results, request):
    """``record_check(claim, check, keys, value, passed, message)``: a check with no stored number (circuit beats
    random, the fine-tune's gain carried, the chance guard) goes to the results file like every measurement."""
    def write(claim: str, check: str, keys: dict, value, passed: bool | None, message: str):
        results.write(f"check:{claim}", {**keys, "check": check}, value, passed=passed, message=message,
                      seed=settings.seed, n=None)
        request.node.user_properties.append(("claim", f"check:{claim} [{check}] {message}"))

    return write


_SESSION: dict[tuple, object] = {}


def once(key: tuple, compute):
    """``compute()`` once per session for ``key`` (a measurement that several tests of a claim check, the
    ablation means several claims share), then the stored result."""
    if key not in _SESSION:
        _SESSION[key] = compute()
    return _SESSION[key]


def stored_baseline(claim, settings: Settings):
    """The baseline file of ``claim`` (a spec or name), or the test fails naming what is wrong with it."""
    from mechbench import baselines
    from mechbench.claims import CLAIMS

    name = getattr(claim, "name", claim)
    spec = CLAIMS.get(name)
    try:  # a registered claim whose file does not exist yet has no records (the first --update-baselines writes it)
        return baselines.load(name, settings.baselines_dir, None if spec is None else (spec.description, spec.unit))
    except MechbenchError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def model(model_name, settings, request):
    """The model's handle. In a claim suite whose module does not set ``NEEDS_WORKING_MODEL = False`` (only
    the accuracy claim does), the chance guard runs first: a model whose accuracy is not above chance (1/boxes)
    by 3 cluster-robust standard errors does not do the task, and a circuit claim about it would assert
    nothing, so the test fails saying so (and the check is written to the results file)."""
    handle = load_or_skip(model_name, settings)
    if request.node.get_closest_marker("claim") and getattr(request.module, "NEEDS_WORKING_MODEL", True):
        _chance_guard(handle, settings, request.getfixturevalue("record_check"))
    return handle


def _chance_guard(model, settings, record_check):
    from mechbench.data.dataset import build_dataset
    from mechbench.evaluate import correct_on
    from mechbench.stats import chance_check

    from mechbench.claims import get

    n = settings.size(get("accuracy"), "prompts")  # the accuracy claim's prompts

    def check():
        dataset = build_dataset(model.tokenizer, n_examples=n, seed=settings.seed)
        task = chance_check(correct_on(model, dataset).numpy(), dataset.clusters().numpy(), dataset.num_boxes)
        record_check("accuracy", "does the task", {"model": model.name}, round(task.accuracy, 6), task.passed,
                     task.message(model.name))
        return task

    task = once(("does the task", model.name, n, settings.seed), check)
    if not task.passed:
        pytest.fail(task.message(model.name) + ": no circuit claim applies to it", pytrace=False)


def load_circuit(name: str, model, settings: Settings):
    """Circuit ``name`` from the baselines (or the --circuit file that holds it), checked to fit ``model``; a
    mismatch fails the test with the reason."""
    from mechbench.circuits import Circuit

    try:
        circuit = Circuit.load((settings.circuit_files or {}).get(name, name), settings.baselines_dir)
        circuit.check_fits(model.shape.n_layers, model.shape.n_heads)
    except MechbenchError as e:
        pytest.fail(str(e), pytrace=False)
    return circuit


def ablation_means(model, settings: Settings, claim):
    """Mean head output per (layer, position, head) over ``claim``'s ablation prompts (its spec's
    ``ablation_prompts``, the paper's 500), once per model, size and seed: the claims share them."""
    from mechbench.data.counterfactuals import ablation_prompts
    from mechbench.methods.ablation import position_means

    n = settings.size(claim, "ablation_prompts")
    return once(("ablation means", model.name, n, settings.seed), lambda: position_means(
        model, ablation_prompts(model.tokenizer, n, seed=settings.seed)))


def underpowered(settings: Settings, claim, estimate) -> bool:
    """A check that an effect is above 0 (circuit beats random circuits, the gain carried) whose 95% interval
    includes 0 on a sample that --limit made smaller than the claim's: too few prompts to tell, not evidence of a
    change (at --limit 40, about 6 contexts, such intervals span +-0.2). Only an interval wholly at or below 0 then
    fails; at the claim's own size an interval that includes 0 fails as before."""
    _, default = claim.sizes[0]
    return (settings.limit is not None and settings.limit < default and estimate.hi is not None
            and estimate.hi > 0)


def settle(outcomes, what: str = "numbers") -> None:
    """End a test that checked many numbers softly: fail listing every one out of tolerance, or skip (with
    how to store them) when none had a baseline."""
    failed = [o.message() for o in outcomes if o.passed is False]
    if failed:
        pytest.fail(f"{len(failed)} of {len(outcomes)} {what} out of tolerance:\n" + "\n".join(failed), pytrace=False)
    if outcomes and all(o.missing for o in outcomes):
        pytest.skip(outcomes[0].message())


_COMPARISONS: dict[str, object] = {}


@pytest.fixture
def comparison(compared_model, settings):
    """The :class:`mechbench.compare.Comparison` of a model in comparison mode with its base (built once per
    session; its report is written when the session ends)."""
    from mechbench.compare import LANES, Comparison, base_circuit_name
    from mechbench.circuits import Circuit

    if compared_model not in _COMPARISONS:
        base_name = settings.base_of(compared_model)
        try:
            circuit_ref = settings.circuits[0] if settings.circuits else base_circuit_name(base_name, settings.baselines_dir)
            circuit = Circuit.load((settings.circuit_files or {}).get(circuit_ref, circuit_ref), settings.baselines_dir)
        except MechbenchError as e:
            pytest.fail(str(e), pytrace=False)
        fine_tune = load_or_skip(compared_model, settings)
        base = load_or_skip(base_name, settings, keep=(compared_model,))
        try:
            _COMPARISONS[compared_model] = Comparison(
                fine_tune, base, circuit, LANES["quick" if settings.quick else "full"], settings.seed,
                settings.baselines_dir, settings.references, discovery_cache=settings.results_dir / "discovery")
        except MechbenchError as e:
            pytest.fail(str(e), pytrace=False)
    return _COMPARISONS[compared_model]


def pytest_sessionfinish(session, exitstatus):
    """Write the baseline updates of the run (all together, unless it was interrupted) and the comparison report
    of every fine-tune compared in this session (the same report as ``mechbench compare``)."""
    staging = getattr(getattr(session.config, "_mechbench", None), "staging", None)
    if staging is not None and staging.diffs:
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            session.config._mechbench_baselines = (f"interrupted: {len(staging.diffs)} baseline update(s) "
                                                   f"discarded, every baseline file is as it was")
        else:
            written = staging.commit()
            session.config._mechbench_baselines = "\n".join(
                [f"baselines updated ({len(staging.diffs)} record(s) in {', '.join(p.name for p in written)}):"]
                + staging.diffs)
    if not _COMPARISONS:
        return
    from mechbench.report import write_comparison_report

    settings = session.config._mechbench
    for comparison in _COMPARISONS.values():
        if comparison._claims:
            path = write_comparison_report(comparison, settings.results_dir,
                                           results_path=str(settings.results_dir / "results.jsonl"))
            session.config._mechbench_reports = getattr(session.config, "_mechbench_reports", []) + [str(path)]


def pytest_terminal_summary(terminalreporter):
    lines = [v for rep in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
             for k, v in getattr(rep, "user_properties", []) if k == "claim"]
    if lines:
        terminalreporter.section("mechbench claims")
        for line in lines:
            terminalreporter.write_line(line)
    if getattr(terminalreporter.config, "_mechbench_baselines", None):
        terminalreporter.section("mechbench baselines")
        terminalreporter.write_line(terminalreporter.config._mechbench_baselines)
    for path in getattr(terminalreporter.config, "_mechbench_reports", []):
        terminalreporter.write_line(f"comparison report: {path}")
