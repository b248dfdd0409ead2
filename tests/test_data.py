"""The entity-tracking data: the paper's layout, roles from tokens, counterfactual definitions, seeds."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechbench.data.counterfactuals import (
    ADDITIONAL_DESIDERATA,
    DESIDERATA,
    desiderata_pairs,
    noise_pairs,
    paper_query_position,
)
from mechbench.data.dataset import Vocabulary, build_dataset, tokenize_examples
from mechbench.data.prompts import LETTERS, Context, Example, paper_objects
from mechbench.errors import TokenizationError

SLOW_FIXTURE = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def tokens(tok, ids):
    return [t.lstrip("▁") for t in tok.convert_ids_to_tokens(ids)]


# --- the paper's layout with the real LLaMA tokenizer ------------------------------------------------


def test_paper_layout_with_llama_tokenizer(llama_tokenizer):
    ds = build_dataset(llama_tokenizer, n_examples=70, seed=3)
    assert ds.input_ids.shape == (70, 54)  # docs/paper.md §1: 54 tokens including BOS
    assert (ds.input_ids[:, 0] == llama_tokenizer.bos_token_id).all()
    assert (ds.label_positions == torch.arange(6, 49, 7)).all()  # pp_utils: range(6, 49, 7)
    assert (ds.object_positions == ds.label_positions - 4).all()  # attn_knockout: label - 4
    assert (ds.positions("query_label") == 51).all() and (ds.positions("last") == 53).all()
    assert tokens(llama_tokenizer, ds.input_ids[0, -2:].tolist()) == ["contains", "the"]
    first = ds.examples[0]
    assert ds.prompts()[0].startswith(f"The {first.context.objects[0]} is in Box {first.context.labels[0]}, the ")
    assert llama_tokenizer.convert_ids_to_tokens(ds.answer_ids[0].item()) == "▁" + first.answer


def test_every_paper_object_and_letter_is_one_llama_token(llama_tokenizer):
    vocab = Vocabulary.for_tokenizer(llama_tokenizer)
    assert len(vocab.objects) == 85 and len(vocab.labels) == 26
    assert len(paper_objects()) == 85 and len(set(paper_objects())) == 85


def test_block_layout_queries_each_box_of_a_context_in_order(toy_tokenizer):
    ds = build_dataset(toy_tokenizer, n_examples=21, seed=0)
    for block in range(3):
        rows = ds.examples[block * 7 : block * 7 + 7]
        assert len({e.context for e in rows}) == 1
        assert [e.query_box for e in rows] == list(range(7))


# --- properties for any seed and box count ---------------------------------------------------------


@SLOW_FIXTURE
@given(seed=st.integers(0, 2**31 - 1), boxes=st.integers(2, 7), n=st.integers(1, 30))
def test_roles_point_at_the_tokens_they_name(toy_tokenizer, llama_tokenizer, seed, boxes, n):
    for tok in (toy_tokenizer, llama_tokenizer):
        ds = build_dataset(tok, n_examples=n, num_boxes=boxes, seed=seed)
        assert len(ds) == n and ds.num_boxes == boxes
        rows = torch.arange(n)
        for i, e in enumerate(ds.examples):
            ctx = e.context
            assert len(set(ctx.objects)) == boxes and len(set(ctx.labels)) == boxes
            assert e.answer == ctx.objects[e.query_box] and e.query_label == ctx.labels[e.query_box]
            toks = tokens(tok, ds.input_ids[i].tolist())
            assert [toks[p] for p in ds.object_positions[i].tolist()] == list(ctx.objects)
            assert [toks[p] for p in ds.label_positions[i].tolist()] == list(ctx.labels)
            assert toks[ds.positions("query_label")[i]] == e.query_label
            assert toks[ds.positions("prev_query_label")[i]] == e.query_label
            assert ds.positions("prev_query_label")[i] < ds.positions("query_label")[i] < ds.positions("last")[i]
            assert tok.convert_ids_to_tokens(ds.answer_ids[i].item()).lstrip("▁") == e.answer
        # the answer is the object token sitting in the queried box
        assert torch.equal(ds.input_ids[rows, ds.object_positions[rows, ds.query_boxes]], ds.answer_ids)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), boxes=st.integers(2, 7))
def test_same_seed_same_data_other_seed_other_data(seed, boxes):
    from mechbench.zoo.tokenizer import build_tokenizer

    tok = build_tokenizer()
    a = build_dataset(tok, n_examples=20, num_boxes=boxes, seed=seed)
    b = build_dataset(tok, n_examples=20, num_boxes=boxes, seed=seed)
    c = build_dataset(tok, n_examples=20, num_boxes=boxes, seed=seed + 1)
    assert torch.equal(a.input_ids, b.input_ids) and a.examples == b.examples
    assert not torch.equal(a.input_ids, c.input_ids)


# --- bad input -------------------------------------------------------------------------------------


def test_multi_token_objects_are_named_or_dropped(llama_tokenizer):
    objects = ["book", "bicycle", "refrigerator", "car", "hat", "map", "key", "pen", "cup"]
    with pytest.raises(TokenizationError) as err:
        build_dataset(llama_tokenizer, n_examples=7, objects=objects)
    msg = str(err.value)
    assert "'bicycle'" in msg and "'refrigerator'" in msg and "'book'" not in msg
    assert "llama-tokenizer" in msg and "--drop-multi-token" in msg and "drop_multi_token=True" in msg
    ds = build_dataset(llama_tokenizer, n_examples=7, objects=objects, drop_multi_token=True)
    assert {"bicycle", "refrigerator"}.isdisjoint(o for e in ds.examples for o in e.context.objects)
    # the option as the loader sets it (--drop-multi-token) reaches every dataset built for the model
    import copy

    from mechbench.data.dataset import DROP_ATTRIBUTE

    dropping = copy.deepcopy(llama_tokenizer)
    setattr(dropping, DROP_ATTRIBUTE, True)
    ds = build_dataset(dropping, n_examples=7, objects=objects)
    assert {"bicycle", "refrigerator"}.isdisjoint(o for e in ds.examples for o in e.context.objects)


def test_too_few_objects_and_bad_box_counts_are_refused(toy_tokenizer):
    with pytest.raises(TokenizationError, match="7 boxes need 7"):
        build_dataset(toy_tokenizer, n_examples=7, objects=["book", "car", "hat"])
    with pytest.raises(ValueError, match="between 2 and 7"):
        build_dataset(toy_tokenizer, n_examples=7, num_boxes=8)


def test_unequal_prompt_lengths_are_refused(llama_tokenizer):
    # "fig" and "book" are each one token, but a template that lets lengths vary must be caught.
    vocab = Vocabulary.for_tokenizer(llama_tokenizer)
    short = Example.of(Context(("book", "car"), ("A", "B")), 0)
    long = Example(Context(("book", "car"), ("A", "B")), 0, "A")
    from mechbench.data.prompts import PAPER_TEMPLATE

    with pytest.raises(TokenizationError, match="same number of tokens"):
        tokenize_examples(
            llama_tokenizer, [short, long], vocab, [PAPER_TEMPLATE, PAPER_TEMPLATE.with_(prefix="Look: ")]
        )


# --- counterfactuals -------------------------------------------------------------------------------


def _expected_target(name, base, source):
    if name == "object_value":
        return source.answer
    if name == "box_label_value":
        return base.context.objects[base.context.labels.index(source.query_label)]
    if name == "incorrect_segment":
        return base.context.objects[(source.query_box + 1) % base.context.num_boxes]
    return base.context.objects[source.query_box]  # positional and its variants


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), boxes=st.integers(2, 7), name=st.sampled_from(sorted(DESIDERATA)))
def test_each_desideratum_target_equals_its_definition(seed, boxes, name):
    from mechbench.zoo.tokenizer import build_tokenizer

    tok = build_tokenizer()
    cf = desiderata_pairs(tok, name, n_pairs=40, num_boxes=boxes, seed=seed)
    vocab = cf.base.vocabulary
    for i, (base, source) in enumerate(zip(cf.base.examples, cf.source.examples)):
        assert cf.target_ids[i].item() == vocab.object_ids[_expected_target(name, base, source)]
        if name == "box_label_value":
            assert source.query_label in base.context.labels and source.query_label != base.query_label
        else:  # done right: the source's query box really is at another position
            assert source.query_box != base.query_box
        # roles in the (possibly reworded) source still point at the source's own words
        toks = tokens(tok, cf.source.input_ids[i].tolist())
        assert [toks[p] for p in cf.source.object_positions[i].tolist()] == list(source.context.objects)
        assert toks[cf.source.positions("prev_query_label")[i]] == source.query_label
    assert len(ADDITIONAL_DESIDERATA) == 11


def test_paper_compat_reproduces_the_position_bug_rate(llama_tokenizer):
    """docs/paper.md §1, caveat 1: about 14% (1/7) of object/positional pairs share the query position."""
    for name in ("object_value", "positional"):
        compat = desiderata_pairs(llama_tokenizer, name, n_pairs=2000, seed=11, paper_compat=True)
        same = (compat.base.query_boxes == compat.source.query_boxes).float().mean().item()
        assert abs(same - 1 / 7) < 4 * (1 / 7 * 6 / 7 / 2000) ** 0.5, same  # 4 binomial SEs
        assert all(s.query_label not in ("B", "T") for s in compat.source.examples)  # substring-test quirk
        fixed = desiderata_pairs(llama_tokenizer, name, n_pairs=2000, seed=11)
        assert (fixed.base.query_boxes == fixed.source.query_boxes).sum().item() == 0


def test_paper_query_position_matches_substring_quirk():
    ctx = Context(("fig", "pen", "cup"), ("X", "B", "T"))
    assert paper_query_position(Example.of(ctx, 0)) == 0
    assert paper_query_position(Example.of(ctx, 1)) == 0  # "B" is found in "Box" of segment 0
    assert paper_query_position(Example.of(ctx, 2)) == 0  # "T" is found in "The"
    assert paper_query_position(Example.of(Context(("fig", "pen"), ("X", "K")), 1)) == 1


def test_paper_compat_box_label_target_is_the_bare_piece(llama_tokenizer):
    """docs/paper.md §1, caveat 2: the paper's box-label target is 'book' (2909), not '▁book' (3143), or <unk>."""
    compat = desiderata_pairs(llama_tokenizer, "box_label_value", n_pairs=200, seed=5, paper_compat=True)
    right = desiderata_pairs(llama_tokenizer, "box_label_value", n_pairs=200, seed=5)
    assert torch.equal(compat.base.input_ids, right.base.input_ids)
    pieces = llama_tokenizer.convert_ids_to_tokens(compat.target_ids.tolist())
    assert not any(p.startswith("▁") for p in pieces)
    assert all(p.startswith("▁") for p in llama_tokenizer.convert_ids_to_tokens(right.target_ids.tolist()))
    assert (
        llama_tokenizer.convert_tokens_to_ids("book") == 2909 and llama_tokenizer.convert_tokens_to_ids("▁book") == 3143
    )


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), boxes=st.integers(2, 7))
def test_noise_pairs_follow_the_path_patching_recipe(seed, boxes):
    from mechbench.zoo.tokenizer import build_tokenizer

    cf = noise_pairs(build_tokenizer(), n_examples=30, num_boxes=boxes, seed=seed)
    assert torch.equal(cf.target_ids, cf.base.answer_ids)
    for base, source in zip(cf.base.examples, cf.source.examples):
        assert source.query_box == (base.query_box + 1) % boxes
        assert source.query_label in LETTERS
    assert cf.base.input_ids.shape == cf.source.input_ids.shape


