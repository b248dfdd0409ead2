"""pytest options and fixtures shared by the claim suites (suites/) and the library tests (tests/).

    pytest suites/                      # every claim on the embedded toy zoo (CPU)
    pytest suites/ --model=goat7b       # on a paper model (needs its weights; skips with the reason if absent)
    pytest suites/ --model=toy-llama --update-baselines   # store what was measured as the new baseline
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from mechbench.errors import MechbenchError, ModelLoadError, UnknownModelError
from mechbench.models.registry import BASE_OF, PAPER_MODELS, REGISTRY, TOY_MODELS, resolve

ROOT = Path(__file__).resolve().parent


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
                help="examples per claim (default: the paper's count, e.g. 500)")
    g.addoption("--seed", type=int, default=0, help="seed of every dataset and sampler (default 0)")
    g.addoption("--baselines-dir", default=str(ROOT / "baselines"), help="directory of the baseline JSON files")
    g.addoption("--update-baselines", action="store_true",
                help="store the measured numbers as baselines (measured models only; paper numbers are kept)")
    g.addoption("--results-dir", default=str(ROOT / "results"), help="where results.jsonl is appended")
    g.addoption("--require-models", action="store_true",
                help="fail, instead of skip, when a model cannot be loaded")


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

    def n_examples(self, default: int) -> int:
        return self.limit or default

    def base_of(self, model: str) -> str | None:
        return self.base_model or BASE_OF.get(model)

    def circuits_for(self, model: str) -> tuple[str, ...]:
        """The circuits evaluated on ``model``: --circuit, else the one discovered on its base (the paper
        evaluates the Llama-7B circuit on all four models)."""
        if self.circuits:
            return self.circuits
        base = self.base_of(model) or model
        return (base,) if base in PAPER_MODELS + TOY_MODELS else ()


def _models(config) -> tuple[str, ...]:
    raw = config.getoption("--model") or [",".join(TOY_MODELS)]
    names = tuple(dict.fromkeys(n.strip() for item in raw for n in item.split(",") if n.strip()))
    for name in names:
        try:
            resolve(name)
        except UnknownModelError as e:
            raise pytest.UsageError(str(e)) from None
    return names


def pytest_configure(config):
    if config.getoption("--baseline-model") and config.getoption("--update-baselines"):
        raise pytest.UsageError("--baseline-model compares with another model's baselines; it cannot be combined "
                                "with --update-baselines, which would store this model's numbers under that name")
    config._mechbench = Settings(
        models=_models(config),
        base_model=config.getoption("--base-model"),
        baseline_model=config.getoption("--baseline-model"),
        circuits=tuple(n.strip() for item in (config.getoption("--circuit") or []) for n in item.split(",") if n.strip())
        or None,
        device=config.getoption("--device"),
        dtype=config.getoption("--dtype"),
        limit=config.getoption("--limit"),
        seed=config.getoption("--seed"),
        baselines_dir=Path(config.getoption("--baselines-dir")),
        update_baselines=config.getoption("--update-baselines"),
        results_dir=Path(config.getoption("--results-dir")),
        require_models=config.getoption("--require-models"),
    )


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


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU; none is visible to torch here")


@pytest.fixture(scope="session")
def settings(request) -> Settings:
    return request.config._mechbench


def load_or_skip(name: str, settings: Settings):
    """The model's handle; a model that cannot be loaded skips the test with the reason."""
    from mechbench.api import get_model

    try:
        return get_model(name, device=settings.device, dtype=settings.dtype)
    except ModelLoadError as e:  # weights not here: a skip that says why
        if settings.require_models:
            pytest.fail(f"--require-models: {e}", pytrace=False)
        pytest.skip(f"model {name!r} cannot be loaded here: {e}")
    except MechbenchError as e:  # loadable but unusable (e.g. not a Llama): the user must change --model
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def model(model_name, settings):
    return load_or_skip(model_name, settings)


@pytest.fixture(scope="session")
def results(settings):
    from mechbench.results import ResultsWriter

    return ResultsWriter(settings.results_dir)


@pytest.fixture
def claim_check(settings, results, request):
    """``claim_check(claim, keys, measured, n=..., model=handle, **tolerances)``: compare with the stored
    baseline (fail outside tolerance), or store it with --update-baselines. Always records the result."""
    from mechbench.claims import check_claim

    def check(claim, keys, measured, *, n=None, model=None, soft=False, **tolerances):
        """``soft``: return the outcome instead of failing or skipping (a test checking many points reports
        every point out of tolerance at once)."""
        seed = settings.seed
        if settings.baseline_model and model is not None:
            # the record of the model this one is checked against; another model's numbers on the same
            # examples are not the same-sample case, so the seed is withheld from the tolerance rule
            keys = {k: (settings.baseline_model if v == model.name else v) for k, v in keys.items()}
            keys = {k: ("release" if k == "checkpoint" and v == "local" else v) for k, v in keys.items()}
            seed = None
        try:
            outcome = check_claim(
                claim, keys, measured, n=n, seed=seed, baselines_dir=settings.baselines_dir,
                update=settings.update_baselines and (model is None or model.spec.kind != "paper"),
                fingerprint=getattr(model, "fingerprint", None), results=results, **tolerances,
            )
        except MechbenchError as e:
            pytest.fail(str(e), pytrace=False)
        request.node.user_properties.append(("claim", outcome.message()))
        if soft:
            return outcome
        if outcome.missing:
            pytest.skip(outcome.message())
        if outcome.passed is False:
            pytest.fail(outcome.message(), pytrace=False)
        return outcome

    return check


def load_circuit(name: str, model, settings: Settings):
    """Circuit ``name`` from the baselines, checked to fit ``model``; a mismatch fails the test with the reason."""
    from mechbench.circuits import Circuit

    try:
        circuit = Circuit.load(name, settings.baselines_dir)
        circuit.check_fits(model.shape.n_layers, model.shape.n_heads)
    except MechbenchError as e:
        pytest.fail(str(e), pytrace=False)
    return circuit


ABLATION_PROMPTS = 500  # prompts behind the position-specific means (the paper's)
_MEANS: dict[tuple, object] = {}


def ablation_means(model, settings: Settings):
    """Mean head output per (layer, position, head) over the ablation prompts, once per model and seed."""
    from mechbench.data.counterfactuals import ablation_prompts
    from mechbench.methods.ablation import position_means

    key = (model.name, settings.seed)
    if key not in _MEANS:
        _MEANS[key] = position_means(model.model, ablation_prompts(model.tokenizer, ABLATION_PROMPTS, seed=settings.seed))
    return _MEANS[key]


def settle(outcomes, what: str = "numbers") -> None:
    """End a test that checked many numbers softly: fail listing every one out of tolerance, or skip (with
    how to store them) when none had a baseline."""
    failed = [o.message() for o in outcomes if o.passed is False]
    if failed:
        pytest.fail(f"{len(failed)} of {len(outcomes)} {what} out of tolerance:\n" + "\n".join(failed), pytrace=False)
    if outcomes and all(o.missing for o in outcomes):
        pytest.skip(outcomes[0].message())


def pytest_terminal_summary(terminalreporter):
    lines = [v for rep in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
             for k, v in getattr(rep, "user_properties", []) if k == "claim"]
    if lines:
        terminalreporter.section("mechbench claims")
        for line in lines:
            terminalreporter.write_line(line)
