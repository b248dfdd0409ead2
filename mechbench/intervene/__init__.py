"""The intervention engine: runs a model while reading or overwriting per-head activations.

What a user touches is split from how it runs (as nnsight splits its envoy from its interleaver):

- :mod:`~mechbench.intervene.requests`: what a method states (:class:`HeadPatch`, :class:`Read`,
  :class:`Knockout`, one run's :class:`Interventions`) and what comes back (:class:`RunOutput`);
- :mod:`~mechbench.intervene.api`: the entry points (:func:`run`, :func:`run_many`);
- :mod:`~mechbench.intervene.prefix`: the clean-prefix fast path (:class:`Prefix`, :func:`capture_prefix`,
  :func:`capture_prefixes`);
- :mod:`~mechbench.intervene.frozen`: frozen attention (:func:`run_frozen_attention`);
- :mod:`~mechbench.intervene.hooks`: installing and removing the hooks on the sites (:func:`hooked`).

Where a family keeps its sites, its geometry, its LoRA module names and how its decoder layer is called is a model
fact: :mod:`mechbench.models.architectures`. The batch size a model runs at when a caller names none is set per
model (:func:`set_batch_size`, :func:`batch_size_of`: :mod:`mechbench.models.run_options`). Methods import only
the names below.
"""

from mechbench.intervene.api import run, run_many
from mechbench.intervene.frozen import run_frozen_attention
from mechbench.intervene.hooks import head_dim, hooked, n_units
from mechbench.intervene.prefix import Prefix, capture_prefix, capture_prefixes
from mechbench.intervene.requests import COMPONENTS, HeadPatch, Interventions, Knockout, Read, RunOutput
from mechbench.models.devices import input_device, layer_devices
from mechbench.models.run_options import batch_size_of, set_batch_size

__all__ = [
    "COMPONENTS",
    "HeadPatch",
    "Interventions",
    "Knockout",
    "Prefix",
    "Read",
    "RunOutput",
    "batch_size_of",
    "capture_prefix",
    "capture_prefixes",
    "head_dim",
    "hooked",
    "input_device",
    "layer_devices",
    "n_units",
    "run",
    "run_frozen_attention",
    "run_many",
    "set_batch_size",
]
