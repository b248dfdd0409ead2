"""A model wider than one GPU (issue 25, item 2): ``--device-map`` loads it through accelerate over several devices,
and every intervention gives the plain model's numbers, each value moved to the device of the module that uses it.

Two placements, both through the loader's own ``device_map`` route (``load_model``, what ``--device-map`` feeds):
- layers on two GPUs, interleaved (cuda:0, cuda:1, cuda:1, cuda:0; the norm on cuda:1, the head on cuda:0), on two
  simulated GPUs (mechbench.testing.device: CPU numerics, and a tensor of one GPU mixed with one of another fails
  there as on real GPUs), so a value left on the input's device, or a cache kept on one device, fails the test;
- part of the model offloaded to disk on the CPU (its weights on ``meta`` until accelerate's hooks bring them in).
"""

import json

import pytest
import torch

from mechbench.api import get_model
from mechbench.circuits import Circuit, HeadGroup
from mechbench.data.counterfactuals import desiderata_pairs, noise_pairs
from mechbench.data.dataset import build_dataset
from mechbench.errors import MechbenchError
from mechbench.intervene import HeadPatch, Read, capture_prefix, run
from mechbench.methods.ablation import circuit_correct, position_means
from mechbench.methods.cmap import cmap_correct, input_cmap_correct
from mechbench.methods.dcm import train_dcm_groups
from mechbench.methods.knockout import knockout_curve_correct
from mechbench.methods.path_patching import Receivers, path_patching_scores
from mechbench.models.devices import read_device_map
from mechbench.models.loading import load_model
from mechbench.testing import SimulatedDeviceError, simulated_gpu
from mechbench.validate import device_map as validate_device_map

pytest.importorskip("accelerate")

TWO_GPUS = {
    "model.embed_tokens": 0,
    "model.rotary_emb": 0,
    "model.layers.0": 0,
    "model.layers.1": 1,
    "model.layers.2": 1,
    "model.layers.3": 0,
    "model.norm": 1,
    "lm_head": 0,
}
GROUP = HeadGroup("value_fetcher", "last", ((2, 0), (2, 5), (2, 6)))
CIRCUIT = Circuit("toy", {"value_fetcher": GROUP, "pos_transmitter": HeadGroup("pos_transmitter", "last", ((1, 2),))})
DCM_OPTIONS = {"epochs": 2, "batch_size": 16, "validate_every": 1, "seed": 0}


def measure(base, donor) -> dict:
    """Every method's numbers on ``base`` (and ``donor``, CMAP's other model), on the host."""
    ids = build_dataset(base.tokenizer, 14, seed=0).input_ids
    other = build_dataset(base.tokenizer, 14, seed=1).input_ids
    plain = run(base.model, ids, read=Read(layers=(0, 2)))
    source = run(base.model, other, read=Read(layers=(1, 2)))
    last = torch.full((len(ids), 1), ids.shape[1] - 1)
    patches = [HeadPatch(l, torch.tensor([0, 3]), last, source.reads[l][:, -1:, [0, 3]]) for l in (1, 2)]
    prefix = capture_prefix(base.model, ids)
    dataset = build_dataset(base.tokenizer, 28, seed=0)
    pairs = noise_pairs(base.tokenizer, n_examples=6, seed=2)
    dcm_pairs = [desiderata_pairs(base.tokenizer, "object_value", n, seed=s) for n, s in ((32, 0), (16, 1), (16, 2))]
    dcm = train_dcm_groups(base.model, [GROUP], *dcm_pairs, **DCM_OPTIONS)[0]
    means = position_means(base.model, dataset)
    return {
        "logits": plain.last_logits,
        "reads": plain.reads[2].cpu(),
        "patched": run(base.model, ids, patches).last_logits,
        "fast": run(base.model, ids, patches, prefix=prefix).last_logits,
        "fast_from_host": run(base.model, ids, patches, prefix=prefix.to("cpu")).last_logits,
        "cmap": cmap_correct(base, donor, [GROUP], dataset),
        "input_cmap": input_cmap_correct(base, donor, [GROUP], dataset)[("value_fetcher", "QKV")],
        "dcm_mask": dcm.mask.detach().cpu(),
        "path_patching": path_patching_scores(base, pairs, "last"),
        "path_patching_receivers": path_patching_scores(
            base, pairs, "query_label", Receivers(GROUP.heads, "v", "last")
        ),
        "knockout": torch.stack(
            list(knockout_curve_correct(base.model, dataset, "last->query_label", [0, 2]).values())
        ),
        "circuit": circuit_correct(base.model, CIRCUIT, dataset, means.cpu()),
    }


