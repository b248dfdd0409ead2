"""Every wrong input a user can type, in one table: each ends in a clear message that names the input and the
fix, before any model loads, with no traceback. Add a row for every new report.

- ``OPTIONS``, ``LOADER_OPTIONS``: pytest options, checked by the plugin's ``pytest_configure`` (a usage error,
  exit code 4);
- ``COMMANDS``, ``COMMANDS_BEFORE_WORK``: the ``mechbench`` command line (exit code 2, the message on stderr), the
  latter checked to be refused before any model loads or work starts;
- ``BAD_BASELINES``: baseline files refused on load and by ``mechbench baselines``, naming file, record and field;
- the loader's checks (weights that do not cover the architecture, the tokenizer, the adapter's base), a run that
  checked nothing, saved discovery steps and circuits, below the tables.
"""

import json
import types

import pytest

from mechbench import baselines
from mechbench import pytest_plugin as conftest
from mechbench.cli import main
from mechbench.errors import BaselineError, MechbenchError, ModelLoadError, TokenizationError
from tests.helpers import save_random_llama

DEFAULTS = {
    "--model": None,
    "--base-model": None,
    "--baseline-model": None,
    "--circuit": None,
    "--device": "cpu",
    "--device-map": None,
    "--dtype": "float32",
    "--limit": None,
    "--seed": 0,
    "--baselines-dir": str(conftest.ROOT / "baselines"),
    "--update-baselines": False,
    "--results-dir": None,
    "--require-models": False,
    "--allow-pickle": False,
    "--paper-compat-o-proj": False,
    "--compare": False,
    "--quick": False,
    "--reference": None,
    "--force-baselines": False,
    "--bos": "auto",
    "--drop-multi-token": False,
    "--batch-size": "auto",
    "--allow-skips": False,
    "--boxes": 7,
    "--tokenizer": None,
    "--claim": None,
}


def configure(tmp_path, **options):
    values = dict(DEFAULTS, **{"--results-dir": str(tmp_path / "results")})
    values.update({"--" + k.replace("_", "-"): v for k, v in options.items()})
    config = types.SimpleNamespace(
        getoption=lambda name: values[name],
        addinivalue_line=lambda name, line: None,
        pluginmanager=types.SimpleNamespace(register=lambda plugin, name: None),
        stash={},
    )
    conftest.pytest_configure(config)  # options given (--results-dir): checked now, not after collection
    return conftest.session_of(config).settings


def no_config_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    return str(tmp_path / "empty")


def no_tokenizer_dir(tmp_path):
    path = save_random_llama(tmp_path / "m")
    for f in path.glob("tokenizer*"):
        f.unlink()
    return str(path)


def a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    return str(tmp_path / "f")


def bad_circuit(tmp_path):
    (tmp_path / "c.json").write_text(
        json.dumps({"name": "c", "groups": {"value_fetcher": {"role": "last", "heads": [[1]]}}})
    )
    return [str(tmp_path / "c.json")]


OPTIONS = [  # (options, what the message must say)
    (dict(limit=0), "--limit 0: must be at least 1"),
    (dict(limit=-5), "--limit -5: must be at least 1"),
    (dict(seed=-1), "--seed -1"),
    (dict(batch_size="0"), "--batch-size '0': give a positive number"),
    (dict(batch_size="many"), "--batch-size 'many': give a positive number"),
    (dict(dtype="float8"), "--dtype 'float8' is not a dtype"),
    (dict(device="tpu"), "--device 'tpu' is not a torch device"),
    (dict(device="cuda"), "sees no CUDA GPU"),
    (dict(device="cuda:7"), "CUDA"),
    (dict(device_map="everywhere"), "--device-map everywhere: neither one of accelerate's placements nor a file"),
    (dict(results_dir=a_file), "is a file, not a directory"),
    (dict(baselines_dir="does/not/exist"), "--baselines-dir does/not/exist is not a directory"),
    (dict(model=lambda t: [no_config_dir(t)]), "neither config.json nor adapter_config.json"),
    (dict(model=lambda t: [no_tokenizer_dir(t)]), "has no tokenizer"),
    (dict(model=["no-such-model"]), "unknown model 'no-such-model'"),
    (dict(model=["toy-goat"], baseline_model="goat7b", update_baselines=True), "cannot be combined"),
    (dict(circuit=bad_circuit), "[layer, head] pairs"),
    (dict(limit=5, update_baselines=True), "add --force-baselines to store them anyway"),
]


@pytest.mark.parametrize("options, message", OPTIONS, ids=[m[:40] for _, m in OPTIONS])
def test_a_wrong_pytest_option_is_a_usage_error_naming_it(tmp_path, options, message):
    options = {k: (v(tmp_path) if callable(v) else v) for k, v in options.items()}
    if options.get("device", "").startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    with pytest.raises(pytest.UsageError) as e:
        configure(tmp_path, **options)
    assert message in str(e.value)
    assert "Traceback" not in str(e.value)


def test_the_defaults_and_a_good_limit_pass(tmp_path):
    from mechbench.claims import get

    settings = configure(tmp_path, limit=5)
    accuracy = get("accuracy")
    assert settings.size(accuracy, "prompts") == 5 and configure(tmp_path).size(accuracy, "prompts") == 500


