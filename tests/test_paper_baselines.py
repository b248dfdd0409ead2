"""Checks the paper baselines in baselines/*.json: schema, internal consistency, and
agreement with the raw result files of the paper's code (Nix07/finetuning) where those are present."""

import glob
import json
import math
import os
import re
import statistics
from pathlib import Path

import pytest

from mechbench.baselines import RECORD_FIELDS, record_unit
from mechbench.claims import CLAIMS
from mechbench.data.counterfactuals import ADDITIONAL_DESIDERATA
from mechbench.models.registry import TOY_MODELS

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ROOT / "baselines"
# The result files of the paper's public code, copied into the repository (docs/paper/data/README.md says what each is)
PAPER_DATA = Path(os.environ.get("MECHBENCH_PAPER_DATA", ROOT / "docs/paper/data"))

FILES = [*CLAIMS, "circuits"]  # every claim's file, and the circuits the claims read
TOP_KEYS = {"schema_version", "claim", "description", "unit", "source", "records"}
UNITS = {"fraction", "percent", "heads", "count"}
OPTIONAL = set(RECORD_FIELDS) - {"value", "source"}
MODELS = {"llama7b", "vicuna7b", "goat7b", "float7b"} | set(TOY_MODELS)  # toy records are measured ones
CIRCUITS = {"llama7b", "goat7b", "float7b"} | {"toy-llama"}  # the toy circuit is a measured one
GROUPS = ["value_fetcher", "pos_transmitter", "pos_detector", "struct_reader"]
ROLE = {
    "value_fetcher": "last",
    "pos_transmitter": "last",
    "pos_detector": "query_label",
    "struct_reader": "prev_query_label",
}
SHORT = {"llama7b": "llama", "vicuna7b": "vicuna", "goat7b": "goat", "float7b": "float"}
KNOCKOUT_FILES = {
    "last->correct_object": "from_last_to_correct_obj_pos",
    "last->random_context_token": "from_last_to_random_pos",
    "last->query_label": "from_last_to_query_box_pos",
    "query_label->prev_query_label": "from_query_box_to_prev_query_box",
    "query_label->random_context_token": "from_query_box_to_random_pos",
}


def load(name):
    with open(BASELINES / f"{name}.json") as f:
        return json.load(f)


def paper(name):
    """The file's published records (measured toy records are checked by the suites, not against the paper)."""
    return [r for r in load(name)["records"] if not r["source"].startswith("measured")]


def is_num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def key_of(rec):
    return tuple(sorted((k, v) for k, v in rec.items() if k not in OPTIONAL | {"value", "source"}))


def need_data():
    if not PAPER_DATA.is_dir():
        pytest.skip(f"raw paper data not found at {PAPER_DATA} (set MECHBENCH_PAPER_DATA); cross-check skipped")
    return PAPER_DATA


def by_key(name):
    return {key_of(r): r for r in load(name)["records"]}


# ----------------------------------------------------------------------------- schema


def test_no_unexpected_files():
    assert sorted(p.stem for p in BASELINES.glob("*.json")) == sorted(FILES)


@pytest.mark.parametrize("name", FILES)
def test_schema(name):
    d = load(name)
    assert set(d) == TOP_KEYS, set(d) ^ TOP_KEYS
    assert d["schema_version"] == 1
    assert d["claim"] == name
    assert isinstance(d["description"], str) and d["description"].strip()
    assert d["unit"] in UNITS
    assert isinstance(d["source"], str) and d["source"].strip()
    assert isinstance(d["records"], list) and d["records"]
    keys = set()
    for rec in d["records"]:
        assert isinstance(rec, dict)
        assert "value" in rec and "source" in rec, rec
        v = rec["value"]
        assert is_num(v) or isinstance(v, (list, dict)), rec
        assert isinstance(rec["source"], str) and rec["source"].strip(), rec
        if "tolerance" in rec:
            assert is_num(rec["tolerance"]) and rec["tolerance"] >= 0
            assert isinstance(rec.get("tolerance_rule"), str) and rec["tolerance_rule"]
        if "n" in rec:
            assert isinstance(rec["n"], int) and not isinstance(rec["n"], bool) and rec["n"] > 0
        if "std" in rec:
            assert is_num(rec["std"]) and rec["std"] >= 0
        if "note" in rec:
            assert isinstance(rec["note"], str) and rec["note"]
        for k, kv in rec.items():
            if k not in OPTIONAL | {"value", "source"}:
                assert isinstance(kv, (str, int)) and not isinstance(kv, bool), (name, k, kv)
        for k in ("model", "circuit"):
            if k in rec:
                assert rec[k] in (MODELS if k == "model" else CIRCUITS), rec
        if "group" in rec and rec["group"] in GROUPS and "role" in rec:
            assert rec["role"] == ROLE[rec["group"]], rec
        unit = record_unit(name, rec, d["unit"])  # faithfulness is a ratio (can pass 1), DCM patching a percent
        if unit == "fraction" and is_num(v):
            assert 0.0 <= v <= 1.0, rec
        if unit == "percent" and is_num(v):
            assert 0.0 <= v <= 100.0, rec
        k = key_of(rec)
        assert k not in keys, f"duplicate record key {k}"
        keys.add(k)


