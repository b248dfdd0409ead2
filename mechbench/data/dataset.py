"""Tokenized entity-tracking datasets with every position a method needs.

:func:`build_dataset` samples contexts, renders them (``prompts.py``) and tokenizes them against a given
tokenizer. Token positions are found from the tokenizer's character offsets, so they follow the tokenizer
rather than the paper's hard-coded offsets; with the LLaMA tokenizer they reproduce them (54 tokens with BOS,
labels at 6, 13, ..., 48).

Position roles (what methods ask for; see :meth:`EntityTrackingDataset.positions`):

- ``last``: the final token ("the"), where value fetchers and position transmitters act;
- ``query_label``: the query's box label ("X" in "Box X contains the"), the position detectors' site;
- ``prev_query_label``: the earlier occurrence of the query label in the context, the structure readers' site;
- ``correct_object``: the queried box's object token (what the value fetchers fetch);
- ``object:i`` / ``label:i``: box ``i``'s object and label tokens.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mechbench.data.prompts import (
    LETTERS,
    PAPER_TEMPLATE,
    Example,
    Rendered,
    Template,
    paper_objects,
    render,
    sample_context,
)
from mechbench.errors import TokenizationError

ROLES = ("last", "query_label", "prev_query_label", "correct_object")


def tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def tokenizer_key(tokenizer) -> int:
    """What the prompts built for ``tokenizer`` depend on (its vocabulary and the loader's BOS and multi-token
    choices), as a cache key: not the object, since the toy zoo's models share one tokenizer (so do the paper's) and
    an id() could be reused by another tokenizer once the first is freed."""
    return hash(
        (
            tuple(sorted(tokenizer.get_vocab().items())),
            starts_with_bos(tokenizer),
            bool(getattr(tokenizer, DROP_ATTRIBUTE, False)),
        )
    )


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def single_token_ids(
    tokenizer, words: Sequence[str], lead: str, *, kind: str, drop_multi_token: bool = False
) -> dict[str, int]:
    """Map each word to its token id as it appears after ``lead`` ("the fig", "Box X").

    A word that is not exactly one token in that context is an error naming every such word, the tokenizer (where
    it was loaded from and its class) and how the first such word was split, unless ``drop_multi_token`` (then
    those words are left out).
    """
    lead_ids = _encode(tokenizer, lead)
    ids, bad = {}, []
    for w in words:
        enc = _encode(tokenizer, f"{lead} {w}")
        if len(enc) == len(lead_ids) + 1 and enc[: len(lead_ids)] == lead_ids:
            ids[w] = enc[-1]
        else:
            bad.append(w)
    unk = getattr(tokenizer, "unk_token_id", None)
    unknown = [w for w, i in ids.items() if unk is not None and i == unk]
    if unknown:  # an unknown word is not a token of its own: every such word would be "the same" answer
        raise TokenizationError(
            f"{len(unknown)} {kind} map to the unknown token for tokenizer {tokenizer_name(tokenizer)!r} "
            f"({tokenizer_class(tokenizer)}): "
            f"{', '.join(repr(w) for w in unknown[:20])}. Use a tokenizer that knows them, or pass {kind} it knows."
        )
    by_id: dict[int, list[str]] = {}
    for w, i in ids.items():
        by_id.setdefault(i, []).append(w)
    shared = [ws for ws in by_id.values() if len(ws) > 1]
    if shared:  # two words, one id: top-1 accuracy could not tell them apart
        raise TokenizationError(
            f"{kind} share a token id with tokenizer {tokenizer_name(tokenizer)!r}: "
            + "; ".join(" = ".join(repr(w) for w in ws) for ws in shared[:10])
            + f". Each of the task's {kind} needs its own token; pass {kind} with distinct tokens."
        )
    if bad and not drop_multi_token:
        shown = ", ".join(repr(w) for w in bad[:20]) + (f" and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise TokenizationError(
            f"{len(bad)} {kind} are not a single token for tokenizer {tokenizer_name(tokenizer)!r} "
            f"({tokenizer_class(tokenizer)}; after {lead!r}): {shown}; {split_shown(tokenizer, lead, bad[0])}. "
            f"Pass a list of single-token {kind}, or leave them out with --drop-multi-token (pytest option and "
            f"mechbench flag; drop_multi_token=True in Python), or load the tokenizer the model was trained with: "
            f"--tokenizer DIR|ID (tokenizer=... in Python; transformers 5 may load a family's own tokenizer class, "
            f"e.g. Qwen2Tokenizer, instead of the one a directory saved)."
        )
    return ids


def tokenizer_class(tokenizer) -> str:
    """The class of the tokenizer that was loaded, for messages (with :func:`tokenizer_name`, where it was loaded
    from): ``class Qwen2Tokenizer``."""
    return f"class {type(tokenizer).__name__}"


def split_shown(tokenizer, lead: str, word: str) -> str:
    """How ``tokenizer`` splits ``word`` after ``lead``, as token strings: ``' apple' -> [' app', 'le']`` (the whole
    text's tokens where the word's do not start where the lead's end)."""
    lead_ids, enc = _encode(tokenizer, lead), _encode(tokenizer, f"{lead} {word}")
    if enc[: len(lead_ids)] == lead_ids:
        shown, ids = f" {word}", enc[len(lead_ids) :]
    else:
        shown, ids = f"{lead} {word}", enc
    try:
        tokens = tokenizer.convert_ids_to_tokens(list(ids))
    except Exception:  # noqa: BLE001 - a stand-in tokenizer without the method: show the ids
        tokens = list(ids)
    return f"{shown!r} -> {tokens!r}" if tokens else f"{shown!r} -> [] (no token at all)"


@dataclass(frozen=True)
class Vocabulary:
    """The objects and labels a dataset draws from, with their token ids for one tokenizer."""

    object_ids: dict[str, int]
    label_ids: dict[str, int]

    @classmethod
    def for_tokenizer(
        cls,
        tokenizer,
        objects: Sequence[str] | None = None,
        labels: Sequence[str] = LETTERS,
        drop_multi_token: bool | None = None,
    ) -> Vocabulary:
        """``drop_multi_token`` defaults to the loader's choice for this tokenizer (``--drop-multi-token``)."""
        objects = paper_objects() if objects is None else tuple(objects)
        if drop_multi_token is None:
            drop_multi_token = bool(getattr(tokenizer, DROP_ATTRIBUTE, False))
        return cls(
            single_token_ids(tokenizer, objects, "the", kind="objects", drop_multi_token=drop_multi_token),
            single_token_ids(tokenizer, labels, "Box", kind="labels", drop_multi_token=drop_multi_token),
        )

    @property
    def objects(self) -> tuple[str, ...]:
        return tuple(self.object_ids)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.label_ids)