COMMANDS = [  # (argv, what stderr must say)
    (["accuracy", "toy-llama", "--n", "0"], "--n 0: must be at least 1"),
    (["accuracy", "toy-llama", "--dtype", "float8"], "--dtype 'float8'"),
    (["accuracy", "toy-llama", "--device", "tpu"], "--device 'tpu'"),
    (["accuracy", "no-such-model"], "unknown model 'no-such-model'"),
    (["compare", "toy-goat", "--claims", "accuracy,nope"], "unknown claim(s) nope"),
    (["compare", "toy-goat", "--seed", "-3"], "--seed -3"),
    (["compare", "toy-llama"], "no base known for 'toy-llama'"),
    (["compare", "toy-goat", "--reference", "nope", "--claims", "accuracy"], "--reference nope: no stored numbers"),
    (["accuracy", "toy-llama", "--boxes", "1"], "--boxes 1: the task has 2 to 7 boxes"),
    (["accuracy", "toy-llama", "--boxes", "99"], "--boxes 99"),
    (["report", "--results", str(conftest.ROOT / "README.md")], "holds no measurements"),
    (["compare", "toy-goat", "--circuit", "toy-vicuna"], "no circuit 'toy-vicuna'"),
    (["discover", "toy-llama", "--pairs", "0"], "--pairs 0"),
    (["discover", "toy-llama", "--config", "nope"], "no discovery settings named 'nope'"),
    (["calibrate", "toy-llama", "--seeds", "0"], "--seeds 0"),
    (["report", "--results", "no/such/results.jsonl"], "no results file"),
]


@pytest.mark.parametrize("argv, message", COMMANDS, ids=[" ".join(a[:2]) + " " + m[:20] for a, m in COMMANDS])
def test_a_wrong_command_line_exits_2_with_the_message(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_results_dir_that_is_a_file_fails_before_the_comparison_runs(tmp_path, capsys):
    assert main(["compare", "toy-goat", "--results-dir", a_file(tmp_path)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_a_truncated_weights_file_is_named(tmp_path):
    from mechbench.models.loading import load_model

    path = save_random_llama(tmp_path / "m")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="model.safetensors is truncated or corrupt"):
        load_model(str(path))


def _adapter_for(tmp_path, name, **shape):
    from peft import LoraConfig, get_peft_model

    from tests.helpers import random_llama

    model = get_peft_model(random_llama(**shape), LoraConfig(r=4, target_modules=["q_proj", "o_proj"]))
    path = tmp_path / name
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize(
    "shape, message",
    [
        (dict(n_layers=3, n_heads=4, head_dim=8), "it adapts layer 2, but the base has 2 layers"),
        (dict(n_layers=2, n_heads=4, head_dim=16), "takes width 64, the base's takes 32"),
    ],
)
def test_an_adapter_that_does_not_fit_its_base_is_refused_before_peft(tmp_path, shape, message):
    from mechbench.models.loading import load_model

    base = save_random_llama(tmp_path / "base", n_layers=2, n_heads=4, head_dim=8)
    adapter = _adapter_for(tmp_path, "adapter", **shape)
    with pytest.raises(ModelLoadError, match="does not fit its base") as e:
        load_model(f"{base}+{adapter}")
    assert message in str(e.value)


class _Tokenizer:
    """A stand-in tokenizer: a word list, an unknown id, and "the"/"Box" leads."""

    name_or_path = "stand-in"
    unk_token_id = 0

    def __init__(self, vocab):
        self.vocab = vocab

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab.get(w, 0) for w in text.split()]}


@pytest.mark.parametrize(
    "vocab, message",
    [
        ({"the": 1, "fig": 2, "pot": 0}, "map to the unknown token"),
        ({"the": 1, "fig": 2, "pot": 2}, "share a token id"),
    ],
)
def test_objects_without_a_token_of_their_own_are_named(vocab, message):
    from mechbench.data.dataset import single_token_ids

    with pytest.raises(TokenizationError, match=message) as e:
        single_token_ids(_Tokenizer(vocab), ["fig", "pot"], "the", kind="objects")
    assert "'pot'" in str(e.value)


def test_the_fingerprint_covers_the_tokenizer():
    from mechbench.api import get_model

    assert len(get_model("toy-llama").fingerprint["tokenizer_sha256"]) == 64


def test_errors_are_mechbench_errors():
    assert issubclass(ModelLoadError, MechbenchError) and issubclass(TokenizationError, MechbenchError)


# --- inputs checked before the work: the model, its tokenizer, its adapter, and a run that checked nothing -----------

LOADER_OPTIONS = [  # more pytest options refused at configure time (exit code 4)
    (dict(baseline_model="toy-lama"), "--baseline-model toy-lama: unknown model 'toy-lama'"),
    (dict(base_model="toy-lama"), "--base-model toy-lama: unknown model 'toy-lama'"),
    (dict(base_model=no_config_dir), "neither config.json nor adapter_config.json"),
    # /proc is a directory nobody can create files in, root included
    (dict(update_baselines=True, baselines_dir="/proc"), "cannot be written to"),
    (dict(model=["toy-goat"], compare=True, limit=14), "whose lanes set their own sizes"),
    (dict(model=[" , "]), "names no model"),
]


@pytest.mark.parametrize("options, message", LOADER_OPTIONS, ids=[m[:40] for _, m in LOADER_OPTIONS])
def test_a_wrong_model_option_is_a_usage_error_naming_it(tmp_path, options, message):
    test_a_wrong_pytest_option_is_a_usage_error_naming_it(tmp_path, options, message)


def _without(path, pattern):
    from safetensors.torch import load_file, save_file

    weights = load_file(path / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if pattern not in k}, path / "model.safetensors", metadata={"format": "pt"}
    )


def _with(path, key, tensor):
    from safetensors.torch import load_file, save_file

    weights = load_file(path / "model.safetensors")
    save_file({**weights, key: tensor}, path / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: _without(p, ".layers.1."), "9 missing (they would stay randomly initialised): model.layers.1."),
        (lambda p: _with(p, "model.layers.0.extra.weight", __import__("torch").zeros(2)), "1 unexpected"),
        (
            lambda p: _with(p, "model.layers.0.self_attn.q_proj.weight", __import__("torch").zeros(5, 32)),
            "of another shape: model.layers.0.self_attn.q_proj.weight (checkpoint (5, 32), model (32, 32))",
        ),
    ],
    ids=["a layer missing", "an unexpected tensor", "a tensor of another shape"],
)
def test_weights_that_do_not_cover_the_architecture_are_refused_naming_the_keys(tmp_path, damage, message):
    from mechbench.models.loading import load_model

    path = save_random_llama(tmp_path / "m")
    damage(path)
    with pytest.raises(ModelLoadError, match="do not cover its architecture") as e:
        load_model(str(path))
    assert message in str(e.value)


