"""mechbench's pytest plugin: the options, the parametrisation over models and circuits, and the pytest tests of every
claim. A claim is one module of ``mechbench/claims/specs/`` (its facts and its measurements, each a function of a
:class:`mechbench.claims.run.Run`); :func:`claim_tests` turns its measurements into pytest tests, and a suite under
``suites/`` is that call. The checkout's root conftest.py only loads this plugin; another repository opts in with
``-p mechbench.pytest_plugin`` (not a ``pytest11`` entry point: every pytest session of the environment would then
check these options and create the results directory).

    pytest suites/                      # every claim on the embedded toy zoo (CPU)
    pytest suites/ --model=goat7b       # on a paper model (needs its weights; skips with the reason if absent)
    pytest suites/ --model=toy-llama --update-baselines   # store what was measured as the new baseline
    pytest -p mechbench.pytest_plugin /path/to/mechbench/suites --model=/ckpt/mine   # from another repository
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path

import pytest

from mechbench.claims import get
from mechbench.claims.run import ClaimFailed, ClaimSkipped, Run, load_model
from mechbench.claims.settings import Settings
from mechbench.errors import MechbenchError, UnknownModelError
from mechbench.models.registry import PAPER_MODELS, REGISTRY, TOY_MODELS, resolve
from mechbench.results import DevicePeak

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
    g.addoption("--allow-skips", action="store_true",
                help="let a run pass in which a model that loaded had every claim test skipped or deselected (no "
                     "baseline to compare with, say); by default such a run fails, since it checked nothing")
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


def _models(config) -> tuple[str, ...]:
    raw = config.getoption("--model") or [",".join(TOY_MODELS)]
    names = tuple(dict.fromkeys(n.strip() for item in raw for n in item.split(",") if n.strip()))
    if not names:
        raise pytest.UsageError(f"--model {' '.join(map(repr, raw))} names no model: give a registered name, a "
                                f"directory or a hub id (or leave --model out for the toy zoo)")
    for name in names:
        try:
            resolve(name)
        except UnknownModelError as e:
            raise pytest.UsageError(str(e)) from None
    return names


def _known_model(option: str, name: str) -> None:
    """--base-model and --baseline-model name a registered model, a directory or a hub id: a typo would otherwise
    deselect or skip every claim of the run."""
    from mechbench import validate

    try:
        resolve(name)
    except UnknownModelError as e:
        raise MechbenchError(f"{option} {name}: {e}") from None
    validate.model_directory(name)  # a path that exists must be a model directory (nothing for a name)


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


class Tally:
    """What the run checked, per model: the models that loaded, and the claim tests that reached a verdict (passed
    or failed) or skipped, by model. A run in which a model loaded and none of its tests reached a verdict checked
    nothing about it, and is not green (unless --allow-skips)."""

    def __init__(self):
        self.loaded: set[str] = set()
        self.model_of: dict[str, str] = {}  # test id -> the model it measures
        self.verdicts: dict[str, int] = {}
        self.skips: dict[str, list[str]] = {}
        self.dropped: dict[str, int] = {}  # a compared model's absolute-claim tests, deselected
        self.compare_items: set[str] = set()  # compared models with a test in suites/test_compare.py collected
        self.reports: list[str] = []  # comparison reports written (by this process or its xdist workers)
        self.baselines: list[str] = []  # what became of the run's baseline updates

    def pytest_runtest_logreport(self, report) -> None:  # registered as a plugin of the session's config
        model = self.model_of.get(report.nodeid)
        if model is None:
            return
        if report.when == "call" and report.outcome in ("passed", "failed"):
            self.verdicts[model] = self.verdicts.get(model, 0) + 1
        elif report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skips.setdefault(model, []).append(reason.removeprefix("Skipped: "))

    def to_json(self) -> dict:
        """What a pytest-xdist worker sends its controller (``workeroutput``), which judges the whole run."""
        return {"loaded": sorted(self.loaded), "verdicts": self.verdicts, "skips": self.skips, "dropped": self.dropped,
                "compare_items": sorted(self.compare_items)}

    def merge(self, data: dict) -> None:
        self.loaded |= set(data["loaded"])
        self.compare_items |= set(data["compare_items"])
        for k, v in data["verdicts"].items():  # each worker ran its own tests
            self.verdicts[k] = self.verdicts.get(k, 0) + v
        for k, v in data["dropped"].items():  # every worker collects, and deselects, all of them
            self.dropped[k] = max(self.dropped.get(k, 0), v)
        for k, v in data["skips"].items():
            self.skips.setdefault(k, []).extend(v)

    @pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, absent without it
    def pytest_testnodedown(self, node, error) -> None:  # on the controller of pytest -n: a worker's tally
        output = getattr(node, "workeroutput", {})
        if "mechbench_tally" in output:
            self.merge(output["mechbench_tally"])
        self.reports.extend(output.get("mechbench_reports", []))
        self.baselines.extend(output.get("mechbench_baselines", []))

    def problems(self, settings) -> list[str]:
        """Why the run checked nothing about a model, one line per model; empty when every model that loaded has a
        verdict, or none was asked for that could load."""
        lines = []
        for model in sorted(self.dropped.keys() - self.compare_items):
            lines.append(f"{model} is in comparison mode (a fine-tune of {settings.base_of(model)} with no baselines "
                         f"of its own, or --compare), so its claims are measured in suites/test_compare.py, which this "
                         f"run did not collect: its {self.dropped[model]} claim test(s) were deselected. Run "
                         f"suites/ (or add suites/test_compare.py), or check it against stored baselines with "
                         f"--baseline-model")
        for model in sorted(self.loaded):
            if self.verdicts.get(model):
                continue
            skips = self.skips.get(model, [])
            reasons = sorted(set(skips))
            why = (f": {reasons[0]}" if reasons else "") + (f" (and {len(reasons) - 1} other reason(s))"
                                                            if len(reasons) > 1 else "")
            lines.append(f"{model} loaded, but none of its claim tests reached a verdict ({len(skips)} skipped){why}")
        return lines


MARKERS = (
    "claim: a claim of the paper checked against a stored baseline",
    "paper: needs the paper's 7B weights (skips with the reason when they cannot be loaded)",
    "gpu: needs a CUDA GPU (skips without one)",
)


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
        config._mechbench_notes = []
        batch_size = resolve_batch_size(config.getoption("--batch-size"), config.getoption("--device"),
                                        config.getoption("--dtype"), _models(config), config._mechbench_notes)
        validate.baselines_dir(Path(config.getoption("--baselines-dir")))
        if config.getoption("--update-baselines"):  # found now, not when the run ends with its work to store
            validate.writable_baselines(Path(config.getoption("--baselines-dir")))
        for option in ("--base-model", "--baseline-model"):
            if config.getoption(option):
                _known_model(option, config.getoption(option))
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
    for marker in MARKERS:  # the marks this plugin sets, known in any repository that loads it
        config.addinivalue_line("markers", marker)
    s = config._mechbench
    if not s.baseline_model and not s.update_baselines:
        # comparison mode: a fine-tune with a known base and no baselines of its own (or --compare) is measured
        # beside its base instead of skipping every claim for want of a stored number
        compared = tuple(m for m in s.models if s.base_of(m) and s.base_of(m) != m
                         and (config.getoption("--compare") or not _has_own_baselines(m, s.baselines_dir)))
        config._mechbench = replace(s, compared=compared)
        if compared and s.limit is not None:
            raise pytest.UsageError(
                f"--limit {s.limit}: {', '.join(compared)} {'is' if len(compared) == 1 else 'are'} in comparison mode, "
                f"whose lanes set their own sizes (the full lane: the claims' sizes; --quick: fewer prompts and draws), "
                f"so --limit would be ignored. Use --quick for a faster comparison, or check the model against "
                f"stored baselines (--baseline-model) with --limit")
    config._mechbench_tally = Tally()
    config.pluginmanager.register(config._mechbench_tally, "mechbench-tally")
    _configure_workers(config)


def _configure_workers(config) -> None:
    """pytest-xdist (``pytest -n 2``): each model's tests go to one worker (``--dist loadgroup``, grouped by model
    in :func:`pytest_collection_modifyitems`), so a model is loaded, and its prompts and ablation means computed,
    once; each worker gets its share of the CPU's cores for torch's threads (two workers of two threads on two
    cores would wait on each other). The workers append to one results.jsonl (a locked write per line); baseline
    updates are written by one process at the end, so --update-baselines runs without -n."""
    option = getattr(config, "option", None)
    workers = getattr(option, "numprocesses", None)
    if workers and getattr(option, "dist", "no") == "load":
        config.option.dist = "loadgroup"  # -n alone: keep a model's tests together (groups of one otherwise)
    if workers and config.getoption("--update-baselines"):
        raise pytest.UsageError("--update-baselines with -n: the baseline files are written once, when the run ends, "
                                "by one process; run the update without -n")
    if hasattr(config, "workerinput"):
        import os

        import torch

        share = max(1, (os.cpu_count() or 1) // int(config.workerinput.get("workercount", 1)))
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(share)
            os.environ["OMP_NUM_THREADS"] = str(share)  # the subprocesses a test starts (tests/) share it too


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    """A run on the simulated GPU says so on its first line, before pytest's header (-q included); so does a claim
    that the memory plan says cannot fit the GPU."""
    from mechbench.testing.device import banner

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    if banner():
        reporter.write_line(banner(), yellow=True, bold=True)
    for note in getattr(session.config, "_mechbench_notes", []):  # claims the memory plan says cannot fit
        reporter.write_line(f"mechbench: {note}", yellow=True)


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
    for item in items:  # pytest -n --dist loadgroup: a model's tests in one worker (a fine-tune's with it)
        params = getattr(getattr(item, "callspec", None), "params", {})
        name = params.get("model_name", params.get("compared_model"))
        if name is not None:
            item.add_marker(pytest.mark.xdist_group(name=name))
    tally = config._mechbench_tally
    for item in drop:
        name = item.callspec.params["model_name"]
        tally.dropped[name] = tally.dropped.get(name, 0) + 1
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        name = params.get("model_name", params.get("compared_model"))
        if name is not None and (item.get_closest_marker("claim") or "compared_model" in params):
            tally.model_of[item.nodeid] = name
        if "compared_model" in params:
            tally.compare_items.add(name)



def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU; none is visible to torch here")


@pytest.fixture(scope="session")
def settings(request) -> Settings:
    return request.config._mechbench


@pytest.fixture(scope="session")
def results(settings):
    from mechbench.results import ResultsWriter

    return ResultsWriter(settings.results_dir)


@pytest.fixture
def model(model_name, settings):
    """The handle of each model under test (``model_name`` is parametrised over --model); a model whose weights
    are not here skips with the reason."""
    return _outcome_of(load_model, model_name, settings)


def _outcome_of(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, a claim's :class:`ClaimSkipped` / :class:`ClaimFailed` turned into pytest's skip and
    failure: the reason, with no traceback and no chained exception. A skip is reported at the test's location (for
    a claim's test, its measurement in the claim's spec), not at this line."""
    try:
        return fn(*args, **kwargs)
    except ClaimSkipped as e:
        skipped, failed = str(e), None
    except ClaimFailed as e:
        skipped, failed = None, str(e)
    if failed is not None:
        pytest.fail(failed, pytrace=False)
    try:
        raise pytest.skip.Exception(skipped, _use_item_location=True)
    except TypeError:  # a pytest without that keyword: the skip shows this line as its location
        pytest.skip(skipped)


