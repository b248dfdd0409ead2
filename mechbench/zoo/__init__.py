"""The embedded toy zoo: small Llamas trained by this project that do entity tracking (see docs/models.md).

Which models the zoo holds (the registry's toy models) and where their weights live are here, below the modules
that train (``train``), describe (``cards``) and re-check (``reproduce``) them, so that those import this and never
each other in a circle.
"""

from pathlib import Path

from mechbench.models.registry import TOY_MODELS

MODELS_DIR = Path(__file__).resolve().parent / "models"
ZOO = TOY_MODELS