def test_an_adapter_is_refused_on_another_registered_model_and_warned_about_on_an_unknown_one(tmp_path):
    import shutil
    import warnings

    from mechbench.models.loading import load_model
    from mechbench.models.registry import zoo_dir

    with pytest.raises(ModelLoadError, match="was trained on 'toy-llama'.*puts it on 'toy-vicuna'"):
        load_model(f"toy-vicuna+{zoo_dir('toy-goat')}")
    adapter = tmp_path / "adapter"
    shutil.copytree(zoo_dir("toy-goat"), adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": "/data/trainer/base"})
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_model(f"toy-llama+{adapter}")
    assert any(
        "records its base as '/data/trainer/base'" in str(w.message)
        and "only the shapes were checked" in str(w.message)
        for w in caught
    )


def test_the_paper_adapter_s_recorded_base_is_llama7b():
    from mechbench.models.registry import names_of

    assert "llama7b" in names_of("decapoda-research/llama-7b-hf") & names_of("huggyllama/llama-7b")


def test_a_tokenizer_past_the_embedding_and_bos_always_without_a_bos_are_refused(tmp_path):
    from mechbench.models.loading import load_model
    from mechbench.zoo.tokenizer import build_tokenizer

    small = save_random_llama(tmp_path / "small", vocab_size=10)
    with pytest.raises(ModelLoadError, match=r"has \d+ tokens but the model's embedding has 10 rows"):
        load_model(str(small))
    no_bos = save_random_llama(tmp_path / "no-bos")
    tokenizer = build_tokenizer(_cache=False)
    tokenizer.bos_token = None
    tokenizer.save_pretrained(no_bos)
    with pytest.raises(ModelLoadError, match="--bos always, but the tokenizer of .* has no BOS token"):
        load_model(str(no_bos), bos="always")


def test_a_fine_tune_whose_tokenizer_differs_from_its_base_s_is_not_compared(tmp_path):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from mechbench.circuits import Circuit
    from mechbench.compare import Comparison
    from mechbench.models.loading import tokenizer_difference
    from mechbench.zoo.tokenizer import build_tokenizer

    base = build_tokenizer(_cache=False)
    backend = json.loads(base.backend_tokenizer.to_str())
    vocab = backend["model"]["vocab"]
    vocab["fig"], vocab["pot"] = vocab["pot"], vocab["fig"]  # two objects' ids swapped: the same words, other ids
    swapped = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(backend)),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    assert tokenizer_difference(build_tokenizer(_cache=False), base) is None
    assert "2 of the base's" in tokenizer_difference(swapped, base) and "'fig'" in tokenizer_difference(swapped, base)
    shape = types.SimpleNamespace(n_layers=2, n_heads=4)
    handle = lambda name, tok: types.SimpleNamespace(name=name, shape=shape, tokenizer=tok, fingerprint={})  # noqa: E731
    circuit = Circuit.from_json({"name": "c", "groups": {"value_fetcher": {"role": "last", "heads": [[1, 2]]}}})
    with pytest.raises(MechbenchError, match="do not share a tokenizer: 2 of the base's"):
        Comparison(handle("ft", swapped), handle("base", base), circuit)


def test_a_run_that_checked_nothing_says_why_for_each_model():
    from mechbench.pytest_plugin import Tally

    tally = Tally()
    tally.loaded, tally.dropped = {"toy-llama"}, {"toy-goat": 12}
    tally.skips = {"toy-llama": ["no baseline record in x.json for {...}; run with --update-baselines"] * 3}
    settings = types.SimpleNamespace(base_of=lambda m: "toy-llama")
    lines = tally.problems(settings)
    assert "toy-goat is in comparison mode" in lines[0] and "suites/test_compare.py" in lines[0]
    assert lines[1].startswith(
        "toy-llama loaded, but none of its claim tests reached a verdict (3 skipped): no baseline record"
    )
    tally.verdicts, tally.compare_items = {"toy-llama": 1}, {"toy-goat"}
    assert tally.problems(settings) == []


def test_the_system_pytest_without_mechbench_s_environment_says_how_to_run_it(tmp_path):
    import subprocess
    import sys

    (tmp_path / "torch").mkdir()  # a torch that cannot be imported, as on a Python without mechbench's packages
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError(\"No module named 'torch'\")\n")
    # -p no:mechbench.pytest_plugin: the plugin's entry point is not in that pytest's environment either
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--co",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:mechbench.pytest_plugin",
            "suites",
        ],
        cwd=conftest.ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    said = done.stdout + done.stderr
    assert done.returncode == 4 and "bash scripts/claims.sh" in said and "Traceback" not in said, said[-2000:]


# --- the mechbench commands: refused before the work (a model load, a discovery, a calibration seed) ----------------
# COMMANDS_BEFORE_WORK: argv (an item may be a function of ``tmp_path`` that makes a file and returns its path: the
# message must name that path) and what stderr must say; below it a saved discovery step checked before it is
# resumed, circuits checked when read, and finished work kept when its output cannot be written at the end.

UNWRITABLE = "/proc"  # a directory nobody can create files in, root included


def results_file(tmp_path):
    """A good results file (an input not at fault)."""
    (tmp_path / "results.jsonl").write_text(json.dumps({"claim": "accuracy", "model": "m", "value": 0.5}) + "\n")
    return str(tmp_path / "results.jsonl")


def _lines(tmp_path, *rows):
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(tmp_path / "results.jsonl")


def binary_file(tmp_path):
    (tmp_path / "results.bin").write_bytes(bytes(range(256)) * 4)
    return str(tmp_path / "results.bin")


