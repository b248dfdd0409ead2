"""The simulated CUDA device (mechbench.testing.device): it reports what a GPU run would, refuses what a GPU would
refuse or punish (naming the call site), counts memory as a GPU of its size would, and gives the CPU's numbers."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mechbench.intervene import HeadPatch, Knockout, Read, capture_prefix, run, run_frozen_attention
from mechbench.testing import SimulatedDeviceError, active, simulated_gpu
from tests.helpers import random_llama

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024**2


@pytest.fixture
def gpu():
    with simulated_gpu(1) as g:  # 1 GiB: small enough to run out of
        yield g


def line_of(marker: str) -> int:
    """The line of this file holding ``marker`` (where a violation must be reported)."""
    lines = Path(__file__).read_text().splitlines()
    return next(i + 1 for i, line in enumerate(lines) if marker in line and "line_of(" not in line)


def test_torch_cuda_answers_as_one_gpu_of_the_chosen_size(gpu):
    assert torch.cuda.is_available() and torch.cuda.device_count() == 1
    assert torch.cuda.get_device_properties(0).total_memory == 1024**3
    free, total = torch.cuda.mem_get_info()
    assert total == 1024**3 and free == total - torch.cuda.memory_allocated()
    assert "simulated" in torch.cuda.get_device_name(0)
    with pytest.raises(SimulatedDeviceError, match="cuda:0 only"):
        torch.cuda.mem_get_info(1)


def test_a_moved_tensor_reports_the_device_and_keeps_its_values(gpu):
    x = torch.randn(3, 4)
    y = x.to("cuda")
    assert y.device == torch.device("cuda", 0) and y.is_cuda and not y.is_cpu
    assert torch.equal(y.cpu(), x) and y.cpu().device.type == "cpu"
    z = (y * 2).sum(0)  # results of device tensors stay on the device
    assert z.device.type == "cuda" and torch.equal(z.cpu(), (x * 2).sum(0))
    assert torch.zeros(2, device="cuda").is_cuda and torch.arange(3, device=y.device).is_cuda
    assert y.new_zeros(2).is_cuda and not y.new_zeros(2, device="cpu").is_cuda
    assert y.to("cuda") is y  # a move to the side a tensor is on is no copy, as in torch
    y.cpu().add_(1)  # a move to the other side is a copy (new memory), as on a GPU
    assert torch.equal(y.cpu(), x)


def test_mixing_a_host_tensor_into_a_device_op_fails_naming_the_call_site(gpu):
    y = torch.randn(3, 4, device="cuda")
    with pytest.raises(SimulatedDeviceError) as e:
        y + torch.randn(3, 4)  # MIXED
    assert f"test_simulated_gpu.py:{line_of('# MIXED')}" in str(e.value) and "same device" in str(e.value)
    with pytest.raises(SimulatedDeviceError, match="cpu tensor"):  # an index made without device=
        y[torch.tensor([0, 1])]
    assert (y + torch.tensor(2.0)).is_cuda  # a 0-dim host scalar is fine, as on a GPU
    assert y[torch.tensor([0, 1], device="cuda")].shape == (2, 4)


def test_host_conversions_of_device_tensors_fail(gpu):
    y = torch.randn(3, device="cuda")
    with pytest.raises(SimulatedDeviceError, match=r"\.numpy\(\)"):
        y.numpy()
    with pytest.raises(SimulatedDeviceError, match=r"np.asarray"):
        np.asarray(y)
    with pytest.raises(SimulatedDeviceError, match=r"\.tolist\(\).*host sync") as e:
        y.tolist()  # TOLIST
    assert f"test_simulated_gpu.py:{line_of('# TOLIST')}" in str(e.value)
    assert isinstance(y.sum().item(), float)  # one scalar: allowed
    assert y.cpu().numpy().shape == (3,) and len(y.cpu().tolist()) == 3


def test_allocated_bytes_are_the_storages_alive_on_the_device(gpu):
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    x = torch.zeros(4 * MIB // 4, device="cuda")  # 4 MiB of float32
    assert torch.cuda.memory_allocated() == base + 4 * MIB
    views = [x[:10], x.view(2, -1), x.reshape(-1)]  # views share the storage: counted once
    assert torch.cuda.memory_allocated() == base + 4 * MIB
    y = x + 1
    assert torch.cuda.memory_allocated() == base + 8 * MIB
    del x, views, y
    assert torch.cuda.memory_allocated() == base
    assert torch.cuda.max_memory_allocated() == base + 8 * MIB
    torch.cuda.reset_peak_memory_stats()
    assert torch.cuda.max_memory_allocated() == base
    cpu = torch.zeros(4 * MIB // 4)  # host memory is not device memory
    assert torch.cuda.memory_allocated() == base and cpu.numel()
    torch.cuda.empty_cache()
    assert gpu.empty_cache_calls == 1


def test_an_allocation_beyond_the_size_is_cudas_out_of_memory(gpu):
    keep = torch.zeros(600 * MIB // 4, device="cuda")
    with pytest.raises(torch.OutOfMemoryError, match="CUDA out of memory.*1.00 GiB"):
        keep + 1
    assert torch.cuda.memory_allocated() >= 600 * MIB  # the failed allocation is not counted


def test_module_to_keeps_parameters_and_autograd_and_adam_run_on_the_device(gpu):
    layer = torch.nn.Linear(4, 2)
    weight = layer.weight
    optimizer_before = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer.to("cuda")
    assert layer.weight is weight and weight.is_cuda and isinstance(weight, torch.nn.Parameter)
    x = torch.randn(5, 4, device="cuda")
    layer(x).sum().backward()
    assert weight.grad.is_cuda
    optimizer_before.step()  # an optimizer made before the move still holds the (moved) parameters
    mask = torch.ones(3, device="cuda", requires_grad=True)  # a leaf, as DCM's masks
    adam = torch.optim.Adam([mask], lr=0.1)
    (mask * torch.arange(3.0, device="cuda")).sum().backward()
    adam.step()
    assert mask.is_leaf and mask.is_cuda and mask.grad.is_cuda


def test_a_model_left_partly_on_the_host_fails_at_its_first_forward(gpu):
    model = random_llama(n_layers=2, n_heads=2, head_dim=4, vocab_size=20)
    model.to("cuda")
    model.model.layers[1].mlp.to("cpu")
    with pytest.raises(SimulatedDeviceError, match="cpu tensor"):
        run(model, torch.randint(0, 20, (2, 5)))


def test_a_lora_adapter_left_on_the_host_fails(gpu):
    from peft import LoraConfig, get_peft_model

    model = random_llama(n_layers=2, n_heads=2, head_dim=4, vocab_size=20)
    model.to("cuda")
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.get_base_model().model.layers[0].self_attn.q_proj.lora_A.to("cpu")
    with pytest.raises(SimulatedDeviceError, match="cpu tensor"):
        run(peft.get_base_model(), torch.randint(0, 20, (2, 5)))


def test_the_engine_gives_the_cpu_numbers_on_the_simulated_device():
    """Patches, reads, knockouts, the prefix fast path with gradients and frozen attention: the same numbers on
    the simulated device as on the CPU (the same CPU kernels run), and every result on the device or the host as a
    GPU run would place it."""
    model = random_llama(n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, vocab_size=50, seed=3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (4, 9), generator=g)
    patch = HeadPatch(1, [0, 2], torch.tensor([[3], [4], [5], [8]]), torch.randn(4, 1, 2, 8, generator=g), 0.5)
    knock = Knockout(2, torch.full((4,), 8), torch.tensor([[1], [2], [3], [4]]))
    read = Read([0, 2], torch.tensor([[8]] * 4))
    hidden, values = torch.randn(4, 32, generator=g), {l: torch.randn(4, 4, 8, generator=g) for l in (1, 2)}

    def everything(m):
        plain = run(m, ids)
        patched = run(m, ids, [patch], read, [knock])
        prefix = capture_prefix(m, ids)
        alpha = torch.full((2,), 0.5, device=next(m.parameters()).device, requires_grad=True)
        fast = run(m, ids, [HeadPatch(1, [0, 2], patch.positions, patch.values, alpha)], grad=True, prefix=prefix)
        fast.last_logits.sum().backward()
        frozen = run_frozen_attention(m, hidden.to(next(m.parameters()).device), torch.full((4,), 8), values)
        return [
            plain.last_logits,
            patched.last_logits,
            *patched.reads.values(),
            fast.last_logits.detach().cpu(),
            alpha.grad.cpu(),
            frozen.last_logits,
        ]

    on_cpu = everything(model)
    with simulated_gpu(80):
        model.to("cuda")
        on_gpu = everything(model)
        assert all(not t.is_cuda for t in on_gpu)  # logits and reads come back to the host, as documented
    for a, b in zip(on_cpu, on_gpu):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_turning_it_off_restores_torch():
    with simulated_gpu(8):
        pass
    assert not torch.cuda.is_available() and active() is None
    with pytest.raises((RuntimeError, AssertionError)):  # torch's "not compiled with CUDA" / "no CUDA device"
        torch.zeros(1, device="cuda")


def _run_python(code: str, gib: str = "16") -> subprocess.CompletedProcess:
    env = {**os.environ, "MECHBENCH_SIMULATED_GPU_GIB": gib}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_the_environment_variable_turns_it_on_and_says_so_first():
    out = _run_python("import mechbench, torch; print(torch.cuda.is_available(), torch.cuda.mem_get_info()[1])")
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines()[0].startswith("mechbench: SIMULATED GPU (MECHBENCH_SIMULATED_GPU_GIB=16)")
    assert out.stdout.split() == ["True", str(16 * 1024**3)]


def test_a_bad_size_is_a_clear_error_not_a_traceback():
    out = _run_python("import mechbench", gib="eighty")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "MECHBENCH_SIMULATED_GPU_GIB='eighty'" in out.stderr and "e.g." in out.stderr


def test_every_results_row_says_it_was_simulated(tmp_path, gpu):
    from mechbench.results import ResultsWriter

    row = ResultsWriter(tmp_path).write("accuracy", {"model": "m"}, 0.5)
    assert row["meta"]["device"] == {"simulated": True, "gib": 1.0, "name": gpu.name}
    assert ResultsWriter(tmp_path).read()[0]["meta"]["device"]["simulated"] is True


def test_batch_size_auto_fits_a_simulated_80_and_24_gib_gpu_at_7b_shapes():
    """The plan only (no 7B weights): the batch --batch-size auto picks from the simulated GPU's free memory."""
    from mechbench import plan
    from mechbench.errors import MechbenchError

    with simulated_gpu(80):
        batch = plan.resolve_batch_size("auto", "cuda", "float32", ["goat7b", "llama7b"], notes := [])
        assert batch == 100 and not notes
        assert all(p.fits(80 * plan.GIB) for p in plan.plan("goat7b", "float32", batch))
    with simulated_gpu(24):
        notes = []
        batch = plan.resolve_batch_size("auto", "cuda", "bfloat16", ["goat7b"], notes)
        two_models = ("cmap", "input_cmap")  # two 7B models never fit 24 GB
        assert all(p.fits(24 * plan.GIB) for p in plan.plan("goat7b", "bfloat16", batch) if p.claim not in two_models)
        for claim in two_models:
            assert any(f"{claim} needs" in n and f"-k 'not {claim}'" in n for n in notes)
        with pytest.raises(MechbenchError, match="--dtype bfloat16"):  # float32 weights alone are 25 GiB
            plan.resolve_batch_size("auto", "cuda", "float32", ["goat7b"])


def test_running_out_of_memory_fails_the_claim_with_the_fix_and_auto_fits(tmp_path):
    def accuracy(batch):
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            str(ROOT / "suites/test_accuracy.py"),
            "--model=toy-llama",
            "--device=cuda",
            f"--batch-size={batch}",
            f"--results-dir={tmp_path}",
            "-q",
            "-p",
            "no:cacheprovider",
        ]
        env = {**os.environ, "MECHBENCH_SIMULATED_GPU_GIB": "0.012"}  # 12 MiB: the toy's weights and a small batch
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    tight = accuracy(50)
    assert tight.returncode == 1 and "out of memory on cuda at batch 50" in tight.stdout, tight.stdout[-2000:]
    assert "--batch-size" in tight.stdout and "Traceback" not in tight.stdout
    assert accuracy("auto").returncode == 0
