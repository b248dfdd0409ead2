"""mechbench's pytest plugin: the options, the parametrisation over models and circuits, and the pytest tests of every
claim. A claim is one module of ``mechbench/claims/specs/`` (its facts and its measurements, each a function of a
:class:`mechbench.claims.run.Run`); :func:`claim_tests` turns its measurements into pytest tests, and a suite under
``suites/`` is that call.

The plugin is a ``pytest11`` entry point named ``mechbench.pytest_plugin`` (pyproject.toml), so every pytest of an
environment mechbench is installed in loads it, and it is inert until the session uses mechbench: it adds its
options and markers, and nothing else happens (no option checked, no model resolved, no directory made, no torch
thread count set, no summary printed) unless a mechbench option is given (options.py), the session collects
mechbench's own suites, or a collected test uses one of its fixtures or is a claim test (decided after collection).
Then the session's state is one :class:`MechbenchSession` on ``config.stash[SESSION_KEY]``. ``-p
mechbench.pytest_plugin`` and ``pytest_plugins = ["mechbench.pytest_plugin"]`` (the checkout's root conftest.py)
name the same plugin: they load it where entry points are not loaded (PYTEST_DISABLE_PLUGIN_AUTOLOAD) and are a
no-op where they are; ``-p no:mechbench.pytest_plugin`` leaves it out.

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

from mechbench import options
from mechbench.claims import get
from mechbench.claims.run import ClaimFailed, ClaimSkipped, Run, load_model
from mechbench.claims.settings import Settings
from mechbench.errors import BaselineError, MechbenchError, UnknownModelError
from mechbench.models.registry import PAPER_MODELS, TOY_MODELS, resolve
from mechbench.results import DevicePeak

#: The checkout mechbench lives in (its baselines/ and suites/ sit there).
ROOT = Path(__file__).resolve().parent.parent
#: mechbench's own claim suites: a session that collects them uses mechbench.
SUITES = ROOT / "suites"


def pytest_addoption(parser):
    """mechbench's options (mechbench/options.py, the table the ``mechbench`` command line shares)."""
    options.add_pytest_options(parser.getgroup("mechbench"))


def _models(config) -> tuple[str, ...]:
    raw = config.getoption("--model") or [",".join(TOY_MODELS)]
    names = tuple(dict.fromkeys(n.strip() for item in raw for n in item.split(",") if n.strip()))
    if not names:
        raise pytest.UsageError(
            f"--model {' '.join(map(repr, raw))} names no model: give a registered name, a "
            f"directory or a hub id (or leave --model out for the toy zoo)"
        )
    for name in names:
        try:
            resolve(name)
        except UnknownModelError as e:
            raise pytest.UsageError(str(e)) from None
    return names


