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
    text = (
        "There are a bunch of boxes containing objects, the apple is contained in the Box O, these are not "
        "three additional boxes, Box PP, Box BB and Box AA."
    )
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


def test_tracking_guides_point_labels_at_objects_and_answers_at_query_labels(tok):
    import random

    from mechbench.zoo.data import IGNORE, tracking_batch, tracking_guides

    ids, labels = tracking_batch(tok, random.Random(1), 3, num_boxes=4)
    rows, positions, targets = tracking_guides(tok, ids)
    words = [tok.convert_ids_to_tokens(r) for r in ids.tolist()]
    per_row = {r: [] for r in range(3)}
    for r, p, t in zip(rows.tolist(), positions.tolist(), targets.tolist()):
        per_row[r].append((words[r][p], words[r][p - 1], tok.convert_ids_to_tokens(t)))
    for r, triples in per_row.items():
        context = [x for x in triples if x[1] == "Box"]
        answers = [x for x in triples if x[1] == "contains"]
        assert len(context) == 4 and len(answers) == 4 and len(triples) == 8
        text = " ".join(words[r][1:])
        for label, _, obj in context:  # "the OBJ is in Box LABEL" in the context
            assert f"{obj} is in Box {label}" in text
        for the, _, label in answers:  # the answer position holds the queried label
            assert the == "the"
            assert f"Box {label} contains the" in text
    # every answer position of the guide is an answer of the main loss too
    answer_rows, answer_pos = (labels[:, 1:] != IGNORE).nonzero(as_tuple=True)
    assert set(zip(answer_rows.tolist(), answer_pos.tolist())) == {
        (r, p) for r, p, t in zip(rows.tolist(), positions.tolist(), targets.tolist()) if words[r][p - 1] == "contains"
    }


def test_train_command_reexecutes_with_pinned_cpu_kernels(monkeypatch):
    """Kernel choice follows the CPU's instruction set (another ISA, other bits: ATEN_CPU_CAPABILITY=default
    changed a 25-step digest here), so the retrain command must pin it before torch loads."""
    from mechbench.zoo import __main__ as cli
    from mechbench.zoo import train

    monkeypatch.setattr(train.platform, "machine", lambda: "x86_64")
    for key in [*train.PINNED_CPU_ENV, "MECHBENCH_ZOO_REEXEC"]:
        monkeypatch.delenv(key, raising=False)
    calls = []
    monkeypatch.setattr(cli.os, "execve", lambda exe, argv, env: calls.append((argv, env)))
    cli._pin_cpu_and_reexec(["train", "--only", "toy-llama"])
    ((argv, env),) = calls
    assert argv[-4:] == ["mechbench.zoo", "train", "--only", "toy-llama"]
    assert all(env[k] == v for k, v in train.PINNED_CPU_ENV.items())
    monkeypatch.setenv("MECHBENCH_ZOO_REEXEC", "1")  # the re-executed process does not loop
    cli._pin_cpu_and_reexec(["train"])
    assert len(calls) == 1


def test_cpu_record_names_what_decides_the_bits(monkeypatch):
    from mechbench.zoo import train

    for key, value in train.PINNED_CPU_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(train.platform, "machine", lambda: "x86_64")
    rec = train.cpu_record()
    assert rec["pinned"] and rec["env"] == train.PINNED_CPU_ENV and rec["capability"]
    monkeypatch.delenv("MKL_CBWR")
    assert train.unpinned_cpu_settings() == {"MKL_CBWR": None}
    monkeypatch.setattr(train.platform, "machine", lambda: "aarch64")
    assert train.unpinned_cpu_settings() == {}  # nothing to pin off x86-64


def _fake_zoo(root, digests):
    import json

    for name, digest in digests.items():
        (root / name).mkdir(parents=True)
        (root / name / "training.json").write_text(
            json.dumps(
                {
                    "digest": digest,
                    "steps": 10,
                    "heldout_accuracy": 0.5,
                    "cpu": {"cpu": "Test CPU", "capability": "AVX2", "pinned": True, "torch": "x"},
                }
            )
        )


def test_compare_tells_identical_from_different_retrains_and_records_it(tmp_path, capsys):
    import json

    from mechbench.zoo.__main__ import main

    _fake_zoo(tmp_path / "shipped", {"toy-llama": "aa", "toy-vicuna": "bb"})
    _fake_zoo(tmp_path / "same", {"toy-llama": "aa", "toy-vicuna": "bb"})
    _fake_zoo(tmp_path / "other", {"toy-llama": "aa", "toy-vicuna": "cc"})
    assert main(["compare", str(tmp_path / "same"), "--zoo", str(tmp_path / "shipped")]) == 0
    assert main(["compare", str(tmp_path / "other"), "--zoo", str(tmp_path / "shipped"), "--record"]) == 1
    out = capsys.readouterr().out
    assert "toy-vicuna: retrained on Test CPU (AVX2 kernels, pinned)" in out and "weights differ" in out
    recs = {
        n: json.loads((tmp_path / "shipped" / n / "training.json").read_text()) for n in ("toy-llama", "toy-vicuna")
    }
    assert [r["identical"] for r in recs["toy-llama"]["reproductions"]] == [True]
    assert [r["identical"] for r in recs["toy-vicuna"]["reproductions"]] == [False]
    assert main(["compare", str(tmp_path / "nothing"), "--zoo", str(tmp_path / "shipped")]) == 2


def test_probe_finetunes_train_and_load_as_a_user_would(tmp_path):
    """The probes (fine-tunes the project never registered) come out as a loadable directory: a LoRA adapter that
    names toy-llama as its base, or full weights; a 2-step smoke run, not the real recipe."""
    from mechbench.models.loading import load_model
    from mechbench.zoo.probes import train_probes

    records = train_probes(tmp_path, only=["probe-lora", "probe-direct"], steps=2, log=lambda m: None)
    assert set(records) == {"probe-lora", "probe-direct"}
    assert (tmp_path / "probe-lora" / "adapter_config.json").is_file()
    assert (tmp_path / "probe-direct" / "config.json").is_file()
    for name in records:
        handle = load_model(str(tmp_path / name))
        assert handle.shape.n_layers == 4 and handle.tokenizer is not None
