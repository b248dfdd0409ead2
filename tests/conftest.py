"""Fixtures of the library tests: tokenizers and small random Llama models."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    """pytester's in-process runs (tests/test_claims.py, tests/test_bad_input.py) take out of ``sys.modules`` the
    modules first imported during them when they end, and torch's operator libraries refuse to register a second
    time when such a module is imported again (``Only a single TORCH_LIBRARY can be used``): every module a model
    load imports (transformers' supported families, peft, torch.distributed through them) is imported here first.
    The plugin used to import them as it configured the session; it is inert until a session uses it, so the
    share of the cores each pytest-xdist worker's torch takes is set here too (most of these tests use none of the
    plugin's fixtures)."""
    from mechbench.pytest_plugin import share_cores_among_workers

    share_cores_among_workers(config)
    import peft  # noqa: F401
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from mechbench.models.architectures import FAMILIES

    for family in FAMILIES:  # the lazy modules of every family the engine supports: config, model, tokenizer
        getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[family])
        transformers.AutoConfig.for_model(family)
    transformers.LlamaTokenizer, transformers.PreTrainedTokenizerFast  # noqa: B018


# The paper's tokenizer ships with the tests (tests/data/llama-tokenizer, SentencePiece, 32,000 pieces); an env
# variable can point at another copy.
LLAMA_TOKENIZER_DIRS = [os.environ.get("MECHBENCH_LLAMA_TOKENIZER", ""), str(ROOT / "tests/data/llama-tokenizer")]


@pytest.fixture(scope="session")
def llama_tokenizer():
    """The real LLaMA SentencePiece tokenizer (the paper's), loaded offline with BOS as the paper used it."""
    from transformers import LlamaTokenizer

    for d in LLAMA_TOKENIZER_DIRS:
        if d and Path(d, "tokenizer.model").is_file():
            return LlamaTokenizer.from_pretrained(d, add_bos_token=True)
    pytest.skip(
        "the LLaMA tokenizer.model is not here: set MECHBENCH_LLAMA_TOKENIZER to a directory holding it "
        "(the repository ships one at tests/data/llama-tokenizer)"
    )


@pytest.fixture(scope="session")
def toy_tokenizer():
    from mechbench.zoo.tokenizer import build_tokenizer

    return build_tokenizer()
