"""Entity-tracking prompts as text: contexts, templates and rendering (no tokenizer here).

The paper's prompt (docs/paper.md §1) is

    The document is in Box X, the pot is in Box T, ..., the map is in Box D. Box X contains the

with answer " document". A :class:`Context` is the boxes (one object and one label each); an
:class:`Example` is a context plus the queried box. :func:`render` turns an example into text and records
the character span of every word a method needs (each object, each label, the query label), so that token
positions are found from the tokenizer's offsets, never from hard-coded indices.

A :class:`Template` describes the surface form. The default is the paper's; the additional desiderata of
the position-transmitter group (``counterfactuals.py``) are variations of it.
"""

from __future__ import annotations

import csv
import random
import re
import string
from dataclasses import dataclass, replace
from importlib import resources

LETTERS: tuple[str, ...] = tuple(string.ascii_uppercase)
MIN_BOXES, MAX_BOXES = 2, 7


def paper_objects() -> tuple[str, ...]:
    """The paper's 85 objects (``data/objects.csv``), in file order."""
    with resources.files("mechbench.data").joinpath("objects.csv").open() as f:
        return tuple(row["object_name"] for row in csv.DictReader(f))


@dataclass(frozen=True)
class Context:
    """Boxes in context order: ``objects[i]`` is in the box labelled ``labels[i]``."""

    objects: tuple[str, ...]
    labels: tuple[str, ...]

    def __post_init__(self):
        if len(self.objects) != len(self.labels):
            raise ValueError("a context needs one label per object")
        if len(set(self.objects)) != len(self.objects) or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"objects and labels must be distinct within a context: {self}")

    @property
    def num_boxes(self) -> int:
        return len(self.objects)

    def box_of_label(self, label: str) -> int | None:
        return self.labels.index(label) if label in self.labels else None


@dataclass(frozen=True)
class Example:
    """A context queried at one box.

    ``query_label`` is normally ``context.labels[query_box]``; a counterfactual may replace it with a letter
    that names no box (the path-patching noise), in which case ``query_box`` still records the box the
    query was drawn from.
    """

    context: Context
    query_box: int
    query_label: str

    @classmethod
    def of(cls, context: Context, query_box: int) -> Example:
        return cls(context, query_box, context.labels[query_box])

    @property
    def answer(self) -> str:
        return self.context.objects[self.query_box]

    @property
    def query_refers_to_box(self) -> bool:
        return self.context.labels[self.query_box] == self.query_label


@dataclass(frozen=True)
class Template:
    """Surface form of a prompt. ``{object}`` and ``{label}`` are filled per box.

    ``segment`` is one box's clause; ``order`` lists the clause pieces so that an altered order
    ("Box X contains the fig") is a template too. ``extra_segments`` are clauses about boxes that are not in
    the context (their words get no roles), inserted at ``extra_at`` (a segment index; -1 = at the end).
    ``before_segment`` maps a segment index to text inserted just before that segment.
    """

    prefix: str = ""
    segment: str = "the {object} is in Box {label}"
    separator: str = ", "
    context_end: str = ""
    period: str = "."
    query: str = " Box {label} contains the"
    capitalize_first: bool = True
    extra_segments: tuple[str, ...] = ()
    extra_at: int = -1
    before_segment: tuple[tuple[int, str], ...] = ()

    def with_(self, **changes) -> Template:
        return replace(self, **changes)


PAPER_TEMPLATE = Template()


@dataclass(frozen=True)
class Rendered:
    """Prompt text plus the character span of each word that carries a role."""

    text: str
    object_spans: tuple[tuple[int, int], ...]
    label_spans: tuple[tuple[int, int], ...]
    query_label_span: tuple[int, int]


class _Writer:
    """Accumulates text and the spans of the words filled into ``{object}`` and ``{label}``."""

    def __init__(self):
        self.text = ""

    def emit(self, piece: str) -> None:
        self.text += piece

    def fill(self, piece: str, obj: str, label: str, capitalize: bool = False) -> dict[str, tuple[int, int]]:
        spans = {}
        for part in re.split(r"(\{object\}|\{label\})", piece):
            value = {"{object}": obj, "{label}": label}.get(part)
            if value is not None:
                spans[part] = (len(self.text), len(self.text) + len(value))
                part = value
            if capitalize and part:
                part, capitalize = part[0].upper() + part[1:], False
            self.text += part
        return spans


def render(example: Example, template: Template = PAPER_TEMPLATE) -> Rendered:
    ctx = example.context
    w = _Writer()
    w.emit(template.prefix)
    before = dict(template.before_segment)
    clauses: list[tuple[str, int | None]] = [(template.segment, i) for i in range(ctx.num_boxes)]
    for k, extra in enumerate(template.extra_segments):
        at = len(clauses) if template.extra_at == -1 else template.extra_at + k
        clauses.insert(at, (extra, None))
    object_spans, label_spans = [], []
    for n, (clause, box) in enumerate(clauses):
        if n > 0:
            w.emit(template.separator)
        if box is None:
            w.fill(clause, "", "", capitalize=n == 0 and template.capitalize_first and not template.prefix)
            continue
        cap = n == 0 and template.capitalize_first and not template.prefix
        if box in before:
            w.fill(before[box], "", "", capitalize=cap)
            cap = False
        spans = w.fill(clause, ctx.objects[box], ctx.labels[box], capitalize=cap)
        object_spans.append(spans["{object}"])
        label_spans.append(spans["{label}"])
    w.emit(template.context_end + template.period)
    query = w.fill(template.query, "", example.query_label)
    return Rendered(w.text, tuple(object_spans), tuple(label_spans), query["{label}"])


def sample_context(
    rng: random.Random,
    num_boxes: int = 7,
    objects: tuple[str, ...] | None = None,
    labels: tuple[str, ...] = LETTERS,
) -> Context:
    """Distinct objects and distinct labels, drawn uniformly without replacement."""
    if not MIN_BOXES <= num_boxes <= MAX_BOXES:
        raise ValueError(f"num_boxes must be between {MIN_BOXES} and {MAX_BOXES}, got {num_boxes}")
    objects = paper_objects() if objects is None else tuple(objects)
    if len(objects) < num_boxes or len(labels) < num_boxes:
        raise ValueError(
            f"{num_boxes} boxes need at least {num_boxes} distinct objects and labels; "
            f"got {len(objects)} objects and {len(labels)} labels"
        )
    return Context(tuple(rng.sample(objects, num_boxes)), tuple(rng.sample(labels, num_boxes)))
