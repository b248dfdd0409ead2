"""A model accelerate offloads (its weights on ``meta`` until each module's hook brings them in at run time, as a
``device_map`` with CPU or disk offload leaves a model wider than its GPU): the engine and the methods give the
plain model's numbers. The inputs go where the embedding computes (mechbench.models.devices.input_device), never to
the device of the model's first parameter, which is ``meta`` here."""

import copy
import dataclasses

import pytest
import torch

from mechbench.api import get_model
from mechbench.circuits import HeadGroup
from mechbench.data.counterfactuals import desiderata_pairs
from mechbench.data.dataset import build_dataset
from mechbench.intervene import HeadPatch, Read, capture_prefix, input_device, run
from mechbench.methods.cmap import cmap_correct, input_cmap_correct
from mechbench.methods.dcm import train_dcm_groups

accelerate = pytest.importorskip("accelerate")


@pytest.fixture(scope="module")
def models():
    plain = get_model("toy-llama")
    offloaded = copy.deepcopy(plain.model)
    accelerate.cpu_offload(offloaded, execution_device=torch.device("cpu"))
    assert next(offloaded.parameters()).device.type == "meta"  # what the test is about
    return plain, dataclasses.replace(plain, model=offloaded)


def test_runs_reads_patches_and_the_prefix_fast_path_are_the_plain_models(models):
    plain, offloaded = models
    assert input_device(offloaded.model) == torch.device("cpu") and offloaded.device == torch.device("cpu")
    ids = build_dataset(plain.tokenizer, 14, seed=0).input_ids
    other = build_dataset(plain.tokenizer, 14, seed=1).input_ids
    a, b = (run(m.model, ids, read=Read(layers=(0, 2))) for m in (plain, offloaded))
    torch.testing.assert_close(a.last_logits, b.last_logits, rtol=0, atol=0)
    torch.testing.assert_close(a.reads[2], b.reads[2], rtol=0, atol=0)
    source = run(plain.model, other, read=Read(layers=(1,)))
    last = torch.full((len(ids), 1), ids.shape[1] - 1)
    patch = [HeadPatch(1, torch.tensor([0, 3]), last, source.reads[1][:, -1:, [0, 3]])]
    patched = [run(m.model, ids, patch).last_logits for m in (plain, offloaded)]
    torch.testing.assert_close(patched[0], patched[1], rtol=0, atol=0)
    assert not torch.equal(patched[0], a.last_logits)  # the patch did something
    fast = run(offloaded.model, ids, patch, prefix=capture_prefix(offloaded.model, ids)).last_logits
    torch.testing.assert_close(fast, patched[0], rtol=1e-5, atol=1e-5)


def test_cmap_input_cmap_and_dcm_are_the_plain_models(models):
    plain, offloaded = models
    donor = get_model("toy-goat")
    group = HeadGroup("value_fetcher", "last", ((2, 0), (2, 5), (2, 6)))
    dataset = build_dataset(plain.tokenizer, 28, seed=0)
    assert torch.equal(cmap_correct(plain, donor, [group], dataset), cmap_correct(offloaded, donor, [group], dataset))
    ins = [input_cmap_correct(m, donor, [group], dataset) for m in (plain, offloaded)]
    assert ins[0].keys() == ins[1].keys() and all(torch.equal(ins[0][k], ins[1][k]) for k in ins[0])
    pairs = [desiderata_pairs(plain.tokenizer, "object_value", n, seed=s) for n, s in ((32, 0), (16, 1), (16, 2))]
    options = {"epochs": 1, "batch_size": 16, "validate_every": 1, "seed": 0}
    masks = [train_dcm_groups(m.model, [group], *pairs, **options)[0] for m in (plain, offloaded)]
    assert masks[0].heads == masks[1].heads and masks[0].test_accuracy == pytest.approx(masks[1].test_accuracy)
