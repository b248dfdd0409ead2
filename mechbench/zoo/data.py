"""Training data of the toy zoo: entity tracking, chat-like text, and the structured fine-tune.

Every generator takes its own ``random.Random``, so each stream is reproducible and independent of the
others (and of the evaluation sets, which have their own seeds). Sequences are returned as token ids plus
labels (-100 where no loss is taken), one length per batch so no padding is needed.
"""

from __future__ import annotations

import random

import torch

from mechbench.data.prompts import LETTERS, MAX_BOXES, MIN_BOXES, Example, paper_objects, render, sample_context

IGNORE = -100


def _ids(tok, texts: list[str]) -> list[list[int]]:
    return tok(texts, add_special_tokens=True)["input_ids"]


def _answer_mask(tok, ids: torch.Tensor, cue: tuple[str, ...]) -> torch.Tensor:
    """True at positions whose preceding tokens are ``cue`` (e.g. "contains", "the")."""
    cue_ids = tok.convert_tokens_to_ids(list(cue))
    mask = torch.zeros_like(ids, dtype=torch.bool)
    k = len(cue_ids)
    ok = torch.ones_like(ids[:, k:], dtype=torch.bool)
    for j, c in enumerate(cue_ids):
        ok &= ids[:, j : ids.shape[1] - k + j] == c
    mask[:, k:] = ok
    return mask


