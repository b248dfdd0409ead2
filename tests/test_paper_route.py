"""The paper route end to end, offline: ``pytest suites/ --model=llama7b,vicuna7b,goat7b,float7b --allow-pickle`` through
the code a user's first run takes (hub ids resolved in a Hugging Face cache, sharded safetensors with an index,
pickled ``.bin`` shards behind --allow-pickle, the LLaMA SentencePiece tokenizer, Goat as a hub LoRA adapter through
peft, the paper's 32 x 32 circuit head indices, the published records), on stand-ins: random Llamas of LLaMA-7B's
layout (32 layers x 32 heads, the 32,000-piece tokenizer) at a small width, laid out under the paper's repository ids
as those repositories are. The stand-ins do not do the task, so every circuit claim must end at the chance guard
naming the model and the fix, and nothing may crash. Also under the simulated GPU.

Build such a cache by hand (say, to rehearse a GPU run's loading on a laptop):

    python -m tests.test_paper_route hub-cache     # then HF_HUB_CACHE=hub-cache HF_HUB_OFFLINE=1 pytest ...

The layouts, as the hub repositories ship them (checked against their file lists when the paper's code was read,
docs/paper.md §2; not re-checked here, where no hub is reachable): ``huggyllama/llama-7b`` sharded safetensors with
``model.safetensors.index.json`` beside pickled ``.bin`` shards (a loader must pick the safetensors without being
allowed pickles) and the SentencePiece tokenizer; ``AlekseyKorshuk/vicuna-7b`` 14 pickled ``.bin`` shards with
``pytorch_model.bin.index.json``; ``tiedong/goat-lora-7b`` ``adapter_config.json`` (r 64, alpha 64, q/k/v/o) and a
pickled ``adapter_model.bin``, no tokenizer; ``nikhil07prakash/float-7b`` pickled ``.bin`` shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "tests/data/llama-tokenizer"
#: LLaMA-7B's layout at a small width: 32 layers x 32 heads (the paper's circuit indices fit), head_dim 4.
STANDIN = dict(
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    hidden_size=128,
    intermediate_size=344,
    vocab_size=32000,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)
REPOS = {
    "llama": "huggyllama/llama-7b",
    "vicuna": "AlekseyKorshuk/vicuna-7b",
    "goat": "tiedong/goat-lora-7b",
    "float": "nikhil07prakash/float-7b",
}
PAPER_MODELS = "llama7b,vicuna7b,goat7b,float7b"


def _snapshot(cache: Path, repo: str) -> Path:
    """The directory a hub download of ``repo`` lands in (``models--org--name/snapshots/<commit>``, refs/main)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def _bin_shards(state: dict, directory: Path, n: int) -> None:
    """Pickled ``pytorch_model-0000i-of-0000n.bin`` shards with their index, as older repositories ship."""
    names = list(state)
    weight_map, total = {}, 0
    for i in range(n):
        shard = f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin"
        part = {k: state[k].contiguous() for k in names[i::n]}
        torch.save(part, directory / shard)
        weight_map.update({k: shard for k in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    (directory / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
    )


def _tokenizer_files(directory: Path, fast: bool = False) -> None:
    """The LLaMA tokenizer as the 2023 repositories ship it: the SentencePiece ``tokenizer.model`` with a
    ``tokenizer_config.json`` naming LlamaTokenizer and the special tokens (and, with ``fast``, the
    ``tokenizer.json`` huggyllama's repository adds)."""
    import shutil

    shutil.copy(TOKENIZER / "tokenizer.model", directory / "tokenizer.model")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "add_bos_token": True,
                "add_eos_token": False,
                "model_max_length": 2048,
                **special,
            },
            indent=1,
        )
    )
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
    if fast:
        from transformers import LlamaTokenizer

        LlamaTokenizer.from_pretrained(str(TOKENIZER), add_bos_token=True).backend_tokenizer.save(
            str(directory / "tokenizer.json")
        )


