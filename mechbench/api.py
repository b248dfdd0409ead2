"""What a notebook touches: load a model once, build a dataset, measure accuracy."""

from __future__ import annotations

from mechbench.data.dataset import EntityTrackingDataset, build_dataset
from mechbench.evaluate import accuracy_on
from mechbench.models.loading import ModelHandle, load_model

_LOADED: dict[tuple, ModelHandle] = {}


def get_model(model: str | ModelHandle, device: str = "cpu", dtype: str = "float32", **kwargs) -> ModelHandle:
    """A handle for ``model``; names are loaded once per process and reused."""
    if isinstance(model, ModelHandle):
        return model
    key = (model, str(device), str(dtype), tuple(sorted(kwargs.items())))
    if key not in _LOADED:
        _LOADED[key] = load_model(model, device=device, dtype=dtype, **kwargs)
    return _LOADED[key]


def dataset_for(model: str | ModelHandle, n_examples: int = 500, seed: int = 0, num_boxes: int = 7,
                **kwargs) -> EntityTrackingDataset:
    """The entity-tracking dataset tokenized for ``model``'s tokenizer."""
    return build_dataset(get_model(model).tokenizer, n_examples=n_examples, num_boxes=num_boxes, seed=seed, **kwargs)


def accuracy(model: str | ModelHandle, n_examples: int = 500, seed: int = 0, num_boxes: int = 7,
             batch_size: int = 50, device: str = "cpu", dtype: str = "float32", **load_options) -> float:
    """Top-1 accuracy on ``n_examples`` seeded entity-tracking prompts (the paper: 500, 7 boxes); ``load_options``
    go to the loader (``allow_pickle``, ``bos``)."""
    handle = get_model(model, device=device, dtype=dtype, **load_options)
    dataset = build_dataset(handle.tokenizer, n_examples=n_examples, num_boxes=num_boxes, seed=seed)
    return accuracy_on(handle, dataset, batch_size=batch_size)