# ----------------------------------------------------------------------------- internal consistency


def test_accuracy_values_and_tolerance():
    recs = {r["model"]: r for r in paper("accuracy") if not r["source"].startswith("measured")}
    assert {m: r["value"] for m, r in recs.items()} == {
        "llama7b": 0.66,
        "vicuna7b": 0.67,
        "goat7b": 0.82,
        "float7b": 0.82,
    }
    for r in recs.values():
        p = r["value"]
        assert r["n"] == 500
        assert r["tolerance"] == round(3 * math.sqrt(2 * p * (1 - p) / 500) + 0.005, 4)


def test_circuit_counts_and_positions():
    counts = {"llama7b": [40, 7, 20, 5], "goat7b": [68, 28, 40, 39], "float7b": [68, 29, 40, 38]}
    recs = {(r["circuit"], r["group"]): r for r in paper("circuits")}
    assert len(recs) == 12
    for c, ns in counts.items():
        for g, n in zip(GROUPS, ns):
            heads = recs[(c, g)]["value"]
            assert len(heads) == n, (c, g)
            assert all(len(h) == 2 and 0 <= h[0] < 32 and 0 <= h[1] < 32 for h in heads)
            assert len({tuple(h) for h in heads}) == n
    assert recs[("llama7b", "value_fetcher")]["value"][:2] == [[15, 13], [21, 3]]
    assert recs[("llama7b", "struct_reader")]["value"] == [[8, 21], [12, 23], [11, 9], [8, 12], [11, 23]]


def test_faithfulness_is_ratio():
    rows: dict[tuple, dict] = {}
    for r in paper("faithfulness"):
        if not r["source"].startswith("measured"):
            rows.setdefault((r["circuit"], r["model"]), {})[r["metric"]] = r["value"]
    assert len(rows) == 12
    for key, v in rows.items():
        assert set(v) == {"full_accuracy", "circuit_accuracy", "faithfulness", "random_circuit_accuracy"}, key
        # the notebook divides unrounded accuracies; rounded values agree to within ~0.01
        assert abs(v["circuit_accuracy"] / v["full_accuracy"] - v["faithfulness"]) <= 0.011, key


def test_completeness_group_incompleteness():
    recs = [r for r in paper("completeness") if r["k_method"] == "entire_group"]
    cells = {}
    for r in recs:
        cells.setdefault((r["circuit"], r["group"]), {})[r["metric"]] = r["value"]
    assert len(cells) == 12
    for v in cells.values():
        assert abs(abs(v["F_M_minus_K"] - v["F_C_minus_K"]) - v["incompleteness"]) < 1e-9


def test_minimality_reproduces_circuits():
    circuits = {(r["circuit"], r["group"]): r["value"] for r in paper("circuits")}
    recs = paper("minimality")
    summaries = {(r["circuit"], r["group"]): r["value"] for r in recs if r["kind"] == "group_summary"}
    assert len(summaries) == 12
    for (c, g), s in summaries.items():
        heads = [r for r in recs if r["kind"] == "head" and r["circuit"] == c and r["group"] == g]
        assert len(heads) == s["n_candidates"]
        assert s["k_removed"] == math.ceil(0.3 * s["n_candidates"])
        heads.sort(key=lambda r: r["rank"])
        kept = [
            [r["layer"], r["head"]]
            for r in heads
            if r["value"]["before"] / r["value"]["after"] - 1 >= s["threshold"] - 1e-12
        ]
        assert kept == circuits[(c, g)], (c, g)
        assert [r["value"]["in_circuit"] for r in heads] == [[r["layer"], r["head"]] in kept for r in heads]


def test_dcm_heads_within_circuit():
    circuits = {(r["circuit"], r["group"]): r["value"] for r in paper("circuits")}
    recs = paper("dcm") + [r for r in paper("dcm_additional") if r["measure"] == "dcm"]
    assert len(recs) == 36 + 11
    for r in recs:
        v = r["value"]
        assert v["n_heads"] == len(v["heads"])
        assert all(h in circuits[(r["circuit"], r["group"])] for h in v["heads"])
        assert 0.0 <= v["test_accuracy"] <= 1.0
        if r["desideratum"] == "box_label_value":
            assert v["test_accuracy"] == 0.0 and "bug" in r["note"]