def _claims(config) -> tuple[str, ...] | None:
    """--claim values: the registered claims whose tests run (None: every claim's)."""
    from mechbench.claims import CLAIMS

    raw = config.getoption("--claim")
    if not raw:
        return None
    names = tuple(dict.fromkeys(n.strip() for item in raw for n in item.split(",") if n.strip()))
    unknown = [n for n in names if n not in CLAIMS]
    if unknown or not names:
        raise pytest.UsageError(
            f"--claim {','.join(raw)}: {'unknown claim(s) ' + ', '.join(unknown) if unknown else 'no claim named'}; "
            f"known: {', '.join(CLAIMS)}"
        )
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
        self.workers: dict[str, tuple[str, list[str]]] = {}  # pytest -n: worker id -> (its device, its models)

    def pytest_runtest_logreport(self, report) -> None:  # called by the session's hook (MechbenchSession)
        model = self.model_of.get(report.nodeid, self.model_of.get(report.nodeid.rpartition("@")[0]))
        if model is None:  # (a pytest-xdist worker of --dist loadgroup reports the id with "@<group>" after it)
            return
        if report.when == "call" and report.outcome in ("passed", "failed"):
            self.verdicts[model] = self.verdicts.get(model, 0) + 1
        elif report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skips.setdefault(model, []).append(reason.removeprefix("Skipped: "))

    def to_json(self) -> dict:
        """What a pytest-xdist worker sends its controller (``workeroutput``), which judges the whole run."""
        return {
            "loaded": sorted(self.loaded),
            "verdicts": self.verdicts,
            "skips": self.skips,
            "dropped": self.dropped,
            "compare_items": sorted(self.compare_items),
        }

    def merge(self, data: dict) -> None:
        self.loaded |= set(data["loaded"])
        self.compare_items |= set(data["compare_items"])
        for k, v in data["verdicts"].items():  # each worker ran its own tests
            self.verdicts[k] = self.verdicts.get(k, 0) + v
        for k, v in data["dropped"].items():  # every worker collects, and deselects, all of them
            self.dropped[k] = max(self.dropped.get(k, 0), v)
        for k, v in data["skips"].items():
            self.skips.setdefault(k, []).extend(v)

    def pytest_testnodedown(self, node, error) -> None:  # on the controller of pytest -n: a worker's tally
        output = getattr(node, "workeroutput", {})
        if "mechbench_tally" in output:
            self.merge(output["mechbench_tally"])
        self.reports.extend(output.get("mechbench_reports", []))
        self.baselines.extend(output.get("mechbench_baselines", []))
        if "mechbench_device" in output:
            self.workers[node.gateway.id] = (output["mechbench_device"], output["mechbench_tally"]["loaded"])

    def problems(self, settings) -> list[str]:
        """Why the run checked nothing about a model, one line per model; empty when every model that loaded has a
        verdict, or none was asked for that could load."""
        lines = []
        for model in sorted(self.dropped.keys() - self.compare_items):
            lines.append(
                f"{model} is in comparison mode (a fine-tune of {settings.base_of(model)} with no baselines "
                f"of its own, or --compare), so its claims are measured in suites/test_compare.py, which this "
                f"run did not collect: its {self.dropped[model]} claim test(s) were deselected. Run "
                f"suites/ (or add suites/test_compare.py), or check it against stored baselines with "
                f"--baseline-model"
            )
        for model in sorted(self.loaded):
            if self.verdicts.get(model):
                continue
            skips = self.skips.get(model, [])
            reasons = sorted(set(skips))
            why = (f": {reasons[0]}" if reasons else "") + (
                f" (and {len(reasons) - 1} other reason(s))" if len(reasons) > 1 else ""
            )
            lines.append(f"{model} loaded, but none of its claim tests reached a verdict ({len(skips)} skipped){why}")
        return lines


MARKERS = (
    "claim(name): a claim of the paper checked against a stored baseline (--claim NAME runs one claim's tests)",
    "paper: needs the paper's 7B weights (skips with the reason when they cannot be loaded)",
    "gpu: needs a CUDA GPU (skips without one)",
)


class MechbenchSession:
    """The state of one pytest session that uses mechbench, on ``config.stash[SESSION_KEY]``: what the run was asked
    for (:class:`Settings`), what it checked (:class:`Tally`), the memory plan's notes, the results file (its writer
    made when a test first asks for it, its directory on the first write), the comparisons of the models in
    comparison mode (reported when the session ends), the results computed once per session
    (:meth:`mechbench.claims.run.Run.once`) and the verdict of a run that checked nothing. It is registered as a
    plugin of the session, for the one hook it needs (the tally of each test's report)."""

    def __init__(self, settings: Settings, notes=()):
        self.settings = settings
        self.tally = Tally()
        self.notes = list(notes)  # claims the memory plan says cannot fit (resolve_batch_size)
        self.announced = False  # the notes are printed
        self.comparisons: dict[str, object] = {}  # compared model -> its mechbench.compare.Comparison
        self.cache: dict[tuple, object] = {}  # Run.once: prompts, ablation means, chance guards
        self.nothing_checked: tuple[list[str], bool] | None = None  # (the problems, --allow-skips) at the end
        self._results = None

    @property
    def results(self):
        """The session's :class:`mechbench.results.ResultsWriter` (``<results-dir>/results.jsonl``)."""
        if self._results is None:
            from mechbench.results import ResultsWriter

            self._results = ResultsWriter(self.settings.results_dir, boxes=self.settings.boxes)
        return self._results

    def pytest_runtest_logreport(self, report) -> None:
        self.tally.pytest_runtest_logreport(report)


