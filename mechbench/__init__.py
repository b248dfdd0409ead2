"""mechbench: the claims of "Fine-Tuning Enhances Existing Mechanisms" (Prakash et al., ICLR 2024) as a
benchmark and regression suite.

The pipeline, one way through: ``data`` (prompts, counterfactuals) -> ``models`` (registry, loading) ->
methods -> claims (``mechbench/claims``: one spec module per claim, run by pytest as ``suites/``) -> results and
baselines.
"""

# MECHBENCH_SIMULATED_GPU_GIB=<size> turns on the simulated CUDA device before anything else touches torch.cuda
from mechbench.testing.device import activate_from_environment as _simulate_if_asked

_simulate_if_asked()

from mechbench.api import accuracy, dataset_for, get_model
from mechbench.data.counterfactuals import DESIDERATA, CounterfactualDataset, desiderata_pairs, noise_pairs
from mechbench.data.dataset import EntityTrackingDataset, build_dataset
from mechbench.data.prompts import Context, Example, Template, paper_objects
from mechbench.errors import MechbenchError
from mechbench.models import ModelHandle, load_model, resolve

__all__ = [
    "accuracy",
    "build_dataset",
    "dataset_for",
    "desiderata_pairs",
    "get_model",
    "load_model",
    "noise_pairs",
    "resolve",
    "paper_objects",
    "Context",
    "CounterfactualDataset",
    "DESIDERATA",
    "EntityTrackingDataset",
    "Example",
    "MechbenchError",
    "ModelHandle",
    "Template",
]