@dataclass
class EntityTrackingDataset:
    """Examples, their token ids, answer ids and role positions (all tensors have N rows)."""

    examples: list[Example]
    templates: list[Template]  # per example: counterfactual sources may vary the surface form
    input_ids: torch.Tensor  # [N, S]
    answer_ids: torch.Tensor  # [N]
    object_positions: torch.Tensor  # [N, boxes]
    label_positions: torch.Tensor  # [N, boxes]
    query_label_positions: torch.Tensor  # [N]
    vocabulary: Vocabulary
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    @property
    def num_boxes(self) -> int:
        return self.object_positions.shape[1]

    @property
    def query_boxes(self) -> torch.Tensor:
        return torch.tensor([e.query_box for e in self.examples], dtype=torch.long)

    def clusters(self) -> torch.Tensor:
        """Context id of each example, shape [N]: prompts that share a context are one sampling unit (they are
        queried in blocks, so their answers are not independent; see mechbench.stats)."""
        ids: dict = {}
        return torch.tensor([ids.setdefault(e.context, len(ids)) for e in self.examples], dtype=torch.long)

    def positions(self, role: str) -> torch.Tensor:
        """Token index of ``role`` in each example, shape [N]."""
        rows = torch.arange(len(self))
        if role == "last":
            return torch.full((len(self),), self.seq_len - 1, dtype=torch.long)
        if role == "query_label":
            return self.query_label_positions
        if role == "prev_query_label":
            return self.label_positions[rows, self.query_boxes]
        if role == "correct_object":
            return self.object_positions[rows, self.query_boxes]
        kind, _, index = role.partition(":")
        if kind in ("object", "label") and index.isdigit() and int(index) < self.num_boxes:
            table = self.object_positions if kind == "object" else self.label_positions
            return table[:, int(index)]
        raise KeyError(
            f"unknown position role {role!r}; known: {', '.join(ROLES)}, object:i, label:i (i < {self.num_boxes})"
        )

    def subset(self, index: Sequence[int] | slice) -> EntityTrackingDataset:
        idx = torch.arange(len(self))[index] if isinstance(index, slice) else torch.as_tensor(index)
        return EntityTrackingDataset(
            examples=[self.examples[i] for i in idx.tolist()],
            templates=[self.templates[i] for i in idx.tolist()],
            input_ids=self.input_ids[idx],
            answer_ids=self.answer_ids[idx],
            object_positions=self.object_positions[idx],
            label_positions=self.label_positions[idx],
            query_label_positions=self.query_label_positions[idx],
            vocabulary=self.vocabulary,
            meta=dict(self.meta),
        )

    def prompts(self) -> list[str]:
        return [render(e, t).text for e, t in zip(self.examples, self.templates)]


