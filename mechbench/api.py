"""What a notebook touches: load a model once, build a dataset, measure accuracy."""

from __future__ import annotations

from mechbench.data.dataset import EntityTrackingDataset, build_dataset
from mechbench.evaluate import accuracy_on
from mechbench.models.loading import ModelHandle, load_model

_LOADED: dict[tuple, ModelHandle] = {}


def get_model(model: str | ModelHandle, device: str = "cpu", dtype: str = "float32", keep=(), **kwargs) -> ModelHandle:
    """A handle for ``model``; names are loaded once per process and reused. On an accelerator, the other models
    loaded on it are let go first, except those named in ``keep`` (a claim that holds two models at once, as
    CMAP does): a 7B model takes 27 GB in float32, so a session over several models must not pile them up."""
    if isinstance(model, ModelHandle):
        return model
    # a device map given as a dict (not a name or file) keys by its JSON
    key = (model, str(device), str(dtype), tuple(sorted((k, _hashable(v)) for k, v in kwargs.items())))
    if str(device) != "cpu":  # on every call, not only on a new load: a fine-tune's base that CMAP loaded beside it
        release(device, keep=(model, *keep))  # stays no longer than the tests that name it (the rehearsal found
        # toy-llama still resident through toy-goat's later claims: at 7B, 27 GB beyond the plan)
    if key not in _LOADED:
        _LOADED[key] = load_model(model, device=device, dtype=dtype, **kwargs)
    return _LOADED[key]


def _hashable(value):
    import json

    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value


def release(device: str, keep=()) -> list[str]:
    """Forget the models loaded on ``device`` other than those named in ``keep`` and return the device's cached
    memory; returns the names let go. (A caller still holding a handle keeps that model alive.)"""
    import gc

    import torch

    gone = [k for k in _LOADED if k[1] == str(device) and k[0] not in keep]
    for k in gone:
        del _LOADED[k]
    if gone:
        gc.collect()
        if str(device).startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()
    return [k[0] for k in gone]


def dataset_for(
    model: str | ModelHandle, n_examples: int = 500, seed: int = 0, num_boxes: int = 7, **kwargs
) -> EntityTrackingDataset:
    """The entity-tracking dataset tokenized for ``model``'s tokenizer."""
    return build_dataset(get_model(model).tokenizer, n_examples=n_examples, num_boxes=num_boxes, seed=seed, **kwargs)


def accuracy(
    model: str | ModelHandle,
    n_examples: int = 500,
    seed: int = 0,
    num_boxes: int = 7,
    batch_size: int = 50,
    device: str = "cpu",
    dtype: str = "float32",
    **load_options,
) -> float:
    """Top-1 accuracy on ``n_examples`` seeded entity-tracking prompts (the paper: 500, 7 boxes); ``load_options``
    go to the loader (``allow_pickle``, ``bos``)."""
    handle = get_model(model, device=device, dtype=dtype, **load_options)
    dataset = build_dataset(handle.tokenizer, n_examples=n_examples, num_boxes=num_boxes, seed=seed)
    return accuracy_on(handle, dataset, batch_size=batch_size)


def accuracy_check(
    model: str | ModelHandle,
    n_examples: int = 500,
    seed: int = 0,
    num_boxes: int = 7,
    batch_size: int = 50,
    device: str = "cpu",
    dtype: str = "float32",
    **load_options,
):
    """:func:`accuracy` with the chance guard's verdict (a :class:`mechbench.stats.ChanceCheck`: its ``accuracy``,
    ``chance`` = 1/``num_boxes``, ``passed``, ``below``), on the same prompts: whether the accuracy is above chance
    by 3 cluster-robust standard errors, as every circuit claim requires of a model."""
    from mechbench.evaluate import correct_on
    from mechbench.stats import chance_check

    handle = get_model(model, device=device, dtype=dtype, **load_options)
    dataset = build_dataset(handle.tokenizer, n_examples=n_examples, num_boxes=num_boxes, seed=seed)
    correct = correct_on(handle, dataset, batch_size=batch_size)
    return chance_check(correct.float().numpy(), dataset.clusters().numpy(), dataset.num_boxes)