SESSION_KEY = pytest.StashKey[MechbenchSession]()
#: A usage error found while collecting (the session started from pytest_generate_tests), raised once it ends.
_ERROR_KEY = pytest.StashKey[pytest.UsageError]()


def session_of(config) -> MechbenchSession | None:
    """The session's mechbench state, or None while (or if) the session does not use mechbench."""
    return config.stash.get(SESSION_KEY, None)


def start(config) -> MechbenchSession:
    """The session's mechbench state, made on first use: every option checked (a :class:`pytest.UsageError` with
    the fix), the settings built, the pytest-xdist worker's share of the CPU set. Before this nothing is made."""
    session = session_of(config)
    if session is None:
        notes = []
        session = MechbenchSession(_settings(config, notes), notes)
        _configure_workers(config)
        config.stash[SESSION_KEY] = session
        config.pluginmanager.register(session, "mechbench-session")
    return session


def pytest_configure(config):
    for marker in MARKERS:  # the marks this plugin sets, known in any repository that loads it
        config.addinivalue_line("markers", marker)
    if getattr(config, "workerinput", {}).get("mechbench_loadgroup"):  # see pytest_configure_node
        config.option.loadgroup = True
    if options.given(config) or _collects_the_suites(config):  # checked now, before collection; else once a
        start(config)  # collected test uses mechbench


def _collects_the_suites(config) -> bool:
    """Whether the session's arguments (or testpaths) name mechbench's suites/, a file in it, or a directory that
    holds it (the checkout: ``pytest`` there)."""
    here = Path(getattr(getattr(config, "invocation_params", None), "dir", None) or Path.cwd())
    for arg in getattr(config, "args", None) or ():
        path = (here / str(arg).split("::")[0]).resolve()
        if path == SUITES or SUITES in path.parents or path in SUITES.parents:
            return True
    return False


def _settings(config, notes: list) -> Settings:
    """The run's :class:`Settings` from its options, each checked before any model loads (a
    :class:`pytest.UsageError` naming the option and the fix); ``notes`` gets the memory plan's."""
    if config.getoption("--baseline-model") and config.getoption("--update-baselines"):
        raise pytest.UsageError(
            "--baseline-model compares with another model's baselines; it cannot be combined "
            "with --update-baselines, which would store this model's numbers under that name"
        )
    if (
        config.getoption("--update-baselines")
        and config.getoption("--limit")
        and not config.getoption("--force-baselines")
    ):
        raise pytest.UsageError(
            f"--update-baselines with --limit {config.getoption('--limit')} would store baselines "
            f"measured on fewer examples than each claim's default (and wider or zero "
            f"tolerances): drop --limit, or add --force-baselines to store them anyway"
        )
    from mechbench import validate
    from mechbench.baselines import DEFAULT_DIR, Staging
    from mechbench.plan import resolve_batch_size
    from mechbench.results import check_results_dir

    baselines_dir = Path(config.getoption("--baselines-dir") or DEFAULT_DIR)
    try:  # every option a user can type, checked before any model loads
        validate.positive("--limit", config.getoption("--limit"))
        validate.seed(config.getoption("--seed"))
        validate.dtype(config.getoption("--dtype"))
        validate.device(config.getoption("--device"))
        validate.device_map(config.getoption("--device-map"))
        batch_size = resolve_batch_size(
            config.getoption("--batch-size"),
            config.getoption("--device"),
            config.getoption("--dtype"),
            _models(config),
            notes,
            device_map=config.getoption("--device-map"),
        )
        validate.baselines_dir(baselines_dir, create=config.getoption("--update-baselines"))
        if config.getoption("--update-baselines"):  # found now, not when the run ends with its work to store
            validate.writable_baselines(baselines_dir)
        for option in ("--base-model", "--baseline-model"):
            if config.getoption(option):
                _known_model(option, config.getoption(option))
        check_results_dir(config.getoption("--results-dir"))  # not made: the first result written makes it
        for name in _models(config):
            validate.model_directory(name, config.getoption("--tokenizer"))
    except MechbenchError as e:
        raise pytest.UsageError(str(e)) from None
    circuits, circuit_files = _circuits(config)
    s = Settings(
        models=_models(config),
        base_model=config.getoption("--base-model"),
        baseline_model=config.getoption("--baseline-model"),
        circuits=circuits,
        device=worker_device(config),
        dtype=config.getoption("--dtype"),
        limit=config.getoption("--limit"),
        seed=config.getoption("--seed"),
        baselines_dir=baselines_dir,
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
        batch_size=batch_size,  # each model loaded for the session runs it (claims.run.load_model)
        boxes=config.getoption("--boxes"),
        claims=_claims(config),
        tokenizer=config.getoption("--tokenizer"),
        device_map=config.getoption("--device-map"),
    )
    if not s.baseline_model and not s.update_baselines:
        # comparison mode: a fine-tune with a known base and no baselines of its own (or --compare) is measured
        # beside its base instead of skipping every claim for want of a stored number
        compared = tuple(
            m
            for m in s.models
            if s.base_of(m)
            and s.base_of(m) != m
            and (config.getoption("--compare") or not _has_own_baselines(m, s.baselines_dir))
        )
        s = replace(s, compared=compared)
        if compared and s.limit is not None:
            raise pytest.UsageError(
                f"--limit {s.limit}: {', '.join(compared)} {'is' if len(compared) == 1 else 'are'} in comparison mode, "
                f"whose lanes set their own sizes (the full lane: the claims' sizes; --quick: fewer prompts and draws), "
                f"so --limit would be ignored. Use --quick for a faster comparison, or check the model against "
                f"stored baselines (--baseline-model) with --limit"
            )
    return s


