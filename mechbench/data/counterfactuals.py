"""Counterfactual pairs: a base prompt, a source prompt, and the token the base run should predict.

Two families, both from docs/paper.md §1:

- :func:`noise_pairs`: path patching's corrupted runs. For a base example querying box ``j``, the source is
  a fresh context queried at box ``(j + 1) % boxes`` whose query label is then replaced by a random letter
  (so it usually names no box). The target is the base's own answer.
- :func:`desiderata_pairs`: DCM's desiderata. Patching a group's heads from source into base should move the
  base's prediction to the desideratum's target: the source's object (``object_value``), the base's object
  at the source's query position (``positional``), the base's object in the box carrying the source's query
  label (``box_label_value``), or one of the 11 additional variants of ``positional`` that change the
  source's surface form (for the position transmitters).

Sources are drawn by rejection sampling from fresh random examples, so each pair follows the exact
conditional distribution its definition states. ``paper_compat=True`` reproduces the paper code's two
pairing bugs, for comparing with its published numbers only:

1. the base query position is computed from the query sentence alone, so it is always 0: sources are only
   required to have a (substring-matched) query position != 0, and about 1/7 of pairs share the position;
2. the box-label target id is ``convert_tokens_to_ids(word)`` (the piece without the word-start marker, or
   ``<unk>`` with the LLaMA tokenizer), an id the model essentially never predicts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from mechbench.data.dataset import (
    EntityTrackingDataset,
    Vocabulary,
    sample_examples,
    tokenize_examples,
    tokenizer_name,
)
from mechbench.data.prompts import PAPER_TEMPLATE, Example, Template, render, sample_context

MAX_TRIES = 10_000


@dataclass
class CounterfactualDataset:
    """Aligned base and source datasets (row i of each forms pair i) and the target token per pair. ``base`` and
    ``source`` are DCM's names, the paper's: the run patched into and the run patched from (path patching's clean and
    corrupted runs); nothing to do with the base model a fine-tune is compared with."""

    name: str
    base: EntityTrackingDataset
    source: EntityTrackingDataset
    target_ids: torch.Tensor  # [N]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.base)

    def subset(self, index) -> CounterfactualDataset:
        idx = torch.arange(len(self))[index] if isinstance(index, slice) else torch.as_tensor(index)
        return CounterfactualDataset(
            self.name, self.base.subset(idx), self.source.subset(idx), self.target_ids[idx], dict(self.meta)
        )

    def split(self, sizes: Sequence[int]) -> list[CounterfactualDataset]:
        """Consecutive train/val/test-style splits (the paper uses 1000/500/500)."""
        if sum(sizes) > len(self):
            raise ValueError(f"split sizes {list(sizes)} exceed the {len(self)} pairs")
        out, start = [], 0
        for size in sizes:
            out.append(self.subset(slice(start, start + size)))
            start += size
        return out


def _random_example(rng: random.Random, num_boxes: int, vocabulary: Vocabulary) -> Example:
    ctx = sample_context(rng, num_boxes, vocabulary.objects, vocabulary.labels)
    return Example.of(ctx, rng.randrange(num_boxes))


def noise_pairs(
    tokenizer,
    n_examples: int = 300,
    num_boxes: int = 7,
    seed: int = 0,
    objects: Sequence[str] | None = None,
    vocabulary: Vocabulary | None = None,
) -> CounterfactualDataset:
    """Path patching's clean/corrupt pairs (``data_utils.load_pp_data``); target = the base answer."""
    vocabulary = vocabulary or Vocabulary.for_tokenizer(tokenizer, objects)
    rng = random.Random(seed)
    bases = sample_examples(rng, n_examples, num_boxes, vocabulary)
    sources = []
    for base in bases:
        ctx = sample_context(rng, num_boxes, vocabulary.objects, vocabulary.labels)
        sources.append(Example(ctx, (base.query_box + 1) % num_boxes, rng.choice(vocabulary.labels)))
    meta = {"seed": seed, "num_boxes": num_boxes, "tokenizer": tokenizer_name(tokenizer), "kind": "noise"}
    base_ds = tokenize_examples(tokenizer, bases, vocabulary, meta=meta)
    source_ds = tokenize_examples(tokenizer, sources, vocabulary, meta=meta)
    return CounterfactualDataset("noise", base_ds, source_ds, base_ds.answer_ids.clone(), meta)


# --- desiderata ---------------------------------------------------------------------------------------


def paper_query_position(example: Example) -> int:
    """The paper code's source query position: the first ", "-segment of the context containing the query
    label as a substring. Labels B ("Box") and T ("The") always hit segment 0."""
    context_text = render(Example.of(example.context, example.query_box)).text.split(". ")[0]
    for i, segment in enumerate(context_text.split(", ")):
        if example.query_label in segment:
            return i
    return -1


