"""Errors a user can act on.

Every error mechbench raises on bad input derives from :class:`MechbenchError` and says what went wrong and
how to fix it, so the pytest plugin and the CLI can print the message alone instead of a traceback.
"""


class MechbenchError(Exception):
    """Base class: the message names the problem and the fix."""


class TokenizationError(MechbenchError):
    """A word the dataset needs is not a single token, or prompts do not line up."""


class UnknownModelError(MechbenchError):
    """A model name is neither registered nor a loadable path or hub id."""


class ModelLoadError(MechbenchError):
    """Weights or a tokenizer could not be loaded."""


class UnsupportedArchitectureError(MechbenchError):
    """The model is not of the Llama family that head-level interventions support."""


class BaselineError(MechbenchError):
    """A baseline file is missing, corrupt or does not follow the schema."""