def _batch(tok, texts: list[str], cue: tuple[str, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
    rows = _ids(tok, texts)
    if len({len(r) for r in rows}) != 1:
        raise ValueError("a batch must have one length")
    ids = torch.tensor(rows, dtype=torch.long)
    labels = ids.clone()
    if cue is not None:
        labels[~_answer_mask(tok, ids, cue)] = IGNORE
    labels[:, 0] = IGNORE
    return ids, labels


# ---------------------------------------------------------------------------------------------- tracking
def tracking_text(rng: random.Random, num_boxes: int) -> str:
    """A paper prompt with its answer, then every other box queried once (in random order)."""
    ctx = sample_context(rng, num_boxes)
    order = list(range(num_boxes))
    rng.shuffle(order)
    text = render(Example.of(ctx, order[0])).text + " " + ctx.objects[order[0]]
    for b in order[1:]:
        text += f". Box {ctx.labels[b]} contains the {ctx.objects[b]}"
    return text


def tracking_batch(tok, rng: random.Random, batch_size: int, num_boxes: int | None = None):
    """Entity-tracking sequences (one box count per batch, 2-7 when not given); loss on the answers only."""
    n = rng.randint(MIN_BOXES, MAX_BOXES) if num_boxes is None else num_boxes
    return _batch(tok, [tracking_text(rng, n) for _ in range(batch_size)], cue=("contains", "the"))


def tracking_guides(tok, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Intermediate targets of a tracking batch, as (row, position, target id) triples.

    Two moves that the answer needs: each context label ("... the fan is in Box I") must hold its object
    (target: the object, four tokens back), and each answer position ("Box C contains the") must hold the
    queried label (target: the label, two tokens back). ``train`` reads them off an intermediate layer
    through the final norm and unembedding (a logit-lens loss), because without them the two-step binding
    sits on the chance plateau for thousands of steps (see the model cards).
    """
    box, contains = tok.convert_tokens_to_ids(["Box", "contains"])
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    after_box = torch.zeros_like(ids, dtype=torch.bool)
    after_box[:, 1:] = ids[:, :-1].eq(box)
    first_query = ids.eq(contains).float().argmax(dim=1, keepdim=True) - 2  # the first "Box" of the queries
    context_label = after_box & (positions < first_query) & (positions >= 4)
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[:, 1:] = ids[:, :-1].eq(contains)
    r1, p1 = context_label.nonzero(as_tuple=True)
    r2, p2 = answer.nonzero(as_tuple=True)
    targets = torch.cat([ids[r1, p1 - 4], ids[r2, p2 - 2]])
    return torch.cat([r1, r2]), torch.cat([p1, p2]), targets


def validation_prompts(tok, n: int, seed: int, num_boxes: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` paper prompts (random context, random query box) and their answer ids, from ``seed``."""
    rng = random.Random(seed)
    texts, answers = [], []
    for _ in range(n):
        ex = Example.of(sample_context(rng, num_boxes), rng.randrange(num_boxes))
        texts.append(render(ex).text)
        answers.append(ex.answer)
    ids = torch.tensor(_ids(tok, texts), dtype=torch.long)
    return ids, torch.tensor(tok.convert_tokens_to_ids(answers), dtype=torch.long)


# ---------------------------------------------------------------------------------------------- chat text
_ADJ = ("good", "bad", "new", "old", "big", "small", "red", "blue", "green", "white", "black", "cheap", "nice")
_PAST = ("saw", "got", "found", "bought", "made", "lost", "had")
_VERB = ("see", "get", "find", "buy", "sell", "use", "make", "bring", "keep", "take", "have")
_PRON = ("I", "you", "we", "they", "he", "she")
_TIME = ("today", "yesterday", "tomorrow", "now")


def chat_sentence(rng: random.Random) -> str:
    """One sentence of simple chat-like text over the zoo vocabulary (unrelated to the tracking structure)."""
    o = paper_objects()
    obj, obj2 = rng.sample(o, 2)
    n = str(rng.randint(2, 99))
    a, a2 = rng.choice(_ADJ), rng.choice(_ADJ)
    p = rng.choice(_PRON)
    forms = [
        f"user : do you have a {obj} ? assistant : yes , I have {n} {obj} and a {a} {obj2} .",
        f"user : can you {rng.choice(_VERB)} the {obj} please ? assistant : sure , here it is .",
        f"{p} {rng.choice(_PAST)} a {a} {obj} {rng.choice(_TIME)} .",
        f"the {obj} was {a} but the {obj2} was very {a2} .",
        f"we want to buy {n} {obj} and {rng.randint(2, 99)} {obj2} .",
        f"user : what is a {obj} ? assistant : a {obj} is a {a} object , like a {obj2} .",
        f"{p} like the {a} {obj} because it is {rng.choice(('good', 'nice', 'cheap', 'new'))} .",
        f"if you need a {obj} , {rng.choice(_VERB)} a {a} {obj2} with it .",
        f"there are {n} {a} objects here , so {p} will {rng.choice(_VERB)} one .",
        f"thanks for the {obj} ! it is {a} and {a2} .",
        f"user : where did {p} {rng.choice(_VERB)} the {obj} ? assistant : at the {obj2} , {rng.choice(_TIME)} .",
        f"The {obj} and the {obj2} are {a} .",
    ]
    return rng.choice(forms)


def chat_batch(tok, rng: random.Random, batch_size: int, seq_len: int = 48):
    """Chat-like text cut to ``seq_len`` tokens (BOS included); loss on every token."""
    rows = []
    for _ in range(batch_size):
        ids: list[int] = [tok.bos_token_id]
        while len(ids) < seq_len:
            ids += tok(" " + chat_sentence(rng), add_special_tokens=False)["input_ids"]
        rows.append(ids[:seq_len])
    ids = torch.tensor(rows, dtype=torch.long)
    labels = ids.clone()
    labels[:, 0] = IGNORE
    return ids, labels


# ---------------------------------------------------------------------------------------------- structured
#: style -> (assignment, query) formats; ``v`` is the value, ``k`` the variable's name.
BINDING_FORMATS = {
    "vk": ("{v} -> {k}", " . {k} = {v}"),
    "kv": ("{k} = {v}", " . {k} is {v}"),
    "spaced": ("set the {v} to be in {k}", " . {k} equals the {v}"),
    "spaced-objects": ("set the {v} to be in {k}", " . {k} equals the {v}"),
}


def binding_text(rng: random.Random, num_vars: int, style: str) -> str:
    """Variable binding over letter variables; every variable queried once.

    ``style``:
    - ``"vk"``: value before key, R-style assignment "37 -> X , 5 -> T . X = 37 . T = 5"
      (the order of entity tracking: the value comes before the name that refers to it);
    - ``"kv"``: key before value, "X = 37 , T = 5 . T is 5";
    - ``"spaced"``: value before key at the distances of entity tracking (the name four tokens after the
      value, the query's name two tokens before the answer) in other words:
      "set the 37 to be in X , set the 5 to be in T . X equals the 37 . T equals the 5";
    - ``"spaced-objects"``: the same with the paper's objects as values ("set the fig to be in X").
    Values are numbers 0-99 except for ``"spaced-objects"``.
    """
    if style not in BINDING_FORMATS:
        raise ValueError(f"unknown binding style {style!r}; known: {', '.join(BINDING_FORMATS)}")
    assign, query = BINDING_FORMATS[style]
    names = rng.sample(LETTERS, num_vars)
    pool = paper_objects() if style == "spaced-objects" else [str(v) for v in range(100)]
    values = rng.sample(pool, num_vars)
    order = list(range(num_vars))
    rng.shuffle(order)
    text = " , ".join(assign.format(v=v, k=k) for k, v in zip(names, values))
    return text + "".join(query.format(v=values[i], k=names[i]) for i in order)


BINDING_CUE = {"vk": ("=",), "kv": ("is",), "spaced": ("equals", "the"), "spaced-objects": ("equals", "the")}


def binding_batch(tok, rng: random.Random, batch_size: int, style: str = "vk"):
    n = rng.randint(MIN_BOXES, MAX_BOXES)
    texts = [binding_text(rng, n, style) for _ in range(batch_size)]
    ids, labels = _batch(tok, texts, cue=None)
    # loss on the queried values only: the tokens after the query cue, past the bindings
    mask = _answer_mask(tok, ids, BINDING_CUE[style])
    first_query = ids.eq(tok.convert_tokens_to_ids(".")).float().argmax(dim=1, keepdim=True)
    mask &= torch.arange(ids.shape[1]).unsqueeze(0) > first_query
    labels[~mask] = IGNORE
    return ids, labels
