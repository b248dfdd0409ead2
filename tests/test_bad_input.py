"""Every wrong input a user can type, in one table: each ends in a clear message that names the input and the
fix, before any model loads, with no traceback. Add a row for every new report.

- ``OPTIONS``: pytest options, checked by the plugin's ``pytest_configure`` (a usage error, exit code 4);
- ``COMMANDS``: the ``mechbench`` command line (exit code 2, the message on stderr);
- the loader and the tokenizer checks below the tables.
"""

import json
import types

import pytest

from mechbench import pytest_plugin as conftest
from mechbench.cli import main
from mechbench.errors import MechbenchError, ModelLoadError, TokenizationError
from tests.helpers import save_random_llama

DEFAULTS = {"--model": None, "--base-model": None, "--baseline-model": None, "--circuit": None, "--device": "cpu",
            "--dtype": "float32", "--limit": None, "--seed": 0, "--baselines-dir": str(conftest.ROOT / "baselines"),
            "--update-baselines": False, "--results-dir": None, "--require-models": False, "--allow-pickle": False,
            "--paper-compat-o-proj": False, "--compare": False, "--quick": False, "--reference": None,
            "--force-baselines": False, "--bos": "auto", "--drop-multi-token": False, "--batch-size": "auto"}


def configure(tmp_path, **options):
    values = dict(DEFAULTS, **{"--results-dir": str(tmp_path / "results")})
    values.update({"--" + k.replace("_", "-"): v for k, v in options.items()})
    config = types.SimpleNamespace(getoption=lambda name: values[name], addinivalue_line=lambda name, line: None)
    conftest.pytest_configure(config)
    return config._mechbench


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
    (tmp_path / "c.json").write_text(json.dumps({"name": "c", "groups": {"value_fetcher": {"role": "last", "heads": [[1]]}}}))
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


@pytest.mark.parametrize("shape, message", [
    (dict(n_layers=3, n_heads=4, head_dim=8), "it adapts layer 2, but the base has 2 layers"),
    (dict(n_layers=2, n_heads=4, head_dim=16), "takes width 64, the base's takes 32"),
])
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


@pytest.mark.parametrize("vocab, message", [
    ({"the": 1, "fig": 2, "pot": 0}, "map to the unknown token"),
    ({"the": 1, "fig": 2, "pot": 2}, "share a token id"),
])
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