def claim_tests(*claims) -> dict[str, object]:
    """pytest test functions of each of ``claims`` (registered names or :class:`mechbench.claims.Claim` specs): one
    ``test_<name>`` per measurement its spec registers (``@CLAIM.test``), parametrised over the models under test
    (and the circuits evaluated on each, and the test's own parameters). A suite module is

        globals().update(claim_tests("dcm"))
    """
    tests = {}
    for claim in claims:
        spec = get(claim) if isinstance(claim, str) else claim
        if not spec.tests:
            raise ValueError(f"claim {spec.name!r} registers no measurement (@CLAIM.test) in its spec")
        for test in spec.tests:
            name = f"test_{test.name}"
            if name in tests:
                raise ValueError(f"two claims measure {test.name!r}: name one of them otherwise")
            tests[name] = _pytest_function(spec, test)
    return tests


def _pytest_function(claim, test):
    """The pytest function of one measurement: it loads the model, runs the chance guard where the claim needs a
    model that does the task, runs ``test.measure`` and reports each check in the session's summary."""
    arguments = ["model_name"] + (["circuit_name"] if test.per == "circuit" else []) + [k for k, _ in test.params]

    def run_claim(settings, results, request, **given):
        run = Run(claim, settings, circuit_name=given.get("circuit_name"), results=results,
                  params={k: given[k] for k, _ in test.params})

        peak = DevicePeak(settings.device)

        def measure():
            import torch

            try:
                run.model = load_model(given["model_name"], settings)
                request.config._mechbench_tally.loaded.add(given["model_name"])
                peak.restart()  # the claim's own peak: not the moment before the last test's models were let go
                if claim.needs_working_model:
                    run.require_working_model()
                test.measure(run)
            except torch.OutOfMemoryError as e:  # what finished is in results.jsonl; the next test gets the memory back
                import gc

                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise ClaimFailed(
                    f"out of memory on {settings.device} at batch {settings.batch_size} ({str(e).splitlines()[0][:200]}). "
                    f"`mechbench plan {given['model_name']} --dtype {settings.dtype} --batch-size {settings.batch_size}` "
                    f"shows what each claim needs: pass a smaller --batch-size (or auto, which picks one that fits), "
                    f"--dtype bfloat16, or deselect this claim (-k 'not {claim.name}')") from None
            except MechbenchError as e:  # bad input found inside the claim (a word the tokenizer splits): its message
                raise ClaimFailed(str(e)) from None

        try:
            with peak:
                _outcome_of(measure)
        finally:
            request.node.user_properties.extend(("claim", line) for line in run.lines)
            if peak.bytes is not None:  # what the test held on the device at its peak, beside the plan's prediction
                results.write(f"memory:{claim.name}", {"test": test.name, "model": given["model_name"],
                                                        "circuit": given.get("circuit_name"), **run.params},
                              peak.bytes, unit="bytes", device=settings.device, dtype=settings.dtype,
                              batch_size=settings.batch_size,
                              seq_len=run.prompt_length() if run.model is not None else None)

    run_claim.__name__ = run_claim.__qualname__ = f"test_{test.name}"
    run_claim.__doc__ = test.measure.__doc__ or f"{claim.title} (docs/paper.md §{claim.sections})"
    run_claim.__wrapped__ = test.measure  # pytest reports the test at its measurement (file and line of the spec)
    run_claim.__signature__ = inspect.Signature(
        [inspect.Parameter(a, inspect.Parameter.POSITIONAL_OR_KEYWORD)
         for a in arguments + ["settings", "results", "request"]])
    ids = dict(test.ids)
    run_claim.pytestmark = [pytest.mark.claim] + [pytest.mark.parametrize(k, list(values), ids=ids.get(k))
                                                  for k, values in test.params]
    return run_claim