# ----------------------------------------------------------------------------- cross-checks with raw files


def test_circuits_match_raw():
    data = need_data()
    recs = paper("circuits")
    for r in recs:
        raw = json.loads((data / "circuits" / f"{SHORT[r['circuit']]}_circuit.json").read_text())
        assert r["value"] == raw[r["group"]], (r["circuit"], r["group"])
    assert len(recs) == 3 * 4


def test_attention_knockout_matches_raw():
    data = need_data()
    recs = paper("attention_knockout")
    assert len(recs) == 5 * 32
    for r in recs:
        raw = json.loads((data / "attn_knockout" / f"{KNOCKOUT_FILES[r['edge']]}.json").read_text())
        assert r["value"] == raw[str(r["layer"] + 1)], (r["edge"], r["layer"])  # raw key = L + 1
        assert r["model"] == "llama7b"


def test_dcm_patching_matches_raw():
    data = need_data()
    recs = paper("dcm_patching") + [r for r in paper("dcm_additional") if r["measure"] == "patching"]
    assert len(recs) == 3 * 4 * 4 * 3 + 11
    for r in recs:
        c, m = SHORT[r["circuit"]], SHORT[r["model"]]
        fname = (
            "llama_add_semantic_results.json"
            if r["desideratum"] not in ("object_value", "positional", "box_label_value")
            else f"{m}_semantic_results.json"
        )
        raw = json.loads((data / "activation_patching" / f"{c}_circuit" / fname).read_text())
        runs = raw[m][r["group"]][r["desideratum"]]
        assert len(runs) == r["n_runs"] == 10
        assert r["value"] == pytest.approx(statistics.mean(runs), abs=1e-6), r["source"]
        assert r["std"] == pytest.approx(statistics.pstdev(runs), abs=1e-4), r["source"]


def test_dcm_additional_is_the_eleven_on_the_llama_transmitters():
    recs = paper("dcm_additional")
    assert sorted({r["desideratum"] for r in recs}) == sorted(ADDITIONAL_DESIDERATA)
    assert sorted((r["desideratum"], r["measure"]) for r in recs) == sorted(
        (d, m) for d in ADDITIONAL_DESIDERATA for m in ("dcm", "patching")
    )
    assert {(r["circuit"], r["model"], r["group"], r["role"]) for r in recs} == {
        ("llama7b", "llama7b", "pos_transmitter", "last")
    }
    # docs/paper.md §8.6: (DCM heads, test accuracy, patching %) per additional desideratum
    published = {
        "random_text_start": (5, 0.348, 34.78),
        "random_text_end": (5, 0.356, 34.06),
        "add_tokens_btw_box_and_obj": (5, 0.408, 38.80),
        "add_seg_start": (6, 0.276, 25.50),
        "add_seg_end": (6, 0.33, 30.46),
        "add_box_before_correct_segment": (4, 0.194, 19.40),
        "incorrect_segment": (5, 0.166, 16.16),
        "altered_box_obj_order": (5, 0.328, 16.12),
        "altered_box_obj_association": (4, 0.214, 18.04),
        "no_comma": (5, 0.386, 37.50),
        "add_comma": (6, 0.354, 36.30),
    }
    for r in recs:
        heads, acc, pct = published[r["desideratum"]]
        if r["measure"] == "dcm":
            assert (r["value"]["n_heads"], r["value"]["test_accuracy"]) == (heads, acc), r["desideratum"]
        else:
            assert r["value"] == pytest.approx(pct, abs=0.005), r["desideratum"]


def test_input_cmap_is_the_notebooks_table():
    """docs/paper.md §8.7 'Input CMAP': Goat -> Llama, value fetchers and position transmitters, Q K V QK QKV; the
    head-set and donor ambiguities are stated in the records."""
    recs = paper("input_cmap")
    table = {(r["group"], r["inputs"]): r["value"] for r in recs}
    assert table == {
        **dict(zip((("value_fetcher", i) for i in ("Q", "K", "V", "QK", "QKV")), (0.77, 0.63, 0.69, 0.76, 0.77))),
        **dict(zip((("pos_transmitter", i) for i in ("Q", "K", "V", "QK", "QKV")), (0.66, 0.65, 0.69, 0.65, 0.67))),
    }
    assert {(r["source_model"], r["target_model"], r["role"]) for r in recs} == {("goat7b", "llama7b", "last")}
    assert {r["group"]: r["n_heads"] for r in recs} == {"value_fetcher": 56, "pos_transmitter": 15}
    assert all("naive" in r["note"] for r in recs)  # the donor's ambiguity
    assert all("commented out" in r["note"] for r in recs if r["group"] == "value_fetcher")  # the A head set's
    dcm = {(r["group"], r["desideratum"]): r["value"]["n_heads"] for r in paper("dcm") if r["circuit"] == "goat7b"}
    assert (dcm[("value_fetcher", "object_value")], dcm[("pos_transmitter", "positional")]) == (56, 15)


