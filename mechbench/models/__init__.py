from mechbench.models.loading import ModelHandle, ModelShape, load_model
from mechbench.models.registry import BASE_OF, CIRCUITS, PAPER_MODELS, REGISTRY, TOY_MODELS, ModelSpec, resolve

__all__ = [
    "ModelHandle",
    "ModelShape",
    "load_model",
    "ModelSpec",
    "resolve",
    "REGISTRY",
    "PAPER_MODELS",
    "TOY_MODELS",
    "CIRCUITS",
    "BASE_OF",
]