def _positions_differ(base: Example, source: Example, paper_compat: bool) -> bool:
    if paper_compat:  # bug 1: the base position is always computed as 0
        return paper_query_position(source) != 0
    return source.query_box != base.query_box


def _other_base_label(base: Example, source: Example, paper_compat: bool) -> bool:
    return source.query_label in base.context.labels and source.query_label != base.query_label


def _object_value_target(base: Example, source: Example) -> str:
    return source.answer


def _positional_target(base: Example, source: Example) -> str:
    return base.context.objects[source.query_box]


def _next_segment_target(base: Example, source: Example) -> str:
    return base.context.objects[(source.query_box + 1) % base.context.num_boxes]


def _box_label_target(base: Example, source: Example) -> str:
    return base.context.objects[base.context.box_of_label(source.query_label)]


@dataclass(frozen=True)
class Desideratum:
    """How a pair is drawn and what the base run should predict after patching.

    ``source_template`` gives the source's surface form per source example (the additional desiderata change
    it); ``excluded`` lists objects and labels the template itself uses, which the source context must avoid.
    """

    name: str
    accept: Callable[[Example, Example, bool], bool]
    target: Callable[[Example, Example], str]
    source_template: Callable[[Example], Template] = lambda e: PAPER_TEMPLATE
    excluded: frozenset[str] = frozenset()
    groups: tuple[str, ...] = ("value_fetcher", "pos_transmitter", "pos_detector", "struct_reader")
    description: str = ""


def _fixed(template: Template) -> Callable[[Example], Template]:
    return lambda example: template


# Paper: "There are a bunch of boxes containing objects, " etc. (docs/paper.md §1). Where the paper's
# exact text is unknown (add_comma, the extra segment's placement), the choice is stated here.
_EXTRA_SEGMENT = "the apple is in Box O"
_BOXES_BEFORE = "three additional boxes, Box PP, Box BB and Box AA, "

DESIDERATA: dict[str, Desideratum] = {
    d.name: d
    for d in [
        Desideratum(
            "object_value", _positions_differ, _object_value_target, description="target: the source's answer object"
        ),
        Desideratum(
            "positional",
            _positions_differ,
            _positional_target,
            description="target: the base object at the source's query position",
        ),
        Desideratum(
            "box_label_value",
            _other_base_label,
            _box_label_target,
            description="source queries another of the base's labels; target: the base object in that box",
        ),
        # Additional desiderata of the position transmitters: positional pairs with a changed source form.
        Desideratum(
            "random_text_start",
            _positions_differ,
            _positional_target,
            _fixed(PAPER_TEMPLATE.with_(prefix="There are a bunch of boxes containing objects, ")),
            groups=("pos_transmitter",),
            description="unrelated text before the context",
        ),
        Desideratum(
            "random_text_end",
            _positions_differ,
            _positional_target,
            _fixed(PAPER_TEMPLATE.with_(context_end=", these are a bunch of boxes containing objects")),
            groups=("pos_transmitter",),
            description="unrelated text after the context",
        ),
        Desideratum(
            "add_tokens_btw_box_and_obj",
            _positions_differ,
            _positional_target,
            _fixed(PAPER_TEMPLATE.with_(segment="the {object} is contained in the Box {label}")),
            groups=("pos_transmitter",),
            description='"is contained in the" instead of "is in"',
        ),
        Desideratum(
            "add_seg_start",
            _positions_differ,
            _positional_target,
            _fixed(PAPER_TEMPLATE.with_(extra_segments=(_EXTRA_SEGMENT,), extra_at=0)),
            excluded=frozenset({"apple", "O"}),
            groups=("pos_transmitter",),
            description="an extra segment first; the target counts the context's own boxes only",
        ),
        Desideratum(
            "add_seg_end",
            _positions_differ,
            _positional_target,
            _fixed(PAPER_TEMPLATE.with_(extra_segments=(_EXTRA_SEGMENT,), extra_at=-1)),
            excluded=frozenset({"apple", "O"}),
            groups=("pos_transmitter",),
            description="an extra segment last",
        ),
        Desideratum(
            "add_box_before_correct_segment",
            _positions_differ,
            _positional_target,
            lambda e: PAPER_TEMPLATE.with_(before_segment=((e.query_box, _BOXES_BEFORE),)),
            groups=("pos_transmitter",),
            description="three extra boxes named before the queried segment",
        ),
        Desideratum(
            "incorrect_segment",
            _positions_differ,
            _next_segment_target,
            groups=("pos_transmitter",),
            description="target: the base object one segment after the source's",
        ),
        Desideratum(
            "altered_box_obj_order",
            _positions_differ,
            _positional_target,
            _fixed(PAPER_TEMPLATE.with_(segment="Box {label} contains the {object}")),
            groups=("pos_transmitter",),
            description='segments read "Box L contains the obj"',
        ),
        Desideratum(
            "altered_box_obj_association",
            _positions_differ,
            _positional_target,
            _fixed(PAPER_TEMPLATE.with_(segment="the {object} is not in Box {label}")),
            groups=("pos_transmitter",),
            description='"is not in" instead of "is in"',
        ),
        Desideratum(
            "no_comma",
            _positions_differ,
            _positional_target,
            _fixed(PAPER_TEMPLATE.with_(separator=" ")),
            groups=("pos_transmitter",),
            description="segments joined without commas",
        ),
        Desideratum(
            "add_comma",
            _positions_differ,
            _positional_target,
            _fixed(PAPER_TEMPLATE.with_(segment="the {object}, is in Box {label}")),
            groups=("pos_transmitter",),
            description="an extra comma after each object",
        ),
    ]
}
#: The three desiderata the paper's DCM claims are about (docs/paper.md §8.5, §8.6); the rest are its position
#: transmitters' additional ones (§8.5's table of alterations).
MAIN_DESIDERATA = ("object_value", "positional", "box_label_value")
ADDITIONAL_DESIDERATA = tuple(n for n in DESIDERATA if n not in MAIN_DESIDERATA)


