"""Small random Llama models for tests of the machinery (never of a claim)."""

from pathlib import Path

import torch


def random_llama(n_layers=2, n_heads=4, n_kv_heads=None, head_dim=8, vocab_size=None, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    from mechbench.zoo.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size or len(build_tokenizer()),
        hidden_size=n_heads * head_dim,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads or n_heads,
        head_dim=head_dim,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def save_random_llama(directory, safe=True, **kwargs) -> Path:
    from mechbench.zoo.tokenizer import build_tokenizer

    directory = Path(directory)
    model = random_llama(**kwargs)
    model.save_pretrained(directory)
    if not safe:  # a pickled checkpoint, as older hub repositories ship (transformers 5 only writes safetensors)
        (directory / "model.safetensors").unlink()
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    build_tokenizer().save_pretrained(directory)
    return directory
