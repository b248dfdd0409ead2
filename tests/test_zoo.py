"""The toy zoo's tokenizer and training code (a few steps on a tiny config; the full zoo is not retrained)."""

from __future__ import annotations

import math

import pytest

from mechbench.data.prompts import LETTERS, paper_objects


@pytest.fixture(scope="module")
def tok():
    from mechbench.zoo.tokenizer import build_tokenizer

    return build_tokenizer()


def test_objects_and_letters_are_one_token(tok):
    from mechbench.zoo.tokenizer import check_single_tokens

    assert check_single_tokens(tok) == []
    for word in paper_objects():
        ids = tok(f"the {word}")["input_ids"]
        assert ids[0] == tok.bos_token_id and len(ids) == 3 and ids[-1] != tok.unk_token_id, word
    for letter in LETTERS:
        ids = tok(f"Box {letter}")["input_ids"]
        assert len(ids) == 3 and ids[-1] != tok.unk_token_id, letter


def test_tokenizer_splits_punctuation_and_has_offsets(tok):
    text = "The fig is in Box X, the engine is in Box T. Box X contains the"
    enc = tok(text, return_offsets_mapping=True)
    words = tok.convert_ids_to_tokens(enc["input_ids"])
    assert words[:8] == ["<s>", "The", "fig", "is", "in", "Box", "X", ","]
    assert tok.unk_token_id not in enc["input_ids"]
    assert [text[a:b] for a, b in enc["offset_mapping"][1:]] == words[1:]
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == ("<s>", "</s>", "<unk>", "<pad>")


def test_counterfactual_words_are_in_vocabulary(tok):
    text = ("There are a bunch of boxes containing objects, the apple is contained in the Box O, these are not "
            "three additional boxes, Box PP, Box BB and Box AA.")
    assert tok.unk_token_id not in tok(text)["input_ids"]


def test_tokenizer_round_trips_through_save(tok, tmp_path):
    from transformers import AutoTokenizer

    from mechbench.zoo.tokenizer import save_tokenizer

    save_tokenizer(tmp_path)
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "The fig is in Box X. Box X contains the"
    assert again(text)["input_ids"] == tok(text)["input_ids"]


def test_smoke_training_learns_and_is_deterministic():
    from mechbench.zoo.train import smoke_train

    a = smoke_train(steps=6)
    b = smoke_train(steps=6)
    assert math.isfinite(a["loss_before"]) and math.isfinite(a["loss_after"])
    assert a["loss_after"] < a["loss_before"]
    assert a["digest"] != a["digest_before"]
    assert a["digest"] == b["digest"]  # bit-identical weights on a second run


def test_training_data_masks_everything_but_answers(tok):
    import random

    from mechbench.zoo.data import IGNORE, binding_batch, tracking_batch

    ids, labels = tracking_batch(tok, random.Random(0), 4, num_boxes=3)
    assert ((labels != IGNORE).sum(dim=1) == 3).all()  # one answer per box
    the = tok.convert_tokens_to_ids("the")
    assert (ids[:, :-1][(labels[:, 1:] != IGNORE)] == the).all()
    ids, labels = binding_batch(tok, random.Random(0), 4)
    n = (labels != IGNORE).sum(dim=1)
    assert (n >= 2).all() and (n <= 7).all()