def test_bos_is_added_when_the_tokenizer_does_not(llama_tokenizer):
    """transformers 5 loading a bare tokenizer.model adds no BOS (53 tokens); the dataset puts it back."""
    from transformers import LlamaTokenizer

    bare = LlamaTokenizer.from_pretrained(llama_tokenizer.name_or_path)
    assert len(bare("The fig is in Box X")["input_ids"]) == 6  # no BOS
    ds = build_dataset(bare, n_examples=7, seed=0)
    assert ds.input_ids.shape[1] == 54 and (ds.input_ids[:, 0] == bare.bos_token_id).all()
    assert (ds.label_positions[0] == torch.arange(6, 49, 7)).all()


def test_bos_choice_is_stated_and_overridable(llama_tokenizer, toy_tokenizer):
    """--bos: auto prepends a document-start BOS (LLaMA's <s>) and not a chat turn marker; always/never override."""
    import copy

    from mechbench.data.dataset import BOS_ATTRIBUTE, starts_with_bos

    def first_tokens(tok, choice):
        tok = copy.deepcopy(tok)
        setattr(tok, BOS_ATTRIBUTE, choice)
        ds = build_dataset(tok, n_examples=7, seed=0)
        assert ds.meta["bos"] == starts_with_bos(tok)
        return ds.input_ids[:, 0], ds.input_ids.shape[1], tok.bos_token_id

    first, length, bos = first_tokens(llama_tokenizer, "auto")
    assert (first == bos).all() and length == 54
    first, length, bos = first_tokens(llama_tokenizer, "never")
    assert (first != bos).all() and length == 53

    chat = copy.deepcopy(toy_tokenizer)
    chat.add_special_tokens({"bos_token": "<|im_start|>"})  # a chat tokenizer's "BOS" is a turn marker
    assert not starts_with_bos(chat)
    first, _, bos = first_tokens(chat, "auto")
    assert (first != bos).all()
    first, _, bos = first_tokens(chat, "always")
    assert (first == bos).all()