def _paper_target_id(tokenizer, word: str) -> int:
    """Paper bug 2: ``encode(list_of_words)`` maps the bare piece (no word-start marker) to an id."""
    token_id = tokenizer.convert_tokens_to_ids(word)
    return tokenizer.unk_token_id if token_id is None else token_id


def desiderata_pairs(
    tokenizer,
    desideratum: str,
    n_pairs: int = 2000,
    num_boxes: int = 7,
    seed: int = 0,
    paper_compat: bool = False,
    objects: Sequence[str] | None = None,
    vocabulary: Vocabulary | None = None,
) -> CounterfactualDataset:
    """``n_pairs`` seeded pairs for one desideratum (paper: 2000, split 1000/500/500)."""
    if desideratum not in DESIDERATA:
        raise KeyError(f"unknown desideratum {desideratum!r}; known: {', '.join(DESIDERATA)}")
    spec = DESIDERATA[desideratum]
    vocabulary = vocabulary or Vocabulary.for_tokenizer(tokenizer, objects)
    rng = random.Random(seed)
    bases, sources = [], []
    for _ in range(n_pairs):
        base = _random_example(rng, num_boxes, vocabulary)
        for _ in range(MAX_TRIES):
            source = _random_example(rng, num_boxes, vocabulary)
            if spec.excluded.isdisjoint(source.context.objects + source.context.labels) and spec.accept(
                base, source, paper_compat
            ):
                break
        else:
            raise RuntimeError(f"no source satisfies {desideratum!r} after {MAX_TRIES} tries")
        bases.append(base)
        sources.append(source)
    targets = [spec.target(b, s) for b, s in zip(bases, sources)]
    if paper_compat and desideratum == "box_label_value":
        target_ids = [_paper_target_id(tokenizer, w) for w in targets]
    else:
        target_ids = [vocabulary.object_ids[w] for w in targets]
    meta = {
        "seed": seed,
        "num_boxes": num_boxes,
        "tokenizer": tokenizer_name(tokenizer),
        "kind": "desideratum",
        "desideratum": desideratum,
        "paper_compat": paper_compat,
    }
    base_ds = tokenize_examples(tokenizer, bases, vocabulary, meta=meta)
    source_ds = tokenize_examples(tokenizer, sources, vocabulary, [spec.source_template(s) for s in sources], meta=meta)
    return CounterfactualDataset(desideratum, base_ds, source_ds, torch.tensor(target_ids, dtype=torch.long), meta)


def ablation_prompts(
    tokenizer,
    n_examples: int = 500,
    num_boxes: int = 7,
    seed: int = 0,
    objects: Sequence[str] | None = None,
    vocabulary: Vocabulary | None = None,
) -> EntityTrackingDataset:
    """The prompts mean ablation averages over (``pp_utils.load_ablation_data``): one per context, from
    ``n_examples`` distinct contexts, querying the first box with its label replaced by a random letter."""
    vocabulary = vocabulary or Vocabulary.for_tokenizer(tokenizer, objects)
    rng = random.Random(seed)
    examples = [
        Example(sample_context(rng, num_boxes, vocabulary.objects, vocabulary.labels), 0, rng.choice(vocabulary.labels))
        for _ in range(n_examples)
    ]
    meta = {"seed": seed, "num_boxes": num_boxes, "tokenizer": tokenizer_name(tokenizer), "kind": "ablation"}
    return tokenize_examples(tokenizer, examples, vocabulary, meta=meta)