_COMPARISONS: dict[str, object] = {}


@pytest.fixture
def comparison(compared_model, settings, request):
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
        fine_tune = _outcome_of(load_model, compared_model, settings)
        request.config._mechbench_tally.loaded.add(compared_model)
        base = _outcome_of(load_model, base_name, settings, keep=(compared_model,))
        try:
            _COMPARISONS[compared_model] = Comparison(
                fine_tune, base, circuit, LANES["quick" if settings.quick else "full"], settings.seed,
                settings.baselines_dir, settings.references, discovery_cache=settings.results_dir / "discovery")
        except MechbenchError as e:
            pytest.fail(str(e), pytrace=False)
    return _COMPARISONS[compared_model]


def pytest_sessionfinish(session, exitstatus):
    """Write the baseline updates of the run (all together, unless it was interrupted), the comparison report of
    every fine-tune compared in this session (the same report as ``mechbench compare``), and judge whether the run
    checked anything (:class:`Tally`; under pytest -n the controller judges, from its workers' tallies)."""
    config = session.config
    tally = getattr(config, "_mechbench_tally", None)
    if tally is None:  # the plugin's configure did not finish (a usage error)
        return
    staging = config._mechbench.staging
    if staging is not None and staging.diffs:
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            tally.baselines.append(f"interrupted: {len(staging.diffs)} baseline update(s) discarded, every baseline "
                                   f"file is as it was")
        else:
            tally.baselines.append(_commit(staging, config._mechbench.results_dir))
    if _COMPARISONS:
        from mechbench import validate
        from mechbench.report import write_comparison_report

        settings = config._mechbench
        for comparison in _COMPARISONS.values():
            if comparison._claims:
                try:  # a results directory gone read-only since the run began: the report is kept elsewhere, named
                    path = validate.written_or_kept(
                        f"the comparison report of {comparison.fine_tune.name}", settings.results_dir,
                        lambda out: write_comparison_report(comparison, out,
                                                            results_path=str(settings.results_dir / "results.jsonl")))
                    tally.reports.append(f"comparison report: {path}")
                except MechbenchError as e:
                    tally.reports.append(f"comparison report NOT in the results directory: {e}")
                    session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: its controller reports and judges
        config.workeroutput.update(mechbench_tally=tally.to_json(), mechbench_reports=tally.reports,
                                   mechbench_baselines=tally.baselines)
        return
    if exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        problems = tally.problems(config._mechbench)
        if problems:
            allowed = config.getoption("--allow-skips")
            config._mechbench_nothing_checked = (problems, allowed)
            if not allowed:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _commit(staging, results_dir: Path) -> str:
    """Write the staged baseline updates; where the baselines directory refuses them at the end (it went read-only
    since the run was checked), the updated files go to the results directory instead, named, so that a run's
    measurements are never lost."""
    try:
        written = staging.commit()
    except OSError as e:
        kept = Path(results_dir) / "baselines-not-written"
        kept.mkdir(parents=True, exist_ok=True)
        paths = staging.commit(into=kept)
        return (f"baselines NOT updated: {e.strerror or e} writing them ({len(staging.diffs)} record(s)); the updated "
                f"files are in {kept} ({', '.join(p.name for p in paths)}): copy them into the baselines directory\n"
                + "\n".join(staging.diffs))
    return "\n".join([f"baselines updated ({len(staging.diffs)} record(s) in {', '.join(p.name for p in written)}):"]
                     + staging.diffs)


def pytest_terminal_summary(terminalreporter):
    lines = [v for rep in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
             for k, v in getattr(rep, "user_properties", []) if k == "claim"]
    if lines:
        terminalreporter.section("mechbench claims")
        for line in lines:
            terminalreporter.write_line(line)
    tally = getattr(terminalreporter.config, "_mechbench_tally", None)
    if tally is not None and tally.baselines:
        terminalreporter.section("mechbench baselines")
        for line in tally.baselines:
            terminalreporter.write_line(line)
    for line in tally.reports if tally is not None else ():
        terminalreporter.write_line(line)
    nothing = getattr(terminalreporter.config, "_mechbench_nothing_checked", None)
    if nothing:
        problems, allowed = nothing
        terminalreporter.section("mechbench: nothing checked", red=not allowed, yellow=allowed)
        for line in problems:
            terminalreporter.write_line(line)
        terminalreporter.write_line("--allow-skips: the run passes anyway, as asked" if allowed else
                                    "the run fails: a green run must have checked something. Store baselines "
                                    "(--update-baselines), fix --baselines-dir, or pass --allow-skips if checking "
                                    "nothing is what you meant")
