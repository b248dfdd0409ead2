"""The toy zoo's word-level tokenizer, built from code (no download) and shipped beside each model.

One token per word: the paper's 85 objects, the 26 box letters, the template words, the words of the
counterfactual prompt variants (``counterfactuals.py``), the numbers and symbols of the structured
fine-tune, and the words of the unrelated "chat-like" text. Punctuation is split off words ("X," -> "X" ","),
offsets work (``tok(text, return_offsets_mapping=True)``), and like LLaMA a post-processor puts ``<s>`` at the
start of every encoding.
"""

from __future__ import annotations

import string
from functools import lru_cache

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from mechbench.data.prompts import LETTERS, paper_objects

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS: tuple[str, ...] = (UNK, BOS, EOS, PAD)

#: The paper template: "The fig is in Box X, ... . Box X contains the".
TEMPLATE_WORDS: tuple[str, ...] = ("The", "the", "is", "in", "Box", "contains", ",", ".")

#: Words of the counterfactual variants ("There are a bunch of boxes containing objects, ",
#: "is contained in the", "is not in", "three additional boxes, Box PP, Box BB and Box AA, ").
COUNTERFACTUAL_WORDS: tuple[str, ...] = (
    "There",
    "are",
    "a",
    "bunch",
    "of",
    "boxes",
    "containing",
    "objects",
    "these",
    "These",
    "contained",
    "not",
    "three",
    "additional",
    "and",
    "PP",
    "BB",
    "AA",
    "apple",
)

#: The structured fine-tune (variable binding / arithmetic) and the chat-like text.
NUMBERS: tuple[str, ...] = tuple(str(i) for i in range(100))
SYMBOLS: tuple[str, ...] = ("=", "+", "-", ">", "<", ":", ";", "?", "!", "(", ")")
TEXT_WORDS: tuple[str, ...] = (
    "A",
    "an",
    "I",
    "you",
    "we",
    "it",
    "they",
    "he",
    "she",
    "my",
    "your",
    "this",
    "that",
    "what",
    "where",
    "who",
    "how",
    "do",
    "does",
    "did",
    "have",
    "has",
    "had",
    "was",
    "were",
    "be",
    "can",
    "will",
    "would",
    "like",
    "want",
    "need",
    "see",
    "saw",
    "get",
    "got",
    "give",
    "take",
    "make",
    "buy",
    "sell",
    "use",
    "find",
    "put",
    "bring",
    "keep",
    "lose",
    "lost",
    "found",
    "bought",
    "made",
    "good",
    "bad",
    "new",
    "old",
    "big",
    "small",
    "red",
    "blue",
    "green",
    "white",
    "black",
    "cheap",
    "nice",
    "very",
    "too",
    "also",
    "yes",
    "no",
    "please",
    "thanks",
    "hello",
    "sure",
    "here",
    "there",
    "now",
    "today",
    "yesterday",
    "tomorrow",
    "with",
    "on",
    "at",
    "to",
    "from",
    "for",
    "by",
    "or",
    "but",
    "so",
    "because",
    "if",
    "then",
    "when",
    "one",
    "two",
    "four",
    "five",
    "many",
    "some",
    "every",
    "all",
    "user",
    "assistant",
    "question",
    "answer",
    "let",
    "x",
    "y",
    "z",
    "sum",
    "plus",
    "minus",
    "equals",
    "value",
    "set",
    "store",
    "print",
)


def _dedup(*groups: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for group in groups:
        for w in group:
            if w not in seen:
                seen.add(w)
                out.append(w)
    return out


def vocabulary() -> list[str]:
    """The vocabulary in id order (special tokens first: <unk>=0, <s>=1, </s>=2, <pad>=3)."""
    return _dedup(
        SPECIAL_TOKENS,
        TEMPLATE_WORDS,
        paper_objects(),
        LETTERS,
        COUNTERFACTUAL_WORDS,
        NUMBERS,
        SYMBOLS,
        TEXT_WORDS,
        tuple(string.ascii_lowercase),
    )


def build_backend() -> Tokenizer:
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Words (\w+) and every punctuation/symbol character on its own ("X," -> "X" ","; "->" -> "-" ">").
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Whitespace(),
            pre_tokenizers.Split(Regex(r"[^\w\s]"), behavior="isolated"),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies " ,"
    return tok


@lru_cache(maxsize=1)
def _cached() -> PreTrainedTokenizerFast:
    return build_tokenizer(_cache=False)


def build_tokenizer(_cache: bool = True) -> PreTrainedTokenizerFast:
    """The zoo tokenizer as a ``PreTrainedTokenizerFast`` (bos/eos/unk/pad set, right padding)."""
    if _cache:
        return _cached()
    return PreTrainedTokenizerFast(
        tokenizer_object=build_backend(),
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        padding_side="right",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


def check_single_tokens(tok: PreTrainedTokenizerFast) -> list[str]:
    """Words among the objects and letters that do not encode as one token after "the " / "Box "."""
    bad = []
    for word, prefix in [(o, "the ") for o in paper_objects()] + [(L, "Box ") for L in LETTERS]:
        ids = tok(prefix + word)["input_ids"]
        if len(ids) != 3 or ids[0] != tok.bos_token_id or ids[2] == tok.unk_token_id:
            bad.append(word)
    return bad


def save_tokenizer(directory) -> None:
    build_tokenizer(_cache=False).save_pretrained(str(directory))
