"""The embedded toy zoo: small Llamas trained by this project that do entity tracking (see README, Models).

Which models the zoo holds and where their weights live are here, below the modules that train (``train``),
describe (``cards``) and re-check (``reproduce``) them, so that those import this and never each other in a
circle.
"""

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
ZOO = ("toy-llama", "toy-vicuna", "toy-goat", "toy-float")