@pytest.fixture(scope="module")
def plain_numbers():
    return measure(get_model("toy-llama"), get_model("toy-goat"))


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        # exact where the computation is the same; the fast path and path patching recompute in another order
        tol = {"rtol": 1e-5, "atol": 1e-5} if name.startswith(("fast", "path", "dcm")) else {"rtol": 0, "atol": 0}
        torch.testing.assert_close(got[name].cpu(), want[name], **tol, msg=lambda m, name=name: f"{name}: {m}")


def test_layers_on_two_gpus_give_the_plain_models_numbers(plain_numbers, tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps(TWO_GPUS))
    with simulated_gpu(4, count=2):
        assert validate_device_map(str(path)) == TWO_GPUS
        base = load_model("toy-llama", device="cuda", device_map=str(path))
        donor = load_model("toy-goat", device="cuda", device_map=str(path))  # a LoRA fine-tune: adapters placed too
        layers = base.model.model.layers
        assert [layers[i].self_attn.q_proj.weight.device.index for i in range(4)] == [0, 1, 1, 0]
        assert base.device == torch.device("cuda", 0)
        assert_same(measure(base, donor), plain_numbers)


def test_a_value_left_on_the_wrong_gpu_fails_as_on_real_gpus():
    with simulated_gpu(4, count=2):
        a, b = torch.ones(3, device="cuda:0"), torch.ones(3).to(1)
        assert b.device == torch.device("cuda", 1) and (a + b.to(a.device)).device == a.device
        with pytest.raises(SimulatedDeviceError, match="cuda:0 with one on cuda:1"):
            a + b
        with pytest.raises(SimulatedDeviceError, match="cuda:2 does not exist"):
            torch.zeros(2, device="cuda:2")


def test_part_of_the_model_offloaded_to_disk_gives_the_plain_models_numbers(plain_numbers, tmp_path):
    offloaded = {**{k: "cpu" for k in TWO_GPUS}, "model.layers.1": "disk", "model.layers.2": "disk"}
    base = load_model("toy-llama", device_map=offloaded)
    donor = get_model("toy-goat")  # CMAP's other model, plain: one model offloaded, the other not
    assert base.model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"  # brought in at run time
    # the offloaded weights are fingerprinted as the same weights loaded whole (results rows key by it)
    assert base.fingerprint == get_model("toy-llama").fingerprint
    assert_same(measure(base, donor), plain_numbers)


@pytest.mark.parametrize(
    "value, message",
    [
        ("everywhere", "neither one of accelerate's placements nor a file"),
        ({"model.layers.0": "gpu0"}, "is not a device"),
        ({"model.layers.0": -1}, "is not a device"),
    ],
)
def test_a_wrong_device_map_names_what_is_accepted(value, message):
    with pytest.raises(MechbenchError, match=message) as e:
        read_device_map(value)
    assert "--device-map takes auto" in str(e.value)


def test_a_device_map_file_is_checked_before_any_model_loads(tmp_path):
    bad, gpu = tmp_path / "bad.json", tmp_path / "gpu.json"
    bad.write_text("{not json")
    gpu.write_text(json.dumps({"model": 0}))
    with pytest.raises(MechbenchError, match="not a JSON file"):
        validate_device_map(str(bad))
    with pytest.raises(MechbenchError, match="this machine has 0 CUDA device"):  # a CPU machine
        validate_device_map(str(gpu))
    assert validate_device_map("auto") == "auto" and validate_device_map(None) is None


def test_an_adapter_over_an_offloaded_base_is_refused_with_the_fix():
    with pytest.raises(MechbenchError, match="merge the adapter into a full checkpoint"):
        load_model("toy-goat", device_map={**{k: "cpu" for k in TWO_GPUS}, "model.layers.3": "disk"})


def test_the_suites_under_device_map_give_the_numbers_of_a_plain_run(tmp_path):
    """--device-map through the plugin (Settings, the claims' loader): the same measurements with two of
    toy-llama's layers offloaded to disk as without."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    offloaded = tmp_path / "map.json"
    offloaded.write_text(
        json.dumps({**{k: "cpu" for k in TWO_GPUS}, "model.layers.1": "disk", "model.layers.2": "disk"})
    )
    numbers = []
    for name, extra in (("plain", []), ("offloaded", [f"--device-map={offloaded}"])):
        results = tmp_path / name
        done = subprocess.run(
            [sys.executable, "-m", "pytest", str(root / "suites"), "--model=toy-llama", "--claim=accuracy,attention_knockout",
             "--limit=70", f"--results-dir={results}", "-p", "no:cacheprovider", "-q", *extra],
            cwd=root, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        rows = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
        numbers.append({(r["claim"], r.get("edge"), r.get("layer"), r.get("check")): r["value"] for r in rows})
    assert numbers[0] == numbers[1] and len(numbers[0]) > 20