def _configure_workers(config) -> None:
    """pytest-xdist (``pytest -n 2``): each model's tests go to one worker (``--dist loadgroup``, grouped by model
    in :func:`pytest_generate_tests`), so a model is loaded, and its prompts and ablation means computed, once;
    each worker gets its share of the CPU's cores for torch's threads (two workers of two threads on two cores
    would wait on each other). The workers append to one results.jsonl (a locked write per line); under
    --update-baselines each worker stages its updates and sends them to the controller, which writes every file once
    at the end (refused, writing nothing, where two workers stored one record differently). Called when the session
    starts using mechbench (:func:`start`): on the controller, when that is known before collection (a mechbench
    option, or its suites; the controller collects nothing), on a worker, at the latest when it has collected."""
    option = getattr(config, "option", None)
    workers = getattr(option, "numprocesses", None)
    if workers and getattr(option, "dist", "no") == "load":
        config.option.dist = "loadgroup"  # -n alone: keep a model's tests together (groups of one otherwise)
    share_cores_among_workers(config)


def worker_device(config, gpus: int | None = None) -> str:
    """The device of this process's tests: ``--device``, except that a pytest-xdist worker under ``--device cuda``
    (no index) on a machine with several GPUs takes its own, ``cuda:<worker number mod GPUs>`` (worker gw3 of 8
    on 4 GPUs: cuda:3), so that N workers spread over N GPUs instead of all loading onto cuda:0. ``gpus``: the
    number of visible GPUs (torch's count when not given)."""
    device = config.getoption("--device")
    if device != "cuda" or not hasattr(config, "workerinput"):
        return device
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    if gpus < 2:
        return device
    number = int(str(config.workerinput.get("workerid", "gw0")).removeprefix("gw") or 0)
    return f"cuda:{number % gpus}"