def _token_at(offsets: list[tuple[int, int]], text: str, span: tuple[int, int]) -> int | None:
    """Index of the single token covering ``span`` (leading whitespace allowed), else None."""
    hits = [i for i, (a, b) in enumerate(offsets) if b > a and a < span[1] and b > span[0]]
    if len(hits) != 1:
        return None
    a, b = offsets[hits[0]]
    if b != span[1] or text[a : span[0]].strip():
        return None
    return hits[0]


#: ``--bos``: whether prompts start with the tokenizer's BOS token. ``auto`` prepends it when it is a document
#: start (LLaMA's ``<s>``, Llama 3's ``<|begin_of_text|>``, ``<bos>``), as the paper's prompts start with BOS,
#: and leaves it out when it is something else, e.g. a chat turn marker (``<|im_start|>``) that changes accuracy.
BOS_CHOICES = ("auto", "always", "never")
DOCUMENT_STARTS = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")
BOS_ATTRIBUTE = "mechbench_bos"  # set on a tokenizer by the loader (load_model(bos=...))
DROP_ATTRIBUTE = "mechbench_drop_multi_token"  # set by the loader (load_model(drop_multi_token=...))


def starts_with_bos(tokenizer) -> bool:
    """Whether prompts for ``tokenizer`` start with its BOS token, by the loader's ``bos`` choice (default auto)."""
    choice = getattr(tokenizer, BOS_ATTRIBUTE, "auto")
    if choice not in BOS_CHOICES:
        raise ValueError(f"bos choice {choice!r}; expected one of {', '.join(BOS_CHOICES)}")
    if getattr(tokenizer, "bos_token_id", None) is None or choice == "never":
        return False
    return choice == "always" or getattr(tokenizer, "bos_token", None) in DOCUMENT_STARTS