def model_dir(config: str):
    """A model directory whose config.json holds ``config`` (JSON or not)."""

    def make(tmp_path):
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "config.json").write_text(config)
        (tmp_path / "m" / "tokenizer.json").write_text("{}")
        return str(tmp_path / "m")

    return make


def circuit_file(heads: str):
    """A circuit file whose one group lists ``heads`` (JSON text)."""

    def make(tmp_path):
        path = tmp_path / "circuit.json"
        path.write_text(f'{{"name": "c", "groups": {{"value_fetcher": {{"role": "last", "heads": {heads}}}}}}}')
        return str(path)

    return make


GPT2 = json.dumps({"model_type": "gpt2", "n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 50257})

COMMANDS_BEFORE_WORK = [  # (argv, what stderr must say)
    # report: its output directory and its results file
    (["report", "--results", results_file, "--out", a_file], "is a file, not a directory: pass a directory"),
    (["report", "--results", results_file, "--out", UNWRITABLE], "--out /proc cannot be written to"),
    (["report", "--results", binary_file], "is not a results file (it is not text: a binary file?)"),
    (
        ["report", "--results", lambda t: _lines(t, {"claim": "accuracy", "value": 1, "meta": "edited"})],
        "holds no measurements (1 lines, none a results record)",
    ),
    # compare: the output directory before any claim is computed; an empty claim selection
    (["compare", "toy-goat", "--claims", "accuracy", "--out", UNWRITABLE], "--out /proc cannot be written to"),
    (["compare", "toy-goat", "--claims", "accuracy", "--out", a_file], "is a file, not a directory"),
    (["compare", "toy-goat", "--claims", ""], "--claims '' names an empty claim; give a comma-separated list of"),
    (["compare", "toy-goat", "--claims", ","], "--claims ',' names an empty claim"),
    (["compare", "toy-goat", "--claims", "accuracy,,cmap"], "names an empty claim"),
    # compare: a circuit file, checked when read (before the models load)
    (
        ["compare", "toy-goat", "--circuit", circuit_file("[[true, 1]]")],
        "circuit 'c' group 'value_fetcher': 'heads' must be [layer, head] pairs of non-negative integers, and [true, 1]",
    ),
    (["compare", "toy-goat", "--circuit", circuit_file("[]")], "'heads' must be a non-empty list"),
    (
        ["compare", "toy-goat", "--circuit", circuit_file("[[1, 2], [0, 3], [1, 2]]")],
        "group 'value_fetcher': head(s) [1, 2] are listed more than once",
    ),
    (["compare", "toy-goat", "--circuit", circuit_file("[[1.5, 2]]")], "and [1.5, 2] is not one"),
    (["compare", "toy-goat", "--circuit", circuit_file("[[-1, 2]]")], "and [-1, 2] is not one"),
    (["compare", "toy-goat", "--circuit", circuit_file('[["1", 2]]')], 'and ["1", 2] is not one'),
    (
        ["compare", "toy-goat", "--circuit", circuit_file("[[1, 2], [9, 0]]")],  # the base's shape, read before loading
        "circuit 'c' group 'value_fetcher' has heads [(9, 0)] outside a model of 4 layers x 8 heads",
    ),
    # calibrate: its output directory before the first seed's pytest
    (["calibrate", "toy-llama", "--out", a_file], "is a file, not a directory"),
    (["calibrate", "toy-llama", "--out", UNWRITABLE], "--out /proc cannot be written to"),
    # plan: the local model's config and the rates it divides by
    (["plan", model_dir(GPT2)], "model_type 'gpt2' is not a family mechbench runs (it supports llama"),
    (
        ["plan", model_dir('{"model_type": "llama", "hidden_size": 64}')],
        "num_attention_heads is missing, intermediate_size is missing",
    ),
    (
        [
            "plan",
            model_dir(
                '{"model_type": "llama", "num_attention_heads": true, "hidden_size": 64, "intermediate_size": '
                '128, "vocab_size": 100, "num_hidden_layers": "2"}'
            ),
        ],
        "num_attention_heads True, num_hidden_layers '2' (the plan needs",
    ),
    (["plan", model_dir("not json {")], "cannot be read as JSON"),
    (["plan", model_dir("[1, 2]")], "holds a JSON list, not a config object"),
    (["plan", "toy-llama", "--tflops", "0"], "--tflops 0: must be a positive finite number"),
    (["plan", "toy-llama", "--tflops", "-50"], "--tflops -50: must be a positive finite number"),
    (["plan", "toy-llama", "--tflops", "nan"], "--tflops nan"),
    (["plan", "toy-llama", "--gpu-gib", "0"], "--gpu-gib 0: must be a positive finite number"),
    (["plan", "toy-llama", "--gpu-gib", "-8"], "--gpu-gib -8"),
    # discover: every place the finished work goes, and the head counts, before the model loads
    (["discover", "toy-llama", "--work-dir", a_file], "is a file, not a directory"),
    (["discover", "toy-llama", "--work-dir", UNWRITABLE], "--work-dir /proc cannot be written to"),
    (
        ["discover", "toy-llama", "--scores", "missing-dir/x.json"],
        "--scores missing-dir/x.json: the directory missing-dir does not exist; create it",
    ),
    (["discover", "toy-llama", "--scores", "/proc/x.json"], "the directory /proc cannot be written to"),
    (["discover", "toy-llama", "--scores", "."], "--scores . is a directory: pass a file name"),
    (
        ["discover", "toy-llama", "--receivers", "nogroup=3"],
        "--receivers 'nogroup=3': no step finds group 'nogroup'; the steps find value_fetcher, pos_transmitter",
    ),
    (["discover", "toy-llama", "--keep", "nogroup=3"], "--keep 'nogroup=3': no step finds group 'nogroup'"),
    (["discover", "toy-llama", "--steps", "toy", "--keep", "pos_detector=3"], "no step finds group 'pos_detector'"),
    (["discover", "toy-llama", "--receivers", "value_fetcher=0"], "value_fetcher=0: give each group at least 1 head"),
    (["discover", "toy-llama", "--keep", "value_fetcher=-2"], "value_fetcher=-2: give each group at least 1 head"),
    (["discover", "toy-llama", "--keep", "value_fetcher=2,value_fetcher=3"], "a group is given twice"),
    (["discover", "toy-llama", "--receivers", ""], "--receivers '': expected GROUP=K,..."),
    (["discover", "toy-llama", "--min-effect", "-0.1"], "--min-effect -0.1: give a non-negative number"),
    (["discover", "toy-llama", "--store", "--name", "llama7b"], "circuit 'llama7b' is published; store under another"),
    (["discover", "toy-llama", "--store", "--baselines-dir", a_file], "is a file, not a directory"),
]


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    """Any model load, discovery or calibration seed fails the test: the rows must be refused before them. The
    command runs in ``tmp_path``, so that a default output directory is not made in the checkout."""

    def reached(*args, **kwargs):
        raise AssertionError("the work started before the input was checked")

    import mechbench.api
    import mechbench.calibrate
    import mechbench.methods.discovery

    for module, name in (
        (mechbench.api, "get_model"),
        (mechbench.calibrate, "run_seeds"),
        (mechbench.calibrate, "plant"),
        (mechbench.methods.discovery, "discover"),
    ):
        monkeypatch.setattr(module, name, reached)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    "argv, message",
    COMMANDS_BEFORE_WORK,
    ids=[" ".join(x if isinstance(x, str) else "FILE" for x in a[:2]) + " " + m[:30] for a, m in COMMANDS_BEFORE_WORK],
)
def test_a_wrong_command_is_refused_before_the_work_naming_the_input(argv, message, tmp_path, no_work, capsys):
    made = {item: item(tmp_path) for item in argv if callable(item)}
    assert main([made.get(item, item) for item in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mechbench: error: ") and message in err and "Traceback" not in err
    assert all(path in err for item, path in made.items() if item is not results_file)  # the input at fault is named


def test_the_checks_let_good_inputs_through(tmp_path, no_work, capsys):
    """The checks above refuse only what is wrong: the same commands with good inputs reach the work."""
    good_circuit = circuit_file("[[1, 2], [0, 3]]")(tmp_path)
    for argv in (
        [
            "discover",
            "toy-llama",
            "--receivers",
            "value_fetcher=3",
            "--keep",
            "pos_transmitter=1",
            "--work-dir",
            str(tmp_path / "w"),
            "--scores",
            str(tmp_path / "s.json"),
        ],
        [
            "compare",
            "toy-goat",
            "--claims",
            "accuracy",
            "--circuit",
            good_circuit,
            "--results-dir",
            str(tmp_path / "r"),
        ],
        ["calibrate", "toy-llama", "--out", str(tmp_path / "c")],
    ):
        with pytest.raises(AssertionError, match="the work started"):
            main(argv)
    assert main(["report", "--results", results_file(tmp_path), "--out", str(tmp_path / "rep"), "--no-figures"]) == 0
    assert (tmp_path / "rep" / "report.md").is_file()
    # rows of another version, with too few fields to draw: their tables, no figure and no traceback
    odd = _lines(tmp_path, {"claim": "attention_knockout", "model": "m", "value": 0.5}, {"claim": "cmap", "value": "x"})
    assert main(["report", "--results", odd, "--out", str(tmp_path / "odd")]) == 0
    assert "## cmap" in (tmp_path / "odd" / "report.md").read_text() and not list((tmp_path / "odd").glob("*.png"))


def test_a_discovery_that_finds_no_head_is_an_error_not_an_empty_circuit(tmp_path, monkeypatch, capsys):
    import mechbench.api
    import mechbench.methods.discovery
    import mechbench.newbase
    from mechbench.circuits import Circuit
    from mechbench.stats import ChanceCheck

    monkeypatch.setattr(mechbench.api, "get_model", lambda *a, **k: _stand_in_model())
    monkeypatch.setattr(mechbench.newbase, "require_task", lambda *a, **k: ChanceCheck(0.9, 1 / 7, 0.01))
    monkeypatch.setattr(
        mechbench.methods.discovery,
        "discover",
        lambda model, name, *a, **k: mechbench.methods.discovery.Discovery({}, Circuit(name, {})),
    )
    assert (
        main(["discover", "toy-llama", "--work-dir", str(tmp_path), "--store", "--baselines-dir", str(tmp_path)]) == 2
    )
    err = capsys.readouterr().err
    assert "the discovery found no group with an effect" in err and str(tmp_path) in err
    assert not (tmp_path / "circuits.json").exists()  # nothing stored over the circuit's records


# --- a saved discovery step is checked before it is resumed -------------------------------------------------------


def _stand_in_model():
    """What :func:`discover` reads of a model before it runs anything: its fingerprint and shape (3 layers x 4
    heads). No tokenizer: a checkpoint that is refused must be refused before the noise pairs are built."""
    return types.SimpleNamespace(
        name="stand-in",
        fingerprint={"weights_sha256": "0" * 64},
        shape=types.SimpleNamespace(n_layers=3, n_heads=4),
        tokenizer=None,
    )


GOOD_SCORES = [[0.0, -0.5, 0.1, 0.0], [0.2, 0.0, -0.1, 0.0], [0.0, 0.0, 0.0, -0.3]]
GOOD_SE = [[0.01] * 4] * 3

SAVED_STEPS = [  # (steps saved under the right key, what the refusal must say)
    (
        {"value_fetcher": {"scores": [[-1.0, 0.0]], "se": [[0.1, 0.1]]}},
        "have shape [1, 2], not the model's [layers, heads] = [3, 4]",
    ),
    ({"value_fetcher": {"scores": [], "se": []}}, "have shape [0]"),
    (
        {"value_fetcher": {"scores": [[float("nan")] * 4] * 3, "se": GOOD_SE}},
        "the scores of step 'value_fetcher' hold non-finite",
    ),
    (
        {"value_fetcher": {"scores": GOOD_SCORES, "se": [[-0.1] * 4] * 3}},
        "the se of step 'value_fetcher' hold negative",
    ),
    ({"value_fetcher": {"scores": "corrupt", "se": GOOD_SE}}, "has no [layers][heads] table of numbers under 'scores'"),
    ({"value_fetcher": {"scores": GOOD_SCORES}}, "under 'se'"),
    ({"nogroup": {"scores": GOOD_SCORES, "se": GOOD_SE}}, "step 'nogroup' is not one of the configured steps"),
    ({"value_fetcher": {"scores": [[0.0] * 4] * 3, "se": GOOD_SE}}, "its 1 saved step(s) select no head"),
    ({"pos_transmitter": {"scores": GOOD_SCORES, "se": GOOD_SE}}, "saved without step 'value_fetcher'"),
    ([], "'steps' is list, not an object of steps"),
]


@pytest.mark.parametrize("steps, message", SAVED_STEPS, ids=[m[:40] for _, m in SAVED_STEPS])
def test_a_corrupt_saved_discovery_step_is_refused_naming_the_file_and_the_fix(tmp_path, steps, message):
    from mechbench.methods.discovery import DiscoveryConfig, checkpoint_path, discover

    model, config = _stand_in_model(), DiscoveryConfig(n_pairs=4)
    key, path = checkpoint_path(model, "c", config, tmp_path)
    path.write_text(json.dumps({"key": key, "steps": steps}))
    with pytest.raises(MechbenchError) as e:
        discover(model, "c", config, cache_dir=tmp_path)
    assert message in str(e.value)
    assert f"delete it to recompute the discovery (rm {path})" in str(e.value)


def test_a_sound_saved_discovery_step_is_resumed_as_saved(tmp_path):
    import torch

    from mechbench.methods.discovery import DiscoveryConfig, checkpoint_path, saved_steps

    model, config = _stand_in_model(), DiscoveryConfig()
    key, path = checkpoint_path(model, "c", config, tmp_path)
    steps = saved_steps(
        {"key": key, "steps": {"value_fetcher": {"scores": GOOD_SCORES, "se": GOOD_SE}}}, path, config, model.shape
    )
    assert torch.equal(steps["value_fetcher"][0], torch.tensor(GOOD_SCORES))


# --- circuits: checked when read from circuits.json, and against the model they are used on ----------------------


@pytest.mark.parametrize(
    "value, message",
    [
        ([], "must be a non-empty list"),
        ([[1, 2], [1, 2]], "head(s) [1, 2] are listed more than once"),
    ],
)
def test_a_stored_circuit_with_an_empty_group_or_a_repeated_head_is_refused(tmp_path, value, message):
    from mechbench.baselines import DEFAULT_DIR
    from mechbench.circuits import Circuit

    data = json.loads((DEFAULT_DIR / "circuits.json").read_text())
    data["records"] = [
        dict(r, value=value) if (r["circuit"], r["group"]) == ("toy-llama", "value_fetcher") else r
        for r in data["records"]
    ]
    (tmp_path / "circuits.json").write_text(json.dumps(data))
    with pytest.raises(MechbenchError) as e:
        Circuit.load("toy-llama", tmp_path)
    assert str(tmp_path / "circuits.json") in str(e.value)
    assert message in str(e.value) and "circuit 'toy-llama' group 'value_fetcher'" in str(e.value)


def test_a_circuit_outside_the_model_names_the_circuit_the_group_and_the_heads():
    from mechbench.circuits import Circuit, HeadGroup

    circuit = Circuit("c", {"pos_detector": HeadGroup("pos_detector", "query_label", ((1, 2), (3, 0), (0, 9)))})
    circuit.check_fits(4, 10)
    with pytest.raises(MechbenchError) as e:
        circuit.check_fits(3, 8)
    assert "circuit 'c' group 'pos_detector' has heads [(3, 0), (0, 9)] outside a model of 3 layers x 8 heads" in str(
        e.value
    )


def test_an_empty_circuit_is_not_stored_over_the_records(tmp_path):
    from mechbench.circuits import Circuit, store_circuit

    with pytest.raises(MechbenchError, match="circuit 'mine' has no group: there is nothing to store"):
        store_circuit(Circuit("mine", {}), "test", tmp_path)
    assert not (tmp_path / "circuits.json").exists()


# --- an output that fails at the end: the finished work is kept and named ----------------------------------------


def test_finished_work_that_cannot_be_written_is_kept_elsewhere_and_named(tmp_path):
    from mechbench.validate import written_or_kept

    out = tmp_path / "went-read-only"

    def write(directory):
        if directory == out:
            raise PermissionError(13, "Permission denied")
        (directory / "report.md").write_text("the finished report")
        return directory / "report.md"

    with pytest.raises(MechbenchError) as e:
        written_or_kept("the comparison report", out, write)
    message = str(e.value)
    assert f"could not be written to {out} (Permission denied); it was written to " in message
    kept = message.split("it was written to ")[1].split(" instead")[0]
    assert open(kept).read() == "the finished report"
    assert written_or_kept("the report", tmp_path, write) == tmp_path / "report.md"  # a writable one: as asked


def test_the_plan_refuses_a_rate_it_would_divide_by():
    from mechbench import plan

    for tflops in (0, -50, float("inf")):
        with pytest.raises(MechbenchError, match="--tflops"):
            plan.plan("toy-llama", tflops=tflops)


# --- baseline files: refused on load (every route reads them through mechbench.baselines.load) and by
# `mechbench baselines` (exit code 2), naming the file, the record and the field. BAD_BASELINES: (what is wrong, the
# file as (claim, content) or a function making it, what the error says); BASELINE_DIRS: `baselines --dir` on a
# directory that is not one of baseline files.

SHIPPED = baselines.DEFAULT_DIR


def edited(claim, mutate):
    """The shipped ``baselines/<claim>.json`` with ``mutate(data)`` applied (json.dumps writes NaN and Infinity)."""

    def make():
        data = json.loads((SHIPPED / f"{claim}.json").read_text())
        mutate(data)
        return claim, json.dumps(data, indent=1)

    return make


def record(i, **fields):
    return lambda data: data["records"][i].update(fields)


def replaced(claim, old, new):
    """The shipped file's text with its first ``old`` written as ``new``: what a hand edit leaves."""

    def make():
        text = (SHIPPED / f"{claim}.json").read_text()
        assert old in text
        return claim, text.replace(old, new, 1)

    return make


def duplicated(claim, i):
    return edited(claim, lambda data: data["records"].append(dict(data["records"][i])))


def n_records(claim):
    """How many records the shipped file holds: the index a record appended to it gets."""
    return len(json.loads((SHIPPED / f"{claim}.json").read_text())["records"])


BAD_BASELINES = [  # (what is wrong, the file, what the message must say)
    (
        "a tolerance of Infinity",
        edited("accuracy", record(0, tolerance=float("inf"))),
        "records[0].tolerance is Infinity, which is not a finite number",
    ),
    ("a value of NaN", edited("accuracy", record(1, value=float("nan"))), "records[1].value is NaN"),
    ("a std of -Infinity", edited("dcm_patching", record(2, std=float("-inf"))), "records[2].std is -Infinity"),
    (
        "true as a tolerance",
        edited("accuracy", record(0, tolerance=True)),
        "records[0].tolerance must be a finite number >= 0, got true",
    ),
    (
        "a string value",
        edited("accuracy", record(0, value="0.66")),
        'records[0].value must be a number (fraction), got "0.66"',
    ),
    (
        "true as a value",
        edited("accuracy", record(0, value=True)),
        "records[0].value must be a number (fraction), got true",
    ),
    (
        "1.7 in a fraction file",
        edited("accuracy", record(2, value=1.7)),
        "records[2].value is 1.7, outside a fraction's range [0, 1]",
    ),
    ("a negative fraction", edited("attention_knockout", record(0, value=-0.01)), "records[0].value is -0.01, outside"),
    (
        "120 in a percent file",
        edited("dcm_patching", record(0, value=120.0)),
        "records[0].value is 120.0, outside a percent's range [0, 100]",
    ),
    (
        "a tolerance wider than a fraction allows",
        edited("accuracy", record(0, tolerance=0.6)),
        "records[0].tolerance: the tolerance 0.6 is wider than a fraction allows (it must be below 0.5)",
    ),
    (
        "a same-sample tolerance of 1",
        edited("accuracy", record(4, tolerance_same_sample=1.0)),
        "records[4].tolerance_same_sample: the tolerance 1 is wider than a fraction allows",
    ),
    (
        "a percent tolerance of 50",
        edited("dcm_patching", record(0, tolerance=50)),
        "records[0].tolerance: the tolerance 50 is wider than a percent allows (it must be below 50)",
    ),
    (
        "a negative tolerance",
        edited("accuracy", record(0, tolerance=-0.1)),
        "records[0].tolerance must be a finite number >= 0",
    ),
    ("n as a string", edited("accuracy", record(0, n="500")), 'records[0].n must be an integer >= 1, got "500"'),
    ("n of 0", edited("accuracy", record(0, n=0)), "records[0].n must be an integer >= 1, got 0"),
    ("n of true", edited("accuracy", record(0, n=True)), "records[0].n must be an integer >= 1, got true"),
    ("n of 500.0", edited("accuracy", record(0, n=500.0)), "records[0].n must be an integer >= 1, got 500.0"),
    ("a negative seed", edited("accuracy", record(4, seed=-1)), "records[4].seed must be an integer >= 0, got -1"),
    (
        "a tolerance rule that is not text",
        edited("accuracy", record(0, tolerance_rule=3)),
        "records[0].tolerance_rule must be a non-empty string, got 3",
    ),
    (
        "a key field of true",
        edited("accuracy", record(0, model=True)),
        "records[0].model is a key field and must be a string or an integer, got true",
    ),
    ("a key field of 1.5", edited("attention_knockout", record(0, layer=1.5)), "records[0].layer is a key field"),
    (
        "a DCM mask with n_heads true",
        edited("dcm", lambda d: d["records"][0]["value"].update(n_heads=True)),
        "records[0].value.n_heads must be a non-negative integer (count), got true",
    ),
    (
        "a DCM test accuracy of 1.5",
        edited("dcm", lambda d: d["records"][3]["value"].update(test_accuracy=1.5)),
        "records[3].value.test_accuracy is 1.5, outside a fraction's range",
    ),
    (
        "a DCM head as a string",
        edited("dcm", lambda d: d["records"][0]["value"].update(heads=[["15", 13]])),
        "records[0].value.heads must be a list of [layer, head] pairs of non-negative integers",
    ),
    (
        "a minimality accuracy of 2",
        edited("minimality", lambda d: d["records"][0]["value"].update(after=2)),
        "records[0].value.after is 2, outside a fraction's range",
    ),
    (
        "circuit heads [[true, 1]]",
        edited("circuits", record(0, value=[[True, 1]])),
        "records[0].value must be a list of [layer, head] pairs of non-negative integers, got [[true, 1]]",
    ),
    (
        "a negative faithfulness ratio",
        edited(
            "faithfulness", lambda d: next(r for r in d["records"] if r["metric"] == "faithfulness").update(value=-1.0)
        ),
        "outside a ratio's range",
    ),
    (
        "a duplicated record",
        duplicated("accuracy", 0),
        f"records[{n_records('accuracy')}] has the same keys as records[0]",
    ),
    (
        "a duplicated record of object values",
        duplicated("dcm", 5),
        f"records[{n_records('dcm')}] has the same keys as records[5]",
    ),
    (
        "a key written twice in a record",
        replaced("accuracy", '"value": 0.66,', '"value": 0.66, "value": 0.1,'),
        "records[0] has the key 'value' twice (JSON keeps only the last)",
    ),
    (
        "a key written twice at the top",
        replaced("accuracy", '"unit": "fraction",', '"unit": "fraction", "unit": "percent",'),
        "the top level has the key 'unit' twice",
    ),
    (
        "schema_version true",
        edited("accuracy", lambda d: d.update(schema_version=True)),
        "field 'schema_version' must be a int, got true",
    ),
    (
        "a record that is not an object",
        edited("accuracy", lambda d: d["records"].append(0.5)),
        "records[8] must be an object",
    ),
    ("a truncated file", lambda: ("accuracy", (SHIPPED / "accuracy.json").read_text()[:300]), "not valid JSON"),
    ("a binary file", ("accuracy", b"\x89PNG\r\n\x1a\n\xff\xfe"), "not UTF-8 text"),
]


@pytest.mark.parametrize("what, content, message", BAD_BASELINES, ids=[what for what, _, _ in BAD_BASELINES])
def test_a_bad_baseline_file_is_refused_naming_the_file_record_and_field(tmp_path, capsys, what, content, message):
    claim, text = content() if callable(content) else content
    path = tmp_path / f"{claim}.json"
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    with pytest.raises(BaselineError) as e:
        baselines.load(claim, tmp_path)
    assert message in str(e.value) and str(path) in str(e.value)
    assert main(["baselines", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mechbench: error: ") and message in err and str(path) in err and "Traceback" not in err


def a_json_file(tmp_path):
    (tmp_path / "f.json").write_text("{}")
    return tmp_path / "f.json"


def no_baseline_files(tmp_path):
    (tmp_path / "notes.txt").write_text("no JSON here")
    return tmp_path


BASELINE_DIRS = [  # (the --dir, what the message must say)
    (lambda t: t / "missing", "is not a directory"),
    (a_json_file, "is not a directory"),
    (no_baseline_files, "holds no baseline files"),
]


@pytest.mark.parametrize("directory, message", BASELINE_DIRS, ids=[m for _, m in BASELINE_DIRS])
def test_baselines_dir_that_is_not_one_of_baseline_files_is_an_error(tmp_path, capsys, directory, message):
    path = directory(tmp_path)
    assert main(["baselines", "--dir", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and "--dir" in err and "Traceback" not in err


# --- found only at the end of a run, or inside a claim: the work kept, the message without a traceback --------------


def test_baseline_updates_the_directory_refuses_at_the_end_are_kept_in_the_results_directory(tmp_path, monkeypatch):
    from mechbench.claims.check import check_claim

    bdir, results = tmp_path / "baselines", tmp_path / "results"
    bdir.mkdir()
    (bdir / "accuracy.json").write_text((baselines.DEFAULT_DIR / "accuracy.json").read_text())
    staging = baselines.Staging()
    check_claim(
        "accuracy",
        {"model": "toy-x"},
        0.5,
        n=100,
        baselines_dir=bdir,
        update=True,
        tolerance=0.2,
        tolerance_rule="test",
        staging=staging,
    )
    write = baselines._write_atomic

    def refused_in_bdir(path, data):  # the directory went read-only while the run measured
        if path.parent == bdir:
            raise PermissionError(13, "Permission denied")
        write(path, data)

    monkeypatch.setattr(baselines, "_write_atomic", refused_in_bdir)
    ms = conftest.MechbenchSession(types.SimpleNamespace(staging=staging, results_dir=results))
    config = types.SimpleNamespace(stash={conftest.SESSION_KEY: ms})
    conftest.pytest_sessionfinish(types.SimpleNamespace(config=config), pytest.ExitCode.OK)
    said = "\n".join(ms.tally.baselines)
    assert "baselines NOT updated: Permission denied" in said and str(results / "baselines-not-written") in said
    assert baselines.load("accuracy", results / "baselines-not-written").get(model="toy-x").value == 0.5


def test_a_task_word_the_tokenizer_lacks_fails_the_claim_with_the_message_and_no_traceback(tmp_path, pytester):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from mechbench.zoo.tokenizer import build_tokenizer

    base = build_tokenizer(_cache=False)
    backend = json.loads(base.backend_tokenizer.to_str())
    del backend["model"]["vocab"]["fig"]  # one of the paper's objects: now the unknown token
    lacking = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(backend)),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    model = save_random_llama(tmp_path / "m")
    lacking.save_pretrained(model)
    result = pytester.runpytest_inprocess(
        str(conftest.ROOT / "suites" / "test_accuracy.py"),
        f"--model={model}",
        f"--results-dir={tmp_path / 'r'}",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(failed=1)
    said = result.stdout.str()
    assert "'fig'" in said and "unknown token" in said and "Traceback" not in said and "raise " not in said


def test_a_run_of_pytest_workers_is_judged_on_what_all_of_them_checked():
    """pytest -n: each worker tallies the tests it ran; the controller judges the run on the merged tallies (a
    model whose tests reached a verdict in one worker checked something, and every worker deselects the same
    compared-model tests)."""
    from mechbench.pytest_plugin import Tally

    first, second, controller = Tally(), Tally(), Tally()
    first.loaded, first.skips, first.dropped = {"toy-llama"}, {"toy-llama": ["no baseline"]}, {"toy-goat": 5}
    second.loaded, second.verdicts, second.dropped = {"toy-llama"}, {"toy-llama": 3}, {"toy-goat": 5}
    settings = types.SimpleNamespace(base_of=lambda m: "toy-llama")
    for worker in (first, second):
        controller.pytest_testnodedown(types.SimpleNamespace(workeroutput={"mechbench_tally": worker.to_json()}), None)
    lines = controller.problems(settings)
    assert len(lines) == 1 and "toy-goat is in comparison mode" in lines[0] and "5 claim test(s)" in lines[0]
    assert controller.verdicts == {"toy-llama": 3} and controller.skips == {"toy-llama": ["no baseline"]}
