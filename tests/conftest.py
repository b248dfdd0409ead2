"""Fixtures of the library tests: tokenizers and small random Llama models."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
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
    pytest.skip("the LLaMA tokenizer.model is not here: set MECHBENCH_LLAMA_TOKENIZER to a directory holding it "
                "(the repository ships one at tests/data/llama-tokenizer)")


@pytest.fixture(scope="session")
def toy_tokenizer():
    from mechbench.zoo.tokenizer import build_tokenizer

    return build_tokenizer()