def test_dcm_matches_raw():
    data = need_data()
    for r in paper("dcm") + [r for r in paper("dcm_additional") if r["measure"] == "dcm"]:
        txt = (data / "dcm" / f"{SHORT[r['circuit']]}_circuit" / r["group"] / r["desideratum"] / "0.01.txt").read_text()
        heads = json.loads(re.search(r"Heads: (\[.*\])", txt).group(1))
        acc = float(re.search(r"Test Accuracy: ([\d.]+)", txt).group(1))
        assert r["value"]["heads"] == heads and r["value"]["test_accuracy"] == acc, r["source"]


def test_minimality_matches_raw():
    data = need_data()
    recs = [r for r in paper("minimality") if r["kind"] == "head"]
    seen = 0
    for c in ("llama", "goat", "float"):
        for g in GROUPS:
            [f] = glob.glob(str(data / "minimality" / c / f"{g}_*_significance.json"))
            raw = json.loads(Path(f).read_text())
            mine = sorted((r for r in recs if r["circuit"] == f"{c}7b" and r["group"] == g), key=lambda r: r["rank"])
            assert len(mine) == len(raw)
            for r, (key, (before, after)) in zip(mine, raw.items()):
                L, H = map(int, re.search(r"layers\.(\d+)\.self_attn\.o_proj', (\d+)\)", key).groups())
                assert (r["layer"], r["head"]) == (L, H)
                assert (r["value"]["before"], r["value"]["after"]) == (before, after)
                seen += 1
    assert seen == len(recs)


# --- every published record can be compared the way its suite compares it (no model needed) -----------------

from mechbench import baselines as _baselines  # noqa: E402
from mechbench.claims.tolerance import judge  # noqa: E402

#: claim -> (which published records its suite compares, the n it measures on, the field it compares). The
#: suites: test_accuracy, test_faithfulness, test_completeness, test_dcm, test_dcm_patching, test_cmap,
#: test_knockout, test_minimality, test_path_patching, and the registered claims' (dcm_additional, input_cmap).
SUITE_COMPARISONS = {
    "accuracy": (lambda k: True, 500, None),
    "faithfulness": (lambda k: k.get("metric") in ("circuit_accuracy", "random_circuit_accuracy"), 500, None),
    "completeness": (lambda k: True, 500, None),
    "dcm": (lambda k: True, 500, "test_accuracy"),
    "dcm_patching": (lambda k: True, 500, None),
    # a DCM record's test accuracy, a patching record's percentage
    "dcm_additional": (lambda k: True, 500, lambda r: "test_accuracy" if isinstance(r.value, dict) else None),
    "input_cmap": (lambda k: k.get("checkpoint") == "release", 500, None),
    "cmap": (lambda k: k.get("kind") == "output_cmap" and k.get("checkpoint") == "release", 500, None),
    "attention_knockout": (lambda k: True, 500, None),
    "minimality": (lambda k: k.get("kind") == "head", 100, ("before", "after")),
    "path_patching": (lambda k: k.get("metric") == "recall", None, None),
}


@pytest.mark.parametrize("claim", sorted(SUITE_COMPARISONS))
def test_every_published_record_is_comparable_by_its_suite(claim):
    compared, n, fields = SUITE_COMPARISONS[claim]
    table = _baselines.load(claim, BASELINES)
    records = [r for r in table.records if not r.measured and compared(r.keys)]
    assert records, f"{claim}: the suite compares no published record"
    for record in records:
        chosen = fields(record) if callable(fields) else fields
        for field in chosen if isinstance(chosen, tuple) else (chosen,):
            expected = record.value[field] if field else record.value
            # the value itself (another seed: the independent-sample tolerance) must be within tolerance, and a
            # value far outside must not be
            at = judge(expected, record, n=n, seed=None, field=field)
            assert at.passed and at.tolerance > 0, (claim, record.keys, field)
            far = judge(expected + 10 * at.tolerance + 1, record, n=n, seed=None, field=field)
            assert not far.passed, (claim, record.keys, field)