def tokenize_examples(
    tokenizer,
    examples: Sequence[Example],
    vocabulary: Vocabulary,
    template: Template | Sequence[Template] = PAPER_TEMPLATE,
    add_bos: bool | None = None,
    meta: dict | None = None,
) -> EntityTrackingDataset:
    """Tokenize rendered examples and locate every role from the offsets.

    ``add_bos`` (default: :func:`starts_with_bos`) puts the BOS token first, or makes sure it is not there:
    whether the tokenizer adds one itself varies (transformers 5 adds none to a bare LLaMA
    ``tokenizer.model``), so the choice is made here, once.
    """
    templates = [template] * len(examples) if isinstance(template, Template) else list(template)
    rendered: list[Rendered] = [render(e, t) for e, t in zip(examples, templates)]
    enc = tokenizer([r.text for r in rendered], add_special_tokens=True, return_offsets_mapping=True)
    bos = getattr(tokenizer, "bos_token_id", None)
    add_bos = starts_with_bos(tokenizer) if add_bos is None else add_bos
    rows, obj_pos, lab_pos, q_pos = [], [], [], []
    for n, (r, ids, offsets) in enumerate(zip(rendered, enc["input_ids"], enc["offset_mapping"])):
        ids, offsets = list(ids), [tuple(o) for o in offsets]
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids, offsets = [bos] + ids, [(0, 0)] + offsets
        elif not add_bos and bos is not None and ids and ids[0] == bos:
            ids, offsets = ids[1:], offsets[1:]

        def locate(span, what):
            i = _token_at(offsets, r.text, span)
            if i is None:
                raise TokenizationError(
                    f"{what} {r.text[span[0] : span[1]]!r} is not a single token in prompt {n} for tokenizer "
                    f"{tokenizer_name(tokenizer)!r}: {r.text!r}. Use single-token words or another template."
                )
            return i

        obj_pos.append([locate(s, "object") for s in r.object_spans])
        lab_pos.append([locate(s, "label") for s in r.label_spans])
        q_pos.append(locate(r.query_label_span, "query label"))
        rows.append(ids)
    lengths = {len(ids) for ids in rows}
    if len(lengths) > 1:
        short = min(range(len(rows)), key=lambda i: len(rows[i]))
        long = max(range(len(rows)), key=lambda i: len(rows[i]))
        raise TokenizationError(
            f"prompts tokenize to different lengths {sorted(lengths)} with {tokenizer_name(tokenizer)!r}, "
            f"e.g. {rendered[short].text!r} vs {rendered[long].text!r}; methods compare positions across "
            f"examples, so every prompt of a dataset must have the same number of tokens."
        )
    input_ids = torch.tensor(rows, dtype=torch.long)
    object_positions = torch.tensor(obj_pos, dtype=torch.long)
    answer_ids = torch.tensor([vocabulary.object_ids[e.answer] for e in examples], dtype=torch.long)
    # The in-context object token must be the answer token, or top-1 accuracy would score the wrong id.
    box = torch.tensor([e.query_box for e in examples])
    in_context = input_ids[torch.arange(len(examples)), object_positions[torch.arange(len(examples)), box]]
    if not torch.equal(in_context, answer_ids):
        raise TokenizationError(
            f"tokenizer {tokenizer_name(tokenizer)!r} gives an object a different token in the context than "
            f"after 'the'; the answer token would be ambiguous."
        )
    return EntityTrackingDataset(
        examples=list(examples),
        templates=templates,
        input_ids=input_ids,
        answer_ids=answer_ids,
        object_positions=object_positions,
        label_positions=torch.tensor(lab_pos, dtype=torch.long),
        query_label_positions=torch.tensor(q_pos, dtype=torch.long),
        vocabulary=vocabulary,
        meta=dict(meta or {}),
    )


def sample_examples(rng: random.Random, n_examples: int, num_boxes: int, vocabulary: Vocabulary) -> list[Example]:
    """The paper's layout: blocks of ``num_boxes`` examples sharing a context, querying each box in order."""
    examples: list[Example] = []
    while len(examples) < n_examples:
        ctx = sample_context(rng, num_boxes, vocabulary.objects, vocabulary.labels)
        examples.extend(Example.of(ctx, q) for q in range(num_boxes))
    return examples[:n_examples]


def build_dataset(
    tokenizer,
    n_examples: int = 500,
    num_boxes: int = 7,
    seed: int = 0,
    objects: Sequence[str] | None = None,
    labels: Sequence[str] = LETTERS,
    drop_multi_token: bool | None = None,
    template: Template = PAPER_TEMPLATE,
) -> EntityTrackingDataset:
    """Seeded entity-tracking prompts in the paper's format, tokenized for ``tokenizer``.

    ``objects`` defaults to the paper's 85 single-token objects; labels to A-Z. Every object and label must
    be one token for this tokenizer (else :class:`TokenizationError`, or pass ``drop_multi_token=True``).
    """
    if n_examples < 1:
        raise ValueError(f"n_examples must be positive, got {n_examples}")
    vocabulary = Vocabulary.for_tokenizer(tokenizer, objects, labels, drop_multi_token)
    if len(vocabulary.objects) < num_boxes or len(vocabulary.labels) < num_boxes:
        raise TokenizationError(
            f"only {len(vocabulary.objects)} objects and {len(vocabulary.labels)} labels are single tokens for "
            f"{tokenizer_name(tokenizer)!r}; {num_boxes} boxes need {num_boxes} of each."
        )
    examples = sample_examples(random.Random(seed), n_examples, num_boxes, vocabulary)
    meta = {
        "seed": seed,
        "num_boxes": num_boxes,
        "tokenizer": tokenizer_name(tokenizer),
        "kind": "entity_tracking",
        "bos": starts_with_bos(tokenizer),
    }
    return tokenize_examples(tokenizer, examples, vocabulary, template, meta=meta)