# --- the random query letters (planted faults: the real label in their place passed every test here) ---------


def _binomial_band(p: float, n: int, ses: float = 5.0) -> tuple[float, float]:
    """The share of ``n`` independent draws of probability ``p`` lies in this band but once in millions."""
    se = (p * (1 - p) / n) ** 0.5
    return p - ses * se, p + ses * se


def test_ablation_prompts_query_a_random_letter_not_the_first_boxs_label(toy_tokenizer):
    """docs/paper.md §1 (pp_utils.load_ablation_data): the mean-ablation prompts query the first box with the query
    letter replaced by a random A-Z, drawn independently of the context; the prompt shows that letter."""
    from mechbench.data.counterfactuals import ablation_prompts

    n = 500
    ds = ablation_prompts(toy_tokenizer, n_examples=n, seed=0)
    letters = ds.vocabulary.labels
    examples = ds.examples
    assert all(e.query_box == 0 for e in examples)
    as_own_label = sum(e.query_label == e.context.labels[0] for e in examples) / n
    lo, hi = _binomial_band(1 / len(letters), n)
    assert lo <= as_own_label <= hi, f"{as_own_label:.1%} of the query letters are the queried box's label"
    in_context = sum(e.query_label in e.context.labels for e in examples) / n
    lo, hi = _binomial_band(7 / len(letters), n)
    assert lo <= in_context <= hi, f"{in_context:.1%} of the query letters name a box of their context"
    assert {e.query_label for e in examples} == set(letters)  # every letter is drawn, 500 draws of 26
    shown = tokens(toy_tokenizer, ds.input_ids[torch.arange(n), ds.positions("query_label")].tolist())
    assert shown == [e.query_label for e in examples]