def build_hub_cache(cache: Path, seed: int = 0) -> Path:
    """Stand-ins for the paper's four models in a Hugging Face cache at ``cache`` (float16 weights, as released)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cache = Path(cache)
    torch.manual_seed(seed)
    config = LlamaConfig(**STANDIN, torch_dtype="float16")
    llama = LlamaForCausalLM(config).half().eval()
    state = {k: v.detach().clone() for k, v in llama.state_dict().items()}

    directory = _snapshot(cache, REPOS["llama"])  # safetensors shards + index, and .bin shards beside them
    llama.save_pretrained(directory, max_shard_size="10MB")
    assert (directory / "model.safetensors.index.json").is_file()
    _bin_shards(state, directory, 2)
    _tokenizer_files(directory, fast=True)

    g = torch.Generator().manual_seed(seed + 1)
    for name, shards in (("vicuna", 14), ("float", 3)):  # full-weight fine-tunes: the base's weights, moved a little
        directory = _snapshot(cache, REPOS[name])
        config.save_pretrained(directory)
        tuned = {k: (v.float() + 0.01 * torch.randn(v.shape, generator=g)).half() for k, v in state.items()}
        _bin_shards(tuned, directory, shards)
        _tokenizer_files(directory)

    directory = _snapshot(cache, REPOS["goat"])  # a LoRA adapter: its config and a pickled adapter_model.bin
    r, d = 64, STANDIN["hidden_size"]
    (directory / "adapter_config.json").write_text(
        json.dumps(
            {
                "base_model_name_or_path": "decapoda-research/llama-7b-hf",
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": r,
                "lora_alpha": 64,
                "lora_dropout": 0.05,
                "bias": "none",
                "fan_in_fan_out": False,
                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                "inference_mode": True,
            },
            indent=1,
        )
    )
    lora = {}
    for layer in range(STANDIN["num_hidden_layers"]):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            key = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            lora[f"{key}.lora_A.weight"] = (0.02 * torch.randn(r, d, generator=g)).half()
            lora[f"{key}.lora_B.weight"] = (0.02 * torch.randn(d, r, generator=g)).half()
    torch.save(lora, directory / "adapter_model.bin")
    return cache


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    if not (TOKENIZER / "tokenizer.model").is_file():
        pytest.skip("the LLaMA tokenizer.model is not here (tests/data/llama-tokenizer)")
    return build_hub_cache(tmp_path_factory.mktemp("hub"))


def _offline_env(cache: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MECHBENCH_MODEL_")}
    return {**env, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra}


def _suites(cache: Path, results: Path, *options: str, **env) -> tuple[subprocess.CompletedProcess, dict]:
    # --limit 40: every claim's code path at a tenth of the prompts (a run at full size took 3 minutes here; the
    # stand-ins stop at the chance guard either way)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(ROOT / "suites"),
        f"--model={PAPER_MODELS}",
        "--allow-pickle",
        "--limit=40",
        f"--results-dir={results}",
        "--junitxml",
        str(results / "junit.xml"),
        "-q",
        "-p",
        "no:cacheprovider",
        "-rA",
        *options,
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=_offline_env(cache, **env), capture_output=True, text=True, timeout=1500)
    outcomes = {}
    if (results / "junit.xml").is_file():
        for case in ET.parse(results / "junit.xml").getroot().iter("testcase"):
            kind = next(
                (
                    {"failure": "failed", "error": "error", "skipped": "skipped"}[c.tag]
                    for c in case
                    if c.tag in ("failure", "error", "skipped")
                ),
                "passed",
            )
            text = next(
                (
                    c.get("message", "") + "\n" + (c.text or "")
                    for c in case
                    if c.tag in ("failure", "error", "skipped")
                ),
                "",
            )
            outcomes[case.get("name")] = (kind, text)
    return done, outcomes


def _check_route(done, outcomes, results: Path) -> None:
    assert outcomes, done.stdout[-3000:] + done.stderr[-3000:]
    assert not [n for n, (kind, _) in outcomes.items() if kind == "error"], done.stdout[-3000:]
    for name, (kind, text) in outcomes.items():
        assert "Traceback" not in text and "site-packages" not in text, f"{name} crashed:\n{text[:3000]}"
        if kind == "failed" and not name.startswith("test_accuracy"):
            # a circuit claim on a model at chance: the guard's message names the model and what to check
            assert "does not do the task" in text and "no circuit claim applies" in text, f"{name}: {text[:2000]}"
            assert any(m in text for m in PAPER_MODELS.split(",")) and "mechbench accuracy" in text, text[:2000]
    for model in PAPER_MODELS.split(","):  # every model loaded and was measured, none skipped for want of weights
        assert any(f"[{model}" in n and kind == "failed" for n, (kind, _) in outcomes.items()), model
    rows = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    assert {r.get("model") for r in rows} >= set(PAPER_MODELS.split(","))
    assert any(r["claim"] == "accuracy" and r["model"] == "goat7b" for r in rows)
    from mechbench.report import write_report

    report = write_report(results / "results.jsonl", results).read_text()
    assert all(m in report for m in PAPER_MODELS.split(","))


def test_the_paper_route_loads_every_model_and_ends_each_claim_with_a_reason(hub_cache, tmp_path):
    done, outcomes = _suites(hub_cache, tmp_path, "--circuit=llama7b,goat7b")
    _check_route(done, outcomes, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    accuracy = {r["model"]: r for r in rows if r["claim"] == "accuracy" and "check" not in r}
    assert set(accuracy) == set(PAPER_MODELS.split(","))
    assert all(r["baseline"] is not None for r in accuracy.values())  # judged against the published records
    goat = next(r for r in rows if r.get("model") == "goat7b")
    assert goat["fingerprint"]["adapter"] == REPOS["goat"]  # the hub adapter, through peft


def test_the_paper_route_under_the_simulated_gpu(hub_cache, tmp_path):
    done, outcomes = _suites(hub_cache, tmp_path, "--device=cuda", MECHBENCH_SIMULATED_GPU_GIB="80")
    assert done.stdout.splitlines()[0].startswith("mechbench: SIMULATED GPU"), done.stdout[:500]
    _check_route(done, outcomes, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert all(r["meta"]["device"]["simulated"] for r in rows)


def test_pickled_weights_are_refused_without_allow_pickle(hub_cache, tmp_path):
    """Vicuna, FLoat and Goat's adapter ship only pickles: without --allow-pickle each is a skip that says so; Llama,
    whose repository has safetensors beside its pickles, loads from the safetensors."""
    cmd = [
        sys.executable,
        "-c",
        "import mechbench, sys\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        m = mechbench.load_model(name); print(name, 'loaded', m.shape.n_layers)\n"
        "    except mechbench.MechbenchError as e:\n"
        "        print(name, 'refused', e)\n",
        *PAPER_MODELS.split(","),
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=_offline_env(hub_cache), capture_output=True, text=True, timeout=600)
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.split()}
    assert lines["llama7b"].startswith("llama7b loaded 32"), done.stdout + done.stderr
    for name in ("vicuna7b", "float7b", "goat7b"):
        assert "refused" in lines[name] and "--allow-pickle" in lines[name], lines.get(name, done.stderr)


if __name__ == "__main__":
    print(build_hub_cache(Path(sys.argv[1] if len(sys.argv) > 1 else "hub-cache")))