def share_cores_among_workers(config) -> None:
    """On a pytest-xdist worker: torch's threads (and ``OMP_NUM_THREADS`` for the subprocesses its tests start) set
    to the worker's share of the cores, unless the user set ``OMP_NUM_THREADS``. Two workers of two threads each on
    two cores spin on each other: measured, tests/ took 16:43 that way against 3:35 with one thread each."""
    if not hasattr(config, "workerinput"):
        return
    import os

    import torch

    share = max(1, (os.cpu_count() or 1) // int(config.workerinput.get("workercount", 1)))
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(share)
        os.environ["OMP_NUM_THREADS"] = str(share)  # the subprocesses a test starts share it too


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's, on the controller: what a worker is told
def pytest_configure_node(node) -> None:
    if session_of(node.config) is not None and node.config.option.dist == "loadgroup":
        node.workerinput["mechbench_loadgroup"] = True  # the worker parses -n alone as no loadgroup: it is one


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's, on the controller: a worker's tally, merged
def pytest_testnodedown(node, error) -> None:
    output = getattr(node, "workeroutput", {})
    if "mechbench_tally" in output:  # the worker's session used mechbench: so did this one
        ms = start(node.config)
        ms.tally.pytest_testnodedown(node, error)
        staging, who = ms.settings.staging, f"worker {node.gateway.id}"
        if staging is not None:
            staging.replay(output.get("mechbench_staged", []), who)
    elif error is not None:  # a worker that went down sent nothing: the run's updates are not whole
        ms = session_of(node.config)
        if ms is not None and ms.settings.staging is not None:
            ms.settings.staging.lost.append(f"worker {node.gateway.id} went down ({error}), its updates lost")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    """A run on the simulated GPU says so on its first line, before pytest's header (-q included); so does a claim
    that the memory plan says cannot fit the GPU (once collection has started the session, after it)."""
    from mechbench.testing.device import banner

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    if banner():  # set by MECHBENCH_SIMULATED_GPU_GIB for the whole process, whatever its tests
        reporter.write_line(banner(), yellow=True, bold=True)
    _announce(session.config)


def pytest_collection_finish(session):
    _announce(session.config)


def _announce(config) -> None:
    ms, reporter = session_of(config), config.pluginmanager.get_plugin("terminalreporter")
    if ms is None or ms.announced or reporter is None:
        return
    ms.announced = True
    for note in ms.notes:  # claims the memory plan says cannot fit
        reporter.write_line(f"mechbench: {note}", yellow=True)


def _parametrizes(metafunc, name: str) -> bool:
    """Whether the plugin parametrizes ``name`` of this test: it takes it, and neither a fixture nor a parametrize
    mark of the test's own repository provides it (an unrelated suite's ``model_name`` is left alone)."""
    if name not in metafunc.fixturenames or name in getattr(metafunc, "_arg2fixturedefs", {}):
        return False
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        if name in ([n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)):
            return False
    return True


def _started_while_collecting(config) -> MechbenchSession | None:
    """:func:`start` from a hook that runs while a module is collected, where a usage error would be that module's
    collection error: kept, and raised when collection ends (:func:`pytest_collection_modifyitems`)."""
    try:
        return start(config)
    except pytest.UsageError as e:
        config.stash[_ERROR_KEY] = e
        return None


def pytest_generate_tests(metafunc):
    """Tests that take ``model_name`` run once per model under test; paper models carry the paper mark. Each
    model's tests are one ``xdist_group`` (pytest -n: one worker loads the model)."""
    by_model, by_compared = _parametrizes(metafunc, "model_name"), _parametrizes(metafunc, "compared_model")
    if not (by_model or by_compared):
        return
    ms = _started_while_collecting(metafunc.config)
    if ms is None:
        return
    settings = ms.settings

    def marks(n):
        return ([pytest.mark.paper] if n in PAPER_MODELS else []) + [pytest.mark.xdist_group(name=n)]

    if by_model and "circuit_name" in metafunc.fixturenames:
        params = [
            pytest.param(n, c, id=f"{n}-circuit={c}", marks=marks(n))
            for n in settings.models
            for c in settings.circuits_for(n)
        ]
        params += [
            pytest.param(
                n,
                None,
                id=f"{n}-no-circuit",
                marks=[
                    pytest.mark.skip(
                        reason=f"no circuit known for {n!r} (none registered, none stored in "
                        f"{settings.baselines_dir / 'circuits.json'} under a name it is known by): find and "
                        f"store one with `mechbench baseline {settings.base_of(n) or n} --baselines-dir "
                        f"{settings.baselines_dir}`, or pass --circuit NAME|FILE or --base-model"
                    ),
                    pytest.mark.xdist_group(name=n),
                ],
            )
            for n in settings.models
            if not settings.circuits_for(n)
        ]
        metafunc.parametrize(("model_name", "circuit_name"), params)
    elif by_model:
        metafunc.parametrize("model_name", [pytest.param(n, id=n, marks=marks(n)) for n in settings.models])
    if by_compared:  # suites/test_compare.py: only the models in comparison mode
        metafunc.parametrize("compared_model", [pytest.param(n, id=n, marks=marks(n)) for n in settings.compared])


#: The plugin's fixtures: a test that uses one uses mechbench.
FIXTURES = ("settings", "results", "model", "comparison")


def _uses_mechbench(item) -> bool:
    """A claim test, or a test that uses one of the plugin's fixtures (not one of the same name of its own)."""
    if item.get_closest_marker("claim") is not None:
        return True
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    return any(
        defs.get(name) and getattr(defs[name][-1].func, "__module__", None) == __name__
        for name in FIXTURES
        if name in getattr(item, "fixturenames", ())
    )


def pytest_collection_modifyitems(config, items):
    """A session whose tests use mechbench starts using it here, if it had not yet (a usage error stops it now,
    before any test runs); another is left as it is. A model in comparison mode is measured beside its base
    (suites/test_compare.py) instead of against baselines it does not have: its absolute-claim items are
    deselected rather than skipped one by one. The items of one model run together (in the order models were
    given), so that on a GPU each model is loaded once and let go before the next (mechbench.api.get_model)."""
    error = config.stash.get(_ERROR_KEY, None)
    if error is not None:
        raise error
    ms = session_of(config)
    if ms is None:
        if not any(_uses_mechbench(item) for item in items):
            return  # an unrelated session: untouched
        ms = start(config)
    settings = ms.settings
    compared = set(settings.compared)
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        marker = item.get_closest_marker("claim")  # a claim test's mark names its claim; a comparison's, its param
        claim = (marker.args[0] if marker.args else params.get("claim")) if marker is not None else None
        unasked = settings.claims is not None and claim is not None and claim not in settings.claims
        (drop if unasked or params.get("model_name") in compared else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    order = {name: i for i, name in enumerate(settings.models)}

    def model_of(item):
        params = getattr(getattr(item, "callspec", None), "params", {})
        name = params.get("model_name", params.get("compared_model"))
        return order.get(name, -1)  # items of no model first

    items[:] = sorted(keep, key=model_of)  # stable: each model's items keep their order
    tally = ms.tally
    for item in drop:
        name = item.callspec.params.get("model_name")
        if name in compared:
            tally.dropped[name] = tally.dropped.get(name, 0) + 1
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        name = params.get("model_name", params.get("compared_model"))
        if isinstance(name, str) and (item.get_closest_marker("claim") or "compared_model" in params):
            tally.model_of[item.nodeid] = name
        if "compared_model" in params and isinstance(name, str):  # (an empty parameter set's is pytest's NOTSET)
            tally.compare_items.add(name)


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") and session_of(item.config) is not None:  # another suite's gpu mark is its own
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU; none is visible to torch here")


@pytest.fixture(scope="session")
def settings(request) -> Settings:
    """What the run was asked for (its options): :class:`mechbench.claims.settings.Settings`."""
    return start(request.config).settings


@pytest.fixture(scope="session")
def results(request):
    """The session's results file (:class:`mechbench.results.ResultsWriter`; its directory made on the first write)."""
    return start(request.config).results


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
        ms = start(request.config)
        run = Run(
            claim,
            settings,
            circuit_name=given.get("circuit_name"),
            results=results,
            params={k: given[k] for k, _ in test.params},
            cache=ms.cache,
        )

        peak = DevicePeak(settings.device)

        def measure():
            import torch

            try:
                run.model = load_model(given["model_name"], settings)
                ms.tally.loaded.add(given["model_name"])
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
                    f"--dtype bfloat16, or deselect this claim (-k 'not {claim.name}')"
                ) from None
            except MechbenchError as e:  # bad input found inside the claim (a word the tokenizer splits): its message
                raise ClaimFailed(str(e)) from None

        try:
            with peak:
                _outcome_of(measure)
        finally:
            request.node.user_properties.extend(("claim", line) for line in run.lines)
            if peak.bytes is not None:  # what the test held on the device at its peak, beside the plan's prediction
                results.write(
                    f"memory:{claim.name}",
                    {
                        "test": test.name,
                        "model": given["model_name"],
                        "circuit": given.get("circuit_name"),
                        **run.params,
                    },
                    peak.bytes,
                    unit="bytes",
                    device=settings.device,
                    dtype=settings.dtype,
                    batch_size=settings.batch_size,
                    seq_len=run.prompt_length() if run.model is not None else None,
                )

    run_claim.__name__ = run_claim.__qualname__ = f"test_{test.name}"
    run_claim.__doc__ = test.measure.__doc__ or f"{claim.title} (docs/paper.md §{claim.sections})"
    run_claim.__wrapped__ = test.measure  # pytest reports the test at its measurement (file and line of the spec)
    run_claim.__signature__ = inspect.Signature(
        [
            inspect.Parameter(a, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            for a in arguments + ["settings", "results", "request"]
        ]
    )
    ids = dict(test.ids)
    run_claim.pytestmark = [pytest.mark.claim(claim.name)] + [
        pytest.mark.parametrize(k, list(values), ids=ids.get(k)) for k, values in test.params
    ]
    return run_claim


@pytest.fixture
def comparison(compared_model, settings, request):
    """The :class:`mechbench.compare.Comparison` of a model in comparison mode with its base (built once per
    session; its report is written when the session ends)."""
    from mechbench.circuits import Circuit
    from mechbench.compare import LANES, Comparison, base_circuit_name

    ms = start(request.config)
    if compared_model not in ms.comparisons:
        base_name = settings.base_of(compared_model)
        circuit, no_circuit = None, None
        try:
            circuit_ref = settings.circuits[0] if settings.circuits else None
            if circuit_ref is not None:  # a circuit the user named must load
                circuit = Circuit.load(
                    (settings.circuit_files or {}).get(circuit_ref, circuit_ref), settings.baselines_dir
                )
        except MechbenchError as e:
            pytest.fail(str(e), pytrace=False)
        fine_tune = _outcome_of(load_model, compared_model, settings)
        ms.tally.loaded.add(compared_model)
        base = _outcome_of(load_model, base_name, settings, keep=(compared_model,))
        if circuit is None:  # the base's, by name or weights fingerprint; none: the claims that need one are not run
            try:
                name = base_circuit_name(base_name, settings.baselines_dir, base.fingerprint.get("weights_sha256"))
                circuit = Circuit.load(name, settings.baselines_dir)
            except MechbenchError as e:
                no_circuit = str(e)
        try:
            ms.comparisons[compared_model] = Comparison(
                fine_tune,
                base,
                circuit,
                LANES["quick" if settings.quick else "full"],
                settings.seed,
                settings.baselines_dir,
                settings.references,
                discovery_cache=settings.results_dir / "discovery",
                boxes=settings.boxes,
                no_circuit=no_circuit,
            )
        except MechbenchError as e:
            pytest.fail(str(e), pytrace=False)
    return ms.comparisons[compared_model]


def pytest_sessionfinish(session, exitstatus):
    """Write the baseline updates of the run (all together, unless it was interrupted), the comparison report of
    every fine-tune compared in this session (the same report as ``mechbench compare``), and judge whether the run
    checked anything (:class:`Tally`; under pytest -n the controller judges, from its workers' tallies)."""
    config = session.config
    ms = session_of(config)
    if ms is None:  # a session that did not use mechbench (or whose options were refused)
        return
    tally, settings = ms.tally, ms.settings
    staging = settings.staging
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: its updates go to the controller, which writes them
        config.workeroutput["mechbench_staged"] = staging.to_json() if staging is not None else []
        staging = None
    if staging is not None and (staging.diffs or staging.lost):
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            tally.baselines.append(
                f"interrupted: {len(staging.diffs)} baseline update(s) discarded, every baseline file is as it was"
            )
        else:
            tally.baselines.append(_commit(staging, settings.results_dir))
            if tally.baselines[-1].startswith("baselines NOT updated"):  # refused or kept elsewhere: not green
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if ms.comparisons:
        from mechbench import validate
        from mechbench.report import write_comparison_report

        for comparison in ms.comparisons.values():
            if comparison._claims:
                try:  # a results directory gone read-only since the run began: the report is kept elsewhere, named
                    path = validate.written_or_kept(
                        f"the comparison report of {comparison.fine_tune.name}",
                        settings.results_dir,
                        lambda out: write_comparison_report(
                            comparison, out, results_path=str(settings.results_dir / "results.jsonl")
                        ),
                    )
                    tally.reports.append(f"comparison report: {path}")
                except MechbenchError as e:
                    tally.reports.append(f"comparison report NOT in the results directory: {e}")
                    session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: its controller reports and judges
        config.workeroutput.update(
            mechbench_tally=tally.to_json(),
            mechbench_reports=tally.reports,
            mechbench_baselines=tally.baselines,
            mechbench_device=settings.device,
        )
        return
    if exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        problems = tally.problems(settings)
        if problems:
            allowed = config.getoption("--allow-skips")
            ms.nothing_checked = (problems, allowed)
            if not allowed:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _commit(staging, results_dir: Path) -> str:
    """Write the staged baseline updates; where the baselines directory refuses them at the end (it went read-only
    since the run was checked), the updated files go to the results directory instead, named, so that a run's
    measurements are never lost."""
    try:
        written = staging.commit()
    except BaselineError as e:  # the workers' updates conflict, or some never arrived: nothing written
        return str(e) + "\n" + "\n".join(staging.diffs)
    except OSError as e:
        kept = Path(results_dir) / "baselines-not-written"
        kept.mkdir(parents=True, exist_ok=True)
        paths = staging.commit(into=kept)
        return (
            f"baselines NOT updated: {e.strerror or e} writing them ({len(staging.diffs)} record(s)); the updated "
            f"files are in {kept} ({', '.join(p.name for p in paths)}): copy them into the baselines directory\n"
            + "\n".join(staging.diffs)
        )
    return "\n".join(
        [f"baselines updated ({len(staging.diffs)} record(s) in {', '.join(p.name for p in written)}):"] + staging.diffs
    )


def pytest_terminal_summary(terminalreporter):
    ms = session_of(terminalreporter.config)
    if ms is None:  # a session that did not use mechbench prints nothing of it
        return
    lines = [
        v
        for rep in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
        for k, v in getattr(rep, "user_properties", [])
        if k == "claim"
    ]
    if lines:
        terminalreporter.section("mechbench claims")
        for line in lines:
            terminalreporter.write_line(line)
    tally = ms.tally
    if tally.workers:  # pytest -n: which worker ran which models where
        terminalreporter.section("mechbench workers")
        for worker, (device, models) in sorted(tally.workers.items()):
            terminalreporter.write_line(f"{worker}: {device}, {', '.join(models) or 'no model loaded'}")
    if tally.baselines:
        terminalreporter.section("mechbench baselines")
        for line in tally.baselines:
            terminalreporter.write_line(line)
    for line in tally.reports:
        terminalreporter.write_line(line)
    nothing = ms.nothing_checked
    if nothing:
        problems, allowed = nothing
        terminalreporter.section("mechbench: nothing checked", red=not allowed, yellow=allowed)
        for line in problems:
            terminalreporter.write_line(line)
        terminalreporter.write_line(
            "--allow-skips: the run passes anyway, as asked"
            if allowed
            else "the run fails: a green run must have checked something. Store baselines "
            "(--update-baselines), fix --baselines-dir, or pass --allow-skips if checking "
            "nothing is what you meant"
        )