def test_noise_prompts_query_a_random_letter_not_the_clean_prompts_label(toy_tokenizer):
    """docs/paper.md §1 (data_utils.load_pp_data): the corrupted prompt of clean example j is a fresh context
    queried at box (j + 1) % boxes whose query label is overwritten with a random letter, independent of the
    clean prompt's label and of its own box's; the corrupted prompt shows that letter."""
    n = 500
    cf = noise_pairs(toy_tokenizer, n_examples=n, seed=2)
    letters = cf.source.vocabulary.labels
    pairs = list(zip(cf.base.examples, cf.source.examples))
    assert all(s.query_box == (b.query_box + 1) % 7 and s.context != b.context for b, s in pairs)
    lo, hi = _binomial_band(1 / len(letters), n)
    as_clean_label = sum(s.query_label == b.query_label for b, s in pairs) / n
    assert lo <= as_clean_label <= hi, f"{as_clean_label:.1%} of the noise prompts query the clean prompt's label"
    as_own_label = sum(s.query_refers_to_box for _, s in pairs) / n
    assert lo <= as_own_label <= hi, f"{as_own_label:.1%} of the noise prompts query their own box's label"
    lo, hi = _binomial_band(7 / len(letters), n)
    names_a_box = sum(s.query_label in s.context.labels for _, s in pairs) / n
    assert lo <= names_a_box <= hi, f"{names_a_box:.1%} of the noise query letters name a box of their prompt"
    rows = torch.arange(n)
    shown = tokens(toy_tokenizer, cf.source.input_ids[rows, cf.source.positions("query_label")].tolist())
    assert shown == [s.query_label for _, s in pairs]
    # the clean prompt is untouched: it queries its own box's label, and the target is its answer
    assert all(b.query_refers_to_box for b, _ in pairs) and torch.equal(cf.target_ids, cf.base.answer_ids)
